//! Per-location policy: what the annotations of an Ingress and the ConfigMap decide for each
//! of its locations, resolved once per snapshot so the request path only reads it.

use std::collections::HashSet;

use super::annotations::IngressAnnotations;
use super::TranslateOptions;
use crate::settings::Settings;
use crate::snapshot::{HttpsRedirect, RoutePolicy};

/// What is known about one Ingress when its locations are built.
pub struct IngressPolicy<'a> {
    pub annotations: &'a IngressAnnotations,
    pub settings: &'a Settings,
    pub options: &'a TranslateOptions,
    /// Hosts with TLS configured (any Ingress of the host has a `spec.tls` for it).
    pub tls_hosts: &'a HashSet<String>,
}

/// The policy of one location (`host` is `None` for rules without host).
pub fn route_policy(ingress: &IngressPolicy<'_>, host: Option<&str>, path: &str) -> RoutePolicy {
    RoutePolicy {
        https_redirect: https_redirect(ingress, host, path),
    }
}

/// ssl-redirect on a TLS host, or force-ssl-redirect; never for no-tls-redirect-locations.
fn https_redirect(
    ingress: &IngressPolicy<'_>,
    host: Option<&str>,
    path: &str,
) -> Option<HttpsRedirect> {
    let (ann, settings) = (ingress.annotations, ingress.settings);
    let ssl = ann.ssl_redirect.unwrap_or(settings.ssl_redirect)
        && host.is_some_and(|h| ingress.tls_hosts.contains(h));
    let force = ann
        .force_ssl_redirect
        .unwrap_or(settings.force_ssl_redirect);
    if !(ssl || force)
        || settings
            .no_tls_redirect_locations
            .iter()
            .any(|l| path.starts_with(l.as_str()))
    {
        return None;
    }
    Some(HttpsRedirect {
        code: settings.http_redirect_code,
        preserve_trailing_slash: ann
            .preserve_trailing_slash
            .unwrap_or(settings.preserve_trailing_slash),
        port: ann
            .use_port_in_redirects
            .unwrap_or(settings.use_port_in_redirects)
            .then_some(ingress.options.https_port),
    })
}
