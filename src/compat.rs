//! The compatibility table with ingress-nginx: every annotation of the reference's §3 and every
//! ConfigMap key of its §2, with its tier and whether Sluice supports it, supports it with a
//! named difference, or does not (with the reason and the nearest alternative).
//!
//! Whether an annotation is supported is never written here: it is computed from
//! [`IMPLEMENTED`](crate::translate::annotations::IMPLEMENTED) (each translate module's own list),
//! and for ConfigMap keys from what [`Settings::from_configmap`] accepts. This table only
//! carries the notes. `translate`, `sluice audit` and the README table all read it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::diagnostics::ObjectRef;
use crate::settings::Settings;

/// How much an annotation matters for a migration (the reference's tiers). For ConfigMap keys
/// the tier follows the reference's sections: §2a (keys a typical cluster sets) is P0, §2b
/// (next most used) P1, keys only in ingress-nginx's code P2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Tier {
    P0,
    P1,
    P2,
    /// Raw nginx or Lua injection.
    X,
    /// Gone from current ingress-nginx, or never a real key.
    Removed,
    /// Sluice's own key.
    Sluice,
}

/// ingress-nginx's annotation risk (`annotations-risk.md`); `annotations-risk-level` rejects
/// annotations above the level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Risk {
    Low,
    Medium,
    High,
    Critical,
}

impl std::str::FromStr for Risk {
    type Err = String;
    fn from_str(s: &str) -> Result<Risk, String> {
        match s.trim() {
            "Low" => Ok(Risk::Low),
            "Medium" => Ok(Risk::Medium),
            "High" => Ok(Risk::High),
            "Critical" => Ok(Risk::Critical),
            other => Err(format!(
                "{other:?} is not a risk level (Low, Medium, High, Critical)"
            )),
        }
    }
}

/// One row of the table: the notes only.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub name: &'static str,
    pub tier: Tier,
    /// Annotations: ingress-nginx's risk. Keys: `Low`.
    pub risk: Risk,
    /// What behaves differently when supported.
    pub difference: Option<&'static str>,
    /// Why not supported (default: not implemented in this version).
    pub reason: Option<&'static str>,
    /// The nearest alternative when not supported.
    pub alternative: Option<&'static str>,
    /// Never to be implemented (raw nginx, removed): a test checks it is not IMPLEMENTED.
    pub never: bool,
}

const fn e(name: &'static str, tier: Tier, risk: Risk) -> Entry {
    Entry {
        name,
        tier,
        risk,
        difference: None,
        reason: None,
        alternative: None,
        never: false,
    }
}

impl Entry {
    const fn differs(mut self, note: &'static str) -> Entry {
        self.difference = Some(note);
        self
    }
    const fn instead(mut self, alternative: &'static str) -> Entry {
        self.alternative = Some(alternative);
        self
    }
    const fn because(mut self, reason: &'static str) -> Entry {
        self.reason = Some(reason);
        self
    }
    const fn never(mut self, reason: &'static str, alternative: &'static str) -> Entry {
        self.reason = Some(reason);
        self.alternative = Some(alternative);
        self.never = true;
        self
    }
}

use Risk::{Critical, High, Low, Medium};
use Tier::{Removed, Sluice, P0, P1, P2, X};

const RAW_NGINX: &str = "raw nginx configuration: Sluice has no nginx to give it to";

