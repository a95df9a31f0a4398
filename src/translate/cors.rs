//! `enable-cors` and the `cors-*` annotations of an Ingress, validated as ingress-nginx's
//! `annotations/cors` parser does: a bad value is reported and its default used.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderValue;

use super::annotations::PREFIX;
use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::settings::parse_bool;
use crate::snapshot::cors::{CorsOrigins, CorsPolicy, OriginPattern};

/// Annotations (without prefix) handled here.
pub const ANNOTATIONS: &[&str] = &[
    "enable-cors",
    "cors-allow-origin",
    "cors-allow-methods",
    "cors-allow-headers",
    "cors-expose-headers",
    "cors-allow-credentials",
    "cors-max-age",
];

pub const DEFAULT_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
pub const DEFAULT_HEADERS: &str =
    "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
pub const DEFAULT_MAX_AGE: i64 = 1_728_000;

/// A comma list of tokens whose characters satisfy `token` (ingress-nginx's
/// `^((TOKEN),?\s?)+$` validators).
fn token_list(value: &str, token: impl Fn(&str) -> bool) -> bool {
    !value.is_empty()
        && value.split(',').enumerate().all(|(i, item)| {
            // One optional space after each comma.
            let item = if i > 0 {
                item.strip_prefix(' ').unwrap_or(item)
            } else {
                item
            };
            let item = item.strip_suffix(' ').unwrap_or(item);
            !item.is_empty() && token(item)
        })
        && !value.ends_with(", ,")
}

fn header_name_token(t: &str) -> bool {
    t.bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// `https?://(*.)?[A-Za-z0-9-.]*(:port)?`, or `null`.
fn valid_origin(origin: &str) -> bool {
    if origin == "null" {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    let rest = rest.strip_prefix("*.").unwrap_or(rest);
    let (host, port) = match rest.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    host.bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

/// The CORS policy of an Ingress; `None` unless `enable-cors` is true.
pub fn ingress_cors(
    annotations: Option<&BTreeMap<String, String>>,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> Option<Arc<CorsPolicy>> {
    let annotations = annotations?;
    let get = |name: &str| {
        annotations
            .get(&format!("{PREFIX}{name}"))
            .map(|v| v.trim())
    };
    let mut warn = |name: &str, value: &str, why: &str| {
        diags.push(Diagnostic::warning(
            object.clone(),
            format!("metadata.annotations[{PREFIX}{name}]"),
            format!("invalid value {value:?}: {why}; using the default"),
        ));
    };
    let enabled = match get("enable-cors") {
        None => false,
        Some(v) => parse_bool(v).unwrap_or_else(|e| {
            warn("enable-cors", v, &e);
            false
        }),
    };
    if !enabled {
        return None;
    }

    let origins = match get("cors-allow-origin") {
        None => CorsOrigins::Any,
        Some(value) => {
            let mut list = Vec::new();
            let mut any = false;
            for origin in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                if origin == "*" {
                    any = true;
                    break;
                }
                if valid_origin(origin) {
                    list.push(OriginPattern::parse(origin));
                } else {
                    warn(
                        "cors-allow-origin",
                        origin,
                        "an origin is scheme://host[:port], scheme://*.host[:port], null or *; origin skipped",
                    );
                }
            }
            if any || list.is_empty() {
                CorsOrigins::Any
            } else {
                CorsOrigins::List(list)
            }
        }
    };
    let mut text = |name: &str, valid: &dyn Fn(&str) -> bool, default: &str| -> String {
        match get(name) {
            Some(v) if valid(v) => v.to_string(),
            Some(v) => {
                warn(name, v, "not an accepted list");
                default.to_string()
            }
            None => default.to_string(),
        }
    };
    let methods = text(
        "cors-allow-methods",
        &|v| token_list(v, |t| t.bytes().all(|c| c.is_ascii_alphabetic())),
        DEFAULT_METHODS,
    );
    let headers = text(
        "cors-allow-headers",
        &|v| token_list(v, header_name_token),
        DEFAULT_HEADERS,
    );
    let expose = text(
        "cors-expose-headers",
        &|v| v.is_empty() || token_list(v, |t| t == "*" || header_name_token(t)),
        "",
    );
    let credentials = match get("cors-allow-credentials") {
        None => true,
        Some(v) => parse_bool(v).unwrap_or_else(|e| {
            warn("cors-allow-credentials", v, &e);
            true
        }),
    };
    let max_age = match get("cors-max-age") {
        None => DEFAULT_MAX_AGE,
        Some(v) => v.parse::<i64>().unwrap_or_else(|_| {
            warn("cors-max-age", v, "expected an integer (seconds)");
            DEFAULT_MAX_AGE
        }),
    };
    // The validators above admit only visible ASCII and spaces, so these never fail.
    let value = |s: &str| HeaderValue::from_str(s).ok();
    Some(Arc::new(CorsPolicy {
        origins,
        allow_credentials: credentials,
        allow_methods: value(&methods)?,
        allow_headers: value(&headers)?,
        expose_headers: value(&expose).filter(|v| !v.is_empty()),
        max_age: HeaderValue::from(max_age),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> (Option<Arc<CorsPolicy>>, Vec<Diagnostic>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        let mut diags = Vec::new();
        let object = ObjectRef::new("Ingress", "ns", "web");
        (ingress_cors(Some(&map), &object, &mut diags), diags)
    }

    #[test]
    fn defaults_when_only_enabled() {
        let (cors, diags) = parse(&[("enable-cors", "true")]);
        let cors = cors.unwrap();
        assert!(diags.is_empty());
        assert_eq!(cors.origins, CorsOrigins::Any);
        assert!(cors.allow_credentials);
        assert_eq!(cors.allow_methods, DEFAULT_METHODS);
        assert_eq!(cors.allow_headers, DEFAULT_HEADERS);
        assert_eq!(cors.expose_headers, None);
        assert_eq!(cors.max_age, "1728000");
        assert!(parse(&[("cors-allow-origin", "*")]).0.is_none());
    }

    #[test]
    fn bad_values_warn_and_fall_back() {
        let (cors, diags) = parse(&[
            ("enable-cors", "true"),
            ("cors-allow-methods", "GET, $pid"),
            ("cors-allow-headers", "X-A,\r\nX-B"),
            ("cors-max-age", "soon"),
            ("cors-allow-origin", "https://ok.com, ftp://no.com"),
        ]);
        let cors = cors.unwrap();
        assert_eq!(cors.allow_methods, DEFAULT_METHODS);
        assert_eq!(cors.allow_headers, DEFAULT_HEADERS);
        assert_eq!(cors.max_age, "1728000");
        assert_eq!(
            cors.origins,
            CorsOrigins::List(vec![OriginPattern::parse("https://ok.com")])
        );
        assert_eq!(diags.len(), 4, "{diags:?}");
        assert!(diags[0].field.contains("cors-allow-origin"));
    }

    #[test]
    fn lists_accept_optional_spaces() {
        assert!(token_list("GET, POST,PUT", |t| t
            .bytes()
            .all(|c| c.is_ascii_alphabetic())));
        assert!(!token_list("GET,,POST", |t| !t.is_empty()));
        assert!(valid_origin("https://*.foo.com:8080"));
        assert!(!valid_origin("https://foo.com:"));
        assert!(!valid_origin("foo.com"));
    }
}
