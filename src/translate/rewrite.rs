//! Rewrite, redirect and regex-location annotations (`rewrite-target`, `use-regex`,
//! `app-root`, `permanent-redirect`/`temporal-redirect` (+`-code`), `from-to-www-redirect`,
//! `server-alias`, `x-forwarded-prefix`, `upstream-vhost`) and Sluice's
//! `sluice.dev/host-wide-regex`: parsed and validated once per Ingress with ingress-nginx's
//! validators, then turned into regex locations, per-location [`RewritePolicy`] and
//! server-level settings (aliases, app-root, the www redirect server).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::{HeaderValue, StatusCode};

use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::settings::parse_bool;
use crate::snapshot::route::{rewrite_regex, Rewrite, RewritePolicy};
use crate::snapshot::{RouteId, Router, VHost};

use super::annotations::PREFIX;

/// The annotations (without prefix) this module implements.
pub const ANNOTATIONS: &[&str] = &[
    "rewrite-target",
    "use-regex",
    "app-root",
    "permanent-redirect",
    "permanent-redirect-code",
    "temporal-redirect",
    "temporal-redirect-code",
    "from-to-www-redirect",
    "server-alias",
    "x-forwarded-prefix",
    "upstream-vhost",
];

/// Sluice's opt-out of ingress-nginx's host-wide regex side effect: `"false"` on an Ingress
/// that sets `use-regex` or `rewrite-target` makes only its own paths regexes.
pub const HOST_WIDE_REGEX: &str = "sluice.dev/host-wide-regex";

/// The rewrite-related annotations of one Ingress, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewriteAnnotations {
    /// `rewrite-target` (non-empty, valid).
    pub target: Option<String>,
    /// `use-regex`.
    pub use_regex: bool,
    /// `sluice.dev/host-wide-regex: "false"`.
    pub not_host_wide: bool,
    /// `app-root`: an absolute path.
    pub app_root: Option<String>,
    /// `temporal-redirect` (with its code), else `permanent-redirect` (with its code).
    pub redirect: Option<(StatusCode, HeaderValue)>,
    /// `from-to-www-redirect`.
    pub from_to_www: bool,
    /// `server-alias` names, lower case.
    pub aliases: Vec<String>,
    /// `x-forwarded-prefix`.
    pub x_forwarded_prefix: Option<String>,
    /// `upstream-vhost`.
    pub upstream_vhost: Option<HeaderValue>,
}

/// How one path of an Ingress becomes a location.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PathRegex {
    /// The Ingress sets `use-regex` or `rewrite-target`: its paths are regexes.
    pub regex: bool,
    /// ... and that turns every path of the host into a regex (ingress-nginx's behaviour).
    pub host_wide: bool,
    /// A Prefix path kept as one location (its Ingress has use-regex or a real rewrite), not
    /// split into `path/` and `path`.
    pub unsplit: bool,
}

/// ingress-nginx's `RegexPathWithCapture`: `/something/$1/anything/$2`.
fn path_with_capture(value: &str) -> bool {
    let rest = value.strip_prefix('/').unwrap_or(value);
    rest.bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"-._~/:$".contains(&c))
}

/// ingress-nginx's `URLIsValidRegex` plus its check that the scheme is http(s).
fn redirect_url(value: &str) -> Result<HeaderValue, String> {
    if !value
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"-._~/:,?&=".contains(&c))
    {
        return Err("only letters, digits and -._~/:,?&= are allowed (no nginx variables)".into());
    }
    let scheme = value.split_once(':').map(|(s, _)| s).unwrap_or("");
    if !scheme.starts_with("http") {
        return Err(format!(
            "only http and https are valid protocols ({scheme:?})"
        ));
    }
    HeaderValue::from_str(value).map_err(|e| e.to_string())
}

/// A server name as `server-alias` accepts it here: an exact DNS name.
fn alias_name(value: &str) -> Result<String, String> {
    let name = value.trim().to_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name).to_string();
    if name.starts_with('*') || name.starts_with('~') || name.ends_with('*') {
        return Err(format!(
            "{name:?}: wildcard and regex aliases are not supported; only exact names"
        ));
    }
    if name.is_empty()
        || name.split('.').any(|l| l.is_empty())
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
    {
        return Err(format!("{name:?} is not a valid host name"));
    }
    Ok(name)
}

/// `upstream-vhost`: a host name or address, optionally with a port.
fn vhost_value(value: &str) -> Result<HeaderValue, String> {
    if value.is_empty()
        || !value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-.:[]_".contains(&c))
    {
        return Err("expected a host name, optionally with :port".into());
    }
    HeaderValue::from_str(value).map_err(|e| e.to_string())
}

