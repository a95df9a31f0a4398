//! Load balancing and canary annotations: `load-balance`, `upstream-hash-by`(+`-subset`,
//! `-subset-size`), cookie affinity (`affinity`, `affinity-mode`, `session-cookie-*`), and
//! canary Ingresses (`canary`, `canary-by-*`, `canary-weight`(+`-total`)) attached to the
//! location of the non-canary Ingress with the same host and path.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderName;
use k8s_openapi::api::networking::v1::Ingress;

use super::annotations::PREFIX;
use super::{normalize_host, Builder};
use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::settings::{parse_bool, Settings};
use crate::snapshot::backend::{
    Affinity, AffinityMode, Balance, Canary, CanaryPattern, CanaryRule, HashBy, HashPart,
};
use crate::snapshot::{RouteId, Target};
use crate::store::Kind;

/// The annotations this module implements (without prefix).
pub const ANNOTATIONS: &[&str] = &[
    "load-balance",
    "upstream-hash-by",
    "upstream-hash-by-subset",
    "upstream-hash-by-subset-size",
    "affinity",
    "affinity-mode",
    "affinity-canary-behavior",
    "session-cookie-name",
    "session-cookie-path",
    "session-cookie-domain",
    "session-cookie-samesite",
    "session-cookie-conditional-samesite-none",
    "session-cookie-expires",
    "session-cookie-max-age",
    "session-cookie-secure",
    "session-cookie-change-on-failure",
    "canary",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-header-pattern",
    "canary-by-cookie",
    "canary-weight",
    "canary-weight-total",
];

/// Annotations of a canary Ingress that ingress-nginx honours besides the `canary*` ones.
fn kept_on_canary(name: &str) -> bool {
    name.starts_with("canary")
        || name.starts_with("session-cookie-")
        || name.starts_with("upstream-hash-by")
        || name.starts_with("affinity")
        || name == "load-balance"
}

struct Reader<'a> {
    annotations: &'a BTreeMap<String, String>,
    object: &'a ObjectRef,
    diags: &'a mut Vec<Diagnostic>,
}

impl Reader<'_> {
    fn raw(&self, name: &str) -> Option<&str> {
        self.annotations
            .get(&format!("{PREFIX}{name}"))
            .map(|v| v.trim())
    }

    fn bad(&mut self, name: &str, message: impl std::fmt::Display) {
        let value = self.raw(name).unwrap_or("").to_string();
        self.diags.push(Diagnostic::warning(
            self.object.clone(),
            format!("metadata.annotations[{PREFIX}{name}]"),
            format!("invalid value {value:?}: {message}"),
        ));
    }

    fn parse<T>(&mut self, name: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        let value = self.raw(name)?.to_string();
        match parse(&value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.bad(name, format!("{e}; using the default"));
                None
            }
        }
    }

    fn flag(&mut self, name: &str) -> Option<bool> {
        self.parse(name, parse_bool)
    }
}

/// Text that goes into a cookie attribute: no separators or control characters.
fn cookie_text(v: &str) -> Result<String, String> {
    if v.is_empty()
        || v.bytes()
            .any(|c| c.is_ascii_control() || c == b';' || c == b',')
    {
        return Err("must be non-empty, without `;`, `,` or control characters".into());
    }
    Ok(v.to_string())
}

/// ingress-nginx's `(^0|-?[1-9]\d*$)` for expires and max-age.
fn seconds(v: &str) -> Result<i64, String> {
    if v == "0" || (!v.starts_with('0') && !v.starts_with("-0")) {
        if let Ok(n) = v.parse::<i64>() {
            return Ok(n);
        }
    }
    Err("expected a number of seconds".into())
}

/// The `upstream-hash-by` value as nginx parses a complex value: text and `$var`/`${var}`.
pub fn parse_hash_by(value: &str) -> Result<Vec<HashPart>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        literal.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| "unterminated `${`".to_string())?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() {
            return Err("`$` without a variable name".into());
        }
        if !literal.is_empty() {
            parts.push(HashPart::Literal(std::mem::take(&mut literal)));
        }
        parts.push(variable(name)?);
        rest = tail;
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(HashPart::Literal(literal));
    }
    if parts.is_empty() {
        return Err("empty".into());
    }
    Ok(parts)
}

