//! Authentication annotations and ConfigMap keys (reference §3f) -> [`AuthPolicy`]:
//! `auth-type: basic` with its Secret, `auth-url` and friends, `global-auth-*` with
//! `enable-global-auth`. A broken security annotation (missing Secret, bad URL, bad method,
//! header list or cache duration) denies the Ingress's locations with 503, as ingress-nginx.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderName, Method};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use super::annotations::PREFIX;
use crate::auth::basic::BasicAuth;
use crate::auth::external::{signin_url, CacheRule, CacheValid, ExternalAuth};
use crate::auth::htpasswd::Htpasswd;
use crate::auth::vars::Template;
use crate::auth::AuthPolicy;
use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::settings::{parse_bool, Settings};

/// Annotations (without prefix) this module implements.
pub const ANNOTATIONS: &[&str] = &[
    "auth-type",
    "auth-secret",
    "auth-secret-type",
    "auth-realm",
    "auth-url",
    "auth-method",
    "auth-signin",
    "auth-signin-redirect-param",
    "auth-response-headers",
    "auth-request-redirect",
    "auth-proxy-set-headers",
    "auth-cache-key",
    "auth-cache-duration",
    "auth-always-set-cookie",
    "enable-global-auth",
];

/// ingress-nginx's `auth-cache-duration` default.
const DEFAULT_CACHE_DURATION: &str = "200 202 401 5m";

/// What the auth annotations decide for all locations of one Ingress.
#[derive(Debug, Default)]
pub struct IngressAuth {
    /// Set when a broken auth annotation denies the locations (503).
    pub denied: Option<Arc<str>>,
    pub policy: Option<Arc<AuthPolicy>>,
}

/// The ConfigMap's `global-auth-url` and friends, resolved once per translation.
#[derive(Debug, Clone)]
pub struct GlobalAuth {
    pub external: Arc<ExternalAuth>,
    id: u64,
}

/// TLS towards auth services: ingress-nginx's auth location verifies nothing and sends SNI.
fn auth_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(
                    super::backend_protocol::NoVerification(provider),
                ))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

fn hash_of(parts: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// Parse one `auth-cache-duration` list: `"200 202 401 5m"`, comma-separated entries.
fn parse_cache_durations(value: &str) -> Result<Vec<CacheValid>, String> {
    let mut out = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut codes = Vec::new();
        let mut ttl = Duration::ZERO;
        let mut seen_time = false;
        for element in entry.split(' ').filter(|e| !e.is_empty()) {
            if element.len() == 3 && element.bytes().all(|b| b.is_ascii_digit()) {
                if seen_time {
                    return Err(format!("invalid cache duration {entry:?}: code after time"));
                }
                codes.push(element.parse().expect("three digits"));
                continue;
            }
            let split = element
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(|| format!("invalid cache duration {entry:?}"))?;
            let (n, unit) = element.split_at(split);
            let n: u64 = n
                .parse()
                .map_err(|_| format!("invalid cache duration {entry:?}"))?;
            let secs = match unit {
                "ms" => {
                    ttl += Duration::from_millis(n);
                    seen_time = true;
                    continue;
                }
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                "w" => 604_800,
                "M" => 2_592_000,
                "y" => 31_536_000,
                _ => return Err(format!("invalid cache duration {entry:?}")),
            };
            ttl += Duration::from_secs(n.saturating_mul(secs));
            seen_time = true;
        }
        if !seen_time {
            return Err(format!("invalid cache duration {entry:?}: no time"));
        }
        out.push(CacheValid { codes, ttl });
    }
    if out.is_empty() {
        return parse_cache_durations(DEFAULT_CACHE_DURATION);
    }
    Ok(out)
}

/// `[a-zA-Z0-9-_]+`, ingress-nginx's header name check.
fn header_name(name: &str) -> Result<HeaderName, String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("invalid header name {name:?}"));
    }
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))
}