/// Parse the rewrite annotations of one Ingress. Bad values are reported (naming the
/// annotation) and ignored, as ingress-nginx ignores an annotation its validator rejects.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> RewriteAnnotations {
    let get = |name: &str| {
        annotations
            .get(&format!("{PREFIX}{name}"))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let mut warn = |name: &str, value: &str, why: String| {
        diags.push(Diagnostic::warning(
            object.clone(),
            format!("metadata.annotations[{PREFIX}{name}]"),
            format!("invalid value {value:?}: {why}; annotation ignored"),
        ));
    };
    let mut out = RewriteAnnotations::default();

    if let Some(v) = get("rewrite-target") {
        if path_with_capture(v) {
            out.target = Some(v.to_string());
        } else {
            warn(
                "rewrite-target",
                v,
                "only letters, digits, -._~/: and $n captures are allowed".into(),
            );
        }
    }
    let flag = |name: &str, diags_warn: &mut dyn FnMut(&str, &str, String)| match get(name) {
        None => false,
        Some(v) => parse_bool(v).unwrap_or_else(|e| {
            diags_warn(name, v, e);
            false
        }),
    };
    out.use_regex = flag("use-regex", &mut warn);
    out.from_to_www = flag("from-to-www-redirect", &mut warn);
    if let Some(v) = annotations.get(HOST_WIDE_REGEX).map(|v| v.trim()) {
        match parse_bool(v) {
            Ok(host_wide) => out.not_host_wide = !host_wide,
            Err(e) => diags.push(Diagnostic::warning(
                object.clone(),
                format!("metadata.annotations[{HOST_WIDE_REGEX}]"),
                format!("invalid value {v:?}: {e}; using true"),
            )),
        }
    }
    let mut warn = |name: &str, value: &str, why: String| {
        diags.push(Diagnostic::warning(
            object.clone(),
            format!("metadata.annotations[{PREFIX}{name}]"),
            format!("invalid value {value:?}: {why}; annotation ignored"),
        ));
    };
    if let Some(v) = get("app-root") {
        if v.starts_with('/') && path_with_capture(v) {
            out.app_root = Some(v.to_string());
        } else {
            warn(
                "app-root",
                v,
                "must be an absolute path such as /app".into(),
            );
        }
    }

    // temporal-redirect takes precedence over permanent-redirect.
    let code = |name: &str,
                range: std::ops::RangeInclusive<u16>,
                default: StatusCode,
                warn: &mut dyn FnMut(&str, &str, String)| {
        let Some(v) = get(name) else { return default };
        match v.parse::<u16>() {
            Ok(c) if range.contains(&c) => StatusCode::from_u16(c).unwrap_or(default),
            // ingress-nginx falls back to the default for a code out of range.
            Ok(_) => default,
            Err(_) => {
                warn(name, v, format!("not a number; using {}", default.as_u16()));
                default
            }
        }
    };
    for (name, code_name, range, default) in [
        (
            "temporal-redirect",
            "temporal-redirect-code",
            300..=307,
            StatusCode::FOUND,
        ),
        (
            "permanent-redirect",
            "permanent-redirect-code",
            300..=308,
            StatusCode::MOVED_PERMANENTLY,
        ),
    ] {
        let Some(v) = get(name) else { continue };
        match redirect_url(v) {
            Ok(url) if out.redirect.is_none() => {
                out.redirect = Some((code(code_name, range, default, &mut warn), url));
            }
            Ok(_) => {}
            Err(e) => warn(name, v, e),
        }
    }

    if let Some(v) = get("server-alias") {
        for name in v.split(',').filter(|n| !n.trim().is_empty()) {
            match alias_name(name) {
                Ok(name) if !out.aliases.contains(&name) => out.aliases.push(name),
                Ok(_) => {}
                Err(e) => warn("server-alias", name.trim(), e),
            }
        }
    }
    if let Some(v) = get("x-forwarded-prefix") {
        if path_with_capture(v) {
            out.x_forwarded_prefix = Some(v.to_string());
        } else {
            warn(
                "x-forwarded-prefix",
                v,
                "only letters, digits, -._~/: and $n captures are allowed".into(),
            );
        }
    }
    if let Some(v) = get("upstream-vhost") {
        match vhost_value(v) {
            Ok(value) => out.upstream_vhost = Some(value),
            Err(e) => warn("upstream-vhost", v, e),
        }
    }
    out
}