fn variable(name: &str) -> Result<HashPart, String> {
    Ok(match name {
        "request_uri" => HashPart::RequestUri,
        "uri" | "document_uri" => HashPart::Uri,
        "args" | "query_string" => HashPart::Args,
        "remote_addr" | "binary_remote_addr" => HashPart::RemoteAddr,
        "host" => HashPart::Host,
        "scheme" => HashPart::Scheme,
        "request_method" => HashPart::Method,
        _ => {
            if let Some(h) = name.strip_prefix("http_") {
                let header = h.replace('_', "-").to_ascii_lowercase();
                HashPart::Header(
                    HeaderName::from_bytes(header.as_bytes())
                        .map_err(|_| format!("${name} names no valid header"))?,
                )
            } else if let Some(c) = name.strip_prefix("cookie_").filter(|c| !c.is_empty()) {
                HashPart::Cookie(c.to_string())
            } else if let Some(a) = name.strip_prefix("arg_").filter(|a| !a.is_empty()) {
                HashPart::Arg(a.to_string())
            } else {
                return Err(format!(
                    "variable ${name} is not supported (use $request_uri, $uri, $args, $arg_*, $remote_addr, $host, $scheme, $request_method, $http_*, $cookie_*)"
                ));
            }
        }
    })
}

fn affinity(r: &mut Reader<'_>) -> Option<Affinity> {
    match r.raw("affinity") {
        None | Some("") => return None,
        Some("cookie") => {}
        Some(_) => {
            r.bad("affinity", "only `cookie` is supported; no affinity");
            return None;
        }
    }
    let mode = r
        .parse("affinity-mode", |v| match v {
            "balanced" | "" => Ok(AffinityMode::Balanced),
            "persistent" => Ok(AffinityMode::Persistent),
            _ => Err("expected balanced or persistent".into()),
        })
        .unwrap_or_default();
    let name = r
        .parse("session-cookie-name", |v| {
            if !v.is_empty()
                && v.bytes()
                    .all(|c| c.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&c))
            {
                Ok(v.to_string())
            } else {
                Err("not a valid cookie name".into())
            }
        })
        .unwrap_or_else(|| "INGRESSCOOKIE".to_string());
    let samesite = r.parse("session-cookie-samesite", |v| match v {
        "None" | "Lax" | "Strict" => Ok(v.to_string()),
        _ => Err("expected None, Lax or Strict".into()),
    });
    Some(Affinity {
        mode,
        name,
        path: r.parse("session-cookie-path", cookie_text),
        domain: r.parse("session-cookie-domain", cookie_text),
        samesite,
        conditional_samesite_none: r
            .flag("session-cookie-conditional-samesite-none")
            .unwrap_or(false),
        expires: r.parse("session-cookie-expires", seconds),
        max_age: r.parse("session-cookie-max-age", seconds),
        secure: r.flag("session-cookie-secure"),
        change_on_failure: r.flag("session-cookie-change-on-failure").unwrap_or(false),
    })
}

/// The balancing of an Ingress's locations, as ingress-nginx's `get_implementation` picks
/// it: cookie affinity, else `upstream-hash-by`, else `load-balance`, else the ConfigMap's
/// `load-balance`. `with_affinity: false` leaves the affinity annotations out.
fn balance(r: &mut Reader<'_>, settings: &Settings, with_affinity: bool) -> Balance {
    let sticky = if with_affinity { affinity(r) } else { None };
    let hash = r.parse("upstream-hash-by", parse_hash_by);
    let subset = r.flag("upstream-hash-by-subset").unwrap_or(false);
    let subset_size = r.parse("upstream-hash-by-subset-size", |v| {
        match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err("expected a positive number".into()),
        }
    });
    let load_balance = r.parse("load-balance", |v| match v {
        "round_robin" => Ok(Balance::RoundRobin),
        "ewma" => Ok(Balance::Ewma),
        "chash" | "chashsubset" => Err("needs upstream-hash-by; using round_robin".into()),
        "sticky_balanced" | "sticky_persistent" => {
            Err("needs affinity: cookie; using round_robin".into())
        }
        _ => Err("expected round_robin or ewma".into()),
    });
    if let Some(affinity) = sticky {
        return Balance::Sticky(Arc::new(affinity));
    }
    if let Some(parts) = hash {
        return Balance::Hash(Arc::new(HashBy {
            parts,
            subset_size: subset.then(|| subset_size.unwrap_or(3)),
        }));
    }
    load_balance.unwrap_or_else(|| match settings.load_balance.as_str() {
        "ewma" => Balance::Ewma,
        _ => Balance::RoundRobin,
    })
}

