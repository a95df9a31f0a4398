//! Per-location policy: what the annotations of an Ingress and the ConfigMap decide for each
//! of its locations, resolved once per snapshot so the request path only reads it.

use std::collections::HashSet;

use super::annotations::IngressAnnotations;
use super::TranslateOptions;
use crate::settings::Settings;
use crate::snapshot::{HttpsRedirect, RoutePolicy, UpstreamProtocol};

/// What is known about one Ingress when its locations are built.
pub struct IngressPolicy<'a> {
    /// Address lists, block lists and limits, resolved once per Ingress.
    pub traffic: &'a super::traffic::IngressTraffic,
    /// `backend-protocol` and `proxy-ssl-*`, resolved once per Ingress.
    pub upstream: &'a UpstreamProtocol,
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
        upstream: ingress.upstream.clone(),
        denied: ingress.traffic.denied.clone(),
        access: ingress.traffic.access.clone(),
        limits: ingress.traffic.limits.clone(),
        no_access_log: ingress.annotations.enable_access_log == Some(false),
        max_body_size: Some(
            ingress
                .annotations
                .proxy_body_size
                .unwrap_or(ingress.settings.proxy_body_size),
        )
        .filter(|&limit| limit > 0),
        request_buffering: ingress
            .annotations
            .proxy_request_buffering
            .unwrap_or(ingress.settings.proxy_request_buffering),
        client_body_buffer_size: ingress
            .annotations
            .client_body_buffer_size
            .unwrap_or(ingress.settings.client_body_buffer_size),
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