/// Every `nginx.ingress.kubernetes.io/*` annotation of the reference (§3).
pub const ANNOTATIONS: &[Entry] = &[
    // §3a routing, rewrite, redirects.
    e("rewrite-target", P0, Medium).differs("paths are Rust regex syntax, not PCRE (no look-around or back-references)"),
    e("use-regex", P0, Low).differs("paths are Rust regex syntax, not PCRE (no look-around or back-references)"),
    e("app-root", P1, Medium),
    e("ssl-redirect", P0, Low),
    e("force-ssl-redirect", P0, Medium),
    e("preserve-trailing-slash", P2, Medium),
    e("use-port-in-redirects", P2, Low),
    e("permanent-redirect", P1, Medium),
    e("permanent-redirect-code", P1, Low),
    e("temporal-redirect", P1, Medium),
    e("temporal-redirect-code", P1, Low),
    e("from-to-www-redirect", P1, Low).differs("the Location keeps the port the client sent in Host (ingress-nginx appends the HTTPS port whenever it is not 443)"),
    e("relative-redirects", P2, Low),
    e("server-alias", P1, High).differs("exact names only: wildcard and regex aliases are reported and ignored"),
    e("x-forwarded-prefix", P1, Medium),
    // §3b proxy settings.
    e("proxy-body-size", P0, Medium),
    e("proxy-connect-timeout", P0, Low),
    e("proxy-send-timeout", P0, Low),
    e("proxy-read-timeout", P0, Low),
    e("proxy-next-upstream", P1, Medium),
    e("proxy-next-upstream-tries", P1, Low),
    e("proxy-next-upstream-timeout", P1, Low),
    e("proxy-request-buffering", P1, Low),
    e("proxy-buffering", P1, Low).differs("`on` reads up to 1 MiB of the response ahead in memory (nginx spills to a temp file of up to 1 GiB); X-Accel-Buffering from the upstream is honoured"),
    e("proxy-buffer-size", P1, Low).instead("none needed: Sluice reads upstream response heads of up to 400 KiB (and up to 8 192 header fields)"),
    e("proxy-buffers-number", P2, Low).instead("none needed: Sluice streams responses"),
    e("proxy-busy-buffers-size", P2, Low).instead("none needed: Sluice streams responses"),
    e("proxy-max-temp-file-size", P2, Low).instead("none needed: Sluice streams responses"),
    e("proxy-http-version", P2, Low),
    e("proxy-cookie-domain", P2, Medium).differs("no regex form"),
    e("proxy-cookie-path", P2, Medium).differs("no regex form"),
    e("proxy-redirect-from", P2, Medium).differs("prefix rewrite of Location and Refresh; the regex form (`~`) is refused with a warning and `default` rewrites nothing"),
    e("proxy-redirect-to", P2, Medium).differs("prefix rewrite of Location and Refresh; the regex form (`~`) is refused with a warning"),
    e("client-body-buffer-size", P2, Low),
    e("connection-proxy-header", P2, Low),
    e("upstream-vhost", P1, Low),
    e("service-upstream", P1, Low),
    // §3c backend protocol, load balancing.
    e("backend-protocol", P0, Low).differs("FCGI is not supported (proxied as HTTP, with a warning)"),
    e("load-balance", P1, Low).differs("applies per location (each Ingress's own value); ingress-nginx takes the oldest Ingress's value when two share a Service; EWMA scores time to response headers"),
    e("upstream-hash-by", P1, High).differs("a different hash function than nginx's (consistent, minimal disruption), so a key may land on another endpoint than under ingress-nginx; applies per location, not per backend"),
    e("upstream-hash-by-subset", P2, Low),
    e("upstream-hash-by-subset-size", P2, Low),
    // §3d access control, rate limits.
    e("whitelist-source-range", P0, Medium),
    e("allowlist-source-range", P0, Medium),
    e("denylist-source-range", P1, Medium),
    e("limit-rps", P0, Low),
    e("limit-rpm", P1, Low),
    e("limit-connections", P0, Low),
    e("limit-burst-multiplier", P1, Low),
    e("limit-whitelist", P1, Low),
    e("limit-allowlist", P1, Low),
    e("limit-rate", P2, Low),
    e("limit-rate-after", P2, Low),
    e("satisfy", P2, Low),
    // §3e CORS.
    e("enable-cors", P0, Low).differs("the preflight 204 carries no Content-Length: 0 (RFC 9110 forbids it on 204)"),
    e("cors-allow-origin", P0, Medium).differs("the whole Origin is matched (ingress-nginx anchors only the end); if every listed origin is invalid, `*` is used with a warning"),
    e("cors-allow-methods", P0, Medium),
    e("cors-allow-headers", P0, Medium),
    e("cors-expose-headers", P1, Medium),
    e("cors-allow-credentials", P0, Low),
    e("cors-max-age", P1, Low),
    // §3f authentication.
    e("auth-type", P0, Low).differs("digest authentication is not supported (basic only)"),
    e("auth-secret", P0, Medium),
    e("auth-secret-type", P0, Low),
    e("auth-realm", P0, Medium),
    e("auth-url", P0, High).differs("the subrequest uses the ConfigMap's proxy timeouts, not the per-Ingress ones, and a new connection per subrequest"),
    e("auth-signin", P0, High),
    e("auth-signin-redirect-param", P1, Medium),
    e("auth-response-headers", P0, Medium),
    e("auth-method", P1, Low),
    e("auth-request-redirect", P1, Medium),
    e("auth-proxy-set-headers", P1, Medium),
    e("auth-cache-key", P2, Medium),
    e("auth-cache-duration", P2, Medium).differs("an in-memory cache of at most 10 000 answers; the auth server's Cache-Control/Expires are ignored"),
    e("auth-always-set-cookie", P2, Low),
    e("auth-keepalive", P2, Low),
    e("auth-keepalive-requests", P2, Low),
    e("auth-keepalive-timeout", P2, Low),
    e("auth-keepalive-share-vars", P2, Low),
    e("enable-global-auth", P1, Low),
    e("auth-snippet", X, Critical).never(RAW_NGINX, "auth-proxy-set-headers for headers to the auth service"),
    e("auth-tls-secret", P1, Medium),
    e("auth-tls-verify-client", P1, Medium).differs("the FAILED: reason text comes from rustls, not OpenSSL; plain HTTP to an `on` host with ssl-redirect off, or a TLS connection whose SNI named another host, gets 400/421 where nginx would not check"),
    e("auth-tls-verify-depth", P1, Low),
    e("auth-tls-error-page", P2, High),
    e("auth-tls-pass-certificate-to-upstream", P1, Low),
    e("auth-tls-match-cn", P2, High),
    // §3g session affinity.
    e("affinity", P0, Low).differs("balanced mode hashes differently from ingress-nginx, so existing balanced-mode cookies may move once; persistent-mode cookies carry over"),
    e("affinity-mode", P1, Medium),
    e("affinity-canary-behavior", P2, Low),
    e("session-cookie-name", P0, Medium),
    e("session-cookie-path", P1, Medium),
    e("session-cookie-expires", P0, Medium),
    e("session-cookie-max-age", P0, Medium),
    e("session-cookie-domain", P1, Medium),
    e("session-cookie-secure", P1, Low),
    e("session-cookie-samesite", P1, Low),
    e("session-cookie-conditional-samesite-none", P1, Low),
    e("session-cookie-change-on-failure", P2, Low),
    e("session-cookie-partitioned", P2, Low),
    // §3h canary.
    e("canary", P0, Low),
    e("canary-by-header", P0, Medium),
    e("canary-by-header-value", P0, Medium),
    e("canary-by-header-pattern", P1, Medium).differs("the pattern is Rust regex syntax, not PCRE"),
    e("canary-by-cookie", P1, Medium),
    e("canary-weight", P0, Low),
    e("canary-weight-total", P1, Low),
    // §3i errors, default backend, headers, logging, TLS.
    e("custom-http-errors", P1, Low).differs("the error backend gets the client's method without a body; one invalid code rejects the whole value (ingress-nginx skips that entry)"),
    e("default-backend", P1, Low),
    e("disable-proxy-intercept-errors", P2, Low),
    e("custom-headers", P1, Medium),
    e("enable-access-log", P1, Low),
    e("enable-rewrite-log", P2, Low).instead("none needed: it only adds nginx debug logging"),
    e("enable-opentelemetry", P2, Low),
    e("opentelemetry-trust-incoming-span", P2, Low),
    e("opentelemetry-operation-name", P2, Medium),
    e("ssl-passthrough", P1, Low),
    e("ssl-ciphers", P2, Low).instead("the ConfigMap key ssl-ciphers (for every host)"),
    e("ssl-prefer-server-ciphers", P2, Low).instead("none needed: the server's order is always used for TLS 1.2"),
    e("proxy-ssl-secret", P1, Medium),
    e("proxy-ssl-verify", P1, Low),
    e("proxy-ssl-verify-depth", P1, Low),
    e("proxy-ssl-name", P1, High),
    e("proxy-ssl-server-name", P1, Low),
    e("proxy-ssl-protocols", P2, Low).differs("TLSv1.2 and TLSv1.3 only"),
    e("proxy-ssl-ciphers", P2, Medium),
    e("http2-push-preload", P2, Low).never("obsolete: nginx 1.25 removed HTTP/2 server push, and browsers ignore it", "Link: rel=preload headers from the application"),
    e("mirror-target", P2, High),
    e("mirror-host", P2, High),
    e("mirror-request-body", P2, Low),
    e("fastcgi-index", P2, Medium).instead("an HTTP front (php-fpm behind a small HTTP server)"),
    e("fastcgi-params-configmap", P2, Medium).instead("an HTTP front (php-fpm behind a small HTTP server)"),
    e("enable-modsecurity", P2, Low).never("ModSecurity is an nginx module; Sluice has no WAF", "a WAF in front of Sluice or in the application"),
    e("enable-owasp-core-rules", P2, Low).never("ModSecurity is an nginx module; Sluice has no WAF", "a WAF in front of Sluice or in the application"),
    e("modsecurity-transaction-id", P2, High).never("ModSecurity is an nginx module; Sluice has no WAF", "a WAF in front of Sluice or in the application"),
    // §3j raw nginx.
    e("configuration-snippet", X, Critical)
        .differs("never executed: only header directives are translated: more_set_headers, add_header, more_clear_headers and proxy_hide_header with literal values; proxy_set_header, more_set_input_headers and more_clear_input_headers also with nginx variables (add_header replaces an upstream header of the same name and applies to every status); any other directive is reported and ignored")
        .instead("custom-headers (response headers) or the ConfigMap proxy-set-headers (request headers)"),
    e("server-snippet", X, Critical)
        .differs("never executed: its header directives are translated as for configuration-snippet and apply to every location of the host, from the oldest Ingress of the host that sets it (as ingress-nginx); proxy_set_header had no effect there in ingress-nginx and is reported; any other directive is reported and ignored")
        .instead("custom-headers (response headers)"),
    e("stream-snippet", X, Critical).never(RAW_NGINX, "a Service of type LoadBalancer for TCP/UDP traffic"),
    e("modsecurity-snippet", X, Critical).never(RAW_NGINX, "a WAF in front of Sluice or in the application"),
    // Removed from ingress-nginx.
    e("secure-backends", Removed, Low).never("removed from ingress-nginx in 0.21", "backend-protocol: HTTPS"),
    e("global-rate-limit", Removed, Low).never("removed from ingress-nginx in v1.12 (memcached limiter)", "limit-rps / limit-rpm (per replica)"),
    e("global-rate-limit-window", Removed, Low).never("removed from ingress-nginx in v1.12", "limit-rps / limit-rpm (per replica)"),
    e("global-rate-limit-key", Removed, Low).never("removed from ingress-nginx in v1.12", "limit-rps / limit-rpm (per replica)"),
    e("global-rate-limit-ignored-cidrs", Removed, Low).never("removed from ingress-nginx in v1.12", "limit-whitelist"),
    e("influxdb-measurement", Removed, Low).never("removed from ingress-nginx (Lua InfluxDB module)", "the Prometheus metrics on port 10254"),
    e("influxdb-port", Removed, Low).never("removed from ingress-nginx (Lua InfluxDB module)", "the Prometheus metrics on port 10254"),
    e("influxdb-host", Removed, Low).never("removed from ingress-nginx (Lua InfluxDB module)", "the Prometheus metrics on port 10254"),
    e("influxdb-server-name", Removed, Low).never("removed from ingress-nginx (Lua InfluxDB module)", "the Prometheus metrics on port 10254"),
    e("enable-influxdb", Removed, Low).never("removed from ingress-nginx (Lua InfluxDB module)", "the Prometheus metrics on port 10254"),
];