/// The balancing of a non-canary Ingress's locations. Also reports `canary-*` annotations
/// on an Ingress without `canary: "true"` (ingress-nginx rejects those).
pub fn ingress_balance(
    annotations: Option<&BTreeMap<String, String>>,
    settings: &Settings,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> Balance {
    let empty = BTreeMap::new();
    let mut r = Reader {
        annotations: annotations.unwrap_or(&empty),
        object,
        diags,
    };
    let stray: Vec<String> = r
        .annotations
        .keys()
        .filter_map(|k| k.strip_prefix(PREFIX))
        .filter(|n| n.starts_with("canary-"))
        .map(str::to_string)
        .collect();
    for name in stray {
        r.diags.push(Diagnostic::warning(
            object.clone(),
            format!("metadata.annotations[{PREFIX}{name}]"),
            "canary annotations need canary: \"true\"; ignored",
        ));
    }
    balance(&mut r, settings, true)
}

/// `canary: "true"`.
pub fn is_canary(ingress: &Ingress) -> bool {
    ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&format!("{PREFIX}canary")))
        .is_some_and(|v| parse_bool(v.trim()) == Ok(true))
}

/// What a canary Ingress brings to the locations it attaches to.
struct CanaryIngress {
    rule: CanaryRule,
    /// Its balancing without affinity, and its own affinity (used only with
    /// `affinity-canary-behavior: legacy`).
    balance_without_affinity: Balance,
    own_balance: Balance,
    legacy: bool,
}

fn canary_annotations(
    annotations: &BTreeMap<String, String>,
    settings: &Settings,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> CanaryIngress {
    let mut r = Reader {
        annotations,
        object,
        diags,
    };
    let header = r.parse("canary-by-header", |v| {
        HeaderName::from_bytes(v.as_bytes()).map_err(|_| "not a valid header name".to_string())
    });
    let header_value = r
        .raw("canary-by-header-value")
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let header_pattern = r.parse("canary-by-header-pattern", |v| {
        regex::Regex::new(v)
            .map(CanaryPattern)
            .map_err(|e| format!("not a valid regular expression ({e}); the pattern never matches"))
    });
    let cookie = r.parse("canary-by-cookie", cookie_text);
    let weight = r
        .parse("canary-weight", |v| {
            v.parse::<u32>()
                .map_err(|_| "expected a whole number from 0".to_string())
        })
        .unwrap_or(0);
    let weight_total = r
        .parse("canary-weight-total", |v| match v.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err("expected a positive whole number".to_string()),
        })
        .unwrap_or(100);
    let legacy = r
        .parse("affinity-canary-behavior", |v| match v {
            "sticky" | "" => Ok(false),
            "legacy" => Ok(true),
            _ => Err("expected sticky or legacy".into()),
        })
        .unwrap_or(false);
    let rule = CanaryRule {
        header,
        header_value,
        header_pattern,
        cookie,
        weight,
        weight_total,
    };
    let balance_without_affinity = balance(&mut r, settings, false);
    let own_balance = match legacy.then(|| affinity(&mut r)).flatten() {
        Some(a) => Balance::Sticky(Arc::new(a)),
        None => balance_without_affinity.clone(),
    };
    // ingress-nginx uses nothing else of a canary Ingress; say so rather than drop it.
    let ignored: Vec<String> = annotations
        .keys()
        .filter_map(|k| k.strip_prefix(PREFIX))
        .filter(|n| !kept_on_canary(n))
        .map(str::to_string)
        .collect();
    for name in ignored {
        diags.push(Diagnostic::warning(
            object.clone(),
            format!("metadata.annotations[{PREFIX}{name}]"),
            "ignored on a canary Ingress: only canary, load-balance, upstream-hash-by and affinity annotations apply to it (as in ingress-nginx)",
        ));
    }
    CanaryIngress {
        rule,
        balance_without_affinity,
        own_balance,
        legacy,
    }
}

