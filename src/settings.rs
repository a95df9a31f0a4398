//! Global settings from the ConfigMap named by `--configmap`, with ingress-nginx's key names,
//! defaults and value syntax (all values are strings; durations are seconds unless a unit is
//! given). Also accepts the names the seed cluster uses (`worker-connections`,
//! `keepalive-timeout`, `client-max-body-size`, `enable-gzip`). Unknown keys and bad values
//! are reported and the default is used.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

use crate::diagnostics::{Diagnostic, ObjectRef};

/// Which failures let a request be retried on another endpoint (`proxy-next-upstream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextUpstream {
    /// Connection refused or reset before a response header arrived.
    pub error: bool,
    /// Connect or response-header timeout.
    pub timeout: bool,
    /// Upstream answered with one of these codes.
    pub http_500: bool,
    pub http_502: bool,
    pub http_503: bool,
    pub http_504: bool,
    pub http_403: bool,
    pub http_404: bool,
    pub http_429: bool,
    /// Retry non-idempotent methods (POST, PATCH, LOCK) too.
    pub non_idempotent: bool,
}

impl NextUpstream {
    pub const OFF: NextUpstream = NextUpstream {
        error: false,
        timeout: false,
        http_500: false,
        http_502: false,
        http_503: false,
        http_504: false,
        http_403: false,
        http_404: false,
        http_429: false,
        non_idempotent: false,
    };

    /// Parse nginx's `proxy_next_upstream` token list, e.g. `error timeout http_502`.
    pub fn parse(value: &str) -> Result<NextUpstream, String> {
        let mut out = NextUpstream::OFF;
        for token in value.split_whitespace() {
            match token {
                "error" => out.error = true,
                "timeout" => out.timeout = true,
                "invalid_header" => out.error = true,
                "http_500" => out.http_500 = true,
                "http_502" => out.http_502 = true,
                "http_503" => out.http_503 = true,
                "http_504" => out.http_504 = true,
                "http_403" => out.http_403 = true,
                "http_404" => out.http_404 = true,
                "http_429" => out.http_429 = true,
                "non_idempotent" => out.non_idempotent = true,
                "off" => return Ok(NextUpstream::OFF),
                other => return Err(format!("unknown token {other:?}")),
            }
        }
        Ok(out)
    }

    /// Whether an upstream response with this status may be retried elsewhere.
    pub fn retries_status(&self, status: u16) -> bool {
        match status {
            500 => self.http_500,
            502 => self.http_502,
            503 => self.http_503,
            504 => self.http_504,
            403 => self.http_403,
            404 => self.http_404,
            429 => self.http_429,
            _ => false,
        }
    }
}

