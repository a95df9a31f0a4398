//! Per-location policy: what the annotations of an Ingress and the ConfigMap decide for each
//! of its locations, resolved once per snapshot so the request path only reads it.

use std::collections::HashSet;
use std::sync::Arc;

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
    /// `enable-cors` and `cors-*` (translate/cors.rs).
    pub cors: Option<Arc<crate::snapshot::cors::CorsPolicy>>,
    /// `custom-http-errors` and its error backend (translate/custom_errors.rs).
    pub errors: Option<Arc<crate::snapshot::errors::ErrorPolicy>>,
    /// `auth-tls-*` policies by host (translate/client_cert.rs).
    pub client_auth: &'a crate::snapshot::client_cert::ClientAuthTable,
    /// Set when this Ingress's `auth-tls-*` cannot be honoured: its locations answer 503.
    pub client_cert_denied: Option<Arc<str>>,
    /// `load-balance`, `upstream-hash-by`, `affinity` (translate/canary.rs).
    pub balance: crate::snapshot::backend::Balance,
    /// Headers translated from snippet annotations (translate/snippets.rs): `server-snippet`
    /// by host, this Ingress's `configuration-snippet`.
    pub server_snippets: &'a std::collections::HashMap<String, Arc<super::snippets::Translated>>,
    pub location_snippet: Option<&'a super::snippets::Translated>,
    /// Proxy settings and headers (translate/proxy_settings.rs).
    pub proxy: &'a super::proxy_settings::IngressProxy,
    /// Basic and external authentication (translate/auth.rs).
    pub auth: &'a super::auth::IngressAuth,
}

/// The policy of one location (`host` is `None` for rules without host).
pub fn route_policy(ingress: &IngressPolicy<'_>, host: Option<&str>, path: &str) -> RoutePolicy {
    RoutePolicy {
        https_redirect: https_redirect(ingress, host, path),
        upstream: ingress.upstream.clone(),
        denied: (ingress.traffic.denied.clone())
            .or_else(|| ingress.proxy.denied.clone())
            .or_else(|| ingress.auth.denied.clone())
            .or_else(|| ingress.client_cert_denied.clone()),
        // `no-auth-locations` exempts path prefixes from every kind of authentication.
        auth: ingress.auth.policy.clone().filter(|_| {
            !ingress
                .settings
                .no_auth_locations
                .iter()
                .any(|l| path.starts_with(l.as_str()))
        }),
        access: ingress.traffic.access.clone(),
        limits: ingress.traffic.limits.clone(),
        no_access_log: ingress.annotations.enable_access_log == Some(false),
        rewrite: ingress.annotations.rewrite.route_policy(path),
        headers: super::snippets::merge(
            ingress.proxy.headers.clone(),
            super::snippets::combine(
                ingress
                    .server_snippets
                    .get(host.unwrap_or(""))
                    .map(|t| &**t),
                ingress.location_snippet,
            )
            .as_ref(),
        ),
        proxy: Some(ingress.proxy.proxy.clone()),
        cors: ingress.cors.clone(),
        errors: ingress.errors.clone(),
        client_cert: host.and_then(|h| ingress.client_auth.get(h)).cloned(),
        balance: Some(ingress.balance.clone()),
        canary: None,
        max_body_size: Some(
            ingress
                .annotations
                .proxy_body_size
                .unwrap_or(ingress.settings.proxy_body_size),
        )
        .filter(|&limit| limit > 0),
        // HTTP/1.0 to the upstream cannot carry a chunked body: nginx buffers it then.
        request_buffering: ingress
            .annotations
            .proxy_request_buffering
            .unwrap_or(ingress.settings.proxy_request_buffering)
            || ingress.proxy.proxy.http10,
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