const NOT_A_KEY: &str =
    "not a key in ingress-nginx (ignored there, so the line never took effect); Sluice applies it";
const NO_NGINX: &str = "nginx internals with no counterpart in Sluice";

/// Every ConfigMap key of the reference (§2), plus the seed cluster's spellings and Sluice's
/// own keys.
pub const CONFIGMAP_KEYS: &[Entry] = &[
    // §2a.
    e("worker-processes", P0, Low).differs("runtime worker threads in one process"),
    e("max-worker-connections", P0, Low).differs("0 means 16384 (nginx derives it from the open-files limit)"),
    e("worker-connections", Removed, Low).differs(NOT_A_KEY).instead("max-worker-connections"),
    e("max-worker-open-files", P0, Low).instead("the container's RLIMIT_NOFILE"),
    e("keep-alive", P0, Low),
    e("keepalive-timeout", Removed, Low).differs(NOT_A_KEY).instead("keep-alive"),
    e("keep-alive-requests", P0, Low),
    e("client-body-buffer-size", P0, Low),
    e("proxy-body-size", P0, Low),
    e("client-max-body-size", Removed, Low).differs(NOT_A_KEY).instead("proxy-body-size"),
    e("use-gzip", P0, Low),
    e("enable-gzip", Removed, Low).differs(NOT_A_KEY).instead("use-gzip"),
    e("gzip-level", P0, Low),
    e("gzip-types", P0, Low),
    e("gzip-min-length", P0, Low),
    e("gzip-disable", P0, Low),
    e("ssl-redirect", P0, Low),
    e("force-ssl-redirect", P0, Low),
    e("hsts", P0, Low),
    e("hsts-max-age", P0, Low),
    e("hsts-include-subdomains", P0, Low),
    e("hsts-preload", P0, Low),
    e("proxy-connect-timeout", P0, Low),
    e("proxy-read-timeout", P0, Low),
    e("proxy-send-timeout", P0, Low),
    e("upstream-keepalive-connections", P0, Low).differs("idle connections per endpoint, not per nginx worker"),
    e("upstream-keepalive-time", P0, Low),
    e("upstream-keepalive-timeout", P0, Low),
    e("upstream-keepalive-requests", P0, Low),
    e("use-forwarded-headers", P0, Low),
    e("compute-full-forwarded-for", P0, Low),
    e("forwarded-for-header", P0, Low),
    e("enable-real-ip", P0, Low),
    e("proxy-real-ip-cidr", P0, Low),
    e("limit-req-status-code", P0, Low),
    e("limit-conn-status-code", P0, Low),
    e("ssl-protocols", P0, Low).differs("TLSv1.2 and TLSv1.3 only; older protocols are left out"),
    e("ssl-ciphers", P0, Low).differs("DHE and CBC suites have no rustls implementation and are left out"),
    e("use-http2", P0, Low),
    e("http2", Removed, Low).because("not a key in ingress-nginx").instead("use-http2"),
    e("http2-max-concurrent-streams", P0, Low),
    e("http2-max-field-size", Removed, Low).never("deprecated in ingress-nginx", "large-client-header-buffers"),
    e("http2-max-header-size", Removed, Low).never("deprecated in ingress-nginx", "large-client-header-buffers"),
    e("http2-max-requests", Removed, Low).never("deprecated in ingress-nginx", "keep-alive-requests"),
    e("log-format-upstream", P0, Low).differs("only ingress-nginx's default format; a custom one is reported and the default used"),
    e("log-format-escape-json", P0, Low),
    e("log-format-escape-none", P0, Low),
    e("server-tokens", P0, Low).differs("true sends `Server: sluice`"),
    e("custom-http-errors", P0, Low),
    e("block-cidrs", P0, Low),
    e("block-user-agents", P0, Low),
    e("block-referers", P0, Low),
    e("whitelist-source-range", P0, Low),
    e("allowlist-source-range", P0, Low),
    e("denylist-source-range", P0, Low),
    e("global-rate-limit-memcached-host", Removed, Low).never("removed from ingress-nginx in v1.12", "limit-rps / limit-rpm (per replica)"),
    e("global-rate-limit-memcached-port", Removed, Low).never("removed from ingress-nginx in v1.12", "limit-rps / limit-rpm (per replica)"),
    e("global-rate-limit-memcached-connect-timeout", Removed, Low).never("removed from ingress-nginx in v1.12", "limit-rps / limit-rpm (per replica)"),
    e("global-rate-limit-memcached-max-idle-timeout", Removed, Low).never("removed from ingress-nginx in v1.12", "limit-rps / limit-rpm (per replica)"),
    e("global-rate-limit-memcached-pool-size", Removed, Low).never("removed from ingress-nginx in v1.12", "limit-rps / limit-rpm (per replica)"),
    e("global-rate-limit-status-code", Removed, Low).never("removed from ingress-nginx in v1.12", "limit-req-status-code"),
    // §2b.
    e("allow-snippet-annotations", P1, Low).differs("snippets are never executed; when allowed (and annotations-risk-level is Critical) their header directives are translated"),
    e("annotations-risk-level", P1, Low).differs("an Ingress with a snippet (Critical) above the level is served without the snippet; ingress-nginx rejects the whole Ingress (it does so for other annotations above the level, and so does Sluice)"),
    e("allow-cross-namespace-resources", P1, Low),
    e("annotation-value-word-blocklist", P1, Low),
    e("strict-validate-path-type", P1, Low),
    e("use-proxy-protocol", P1, Low),
    e("proxy-protocol-header-timeout", P1, Low),
    e("proxy-buffering", P1, Low),
    e("proxy-request-buffering", P1, Low),
    e("proxy-buffer-size", P1, Low).instead("none needed: upstream response heads of up to 400 KiB (and up to 8 192 header fields) are read"),
    e("proxy-buffers-number", P1, Low).instead("none needed: Sluice streams responses"),
    e("proxy-busy-buffers-size", P1, Low).instead("none needed: Sluice streams responses"),
    e("proxy-max-temp-file-size", P1, Low).instead("none needed: Sluice streams responses"),
    e("proxy-next-upstream", P1, Low),
    e("proxy-next-upstream-tries", P1, Low),
    e("proxy-next-upstream-timeout", P1, Low),
    e("retry-non-idempotent", P1, Low),
    e("proxy-http-version", P1, Low),
    e("proxy-redirect-from", P1, Low),
    e("proxy-redirect-to", P1, Low),
    e("proxy-cookie-domain", P1, Low),
    e("proxy-cookie-path", P1, Low),
    e("large-client-header-buffers", P1, Low),
    e("client-header-buffer-size", P1, Low).instead("large-client-header-buffers"),
    e("client-header-timeout", P1, Low),
    e("client-body-timeout", P1, Low),
    e("worker-shutdown-timeout", P1, Low).instead("--shutdown-drain-timeout (a reload never drops connections in Sluice)"),
    e("enable-serial-reloads", P1, Low).never(NO_NGINX, "none needed: a configuration change swaps one snapshot"),
    e("load-balance", P1, Low),
    e("service-upstream", P1, Low),
    e("proxy-set-headers", P1, Low),
    e("add-headers", P1, Low),
    e("hide-headers", P1, Low),
    e("allow-backend-server-header", P1, Low),
    e("global-allowed-response-headers", P1, Low),
    e("enable-underscores-in-headers", P1, Low),
    e("ignore-invalid-headers", P1, Low),
    e("generate-request-id", P1, Low),
    e("proxy-add-original-uri-header", P1, Low),
    e("http-redirect-code", P1, Low),
    e("no-tls-redirect-locations", P1, Low),
    e("global-auth-url", P1, Low),
    e("global-auth-method", P1, Low),
    e("global-auth-signin", P1, Low),
    e("global-auth-signin-redirect-param", P1, Low),
    e("global-auth-response-headers", P1, Low),
    e("global-auth-request-redirect", P1, Low),
    e("global-auth-cache-key", P1, Low),
    e("global-auth-cache-duration", P1, Low),
    e("global-auth-always-set-cookie", P1, Low),
    e("no-auth-locations", P1, Low),
    e("access-log-path", P1, Low).instead("none needed: the access log goes to stdout"),
    e("error-log-path", P1, Low).instead("none needed: Sluice logs to stderr"),
    e("error-log-level", P1, Low).instead("the RUST_LOG environment variable"),
    e("disable-access-log", P1, Low),
    e("skip-access-log-urls", P1, Low),
    e("enable-access-log-for-default-backend", P1, Low),
    e("ssl-session-cache", P1, Low),
    e("ssl-session-cache-size", P1, Low),
    e("ssl-session-timeout", P1, Low),
    e("ssl-session-tickets", P1, Low),
    e("ssl-ecdh-curve", P1, Low),
    e("ssl-buffer-size", P1, Low),
    e("ssl-early-data", P1, Low),
    e("ssl-reject-handshake", P1, Low),
    e("enable-ocsp", P1, Low),
    e("enable-brotli", P1, Low),
    e("brotli-level", P1, Low),
    e("brotli-min-length", P1, Low),
    e("brotli-types", P1, Low),
    e("limit-rate", P1, Low),
    e("limit-rate-after", P1, Low),
    e("limit-conn-zone-variable", P1, Low).differs("limits are always keyed on the client address ($binary_remote_addr)"),
    e("reuse-port", P1, Low),
    e("disable-ipv6", P1, Low),
    e("bind-address", P1, Low).instead("--bind-address"),
    e("proxy-stream-timeout", P1, Low).instead("a Service of type LoadBalancer for TCP/UDP traffic"),
    e("proxy-stream-next-upstream", P1, Low).instead("a Service of type LoadBalancer for TCP/UDP traffic"),
    e("proxy-stream-next-upstream-timeout", P1, Low).instead("a Service of type LoadBalancer for TCP/UDP traffic"),
    e("proxy-stream-next-upstream-tries", P1, Low).instead("a Service of type LoadBalancer for TCP/UDP traffic"),
    e("proxy-stream-responses", P1, Low).instead("a Service of type LoadBalancer for TCP/UDP traffic"),
    e("enable-opentelemetry", P1, Low),
    e("otlp-collector-host", P1, Low),
    e("otlp-collector-port", P1, Low),
    e("opentelemetry-trust-incoming-span", P1, Low),
    e("enable-modsecurity", P1, Low).never("ModSecurity is an nginx module; Sluice has no WAF", "a WAF in front of Sluice or in the application"),
    e("enable-owasp-modsecurity-crs", P1, Low).never("ModSecurity is an nginx module; Sluice has no WAF", "a WAF in front of Sluice or in the application"),
    e("use-geoip2", P1, Low),
    e("default-type", P1, Low),
    e("relative-redirects", P1, Low),
    e("grpc-buffer-size-kb", P1, Low).instead("none needed: gRPC messages are streamed"),
    e("debug-connections", P1, Low).instead("RUST_LOG=debug"),
    // Keys only in ingress-nginx's code.
    e("enable-auth-access-log", P2, Low),
    e("disable-http-access-log", P2, Low),
    e("disable-stream-access-log", P2, Low),
    e("forwarded-host-header", P2, Low),
    e("forwarded-for-proxy-protocol-header", P2, Low),
    e("preserve-trailing-slash", P2, Low),
    e("use-port-in-redirects", P2, Low),
    e("upstream-hash-by", P2, Low),
    e("upstream-hash-by-subset", P2, Low),
    e("upstream-hash-by-subset-size", P2, Low),
    e("disable-proxy-intercept-errors", P2, Low),
    e("bind-address-ipv4", P2, Low).instead("--bind-address"),
    e("bind-address-ipv6", P2, Low).instead("--bind-address"),
    e("nginx-status-ipv4-whitelist", P2, Low).never(NO_NGINX, "the /metrics endpoint on port 10254"),
    e("nginx-status-ipv6-whitelist", P2, Low).never(NO_NGINX, "the /metrics endpoint on port 10254"),
    // Raw nginx.
    e("main-snippet", X, Critical).never(RAW_NGINX, "ConfigMap keys Sluice supports"),
    e("http-snippet", X, Critical).never(RAW_NGINX, "ConfigMap keys Sluice supports"),
    e("server-snippet", X, Critical).never(RAW_NGINX, "ConfigMap keys Sluice supports; add-headers for response headers"),
    e("location-snippet", X, Critical).never(RAW_NGINX, "ConfigMap keys Sluice supports; add-headers / proxy-set-headers for headers"),
    e("stream-snippet", X, Critical).never(RAW_NGINX, "a Service of type LoadBalancer for TCP/UDP traffic"),
    e("global-auth-snippet", X, Critical).never(RAW_NGINX, "global-auth-response-headers"),
    e("modsecurity-snippet", X, Critical).never(RAW_NGINX, "a WAF in front of Sluice or in the application"),
    e("lua-shared-dicts", X, Critical).never("Lua internals of ingress-nginx", "none needed"),
    // Removed from ingress-nginx.
    e("plugins", Removed, Low).never("Lua plugins were removed from ingress-nginx in v1.12", "none"),
    e("enable-opentracing", Removed, Low).never("removed from ingress-nginx", "enable-opentelemetry"),
    e("jaeger-collector-host", Removed, Low).never("removed from ingress-nginx (no such field in its code)", "enable-opentelemetry"),
    e("zipkin-collector-host", Removed, Low).never("removed from ingress-nginx", "enable-opentelemetry"),
    // Sluice's own.
    e("enable-zstd", Sluice, Low),
    e("zstd-level", Sluice, Low),
    e("zstd-types", Sluice, Low),
    e("zstd-min-length", Sluice, Low),
];