/// Validated global settings. Every field documents its ConfigMap key and default.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `use-forwarded-headers` (false): trust incoming X-Forwarded-Proto/-Port/-Host and take
    /// the client address from `forwarded-for-header`.
    pub use_forwarded_headers: bool,
    /// `compute-full-forwarded-for` (false): append the peer to the incoming X-Forwarded-For
    /// instead of replacing it (only with use-forwarded-headers).
    pub compute_full_forwarded_for: bool,
    /// `forwarded-for-header` (X-Forwarded-For): where the real client address is read from.
    /// The seed cluster behind a Cloudflare tunnel sets `CF-Connecting-IP`.
    pub forwarded_for_header: HeaderName,
    /// `enable-real-ip` (false): read the client address from `forwarded-for-header` without
    /// trusting the other forwarded headers.
    pub enable_real_ip: bool,
    /// `proxy-real-ip-cidr` (0.0.0.0/0): peers whose forwarded address is believed.
    pub proxy_real_ip_cidr: Vec<IpNet>,
    /// `server-tokens` (false): send `Server: sluice`; otherwise no Server header at all.
    pub server_tokens: bool,
    /// `generate-request-id` (true): add X-Request-ID when the request has none.
    pub generate_request_id: bool,
    /// `proxy-connect-timeout` (5 s).
    pub proxy_connect_timeout: Duration,
    /// `proxy-read-timeout` (60 s): wait for the response header, and between two reads of the
    /// response body.
    pub proxy_read_timeout: Duration,
    /// `proxy-send-timeout` (60 s): between two writes of the request body to the upstream.
    pub proxy_send_timeout: Duration,
    /// `proxy-next-upstream` (`error timeout`).
    pub proxy_next_upstream: NextUpstream,
    /// `proxy-next-upstream-tries` (3): attempts in all, 0 meaning no limit but the endpoints.
    pub proxy_next_upstream_tries: u32,
    /// `proxy-next-upstream-timeout` (0 = none): total time for all attempts.
    pub proxy_next_upstream_timeout: Duration,
    /// `keep-alive` / `keepalive-timeout` (75 s): idle time of a client keep-alive connection.
    pub keep_alive: Duration,
    /// `keep-alive-requests` (1000): requests per client connection before it is closed (the
    /// last response carries `Connection: close`).
    pub keep_alive_requests: u64,
    /// `client-header-timeout` (60 s): time to receive a request header, counted from its
    /// first byte (or from accept); the connection is closed when it runs out.
    pub client_header_timeout: Duration,
    /// `client-body-timeout` (60 s): time between two reads of a request body; 408 when it
    /// runs out.
    pub client_body_timeout: Duration,
    /// `proxy-body-size` / `client-max-body-size` (1m): largest request body; `0` = no
    /// limit. Over it: 413. Default for the annotation of the same name.
    pub proxy_body_size: u64,
    /// `client-body-buffer-size` (8k): request body kept in memory when buffering; the rest
    /// goes to a temporary file.
    pub client_body_buffer_size: u64,
    /// `custom-http-errors` (none): statuses answered by the default backend instead (with
    /// the X-Code headers); the default for the annotation of the same name.
    pub custom_http_errors: Vec<u16>,
    /// `proxy-request-buffering` (on): read the whole request body before proxying.
    pub proxy_request_buffering: bool,
    /// `large-client-header-buffers` (`4 8k`): a header line over the size, or a request
    /// header over number x size, gets 400 and a closed connection (as nginx).
    pub large_client_header_buffers: (usize, usize),
    /// `use-gzip` / `enable-gzip` (false), `gzip-level` (1), `gzip-types` (ingress-nginx's
    /// list; text/html always), `gzip-min-length` (256), `gzip-disable` (none; a regex on
    /// User-Agent, or `msie6`).
    pub use_gzip: bool,
    pub gzip_level: u32,
    pub gzip_types: Vec<String>,
    pub gzip_min_length: u64,
    pub gzip_disable: Option<crate::proxy::compress::UserAgentPattern>,
    /// `enable-brotli` (false), `brotli-level` (4), `brotli-types` (ingress-nginx's list),
    /// `brotli-min-length` (20).
    pub enable_brotli: bool,
    pub brotli_level: u32,
    pub brotli_types: Vec<String>,
    pub brotli_min_length: u64,
    /// Sluice's own keys (ingress-nginx has no zstd): `enable-zstd` (false), `zstd-level` (3;
    /// 1 to 19), `zstd-types` (the default `gzip-types` list), `zstd-min-length` (256).
    pub enable_zstd: bool,
    pub zstd_level: u32,
    pub zstd_types: Vec<String>,
    pub zstd_min_length: u64,
    /// `upstream-keepalive-connections` (320): idle upstream connections kept per endpoint;
    /// 0 disables upstream keep-alive.
    pub upstream_keepalive_connections: usize,
    /// `upstream-keepalive-timeout` (60 s): idle upstream connections are closed after this.
    pub upstream_keepalive_timeout: Duration,
    /// `upstream-keepalive-requests` (10000): requests per upstream connection.
    pub upstream_keepalive_requests: u64,
    /// `upstream-keepalive-time` (1h): maximum age of an upstream connection.
    pub upstream_keepalive_time: Duration,
    /// `max-worker-connections` / `worker-connections` (16384): concurrent client connections.
    pub max_worker_connections: usize,
    /// `worker-processes` (number of CPUs; `auto`): runtime worker threads.
    pub worker_processes: Option<usize>,
    /// `disable-access-log` (false).
    pub disable_access_log: bool,
    /// `skip-access-log-urls` (empty): request paths never logged.
    pub skip_access_log_urls: Vec<String>,
    /// `global-auth-url` and the other `global-auth-*` keys as written (none): external
    /// authentication for every location, checked and applied in `translate::auth`.
    pub global_auth: BTreeMap<String, String>,
    /// `no-auth-locations` (`/.well-known/acme-challenge`): path prefixes never authenticated.
    pub no_auth_locations: Vec<String>,
    /// `log-format-escape-json` (false): escape variables in the access log as JSON strings.
    pub log_format_escape_json: bool,
    /// `load-balance` (`round_robin`): the algorithm of locations without a `load-balance`,
    /// `upstream-hash-by` or `affinity` annotation; `round_robin` or `ewma`.
    pub load_balance: String,
    /// `ssl-redirect` (true): redirect HTTP to HTTPS for hosts with a `spec.tls` section.
    pub ssl_redirect: bool,
    /// `force-ssl-redirect` (false): redirect even hosts without TLS (TLS offloaded in front).
    pub force_ssl_redirect: bool,
    /// `preserve-trailing-slash` (false): keep a trailing `/` in the HTTPS redirect.
    pub preserve_trailing_slash: bool,
    /// `use-port-in-redirects` (false): put the HTTPS port in the redirect.
    pub use_port_in_redirects: bool,
    /// `http-redirect-code` (308): 301, 302, 307 or 308.
    pub http_redirect_code: u16,
    /// `no-tls-redirect-locations` (`/.well-known/acme-challenge`): Ingress paths never
    /// redirected to HTTPS.
    pub no_tls_redirect_locations: Vec<String>,
    /// `hsts` (true), `hsts-max-age` (31536000), `hsts-include-subdomains` (true),
    /// `hsts-preload` (false): the Strict-Transport-Security header on HTTPS responses.
    pub hsts: bool,
    pub hsts_max_age: u64,
    pub hsts_include_subdomains: bool,
    pub hsts_preload: bool,
    /// `ssl-protocols` (`TLSv1.2 TLSv1.3`).
    pub ssl_protocols: Vec<String>,
    /// `ssl-ciphers`: OpenSSL names of the TLS 1.2 suites (TLS 1.3 suites are not configurable,
    /// as in nginx).
    pub ssl_ciphers: Vec<String>,
    /// `use-http2` (true): offer h2 by ALPN on HTTPS.
    pub use_http2: bool,
    /// `http2-max-concurrent-streams` (128).
    pub http2_max_concurrent_streams: u32,
    /// `limit-req-status-code` (503): answer to requests over `limit-rps` / `limit-rpm`.
    pub limit_req_status_code: u16,
    /// `limit-conn-status-code` (503): answer to requests over `limit-connections`.
    pub limit_conn_status_code: u16,
    /// `whitelist-source-range` (also `allowlist-source-range`; none): default allowlist of
    /// every location, replaced by the annotation. `Err` (reported) when the value has an
    /// invalid entry: locations without their own annotation then answer 503, as a bad
    /// security setting does in ingress-nginx.
    pub whitelist_source_range: Result<Vec<IpNet>, String>,
    /// `denylist-source-range` (none): default denylist, replaced by the annotation; `Err`
    /// as above.
    pub denylist_source_range: Result<Vec<IpNet>, String>,
    /// `block-cidrs` (none): clients answered 403 on every server. Invalid entries are
    /// reported and left out.
    pub block_cidrs: Vec<IpNet>,
    /// `block-user-agents` (none): User-Agent values answered 403; exact strings (any case),
    /// `~regex` or `~*regex`. Invalid regexes are reported and left out.
    pub block_user_agents: Vec<String>,
    /// `block-referers` (none): as block-user-agents, for Referer.
    pub block_referers: Vec<String>,
    /// The Strict-Transport-Security value of the hsts* keys, rendered once per configuration
    /// because every HTTPS response carries it; `None` when `hsts` is off. Kept in step by
    /// `from_configmap` and `default`; code that changes the hsts* fields directly calls
    /// [`Settings::with_hsts_header`].
    pub hsts_header: Option<http::HeaderValue>,
    /// `proxy-buffering`, `proxy-http-version`, `proxy-redirect-*`, `proxy-cookie-*`,
    /// `service-upstream`, `proxy-set-headers`, `add-headers`, `hide-headers`,
    /// `global-allowed-response-headers` (translate/proxy_settings.rs).
    pub proxy: crate::translate::proxy_settings::ProxyKeys,
    /// `allow-snippet-annotations` (false) and `annotations-risk-level` (High): snippet
    /// annotations (Critical) are translated (never executed) only when both allow them.
    pub allow_snippet_annotations: bool,
    pub annotations_risk_level: crate::compat::Risk,
}

