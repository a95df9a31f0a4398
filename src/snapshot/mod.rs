//! The immutable model the proxy serves from: virtual hosts, routes, backends and settings of
//! one generation. Built by `translate`, swapped in whole by `publish`; a request loads it
//! once and sees one generation from start to end. Knows nothing of Kubernetes.

pub mod access;
pub mod backend;
pub mod client_cert;
pub mod cors;
pub mod errors;
pub mod proxy_policy;
pub mod route;
pub mod tls;

use std::sync::Arc;

pub use backend::{Backend, BackendKind};
pub use route::{RouteMatch, Router, VHost};

use crate::settings::Settings;

/// Index of a [`Route`] in [`Snapshot::routes`].
pub type RouteId = u32;
/// Index of a [`Backend`] in [`Snapshot::backends`].
pub type BackendId = u32;

/// What a matched route does with the request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Proxy to this backend.
    Backend(BackendId),
    /// The built-in default backend: 404 with nginx's page.
    NotFound,
}

/// Metric and log labels of a route, rendered once per snapshot rather than per request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RouteLabels {
    pub namespace: Arc<str>,
    pub ingress: Arc<str>,
    pub service: Arc<str>,
    pub service_port: Arc<str>,
    /// The Ingress path (never the request URI, so cardinality stays bounded).
    pub path: Arc<str>,
    /// The configured host of the virtual host (`*.example.com` for wildcards, empty for
    /// rules without host and for the default backend).
    pub host: Arc<str>,
}

/// Redirect plain HTTP to HTTPS (ssl-redirect on a host with TLS, or force-ssl-redirect).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpsRedirect {
    /// `http-redirect-code` (308).
    pub code: u16,
    /// Keep a trailing `/` (`preserve-trailing-slash`).
    pub preserve_trailing_slash: bool,
    /// Put this port in the Location (`use-port-in-redirects`).
    pub port: Option<u16>,
}

/// What a location does to a request besides routing it: everything annotations and the
/// ConfigMap decide per location, resolved at translate time. Built in one place,
/// `translate::policy::route_policy`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutePolicy {
    /// Set when plain HTTP requests to this location are redirected to HTTPS.
    pub https_redirect: Option<HttpsRedirect>,
    /// `proxy-body-size`: largest request body in bytes (413 over it); `None` = unlimited.
    pub max_body_size: Option<u64>,
    /// `proxy-request-buffering`: read the whole request body before proxying.
    pub request_buffering: bool,
    /// `client-body-buffer-size`: bytes of a buffered body kept in memory.
    pub client_body_buffer_size: u64,
    /// How to speak to the upstream (`backend-protocol`, `proxy-ssl-*`).
    pub upstream: UpstreamProtocol,
    /// Set when an invalid security annotation (a bad CIDR) denies every request with 503,
    /// as ingress-nginx does; the text names the annotation.
    pub denied: Option<Arc<str>>,
    /// Address and block lists (403); `None` when no list applies.
    pub access: Option<Arc<access::AccessPolicy>>,
    /// Rate and connection limits of the Ingress; `None` when it sets none.
    pub limits: Option<Arc<access::LimitPolicy>>,
    /// `enable-access-log: "false"`: no access log line for this location.
    pub no_access_log: bool,
    /// Basic and external authentication (`auth-*`, `global-auth-*`); `None` when none applies.
    pub auth: Option<Arc<crate::auth::AuthPolicy>>,
    /// Rewrites and redirects of the location (`rewrite-target`, `permanent-redirect`,
    /// `temporal-redirect`, `x-forwarded-prefix`, `upstream-vhost`); `None` when none applies.
    pub rewrite: Option<Arc<route::RewritePolicy>>,
    /// Headers set on the request to the upstream and on the response, and response headers
    /// hidden; `None` when nothing applies. Filled by `translate::proxy_settings` (and snippets).
    pub headers: Option<Arc<HeaderPolicy>>,
    /// Timeouts, retries, HTTP version, buffering, redirect and cookie rewriting towards the
    /// upstream (`proxy-*` annotations); `None` means the ConfigMap's values.
    pub proxy: Option<Arc<proxy_policy::ProxyPolicy>>,
    /// `enable-cors` and `cors-*`; `None` when CORS is off.
    pub cors: Option<Arc<cors::CorsPolicy>>,
    /// `load-balance`, `upstream-hash-by`, `affinity`; `None`: the ConfigMap's
    /// `load-balance`.
    pub balance: Option<backend::Balance>,
    /// The canary Ingress attached to this location; `None` without one.
    pub canary: Option<Arc<backend::Canary>>,
    /// `custom-http-errors` and its error backend; `None` when no status is intercepted.
    pub errors: Option<Arc<errors::ErrorPolicy>>,
    /// Client-certificate authentication of the server (`auth-tls-*`, from the first
    /// Ingress of the host that sets it); `None` when the server asks for none.
    pub client_cert: Option<Arc<client_cert::ClientCertPolicy>>,
}