/// Where a name stands, computed from the code and the notes above.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Support {
    Supported,
    SupportedWithDifference {
        difference: &'static str,
    },
    Unsupported {
        reason: &'static str,
        alternative: &'static str,
    },
    /// Neither ingress-nginx (as the reference knows it) nor Sluice has this name.
    Unknown,
}

impl Support {
    /// Does the setting carry over (possibly with a named difference)?
    pub fn carries_over(&self) -> bool {
        matches!(
            self,
            Support::Supported | Support::SupportedWithDifference { .. }
        )
    }

    pub fn label(&self) -> &'static str {
        match self {
            Support::Supported => "supported",
            Support::SupportedWithDifference { .. } => "supported with a difference",
            Support::Unsupported { .. } => "unsupported",
            Support::Unknown => "unknown",
        }
    }
}

const NOT_YET: &str = "not implemented in this Sluice version";
const NO_ALTERNATIVE: &str = "none";

fn support(entry: &Entry, implemented: bool) -> Support {
    if implemented {
        match entry.difference {
            Some(difference) => Support::SupportedWithDifference { difference },
            None => Support::Supported,
        }
    } else {
        Support::Unsupported {
            reason: entry.reason.unwrap_or(NOT_YET),
            alternative: entry.alternative.unwrap_or(NO_ALTERNATIVE),
        }
    }
}