/// The host of an auth URL without port, as a template (`https://$host/...` keeps `$host`).
fn url_host(url: &str) -> Result<Template, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "url scheme is empty".to_string())?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("url scheme {scheme:?} is not http or https"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') || h.starts_with('[') => {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                authority
            }
        }
        _ => authority,
    };
    // Go's `URL.Hostname()`: an IPv6 literal without its brackets.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("url host is empty".into());
    }
    if host.contains("..") {
        return Err("url host is invalid".into());
    }
    Template::parse(host)
}

/// One external auth configuration; `get(suffix)` reads `auth-<suffix>` (annotation) or
/// `global-auth-<suffix>` (ConfigMap). `Err` = (the suffix at fault, reason).
fn external_auth(
    get: &dyn Fn(&str) -> Option<String>,
    url: &str,
    settings: &Settings,
    proxy_set_headers: Vec<(HeaderName, Template)>,
    warn: &mut dyn FnMut(&str, String),
) -> Result<ExternalAuth, (&'static str, String)> {
    // These end up in header values (Location, X-Auth-Request-Redirect) and the request line.
    for suffix in ["url", "signin", "request-redirect", "cache-key"] {
        let value = if suffix == "url" {
            Some(url.to_string())
        } else {
            get(suffix)
        };
        if value.is_some_and(|v| v.chars().any(|c| c.is_control())) {
            return Err((suffix, "contains control characters".to_string()));
        }
    }
    let host = url_host(url).map_err(|e| ("url", e))?;
    let url = Template::parse(url).map_err(|e| ("url", e))?;
    let method = match get("method") {
        None => None,
        Some(m) => {
            const METHODS: [&str; 9] = [
                "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
            ];
            if !METHODS.contains(&m.as_str()) {
                return Err(("method", format!("invalid HTTP method {m:?}")));
            }
            Some(Method::from_bytes(m.as_bytes()).expect("a listed method"))
        }
    };
    let param = get("signin-redirect-param").unwrap_or_else(|| "rd".to_string());
    let signin = match get("signin") {
        None => None,
        Some(s) => Some(Template::parse(&signin_url(&s, &param)).map_err(|e| ("signin", e))?),
    };
    let mut response_headers = Vec::new();
    for name in get("response-headers")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
    {
        response_headers.push(header_name(name).map_err(|e| ("response-headers", e))?);
    }
    let request_redirect = match get("request-redirect") {
        None => None,
        Some(r) => Some(Template::parse(&r).map_err(|e| ("request-redirect", e))?),
    };
    let cache = match get("cache-key") {
        None => None,
        Some(key) => Some(CacheRule {
            key: Template::parse(&key).map_err(|e| ("cache-key", e))?,
            valid: parse_cache_durations(&get("cache-duration").unwrap_or_default())
                .map_err(|e| ("cache-duration", e))?,
        }),
    };
    let always_set_cookie = match get("always-set-cookie") {
        None => false,
        Some(v) => parse_bool(&v).unwrap_or_else(|e| {
            warn(
                "always-set-cookie",
                format!("invalid value {v:?}: {e}; using false"),
            );
            false
        }),
    };
    Ok(ExternalAuth {
        url,
        host,
        method,
        signin,
        response_headers,
        request_redirect,
        proxy_set_headers,
        cache,
        always_set_cookie,
        tls: auth_tls(),
        connect_timeout: settings.proxy_connect_timeout,
        read_timeout: settings.proxy_read_timeout,
    })
}