/// ingress-nginx's default `ssl-ciphers`.
pub const DEFAULT_SSL_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256";

impl Settings {
    /// The HSTS header value these settings produce, e.g. `max-age=31536000; includeSubDomains`.
    pub fn hsts_value(&self) -> String {
        let mut v = format!("max-age={}", self.hsts_max_age);
        if self.hsts_include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.hsts_preload {
            v.push_str("; preload");
        }
        v
    }

    /// The header value HTTPS responses carry (`None` with `hsts` off).
    pub fn hsts_header(&self) -> Option<&http::HeaderValue> {
        self.hsts_header.as_ref()
    }

    /// Render `hsts_header` from the hsts* fields.
    pub fn with_hsts_header(mut self) -> Settings {
        self.hsts_header = self
            .hsts
            .then(|| http::HeaderValue::from_str(&self.hsts_value()).ok())
            .flatten();
        self
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            use_forwarded_headers: false,
            compute_full_forwarded_for: false,
            forwarded_for_header: HeaderName::from_static("x-forwarded-for"),
            enable_real_ip: false,
            proxy_real_ip_cidr: vec![
                "0.0.0.0/0".parse().expect("static CIDR"),
                "::/0".parse().expect("static CIDR"),
            ],
            server_tokens: false,
            generate_request_id: true,
            proxy_connect_timeout: Duration::from_secs(5),
            proxy_read_timeout: Duration::from_secs(60),
            proxy_send_timeout: Duration::from_secs(60),
            proxy_next_upstream: NextUpstream {
                error: true,
                timeout: true,
                ..NextUpstream::OFF
            },
            proxy_next_upstream_tries: 3,
            proxy_next_upstream_timeout: Duration::ZERO,
            keep_alive: Duration::from_secs(75),
            keep_alive_requests: 1000,
            client_header_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            proxy_body_size: 1024 * 1024,
            client_body_buffer_size: 8 * 1024,
            custom_http_errors: Vec::new(),
            proxy_request_buffering: true,
            large_client_header_buffers: (4, 8 * 1024),
            use_gzip: false,
            gzip_level: 1,
            gzip_types: crate::proxy::compress::parse_types(
                crate::proxy::compress::DEFAULT_GZIP_TYPES,
            ),
            gzip_min_length: 256,
            gzip_disable: None,
            enable_brotli: false,
            brotli_level: 4,
            brotli_types: crate::proxy::compress::parse_types(
                crate::proxy::compress::DEFAULT_BROTLI_TYPES,
            ),
            brotli_min_length: 20,
            enable_zstd: false,
            zstd_level: 3,
            zstd_types: crate::proxy::compress::parse_types(
                crate::proxy::compress::DEFAULT_GZIP_TYPES,
            ),
            zstd_min_length: 256,
            upstream_keepalive_connections: 320,
            upstream_keepalive_timeout: Duration::from_secs(60),
            upstream_keepalive_requests: 10000,
            upstream_keepalive_time: Duration::from_secs(3600),
            max_worker_connections: 16384,
            worker_processes: None,
            disable_access_log: false,
            skip_access_log_urls: Vec::new(),
            global_auth: BTreeMap::new(),
            no_auth_locations: vec!["/.well-known/acme-challenge".to_string()],
            log_format_escape_json: false,
            load_balance: "round_robin".to_string(),
            ssl_redirect: true,
            force_ssl_redirect: false,
            preserve_trailing_slash: false,
            use_port_in_redirects: false,
            http_redirect_code: 308,
            no_tls_redirect_locations: vec!["/.well-known/acme-challenge".to_string()],
            hsts: true,
            hsts_max_age: 31_536_000,
            hsts_include_subdomains: true,
            hsts_preload: false,
            ssl_protocols: vec!["TLSv1.2".to_string(), "TLSv1.3".to_string()],
            ssl_ciphers: DEFAULT_SSL_CIPHERS.split(':').map(str::to_string).collect(),
            use_http2: true,
            http2_max_concurrent_streams: 128,
            limit_req_status_code: 503,
            limit_conn_status_code: 503,
            whitelist_source_range: Ok(Vec::new()),
            denylist_source_range: Ok(Vec::new()),
            block_cidrs: Vec::new(),
            block_user_agents: Vec::new(),
            block_referers: Vec::new(),
            hsts_header: None,
            proxy: Default::default(),
            allow_snippet_annotations: false,
            annotations_risk_level: crate::compat::Risk::High,
        }
        .with_hsts_header()
    }
}