/// Whether Sluice acts on the annotation (name without prefix).
pub fn annotation_implemented(name: &str) -> bool {
    crate::translate::annotations::is_implemented(name)
}

pub fn annotation_entry(name: &str) -> Option<&'static Entry> {
    ANNOTATIONS.iter().find(|e| e.name == name)
}

pub fn configmap_entry(key: &str) -> Option<&'static Entry> {
    CONFIGMAP_KEYS.iter().find(|e| e.name == key)
}

/// The standing of an annotation (name without the `nginx.ingress.kubernetes.io/` prefix).
pub fn annotation(name: &str) -> Support {
    match annotation_entry(name) {
        Some(entry) => support(entry, annotation_implemented(name)),
        // Implemented but missing from the table: a unit test prevents it.
        None if annotation_implemented(name) => Support::Supported,
        None => Support::Unknown,
    }
}

/// Whether `Settings::from_configmap` acts on the key: it reports every key it does not act
/// on (not yet, never, unknown) with a message of its own, so one probe tells.
pub fn configmap_key_implemented(key: &str) -> bool {
    if crate::settings::NEVER_SUPPORTED.contains(&key)
        || crate::settings::NOT_YET_SUPPORTED.contains(&key)
    {
        return false;
    }
    let data = BTreeMap::from([(key.to_string(), String::new())]);
    let (_, diags) = Settings::from_configmap(&data, &ObjectRef::new("ConfigMap", "", "probe"));
    let not_acted_on = unimplemented_key_warning(key);
    !diags.iter().any(|d| d.message == not_acted_on)
}