/// `global-auth-*` of the ConfigMap; a broken one is reported and ignored, as ingress-nginx.
pub fn global_auth(
    settings: &Settings,
    configmap: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> Option<GlobalAuth> {
    let keys = &settings.global_auth;
    let get = |suffix: &str| {
        keys.get(&format!("global-auth-{suffix}"))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let Some(url) = get("url") else {
        for key in keys.keys() {
            diags.push(Diagnostic::warning(
                configmap.clone(),
                format!("data.{key}"),
                "has no effect without global-auth-url; ignored",
            ));
        }
        return None;
    };
    let mut warnings = Vec::new();
    let result = external_auth(&get, &url, settings, Vec::new(), &mut |suffix, message| {
        warnings.push((suffix.to_string(), message))
    });
    for (suffix, message) in warnings {
        diags.push(Diagnostic::warning(
            configmap.clone(),
            format!("data.global-auth-{suffix}"),
            message,
        ));
    }
    match result {
        Ok(external) => {
            let mut parts: Vec<&str> = vec!["global"];
            for (k, v) in keys {
                parts.push(k);
                parts.push(v);
            }
            Some(GlobalAuth {
                external: Arc::new(external),
                id: hash_of(&parts),
            })
        }
        Err((suffix, reason)) => {
            diags.push(Diagnostic::warning(
                configmap.clone(),
                format!("data.global-auth-{suffix}"),
                format!("{reason}; global external authentication is off"),
            ));
            None
        }
    }
}

/// The stores translation reads auth objects from.
pub struct AuthObjects<'a> {
    pub secrets: &'a BTreeMap<(String, String), Arc<Secret>>,
    pub config_maps: &'a BTreeMap<(String, String), Arc<ConfigMap>>,
}

/// `name` or `<own namespace>/name`; other namespaces are refused
/// (allow-cross-namespace-resources is off in ingress-nginx by default).
fn same_namespace<'a>(value: &'a str, namespace: &str) -> Result<&'a str, String> {
    match value.split_once('/') {
        Some((ns, name)) if ns == namespace && !name.is_empty() => Ok(name),
        Some((ns, _)) => Err(format!(
            "references namespace {ns:?}; only the Ingress's own namespace is allowed"
        )),
        None if !value.is_empty() => Ok(value),
        None => Err("empty reference".into()),
    }
}