/// Request and response header edits of a location (`proxy-set-headers`, `custom-headers`,
/// `add-headers`, `hide-headers`, translated snippets).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderPolicy {
    /// Set (replace) on the request to the upstream, in order. An empty value removes the
    /// header (nginx never sends a `proxy_set_header` whose value is empty).
    pub request_set: Vec<(http::HeaderName, http::HeaderValue)>,
    /// As `request_set`, for values with nginx variables, rendered per request.
    pub request_templates: Vec<(http::HeaderName, proxy_policy::Template)>,
    /// Set (replace) on the response to the client, in order.
    pub response_set: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Removed from the upstream's response.
    pub response_hide: Vec<http::HeaderName>,
}

/// The protocol to the upstream: HTTP/1.1 or HTTP/2 (gRPC), over TCP or TLS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamProtocol {
    /// HTTP/2 to the upstream (`backend-protocol: GRPC` or `GRPCS`).
    pub http2: bool,
    /// TLS to the upstream (`HTTPS`, `GRPCS`).
    pub tls: Option<Arc<UpstreamTls>>,
    /// `AUTO_HTTP`: TLS to the upstream when the client came over HTTPS (with `tls_auto`).
    pub tls_auto: Option<Arc<UpstreamTls>>,
}

/// TLS settings towards an upstream.
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// Name the certificate is verified against (and sent as SNI when `send_sni`):
    /// `proxy-ssl-name`, else the Service's cluster name `<service>.<namespace>.svc`.
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// `proxy-ssl-server-name`: send SNI (off by default, as ingress-nginx).
    pub send_sni: bool,
    /// Stable hash of these settings: pooled connections are shared by equal settings,
    /// across configuration generations.
    pub id: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("send_sni", &self.send_sni)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// One location: where matching requests go, and how they are labelled.
#[derive(Debug, Clone)]
pub struct Route {
    pub target: Target,
    pub labels: RouteLabels,
    pub policy: Arc<RoutePolicy>,
}

/// One generation of configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every publish; 0 for a snapshot never published.
    pub generation: u64,
    pub router: Router,
    pub routes: Vec<Route>,
    pub backends: Vec<Arc<Backend>>,
    pub settings: Arc<Settings>,
    /// Hash of the inputs that produced this snapshot (`config_hash` metric).
    pub config_hash: u64,
    /// Certificates by host.
    pub tls: tls::TlsTable,
    /// Request metric series per route, resolved by the publisher (empty before).
    pub metric_series: crate::metrics::SeriesTable,
}