/// The warning `Settings::from_configmap` gives for a key it does not act on. It must not
/// probe the settings (they call it).
pub fn unimplemented_key_warning(key: &str) -> String {
    match configmap_entry(key) {
        Some(entry) => unsupported_warning("key", key, &support(entry, false)),
        None => {
            format!("unknown key: neither ingress-nginx nor Sluice has {key:?} (a typo?); ignored")
        }
    }
}

fn unsupported_warning(what: &str, name: &str, support: &Support) -> String {
    match support {
        Support::Unsupported {
            reason,
            alternative,
        } if *alternative != NO_ALTERNATIVE => {
            format!(
                "{what} {name} is not supported: {reason}; ignored (alternative: {alternative})"
            )
        }
        Support::Unsupported { reason, .. } => {
            format!("{what} {name} is not supported: {reason}; ignored")
        }
        Support::Unknown => format!(
            "unknown {what} {name}: neither ingress-nginx nor Sluice has it (a typo?); ignored"
        ),
        other => format!("{what} {name} is {}", other.label()),
    }
}

/// The standing of a ConfigMap key.
pub fn configmap_key(key: &str) -> Support {
    let implemented = configmap_key_implemented(key);
    match configmap_entry(key) {
        Some(entry) => support(entry, implemented),
        None if implemented => Support::Supported,
        None => Support::Unknown,
    }
}