/// The auth policy of one Ingress.
pub fn ingress_auth(
    annotations: Option<&BTreeMap<String, String>>,
    namespace: &str,
    objects: &AuthObjects<'_>,
    settings: &Settings,
    global: Option<&GlobalAuth>,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> IngressAuth {
    let empty = BTreeMap::new();
    let annotations = annotations.unwrap_or(&empty);
    let get = |name: &str| {
        annotations
            .get(&format!("{PREFIX}{name}"))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let field = |name: &str| format!("metadata.annotations[{PREFIX}{name}]");
    let mut denied: Option<String> = None;
    let mut deny = |name: &str, reason: String, diags: &mut Vec<Diagnostic>| {
        diags.push(Diagnostic::warning(
            object.clone(),
            field(name),
            format!("{reason}; every path of this Ingress answers 503"),
        ));
        denied.get_or_insert(format!("invalid annotation {name}"));
    };
    let mut id_parts: Vec<String> = Vec::new();

    // Companions without the annotation they belong to do nothing: say so.
    let orphans: [(&str, &[&str]); 2] = [
        (
            "auth-type",
            &["auth-secret", "auth-secret-type", "auth-realm"],
        ),
        (
            "auth-url",
            &[
                "auth-method",
                "auth-signin",
                "auth-signin-redirect-param",
                "auth-response-headers",
                "auth-request-redirect",
                "auth-proxy-set-headers",
                "auth-cache-key",
                "auth-cache-duration",
                "auth-always-set-cookie",
            ],
        ),
    ];
    for (main, companions) in orphans {
        if get(main).is_some() {
            continue;
        }
        for name in companions.iter().filter(|n| get(n).is_some()) {
            diags.push(Diagnostic::warning(
                object.clone(),
                field(name),
                format!("has no effect without {main}; ignored"),
            ));
        }
    }

    // Basic authentication.
    let basic = match get("auth-type").as_deref() {
        None => None,
        Some("basic") => match basic_auth(&get, namespace, objects, object, diags, &mut id_parts) {
            Ok(basic) => Some(basic),
            Err((name, reason)) => {
                deny(name, reason, diags);
                None
            }
        },
        Some("digest") => {
            deny(
                "auth-type",
                "digest authentication is not supported by Sluice".into(),
                diags,
            );
            None
        }
        Some(other) => {
            deny(
                "auth-type",
                format!("invalid authentication type {other:?} (basic)"),
                diags,
            );
            None
        }
    };

    // External authentication: the Ingress's own, else the global one unless opted out.
    let mut external = None;
    if let Some(url) = get("auth-url") {
        let proxy_set_headers = match get("auth-proxy-set-headers") {
            None => Ok(Vec::new()),
            Some(reference) => proxy_set_headers(&reference, namespace, objects, &mut id_parts),
        };
        let sub = |suffix: &str| get(&format!("auth-{suffix}"));
        let mut warnings = Vec::new();
        let result = proxy_set_headers
            .map_err(|e| ("proxy-set-headers", e))
            .and_then(|headers| {
                external_auth(&sub, &url, settings, headers, &mut |suffix, message| {
                    warnings.push((suffix.to_string(), message))
                })
            });
        for (suffix, message) in warnings {
            diags.push(Diagnostic::warning(
                object.clone(),
                field(&format!("auth-{suffix}")),
                message,
            ));
        }
        match result {
            Ok(ext) => {
                for name in ANNOTATIONS {
                    if let Some(v) = get(name) {
                        id_parts.push(format!("{name}={v}"));
                    }
                }
                external = Some(Arc::new(ext));
            }
            Err((suffix, reason)) => deny(&format!("auth-{suffix}"), reason, diags),
        }
    } else if let Some(global) = global {
        let enabled = match get("enable-global-auth") {
            None => true,
            Some(v) => parse_bool(&v).unwrap_or_else(|e| {
                diags.push(Diagnostic::warning(
                    object.clone(),
                    field("enable-global-auth"),
                    format!("invalid value {v:?}: {e}; using true"),
                ));
                true
            }),
        };
        if enabled {
            id_parts.push(format!("global={}", global.id));
            external = Some(global.external.clone());
        }
    }

    let policy = (basic.is_some() || external.is_some()).then(|| {
        let refs: Vec<&str> = id_parts.iter().map(String::as_str).collect();
        Arc::new(AuthPolicy {
            basic,
            external,
            id: hash_of(&refs),
        })
    });
    IngressAuth {
        denied: denied.map(Arc::from),
        policy,
    }
}

fn basic_auth(
    get: &dyn Fn(&str) -> Option<String>,
    namespace: &str,
    objects: &AuthObjects<'_>,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
    id_parts: &mut Vec<String>,
) -> Result<BasicAuth, (&'static str, String)> {
    let reference = get("auth-secret").ok_or(("auth-secret", "missing".to_string()))?;
    let name = same_namespace(&reference, namespace).map_err(|e| ("auth-secret", e))?;
    let secret = objects
        .secrets
        .get(&(namespace.to_string(), name.to_string()))
        .ok_or_else(|| {
            (
                "auth-secret",
                format!("Secret {namespace}/{name} not found"),
            )
        })?;
    let data = secret.data.as_ref();
    let secret_type = get("auth-secret-type").unwrap_or_else(|| "auth-file".to_string());
    let field = format!("metadata.annotations[{PREFIX}auth-secret]");
    let users = match secret_type.as_str() {
        "auth-file" => {
            let content = data.and_then(|d| d.get("auth")).ok_or_else(|| {
                (
                    "auth-secret",
                    format!("Secret {namespace}/{name} has no key `auth`"),
                )
            })?;
            let text = String::from_utf8_lossy(&content.0);
            id_parts.push(format!("file={text}"));
            let (users, problems) = Htpasswd::parse(&text);
            for (line, reason) in problems {
                diags.push(Diagnostic::warning(
                    object.clone(),
                    field.clone(),
                    format!("Secret {namespace}/{name} key auth line {line}: {reason}; signing in as that user answers 500, as nginx"),
                ));
            }
            users
        }
        "auth-map" => {
            let entries: Vec<(&str, String)> = data
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(&v.0).into_owned()))
                .collect();
            if entries.is_empty() {
                return Err((
                    "auth-secret",
                    format!("Secret {namespace}/{name} has no users"),
                ));
            }
            for (k, v) in &entries {
                id_parts.push(format!("map={k}:{v}"));
            }
            let (users, problems) =
                Htpasswd::from_map(entries.iter().map(|(k, v)| (*k, v.as_str())));
            for reason in problems {
                diags.push(Diagnostic::warning(
                    object.clone(),
                    field.clone(),
                    format!("Secret {namespace}/{name}: {reason}; signing in as that user answers 500, as nginx"),
                ));
            }
            users
        }
        other => {
            return Err((
                "auth-secret-type",
                format!("invalid auth-secret-type {other:?}, must be auth-file or auth-map"),
            ))
        }
    };
    let realm = get("auth-realm").unwrap_or_default();
    let challenge = match BasicAuth::challenge_for(&realm) {
        Ok(c) => c,
        Err(e) => {
            diags.push(Diagnostic::warning(
                object.clone(),
                format!("metadata.annotations[{PREFIX}auth-realm]"),
                format!("{e}; using an empty realm"),
            ));
            BasicAuth::challenge_for("").expect("an empty realm is valid")
        }
    };
    id_parts.push(format!("realm={realm}"));
    Ok(BasicAuth {
        challenge,
        users: Arc::new(users),
    })
}