/// A location a canary may attach to: (host, or empty for rules without host; Ingress
/// path; the route).
pub type Location = (String, String, RouteId);

/// Attach each canary Ingress (oldest first) to the locations of non-canary Ingresses with
/// the same host and path: the first canary of a location wins, a canary with no such
/// location, or whose Service is the location's own, is reported and ignored.
pub(super) fn attach_canaries(
    b: &mut Builder<'_>,
    canaries: &[&Arc<Ingress>],
    locations: &[Location],
    settings: &Settings,
) {
    for ingress in canaries {
        let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
        let name = ingress.metadata.name.clone().unwrap_or_default();
        let object = ObjectRef::new("Ingress", &namespace, &name);
        let empty = BTreeMap::new();
        let mut diags = Vec::new();
        let canary = canary_annotations(
            ingress.metadata.annotations.as_ref().unwrap_or(&empty),
            settings,
            &object,
            &mut diags,
        );
        for d in diags {
            b.warn(&d.object, Kind::Ingress, d.field, d.message);
        }
        let Some(spec) = &ingress.spec else { continue };
        for (rule_index, rule) in spec.rules.as_deref().unwrap_or(&[]).iter().enumerate() {
            let host = match rule.host.as_deref().filter(|h| !h.is_empty()) {
                Some(h) => match normalize_host(h) {
                    Ok(h) => h,
                    Err(_) => continue,
                },
                None => String::new(),
            };
            let Some(http) = &rule.http else { continue };
            for (path_index, path) in http.paths.iter().enumerate() {
                let field = format!("spec.rules[{rule_index}].http.paths[{path_index}]");
                let path_value = path
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "/".to_string());
                let targets: Vec<RouteId> = locations
                    .iter()
                    .filter(|(h, p, _)| *h == host && *p == path_value)
                    .map(|(_, _, r)| *r)
                    .collect();
                if targets.is_empty() {
                    let shown = if host.is_empty() { "(any host)" } else { &host };
                    b.warn(&object, Kind::Ingress, format!("{field}.path"), format!("canary: no non-canary Ingress serves host {shown} path {path_value}; ignored"));
                    continue;
                }
                let Some((Target::Backend(alternative), _, _)) =
                    b.backend_target(&object, &format!("{field}.backend"), &path.backend)
                else {
                    continue;
                };
                for route_id in targets {
                    attach(b, &object, &field, &canary, route_id, alternative);
                }
            }
        }
    }
}