/// ingress-nginx's `annotations-risk-level`: an Ingress carrying an annotation riskier than the
/// level is not served at all. Returns the field and the warning when `annotations` has one.
/// Critical annotations (snippets) are left to the snippet gates, which drop the snippet and
/// keep serving the Ingress.
pub fn risk_rejection(
    annotations: Option<&BTreeMap<String, String>>,
    settings: &Settings,
) -> Option<(String, String)> {
    let level = settings.annotations_risk_level;
    annotations?.keys().find_map(|key| {
        let name = key.strip_prefix(crate::translate::annotations::PREFIX)?;
        let entry = annotation_entry(name)?;
        (entry.risk > level && entry.risk < Risk::Critical).then(|| {
            (
                format!("metadata.annotations[{key}]"),
                format!(
                    "annotation {name} has risk {:?}, above the ConfigMap's annotations-risk-level \
                     {level:?}: the Ingress is not served (as ingress-nginx rejects it)",
                    entry.risk
                ),
            )
        })
    })
}

/// The warning `translate` gives for an annotation it does not act on.
pub fn annotation_warning(name: &str) -> String {
    unsupported_warning("annotation", name, &annotation(name))
}

fn escape_cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn markdown_rows(out: &mut String, entries: &[Entry], status: impl Fn(&Entry) -> Support) {
    out.push_str("| Name | Tier | Status | Notes |\n|---|---|---|---|\n");
    for entry in entries {
        let support = status(entry);
        let notes = match &support {
            Support::Supported | Support::Unknown => String::new(),
            Support::SupportedWithDifference { difference } => escape_cell(difference),
            Support::Unsupported {
                reason,
                alternative,
            } => escape_cell(&format!("{reason}; alternative: {alternative}")),
        };
        out.push_str(&format!(
            "| `{}` | {:?} | {} | {} |\n",
            entry.name,
            entry.tier,
            support.label(),
            notes
        ));
    }
}

/// One row of the computed table, for `sluice audit --compat-table --output json`.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `annotation` or `configmap-key`.
    pub kind: &'static str,
    pub name: &'static str,
    pub tier: Tier,
    /// ingress-nginx's risk (annotations only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<Risk>,
    #[serde(flatten)]
    pub support: Support,
}

/// Every annotation and ConfigMap key with its computed standing.
pub fn rows() -> Vec<Row> {
    let annotations = ANNOTATIONS.iter().map(|e| Row {
        kind: "annotation",
        name: e.name,
        tier: e.tier,
        risk: Some(e.risk),
        support: annotation(e.name),
    });
    let keys = CONFIGMAP_KEYS.iter().map(|e| Row {
        kind: "configmap-key",
        name: e.name,
        tier: e.tier,
        risk: None,
        support: configmap_key(e.name),
    });
    annotations.chain(keys).collect()
}

/// The README's compatibility section (between its marker comments), generated from this
/// table: `sluice audit --compat-table` prints it.
pub fn markdown_table() -> String {
    let mut out = String::new();
    let count = |entries: &[Entry], f: &dyn Fn(&Entry) -> Support| {
        let mut n = [0usize; 3];
        for entry in entries {
            match f(entry) {
                Support::Supported => n[0] += 1,
                Support::SupportedWithDifference { .. } => n[1] += 1,
                _ => n[2] += 1,
            }
        }
        n
    };
    let ann = |e: &Entry| annotation(e.name);
    let key = |e: &Entry| configmap_key(e.name);
    let [a0, a1, a2] = count(ANNOTATIONS, &ann);
    let [k0, k1, k2] = count(CONFIGMAP_KEYS, &key);
    out.push_str(&format!(
        "Generated from `src/compat.rs` by `sluice audit --compat-table` (or \
         `UPDATE_README=1 cargo test --test audit readme`). Annotations: {a0} supported, {a1} \
         supported with a difference, {a2} unsupported. ConfigMap keys: {k0} supported, {k1} \
         supported with a difference, {k2} unsupported.\n\n"
    ));
    out.push_str("### Annotations (`nginx.ingress.kubernetes.io/*`)\n\n");
    markdown_rows(&mut out, ANNOTATIONS, ann);
    out.push_str("\n### ConfigMap keys\n\n");
    markdown_rows(&mut out, CONFIGMAP_KEYS, key);
    out
}

/// The markers around the generated table in README.md.
pub const README_BEGIN: &str = "<!-- compat-table:begin (generated; do not edit) -->";
pub const README_END: &str = "<!-- compat-table:end -->";