impl RewriteAnnotations {
    /// Paths of this Ingress are regexes (ingress-nginx: `use-regex`, or any non-empty
    /// `rewrite-target`).
    pub fn regex_paths(&self) -> bool {
        self.use_regex || self.target.is_some()
    }

    /// How `path` of this Ingress becomes a location.
    pub fn path_regex(&self, path: &str) -> PathRegex {
        let regex = self.regex_paths();
        PathRegex {
            regex,
            host_wide: regex && !self.not_host_wide,
            unsplit: self.use_regex || self.target.as_deref().is_some_and(|t| t != path),
        }
    }

    /// The rewrite policy of the location for `path`; `None` when nothing applies.
    pub fn route_policy(&self, path: &str) -> Option<Arc<RewritePolicy>> {
        // A target equal to the path proxies unchanged (template.go buildProxyPass).
        let rewrite = self
            .target
            .as_deref()
            .filter(|t| *t != path)
            .and_then(|target| {
                // A path that is no valid regex is reported (and skipped) where it is placed.
                rewrite_regex(path).ok().map(|regex| Rewrite {
                    regex,
                    target: target.into(),
                })
            });
        let policy = RewritePolicy {
            redirect: self.redirect.clone(),
            x_forwarded_prefix: rewrite
                .as_ref()
                .and(self.x_forwarded_prefix.as_deref())
                .map(Into::into),
            rewrite,
            upstream_vhost: self.upstream_vhost.clone(),
        };
        (policy != RewritePolicy::default()).then(|| Arc::new(policy))
    }
}

/// Whether the locations of a server are all regexes: some Ingress of the host uses regex
/// paths without opting out.
pub fn host_wide(paths: impl IntoIterator<Item = PathRegex>) -> bool {
    paths.into_iter().any(|p| p.host_wide)
}

/// Place one path as regex location(s), as ingress-nginx's `updateServerLocations` and
/// `buildLocation` do on a regex server: a Prefix path `/foo` (not unsplit) becomes
/// `^/foo/` plus `^/foo` (the latter unless an Exact `/foo` exists); anything else `^path`.
pub fn place_regex(
    vhost: &mut VHost,
    path: &str,
    prefix: bool,
    regex: PathRegex,
    exact_exists: bool,
    route: RouteId,
) -> Result<(), regex::Error> {
    if path == "/" || !prefix || regex.unsplit {
        vhost.add_regex(path, route)?;
        return Ok(());
    }
    let with_slash = if path.ends_with('/') {
        path.to_string()
    } else {
        format!("{path}/")
    };
    vhost.add_regex(&with_slash, route)?;
    if !exact_exists {
        vhost.add_regex(path, route)?;
    }
    Ok(())
}

/// Server-level settings per host, from the Ingresses of the host in age order.
#[derive(Default)]
pub struct HostRewrites {
    hosts: Vec<(String, HostEntry)>,
    index: HashMap<String, usize>,
}

#[derive(Default)]
struct HostEntry {
    app_root: Option<Arc<str>>,
    aliases: Option<(Vec<String>, ObjectRef)>,
    from_to_www: bool,
}

impl HostRewrites {
    /// Record the server-level annotations of an Ingress with a rule for `host` (empty for
    /// rules without host). The oldest Ingress that sets `app-root` or `server-alias` wins.
    pub fn note(&mut self, host: &str, ann: &RewriteAnnotations, object: &ObjectRef) {
        if ann.app_root.is_none() && ann.aliases.is_empty() && !ann.from_to_www {
            return;
        }
        let index = *self.index.entry(host.to_string()).or_insert_with(|| {
            self.hosts.push((host.to_string(), HostEntry::default()));
            self.hosts.len() - 1
        });
        let entry = &mut self.hosts[index].1;
        if entry.app_root.is_none() {
            entry.app_root = ann.app_root.as_deref().map(Into::into);
        }
        if entry.aliases.is_none() && !ann.aliases.is_empty() {
            entry.aliases = Some((ann.aliases.clone(), object.clone()));
        }
        entry.from_to_www |= ann.from_to_www;
    }