/// ingress-nginx's default `log-format-upstream`; the only access log format Sluice renders.
pub const DEFAULT_LOG_FORMAT_UPSTREAM: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_length $request_time [$proxy_upstream_name] [$proxy_alternative_upstream_name] $upstream_addr $upstream_response_length $upstream_response_time $upstream_status $req_id"#;

/// ingress-nginx ConfigMap keys Sluice knows but does not act on yet. They are reported as
/// such, never silently dropped.
pub const NOT_YET_SUPPORTED: &[&str] = &[
    "client-header-buffer-size",
    "proxy-buffer-size",
    "enable-opentelemetry",
    "use-proxy-protocol",
];

/// The `global-auth-*` keys Sluice implements (`global-auth-snippet` is raw nginx).
const GLOBAL_AUTH_KEYS: &[&str] = &[
    "global-auth-url",
    "global-auth-method",
    "global-auth-signin",
    "global-auth-signin-redirect-param",
    "global-auth-response-headers",
    "global-auth-request-redirect",
    "global-auth-cache-key",
    "global-auth-cache-duration",
    "global-auth-always-set-cookie",
];

/// Raw-nginx keys that inject configuration text; Sluice never executes them.
pub const NEVER_SUPPORTED: &[&str] = &[
    "main-snippet",
    "http-snippet",
    "server-snippet",
    "location-snippet",
    "stream-snippet",
    "global-auth-snippet",
    "modsecurity-snippet",
    "lua-shared-dicts",
];