impl Snapshot {
    /// A snapshot that answers every request with the default backend's 404.
    pub fn empty() -> Snapshot {
        Snapshot {
            generation: 0,
            router: Router::new(VHost::with_fallback(0)),
            routes: vec![Route {
                target: Target::NotFound,
                labels: RouteLabels::default(),
                policy: Arc::default(),
            }],
            backends: Vec::new(),
            settings: Arc::new(Settings::default()),
            config_hash: 0,
            tls: tls::TlsTable::default(),
            metric_series: Default::default(),
        }
    }

    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id as usize]
    }

    pub fn backend(&self, id: BackendId) -> &Arc<Backend> {
        &self.backends[id as usize]
    }

    /// A deterministic text dump of the routing table, for golden tests and debugging: the
    /// servers (exact hosts sorted, then wildcards sorted, then the catch-all `_`), each with
    /// its `=` locations (sorted), its prefix locations in match order (longest first) and its
    /// fallback (the implicit `/`), then every backend with its endpoints.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let mut hosts: Vec<(String, &VHost)> = self
            .router
            .hosts()
            .map(|(h, v)| (h.to_string(), v))
            .collect();
        hosts.sort_by(|a, b| a.0.cmp(&b.0));
        let mut wildcards: Vec<(String, &VHost)> = self
            .router
            .wildcard_hosts()
            .map(|(h, v)| (format!("*.{h}"), v))
            .collect();
        wildcards.sort_by(|a, b| a.0.cmp(&b.0));
        hosts.extend(wildcards);
        hosts.push(("_".to_string(), &self.router.catch_all));
        for (host, vhost) in hosts {
            let _ = writeln!(out, "server {host}");
            let mut exact: Vec<(&str, RouteId)> =
                vhost.exact.iter().map(|(p, r)| (&**p, *r)).collect();
            exact.sort();
            for (path, route) in exact {
                let _ = writeln!(out, "  = {path} -> {}", self.describe_route(route));
            }
            for (path, route) in vhost.prefixes() {
                let _ = writeln!(out, "  {path} -> {}", self.describe_route(route));
            }
            for (path, route) in vhost.regexes() {
                let _ = writeln!(out, "  ~* ^{path} -> {}", self.describe_route(route));
            }
            if let Some((to, code)) = &vhost.redirect_to_host {
                let _ = writeln!(out, "  redirect {code} to host {to}");
            }
            if let Some(root) = &vhost.app_root {
                let _ = writeln!(out, "  app-root {root}");
            }
            let _ = writeln!(out, "  fallback -> {}", self.describe_route(vhost.fallback));
        }
        let mut aliases: Vec<(&str, &str)> = self.router.aliases().collect();
        aliases.sort();
        for (alias, host) in aliases {
            let _ = writeln!(out, "alias {alias} -> server {host}");
        }
        let mut certs: Vec<String> = self
            .tls
            .entries()
            .map(|(host, e)| format!("tls {host} -> {}/{}", e.info.namespace, e.info.secret_name))
            .collect();
        certs.sort();
        for line in certs {
            let _ = writeln!(out, "{line}");
        }
        for backend in &self.backends {
            let kind = match &backend.kind {
                BackendKind::Endpoints(endpoints) if endpoints.is_empty() => {
                    "no ready endpoints".to_string()
                }
                BackendKind::Endpoints(endpoints) => endpoints
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                BackendKind::ExternalName { host, port } => format!("ExternalName {host}:{port}"),
                BackendKind::Missing => "missing".to_string(),
            };
            let _ = writeln!(out, "backend {}: {kind}", backend.name);
        }
        out
    }

    fn describe_route(&self, id: RouteId) -> String {
        let route = self.route(id);
        let target = match &route.target {
            Target::Backend(b) => self.backend(*b).name.clone(),
            Target::NotFound => "default-404".to_string(),
        };
        let l = &route.labels;
        let redirect = match &route.policy.https_redirect {
            Some(r) => format!(" https-redirect {}", r.code),
            None => String::new(),
        };
        if l.ingress.is_empty() {
            return format!("{target}{redirect}");
        }
        format!(
            "{target} (ingress {}/{} service {}:{} path {} host {:?}){redirect}",
            l.namespace, l.ingress, l.service, l.service_port, l.path, &*l.host
        )
    }
}