    /// Put the server-level settings into the router once every server exists: `app-root`,
    /// aliases (a name that already has a server is refused, with a diagnostic) and the
    /// `from-to-www-redirect` servers (skipped when the other name has a server).
    pub fn apply(self, router: &mut Router, redirect_code: u16) -> Vec<Diagnostic> {
        let mut diags = Vec::new();
        for (host, entry) in &self.hosts {
            let vhost = if host.is_empty() {
                Some(&mut router.catch_all)
            } else {
                router.vhost_named_mut(host)
            };
            let Some(vhost) = vhost else { continue };
            vhost.app_root = entry.app_root.clone();
        }
        for (host, entry) in &self.hosts {
            let Some((aliases, object)) = &entry.aliases else {
                continue;
            };
            if host.is_empty() || host.starts_with("*.") {
                continue;
            }
            for alias in aliases {
                if alias != host && !router.add_alias(alias, host) {
                    diags.push(Diagnostic::warning(
                        object.clone(),
                        format!("metadata.annotations[{PREFIX}server-alias]"),
                        format!(
                            "alias {alias} ignored: a server or alias for that name already exists"
                        ),
                    ));
                }
            }
        }
        for (host, entry) in &self.hosts {
            if !entry.from_to_www || host.is_empty() || host.starts_with("*.") {
                continue;
            }
            let other = match host.strip_prefix("www.") {
                Some(bare) => bare.to_string(),
                None => format!("www.{host}"),
            };
            if router.has_name(&other) {
                continue;
            }
            let Some(fallback) = router.vhost_named_mut(host).map(|v| v.fallback) else {
                continue;
            };
            let vhost = router.vhost_mut(&other, fallback);
            vhost.redirect_to_host = Some((host.as_str().into(), redirect_code));
        }
        diags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(pairs: &[(&str, &str)]) -> (RewriteAnnotations, Vec<Diagnostic>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| {
                let key = if k.contains('/') {
                    k.to_string()
                } else {
                    format!("{PREFIX}{k}")
                };
                (key, v.to_string())
            })
            .collect();
        let mut diags = Vec::new();
        let out = parse(&map, &ObjectRef::new("Ingress", "ns", "ing"), &mut diags);
        (out, diags)
    }

    #[test]
    fn validators_follow_ingress_nginx() {
        let (a, d) = parsed(&[("rewrite-target", "/$2"), ("x-forwarded-prefix", "/api")]);
        assert_eq!(a.target.as_deref(), Some("/$2"));
        assert_eq!(a.x_forwarded_prefix.as_deref(), Some("/api"));
        assert!(d.is_empty());
        let (a, d) = parsed(&[("rewrite-target", "/x?y=1")]);
        assert_eq!(a.target, None);
        assert_eq!(d.len(), 1);
        assert!(d[0].field.contains("rewrite-target"), "{}", d[0].field);
        // Variables are rejected in redirects; only http(s) URLs pass.
        let (a, d) = parsed(&[("permanent-redirect", "https://x.example/$request_uri")]);
        assert_eq!(a.redirect, None);
        assert_eq!(d.len(), 1);
        let (a, _) = parsed(&[("permanent-redirect", "ftp://x.example/")]);
        assert_eq!(a.redirect, None);
        let (a, d) = parsed(&[("app-root", "app")]);
        assert_eq!((a.app_root, d.len()), (None, 1));
    }

    #[test]
    fn redirect_codes_and_precedence() {
        let (a, _) = parsed(&[("permanent-redirect", "https://a.example/x")]);
        assert_eq!(a.redirect.unwrap().0, StatusCode::MOVED_PERMANENTLY);
        let (a, _) = parsed(&[
            ("permanent-redirect", "https://a.example/x"),
            ("permanent-redirect-code", "308"),
        ]);
        assert_eq!(a.redirect.unwrap().0, StatusCode::PERMANENT_REDIRECT);
        // Out of range: the default.
        let (a, _) = parsed(&[
            ("permanent-redirect", "https://a.example/x"),
            ("permanent-redirect-code", "418"),
        ]);
        assert_eq!(a.redirect.unwrap().0, StatusCode::MOVED_PERMANENTLY);
        let (a, _) = parsed(&[
            ("permanent-redirect", "https://a.example/p"),
            ("temporal-redirect", "https://a.example/t"),
            ("temporal-redirect-code", "308"),
        ]);
        let (code, url) = a.redirect.unwrap();
        assert_eq!(
            (code, url.to_str().unwrap()),
            (StatusCode::FOUND, "https://a.example/t")
        );
    }

    #[test]
    fn aliases_and_host_wide_opt_out() {
        let (a, d) = parsed(&[
            (
                "server-alias",
                "Alias.Example.com, *.wild.example.com,b.example.com",
            ),
            ("use-regex", "true"),
            (HOST_WIDE_REGEX, "false"),
        ]);
        assert_eq!(a.aliases, vec!["alias.example.com", "b.example.com"]);
        assert_eq!(d.len(), 1);
        let p = a.path_regex("/x");
        assert!(p.regex && !p.host_wide && p.unsplit);
    }
}