/// `readme` with the text between the markers replaced by the current table; `None` when the
/// markers are missing.
pub fn readme_with_table(readme: &str) -> Option<String> {
    let start = readme.find(README_BEGIN)? + README_BEGIN.len();
    let end = start + readme[start..].find(README_END)?;
    Some(format!(
        "{}\n{}{}",
        &readme[..start],
        markdown_table(),
        &readme[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_implemented_annotation_is_in_the_table() {
        let missing: Vec<&str> = crate::translate::annotations::implemented()
            .filter(|name| annotation_entry(name).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "IMPLEMENTED names missing from compat::ANNOTATIONS: {missing:?}"
        );
    }

    /// The other direction: the table never describes a support that does not exist.
    #[test]
    fn every_difference_note_is_about_something_implemented() {
        let annotations: Vec<&str> = ANNOTATIONS
            .iter()
            .filter(|e| e.difference.is_some() && !annotation_implemented(e.name))
            .map(|e| e.name)
            .collect();
        assert!(
            annotations.is_empty(),
            "compat::ANNOTATIONS notes a difference for annotations not IMPLEMENTED: {annotations:?}"
        );
        let keys: Vec<&str> = CONFIGMAP_KEYS
            .iter()
            .filter(|e| e.difference.is_some() && !configmap_key_implemented(e.name))
            .map(|e| e.name)
            .collect();
        assert!(
            keys.is_empty(),
            "compat::CONFIGMAP_KEYS notes a difference for keys Settings does not parse: {keys:?}"
        );
    }

    #[test]
    fn no_never_entry_is_implemented() {
        let contradictions: Vec<&str> = ANNOTATIONS
            .iter()
            .filter(|e| e.never && annotation_implemented(e.name))
            .map(|e| e.name)
            .collect();
        assert!(
            contradictions.is_empty(),
            "marked never-supported in compat::ANNOTATIONS but IMPLEMENTED: {contradictions:?}"
        );
        let keys: Vec<&str> = CONFIGMAP_KEYS
            .iter()
            .filter(|e| e.never && configmap_key_implemented(e.name))
            .map(|e| e.name)
            .collect();
        assert!(
            keys.is_empty(),
            "marked never-supported in compat::CONFIGMAP_KEYS but parsed: {keys:?}"
        );
    }

    #[test]
    fn names_are_unique() {
        for table in [ANNOTATIONS, CONFIGMAP_KEYS] {
            let mut names: Vec<&str> = table.iter().map(|e| e.name).collect();
            names.sort();
            let before = names.len();
            names.dedup();
            assert_eq!(before, names.len(), "duplicate names in a compat table");
        }
    }

    #[test]
    fn settings_lists_are_in_the_table() {
        for key in crate::settings::NOT_YET_SUPPORTED
            .iter()
            .chain(crate::settings::NEVER_SUPPORTED)
        {
            assert!(
                configmap_entry(key).is_some(),
                "{key} missing from CONFIGMAP_KEYS"
            );
            assert!(!configmap_key(key).carries_over(), "{key}");
        }
    }

    #[test]
    fn standings() {
        assert_eq!(annotation("limit-rps"), Support::Supported);
        assert!(matches!(
            annotation("backend-protocol"),
            Support::SupportedWithDifference { .. }
        ));
        assert!(matches!(
            annotation("stream-snippet"),
            Support::Unsupported { .. }
        ));
        assert_eq!(annotation("no-such-thing"), Support::Unknown);
        assert_eq!(configmap_key("use-forwarded-headers"), Support::Supported);
        assert!(matches!(
            configmap_key("enable-gzip"),
            Support::SupportedWithDifference { .. }
        ));
        assert!(matches!(
            configmap_key("http-snippet"),
            Support::Unsupported { .. }
        ));
        assert_eq!(configmap_key("no-such-key"), Support::Unknown);
        assert!(annotation_warning("no-such-thing").contains("unknown annotation"));
        assert!(annotation_warning("stream-snippet").contains("alternative"));
    }

    #[test]
    fn risk_level_rejects_riskier_annotations_but_leaves_snippets_to_their_gates() {
        let annotations = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (format!("nginx.ingress.kubernetes.io/{k}"), v.to_string()))
                .collect()
        };
        let medium = Settings {
            annotations_risk_level: Risk::Medium,
            ..Settings::default()
        };
        let auth = annotations(&[("limit-rps", "5"), ("auth-url", "http://auth")]);
        let (field, message) = risk_rejection(Some(&auth), &medium).unwrap();
        assert_eq!(
            field,
            "metadata.annotations[nginx.ingress.kubernetes.io/auth-url]"
        );
        assert!(message.contains("risk High"), "{message}");
        // The default level (High) lets every non-snippet annotation through.
        assert_eq!(risk_rejection(Some(&auth), &Settings::default()), None);
        let snippet = annotations(&[("configuration-snippet", "return 200;")]);
        assert_eq!(risk_rejection(Some(&snippet), &medium), None);
        let low = Settings {
            annotations_risk_level: Risk::Low,
            ..Settings::default()
        };
        let body = annotations(&[("proxy-body-size", "1m")]);
        assert!(risk_rejection(Some(&body), &low).is_some());
        assert_eq!(risk_rejection(Some(&body), &medium), None);
    }

    #[test]
    fn readme_markers_are_replaced() {
        let readme = format!("a\n{README_BEGIN}\nstale table\n{README_END}\nb\n");
        let new = readme_with_table(&readme).unwrap();
        assert!(new.starts_with(&format!("a\n{README_BEGIN}\nGenerated")));
        assert!(new.ends_with(&format!("{README_END}\nb\n")));
        assert!(!new.contains("stale table"));
        assert_eq!(readme_with_table(&new).unwrap(), new);
    }
}