impl Settings {
    /// Build settings from a ConfigMap's data. `object` names the ConfigMap in diagnostics.
    pub fn from_configmap(
        data: &BTreeMap<String, String>,
        object: &ObjectRef,
    ) -> (Settings, Vec<Diagnostic>) {
        let mut s = Settings::default();
        let mut diags = Vec::new();
        for (key, raw) in data {
            let value = raw.trim();
            let mut bad = |reason: String| {
                diags.push(Diagnostic::warning(
                    object.clone(),
                    format!("data.{key}"),
                    format!("invalid value {raw:?}: {reason}; using the default"),
                ))
            };
            match key.as_str() {
                "use-forwarded-headers" => {
                    set(&mut s.use_forwarded_headers, parse_bool(value), &mut bad)
                }
                "compute-full-forwarded-for" => set(
                    &mut s.compute_full_forwarded_for,
                    parse_bool(value),
                    &mut bad,
                ),
                "forwarded-for-header" => set(
                    &mut s.forwarded_for_header,
                    HeaderName::from_bytes(value.as_bytes()).map_err(|e| e.to_string()),
                    &mut bad,
                ),
                "enable-real-ip" => set(&mut s.enable_real_ip, parse_bool(value), &mut bad),
                "proxy-real-ip-cidr" => {
                    set(&mut s.proxy_real_ip_cidr, parse_cidrs(value), &mut bad)
                }
                "server-tokens" => set(&mut s.server_tokens, parse_bool(value), &mut bad),
                "generate-request-id" => {
                    set(&mut s.generate_request_id, parse_bool(value), &mut bad)
                }
                "proxy-connect-timeout" => set(
                    &mut s.proxy_connect_timeout,
                    parse_duration(value),
                    &mut bad,
                ),
                "proxy-read-timeout" => {
                    set(&mut s.proxy_read_timeout, parse_duration(value), &mut bad)
                }
                "custom-http-errors" => set(
                    &mut s.custom_http_errors,
                    crate::translate::custom_errors::parse_codes(value),
                    &mut bad,
                ),
                "proxy-send-timeout" => {
                    set(&mut s.proxy_send_timeout, parse_duration(value), &mut bad)
                }
                "proxy-next-upstream" => set(
                    &mut s.proxy_next_upstream,
                    NextUpstream::parse(value),
                    &mut bad,
                ),
                "proxy-next-upstream-tries" => {
                    set(&mut s.proxy_next_upstream_tries, parse_num(value), &mut bad)
                }
                "proxy-next-upstream-timeout" => set(
                    &mut s.proxy_next_upstream_timeout,
                    parse_duration(value),
                    &mut bad,
                ),
                "keep-alive" | "keepalive-timeout" => {
                    set(&mut s.keep_alive, parse_duration(value), &mut bad)
                }
                "keep-alive-requests" => {
                    set(&mut s.keep_alive_requests, parse_num(value), &mut bad)
                }
                "client-header-timeout" => set(
                    &mut s.client_header_timeout,
                    parse_duration(value),
                    &mut bad,
                ),
                "client-body-timeout" => {
                    set(&mut s.client_body_timeout, parse_duration(value), &mut bad)
                }
                "proxy-body-size" | "client-max-body-size" => {
                    set(&mut s.proxy_body_size, parse_size(value), &mut bad)
                }
                "client-body-buffer-size" => {
                    set(&mut s.client_body_buffer_size, parse_size(value), &mut bad)
                }
                "proxy-request-buffering" => set(
                    &mut s.proxy_request_buffering,
                    parse_on_off(value),
                    &mut bad,
                ),
                "large-client-header-buffers" => set(
                    &mut s.large_client_header_buffers,
                    parse_header_buffers(value),
                    &mut bad,
                ),
                "use-gzip" | "enable-gzip" => set(&mut s.use_gzip, parse_bool(value), &mut bad),
                "gzip-level" => set(&mut s.gzip_level, parse_level(value, 1, 9), &mut bad),
                "gzip-types" => s.gzip_types = crate::proxy::compress::parse_types(value),
                "gzip-min-length" => set(&mut s.gzip_min_length, parse_num(value), &mut bad),
                "gzip-disable" if value.is_empty() => s.gzip_disable = None,
                "gzip-disable" => match crate::proxy::compress::UserAgentPattern::parse(value) {
                    Ok(p) => s.gzip_disable = Some(p),
                    Err(e) => bad(e),
                },
                "enable-brotli" => set(&mut s.enable_brotli, parse_bool(value), &mut bad),
                "brotli-level" => set(&mut s.brotli_level, parse_level(value, 0, 11), &mut bad),
                "brotli-types" => s.brotli_types = crate::proxy::compress::parse_types(value),
                "brotli-min-length" => set(&mut s.brotli_min_length, parse_num(value), &mut bad),
                "enable-zstd" => set(&mut s.enable_zstd, parse_bool(value), &mut bad),
                "zstd-level" => set(&mut s.zstd_level, parse_level(value, 1, 19), &mut bad),
                "zstd-types" => s.zstd_types = crate::proxy::compress::parse_types(value),
                "zstd-min-length" => set(&mut s.zstd_min_length, parse_num(value), &mut bad),
                "upstream-keepalive-connections" => set(
                    &mut s.upstream_keepalive_connections,
                    parse_num(value),
                    &mut bad,
                ),
                "upstream-keepalive-timeout" => set(
                    &mut s.upstream_keepalive_timeout,
                    parse_duration(value),
                    &mut bad,
                ),
                "upstream-keepalive-requests" => set(
                    &mut s.upstream_keepalive_requests,
                    parse_num(value),
                    &mut bad,
                ),
                "upstream-keepalive-time" => set(
                    &mut s.upstream_keepalive_time,
                    parse_duration(value),
                    &mut bad,
                ),
                "max-worker-connections" | "worker-connections" => {
                    match parse_num::<usize>(value) {
                        // ingress-nginx: 0 means "derive from the open-files limit".
                        Ok(0) => s.max_worker_connections = 16384,
                        other => set(&mut s.max_worker_connections, other, &mut bad),
                    }
                }
                "worker-processes" => {
                    if value == "auto" {
                        s.worker_processes = None;
                    } else {
                        match parse_num::<usize>(value) {
                            Ok(n) if n > 0 => s.worker_processes = Some(n),
                            Ok(_) => bad("must be a positive number or auto".into()),
                            Err(e) => bad(e),
                        }
                    }
                }
                "disable-access-log" => set(&mut s.disable_access_log, parse_bool(value), &mut bad),
                "skip-access-log-urls" => {
                    s.skip_access_log_urls = split_list(value).map(str::to_string).collect()
                }
                "no-auth-locations" => {
                    s.no_auth_locations = split_list(value).map(str::to_string).collect()
                }
                k if GLOBAL_AUTH_KEYS.contains(&k) => {
                    s.global_auth.insert(k.to_string(), value.to_string());
                }
                "allow-snippet-annotations" => set(
                    &mut s.allow_snippet_annotations,
                    parse_bool(value),
                    &mut bad,
                ),
                "annotations-risk-level" => {
                    set(&mut s.annotations_risk_level, value.parse(), &mut bad)
                }
                "log-format-escape-json" => {
                    set(&mut s.log_format_escape_json, parse_bool(value), &mut bad)
                }
                "load-balance" => match value {
                    "round_robin" | "ewma" => s.load_balance = value.to_string(),
                    _ => bad("expected round_robin or ewma".into()),
                },
                "ssl-redirect" => set(&mut s.ssl_redirect, parse_bool(value), &mut bad),
                "force-ssl-redirect" => set(&mut s.force_ssl_redirect, parse_bool(value), &mut bad),
                "preserve-trailing-slash" => {
                    set(&mut s.preserve_trailing_slash, parse_bool(value), &mut bad)
                }
                "use-port-in-redirects" => {
                    set(&mut s.use_port_in_redirects, parse_bool(value), &mut bad)
                }
                "http-redirect-code" => match parse_num::<u16>(value) {
                    Ok(code @ (301 | 302 | 307 | 308)) => s.http_redirect_code = code,
                    Ok(_) => bad("must be 301, 302, 307 or 308".into()),
                    Err(e) => bad(e),
                },
                "no-tls-redirect-locations" => {
                    s.no_tls_redirect_locations = split_list(value).map(str::to_string).collect()
                }
                "hsts" => set(&mut s.hsts, parse_bool(value), &mut bad),
                "hsts-max-age" => set(&mut s.hsts_max_age, parse_num(value), &mut bad),
                "hsts-include-subdomains" => {
                    set(&mut s.hsts_include_subdomains, parse_bool(value), &mut bad)
                }
                "hsts-preload" => set(&mut s.hsts_preload, parse_bool(value), &mut bad),
                "ssl-protocols" => {
                    let protocols: Vec<String> =
                        value.split_whitespace().map(str::to_string).collect();
                    let unknown: Vec<&String> = protocols
                        .iter()
                        .filter(|p| {
                            !matches!(
                                p.as_str(),
                                "TLSv1.2" | "TLSv1.3" | "TLSv1" | "TLSv1.1" | "SSLv3"
                            )
                        })
                        .collect();
                    if !unknown.is_empty() {
                        bad(format!("unknown protocol(s) {unknown:?}"));
                    } else if !protocols.iter().any(|p| p == "TLSv1.2" || p == "TLSv1.3") {
                        bad("names no protocol Sluice supports (TLSv1.2, TLSv1.3)".into());
                    } else {
                        s.ssl_protocols = protocols;
                    }
                }
                "ssl-ciphers" => {
                    let ciphers: Vec<String> = value
                        .split(':')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(str::to_string)
                        .collect();
                    let unsupported: Vec<&String> = ciphers
                        .iter()
                        .filter(|c| crate::proxy::tls::rustls_suite_for(c).is_none())
                        .collect();
                    if !unsupported.is_empty() {
                        diags.push(Diagnostic::warning(
                            object.clone(),
                            format!("data.{key}"),
                            format!("{unsupported:?} have no implementation in rustls (DHE and CBC suites); they are left out, the rest is used"),
                        ));
                    }
                    if ciphers
                        .iter()
                        .any(|c| crate::proxy::tls::rustls_suite_for(c).is_some())
                    {
                        s.ssl_ciphers = ciphers;
                    } else {
                        diags.push(Diagnostic::warning(
                            object.clone(),
                            format!("data.{key}"),
                            "no supported TLS 1.2 suite left; using the default list",
                        ));
                    }
                }
                "use-http2" => set(&mut s.use_http2, parse_bool(value), &mut bad),
                "limit-req-status-code" => set(
                    &mut s.limit_req_status_code,
                    parse_error_status(value),
                    &mut bad,
                ),
                "limit-conn-status-code" => set(
                    &mut s.limit_conn_status_code,
                    parse_error_status(value),
                    &mut bad,
                ),
                "limit-conn-zone-variable" => {
                    if !matches!(value, "$binary_remote_addr" | "$remote_addr") {
                        bad(
                            "Sluice keys limits on the client address only ($binary_remote_addr)"
                                .into(),
                        );
                    }
                }
                "whitelist-source-range" | "allowlist-source-range" | "denylist-source-range" => {
                    let parsed = parse_cidrs(value);
                    if let Err(e) = &parsed {
                        diags.push(Diagnostic::warning(
                            object.clone(),
                            format!("data.{key}"),
                            format!("invalid value {raw:?}: {e}; locations without their own annotation answer 503"),
                        ));
                    }
                    if key == "denylist-source-range" {
                        s.denylist_source_range = parsed;
                    } else {
                        s.whitelist_source_range = parsed;
                    }
                }
                "block-cidrs" => {
                    for item in split_list(value) {
                        match parse_cidrs(item) {
                            Ok(nets) => s.block_cidrs.extend(nets),
                            Err(e) => diags.push(Diagnostic::warning(
                                object.clone(),
                                format!("data.{key}"),
                                format!("{e}; entry left out"),
                            )),
                        }
                    }
                }
                "block-user-agents" | "block-referers" => {
                    let entries: Vec<String> = split_list(value)
                        .map(|e| e.trim_matches('"').to_string())
                        .filter(|e| !e.is_empty())
                        .collect();
                    let (_, invalid) = crate::snapshot::access::HeaderMatcher::new(&entries);
                    for (entry, reason) in invalid {
                        diags.push(Diagnostic::warning(
                            object.clone(),
                            format!("data.{key}"),
                            format!("{entry:?} is not a valid regex ({reason}); entry left out"),
                        ));
                    }
                    if key == "block-user-agents" {
                        s.block_user_agents = entries;
                    } else {
                        s.block_referers = entries;
                    }
                }
                "http2-max-concurrent-streams" => match parse_num::<u32>(value) {
                    Ok(n) if n > 0 => s.http2_max_concurrent_streams = n,
                    Ok(_) => bad("must be positive".into()),
                    Err(e) => bad(e),
                },
                k if crate::translate::proxy_settings::CONFIGMAP_KEYS.contains(&k) => {
                    if let Err(e) = s.proxy.set(k, value) {
                        bad(e)
                    }
                }
                "log-format-upstream" => {
                    if value != DEFAULT_LOG_FORMAT_UPSTREAM {
                        diags.push(Diagnostic::warning(
                            object.clone(),
                            format!("data.{key}"),
                            "custom access log formats are not supported yet; using ingress-nginx's default format",
                        ));
                    }
                }
                // NOT_YET_SUPPORTED, NEVER_SUPPORTED and unknown keys: the reason and the
                // alternative come from the compatibility table.
                _ => diags.push(Diagnostic::warning(
                    object.clone(),
                    format!("data.{key}"),
                    crate::compat::unimplemented_key_warning(key),
                )),
            }
        }
        (s.with_hsts_header(), diags)
    }
}