fn attach(
    b: &mut Builder<'_>,
    object: &ObjectRef,
    field: &str,
    canary: &CanaryIngress,
    route_id: RouteId,
    alternative: u32,
) {
    let route = &b.routes[route_id as usize];
    let Target::Backend(primary) = route.target else {
        return;
    };
    let problem = if primary == alternative {
        Some(
            "canary: the canary names the same Service port as the main Ingress; ignored"
                .to_string(),
        )
    } else {
        route.policy.canary.as_ref().map(|existing| {
            format!(
                "canary: host {:?} path {} already has the canary {}; ignored (one canary per location)",
                &*route.labels.host, route.labels.path, existing.upstream_name
            )
        })
    };
    if let Some(problem) = problem {
        b.warn(object, Kind::Ingress, format!("{field}.backend"), problem);
        return;
    }
    // affinity-canary-behavior sticky (the default): the canary takes the main location's
    // affinity, so a session stays on whichever side it landed on.
    let balance = match (&route.policy.balance, canary.legacy) {
        (_, true) => canary.own_balance.clone(),
        (Some(Balance::Sticky(affinity)), false) => Balance::Sticky(affinity.clone()),
        (_, false) => canary.balance_without_affinity.clone(),
    };
    let upstream_name: Arc<str> = b.backends.list[alternative as usize].name.as_str().into();
    let route = &mut b.routes[route_id as usize];
    Arc::make_mut(&mut route.policy).canary = Some(Arc::new(Canary {
        backend: alternative,
        upstream_name,
        rule: canary.rule.clone(),
        balance,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_by_values_split_into_text_and_variables() {
        assert_eq!(
            parse_hash_by("$request_uri").unwrap(),
            vec![HashPart::RequestUri]
        );
        assert_eq!(
            parse_hash_by("${request_uri}-text$http_x_user_id$cookie_sid").unwrap(),
            vec![
                HashPart::RequestUri,
                HashPart::Literal("-text".into()),
                HashPart::Header(HeaderName::from_static("x-user-id")),
                HashPart::Cookie("sid".into()),
            ]
        );
        assert_eq!(
            parse_hash_by("literal").unwrap(),
            vec![HashPart::Literal("literal".into())]
        );
        assert!(parse_hash_by("$upstream_addr").is_err());
        assert!(parse_hash_by("${host").is_err());
    }

    fn read(pairs: &[(&str, &str)]) -> (Balance, Vec<Diagnostic>) {
        let annotations: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        let mut diags = Vec::new();
        let object = ObjectRef::new("Ingress", "ns", "web");
        let b = ingress_balance(
            Some(&annotations),
            &Settings::default(),
            &object,
            &mut diags,
        );
        (b, diags)
    }

    #[test]
    fn affinity_wins_over_hash_and_hash_over_load_balance() {
        let (b, d) = read(&[
            ("affinity", "cookie"),
            ("upstream-hash-by", "$host"),
            ("load-balance", "ewma"),
        ]);
        assert!(
            matches!(b, Balance::Sticky(ref a) if a.name == "INGRESSCOOKIE"),
            "{b:?}"
        );
        assert!(d.is_empty());
        let (b, _) = read(&[("upstream-hash-by", "$host"), ("load-balance", "ewma")]);
        assert!(matches!(b, Balance::Hash(_)));
        let (b, _) = read(&[
            ("upstream-hash-by", "$host"),
            ("upstream-hash-by-subset", "true"),
        ]);
        assert!(matches!(b, Balance::Hash(ref h) if h.subset_size == Some(3)));
        let (b, _) = read(&[("load-balance", "ewma")]);
        assert_eq!(b, Balance::Ewma);
    }

    #[test]
    fn bad_values_warn_and_fall_back() {
        let (b, d) = read(&[
            ("load-balance", "least_conn"),
            ("affinity", "cookie"),
            ("session-cookie-max-age", "3d"),
            ("session-cookie-samesite", "Sometimes"),
            ("session-cookie-name", "a;b"),
            ("canary-weight", "10"),
        ]);
        let Balance::Sticky(a) = b else {
            panic!("{b:?}")
        };
        assert_eq!(a.name, "INGRESSCOOKIE");
        assert_eq!(a.max_age, None);
        assert_eq!(a.samesite, None);
        let fields: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
        for name in [
            "load-balance",
            "session-cookie-max-age",
            "session-cookie-samesite",
            "session-cookie-name",
            "canary-weight",
        ] {
            assert!(
                fields.contains(&format!("metadata.annotations[{PREFIX}{name}]").as_str()),
                "{name}: {fields:?}"
            );
        }
    }

    #[test]
    fn expires_accepts_what_ingress_nginx_accepts() {
        assert_eq!(seconds("0"), Ok(0));
        assert_eq!(seconds("172800"), Ok(172_800));
        assert_eq!(seconds("-1"), Ok(-1));
        assert!(seconds("007").is_err());
        assert!(seconds("1h").is_err());
    }
}