/// `auth-proxy-set-headers`: a ConfigMap of header -> value (values may hold variables).
fn proxy_set_headers(
    reference: &str,
    namespace: &str,
    objects: &AuthObjects<'_>,
    id_parts: &mut Vec<String>,
) -> Result<Vec<(HeaderName, Template)>, String> {
    let name = same_namespace(reference, namespace)?;
    let config_map = objects
        .config_maps
        .get(&(namespace.to_string(), name.to_string()))
        .ok_or_else(|| format!("unable to find ConfigMap {namespace}/{name}"))?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (k, v) in config_map.data.iter().flatten() {
        let header = header_name(k).map_err(|e| format!("ConfigMap {namespace}/{name}: {e}"))?;
        if v.contains(['\r', '\n']) {
            return Err(format!(
                "ConfigMap {namespace}/{name}: value of {k} has a line break"
            ));
        }
        let value = Template::parse(v).map_err(|e| format!("ConfigMap {namespace}/{name}: {e}"))?;
        if seen.insert(header.clone()) {
            id_parts.push(format!("psh={k}:{v}"));
            out.push((header, value));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        pairs: &[(&str, &str)],
        secrets: &[(&str, &[(&str, &str)])],
        global: Option<&GlobalAuth>,
    ) -> (IngressAuth, Vec<Diagnostic>) {
        let annotations: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        let secrets: BTreeMap<(String, String), Arc<Secret>> = secrets
            .iter()
            .map(|(name, data)| {
                let data = data
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect();
                let secret = Secret {
                    data: Some(data),
                    ..Default::default()
                };
                (("shop".to_string(), name.to_string()), Arc::new(secret))
            })
            .collect();
        let config_maps = BTreeMap::new();
        let objects = AuthObjects {
            secrets: &secrets,
            config_maps: &config_maps,
        };
        let mut diags = Vec::new();
        let auth = ingress_auth(
            Some(&annotations),
            "shop",
            &objects,
            &Settings::default(),
            global,
            &ObjectRef::new("Ingress", "shop", "web"),
            &mut diags,
        );
        (auth, diags)
    }

    #[test]
    fn diagnostics_denials_and_global_opt_out() {
        let users: &[(&str, &str)] = &[("auth", "alice:{PLAIN}pw\nbob:\n")];
        let (auth, diags) = run(
            &[("auth-type", "basic"), ("auth-secret", "users")],
            &[("users", users)],
            None,
        );
        assert!(auth.denied.is_none());
        assert!(auth.policy.unwrap().basic.is_some());
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(diags[0].message.contains("line 2"), "{diags:?}");

        let (auth, diags) = run(
            &[("auth-type", "basic"), ("auth-secret", "nope")],
            &[],
            None,
        );
        assert!(auth.denied.is_some() && auth.policy.is_none());
        assert_eq!(
            diags[0].field,
            format!("metadata.annotations[{PREFIX}auth-secret]")
        );

        let (auth, diags) = run(
            &[("auth-secret", "users"), ("auth-signin", "https://x/")],
            &[],
            None,
        );
        assert!(auth.denied.is_none() && auth.policy.is_none());
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert!(diags.iter().all(|d| d.message.contains("has no effect")));

        let settings = Settings {
            global_auth: [(
                "global-auth-url".to_string(),
                "http://auth.svc/".to_string(),
            )]
            .into(),
            ..Settings::default()
        };
        let mut diags = Vec::new();
        let cm = ObjectRef::new("ConfigMap", "ingress", "sluice");
        let global = global_auth(&settings, &cm, &mut diags).expect("valid");
        assert!(diags.is_empty());
        let broken = |pairs: &[(&str, &str)]| {
            let settings = Settings {
                global_auth: pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Settings::default()
            };
            let mut diags = Vec::new();
            let global = global_auth(&settings, &cm, &mut diags);
            (global.is_some(), diags)
        };
        let (on, diags) = broken(&[("global-auth-url", "auth.svc/check")]);
        assert!(!on);
        assert_eq!(diags[0].field, "data.global-auth-url", "{diags:?}");
        let (on, diags) = broken(&[
            ("global-auth-url", "http://auth.svc/"),
            ("global-auth-method", "FETCH"),
        ]);
        assert!(!on);
        assert_eq!(diags[0].field, "data.global-auth-method", "{diags:?}");
        let (on, diags) = broken(&[("global-auth-signin", "https://login/")]);
        assert!(!on);
        assert!(
            diags[0].message.contains("without global-auth-url"),
            "{diags:?}"
        );

        let (on, _) = run(&[], &[], Some(&global));
        assert!(on.policy.unwrap().external.is_some());
        let (off, _) = run(&[("enable-global-auth", "false")], &[], Some(&global));
        assert!(off.policy.is_none());
        let (own, _) = run(&[("auth-url", "http://own.svc/check")], &[], Some(&global));
        let own = own.policy.unwrap();
        assert_eq!(
            own.external.as_ref().unwrap().url,
            Template::literal("http://own.svc/check")
        );
    }

    #[test]
    fn cache_durations_and_hosts() {
        let d = parse_cache_durations("200 202 401 5m, 1h 30m").unwrap();
        assert_eq!(d[0].codes, vec![200, 202, 401]);
        assert_eq!(d[0].ttl, Duration::from_secs(300));
        assert_eq!(d[1].ttl, Duration::from_secs(5400));
        assert!(parse_cache_durations("5m 200").is_err());
        assert!(parse_cache_durations("200").is_err());
        assert_eq!(
            parse_cache_durations("").unwrap()[0].codes,
            vec![200, 202, 401]
        );
        assert_eq!(
            url_host("http://auth.svc:8080/verify?x=1").unwrap(),
            Template::literal("auth.svc")
        );
        assert!(url_host("https://$host/oauth2/auth").unwrap().has_vars());
        assert!(url_host("auth.svc/verify").is_err());
        assert_eq!(
            url_host("http://[::1]:9000/").unwrap(),
            Template::literal("::1")
        );
        assert!(url_host("ftp://a/").is_err());
    }
}