fn set<T>(field: &mut T, parsed: Result<T, String>, bad: &mut impl FnMut(String)) {
    match parsed {
        Ok(v) => *field = v,
        Err(e) => bad(e),
    }
}

/// `true`/`false` as Go's strconv.ParseBool reads them.
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "true" | "True" | "TRUE" | "1" | "t" | "T" => Ok(true),
        "false" | "False" | "FALSE" | "0" | "f" | "F" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// nginx's `on`/`off` (true/false accepted too).
pub fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" | "On" | "ON" => Ok(true),
        "off" | "Off" | "OFF" => Ok(false),
        other => parse_bool(other).map_err(|_| "expected on or off".to_string()),
    }
}

/// A compression level within `min..=max`.
fn parse_level(value: &str, min: u32, max: u32) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a level from {min} to {max}")),
    }
}

/// `large-client-header-buffers`: `<number> <size>`, e.g. `4 8k`.
fn parse_header_buffers(value: &str) -> Result<(usize, usize), String> {
    let err = || "expected a number and a size, such as 4 8k".to_string();
    let mut parts = value.split_whitespace();
    let (Some(n), Some(size), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(err());
    };
    let n: usize = n.parse().map_err(|_| err())?;
    let size = parse_size(size)?;
    // Bounded so number x size cannot overflow or ask hyper for an absurd buffer.
    if n == 0 || size == 0 || n > 1024 || size > 1024 * 1024 {
        return Err(err());
    }
    Ok((n, size as usize))
}

pub fn parse_num<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value
        .parse::<T>()
        .map_err(|_| "expected a non-negative whole number".to_string())
}

/// A status for limit rejections: 400 to 599, as nginx's `limit_req_status` accepts.
fn parse_error_status(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(code @ 400..=599) => Ok(code),
        _ => Err("expected a status code from 400 to 599".into()),
    }
}

/// nginx time syntax: a bare number is seconds; units ms, s, m, h, d may be combined
/// (`1m30s`).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let err = || "expected seconds or an nginx time such as 30s, 5m, 1h".to_string();
    if let Ok(secs) = value.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = value;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" | "" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86400),
            _ => return Err(err()),
        };
    }
    Ok(total)
}

/// nginx size syntax: bytes, or with k/m/g (case-insensitive). `0` means unlimited where the
/// key says so.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let err = || "expected a size such as 8k, 1m or 1g".to_string();
    let (digits, mult) = match value.chars().last() {
        Some('k' | 'K') => (&value[..value.len() - 1], 1024),
        Some('m' | 'M') => (&value[..value.len() - 1], 1024 * 1024),
        Some('g' | 'G') => (&value[..value.len() - 1], 1024 * 1024 * 1024),
        _ => (value, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(err)
}

/// A comma-separated list, blanks dropped.
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A comma-separated list of CIDRs or plain addresses.
pub fn parse_cidrs(value: &str) -> Result<Vec<IpNet>, String> {
    split_list(value)
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{item:?} is not an address or CIDR"))
        })
        .collect()
}

/// `worker-processes` from the ConfigMap in the manifests folder, read before the runtime
/// starts (standalone mode only).
pub fn worker_processes_hint(cli: &crate::cli::Cli) -> Option<usize> {
    let dir = cli.manifests.as_ref()?;
    let cm = cli.configmap.as_ref()?;
    let mut manifests = crate::source::file::ManifestDir::new(dir);
    manifests.rescan().ok()?;
    manifests
        .objects()
        .into_iter()
        .find_map(|(object, _)| match object {
            crate::store::Object::ConfigMap(c)
                if c.metadata.name.as_deref() == Some(cm.name.as_str())
                    && c.metadata.namespace.as_deref() == Some(cm.namespace.as_str()) =>
            {
                c.data
                    .as_ref()?
                    .get("worker-processes")?
                    .trim()
                    .parse()
                    .ok()
            }
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> (Settings, Vec<Diagnostic>) {
        let data = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_configmap(&data, &ObjectRef::new("ConfigMap", "network", "sluice"))
    }

    #[test]
    fn both_spellings_of_the_seed_keys() {
        let (a, d) = settings(&[("keepalive-timeout", "30"), ("worker-connections", "1024")]);
        assert!(d.is_empty(), "{d:?}");
        let (b, _) = settings(&[("keep-alive", "30"), ("max-worker-connections", "1024")]);
        assert_eq!(a, b);
        assert_eq!(a.keep_alive, Duration::from_secs(30));
        assert_eq!(a.max_worker_connections, 1024);
    }

    #[test]
    fn bad_values_keep_defaults_and_name_the_key() {
        let (s, d) = settings(&[("proxy-read-timeout", "soon"), ("no-such-key", "1")]);
        assert_eq!(s.proxy_read_timeout, Duration::from_secs(60));
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].field, "data.proxy-read-timeout");
        assert!(d[1].message.contains("\"soon\""));
        assert_eq!(d[0].field, "data.no-such-key");
        assert!(d[0].message.contains("unknown key"));
    }

    #[test]
    fn durations_sizes_and_tokens() {
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("x").is_err());
        assert_eq!(parse_size("50m").unwrap(), 50 * 1024 * 1024);
        assert_eq!(parse_size("8k").unwrap(), 8192);
        let n = NextUpstream::parse("error timeout http_502").unwrap();
        assert!(n.error && n.timeout && n.retries_status(502) && !n.retries_status(503));
        assert_eq!(NextUpstream::parse("off").unwrap(), NextUpstream::OFF);
        assert!(NextUpstream::parse("sometimes").is_err());
    }

    #[test]
    fn seed_spellings_of_body_size_and_gzip() {
        let (a, d) = settings(&[
            ("client-max-body-size", "50m"),
            ("enable-gzip", "true"),
            ("gzip-level", "6"),
        ]);
        assert!(d.is_empty(), "{d:?}");
        let (b, _) = settings(&[
            ("proxy-body-size", "50m"),
            ("use-gzip", "true"),
            ("gzip-level", "6"),
        ]);
        assert_eq!(a, b);
        assert_eq!(a.proxy_body_size, 50 * 1024 * 1024);
        assert!(a.use_gzip);
        let (s, d) = settings(&[
            ("gzip-types", "text/css,application/json text/plain"),
            ("gzip-disable", "msie6"),
            ("large-client-header-buffers", "2 16k"),
            ("proxy-request-buffering", "off"),
            ("client-body-buffer-size", "16k"),
        ]);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(s.gzip_types, ["text/css", "application/json", "text/plain"]);
        assert!(s.gzip_disable.is_some());
        assert_eq!(s.large_client_header_buffers, (2, 16 * 1024));
        assert!(!s.proxy_request_buffering);
        let (s, d) = settings(&[
            ("gzip-level", "10"),
            ("gzip-disable", "("),
            ("large-client-header-buffers", "8k"),
        ]);
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(s.gzip_level, 1);
    }

    #[test]
    fn hsts_header_is_rendered_once_from_the_keys() {
        let (s, _) = settings(&[]);
        assert_eq!(
            s.hsts_header().unwrap(),
            "max-age=31536000; includeSubDomains"
        );
        let (s, _) = settings(&[
            ("hsts-max-age", "60"),
            ("hsts-include-subdomains", "false"),
            ("hsts-preload", "true"),
        ]);
        assert_eq!(s.hsts_header().unwrap(), "max-age=60; preload");
        let (s, _) = settings(&[("hsts", "false")]);
        assert!(s.hsts_header().is_none());
    }

    #[test]
    fn worker_processes_auto() {
        let (s, d) = settings(&[("worker-processes", "auto")]);
        assert!(d.is_empty());
        assert_eq!(s.worker_processes, None);
        let (s, _) = settings(&[("worker-processes", "2")]);
        assert_eq!(s.worker_processes, Some(2));
    }
}
