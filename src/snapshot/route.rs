//! Host and path matching as ingress-nginx generates nginx locations: exact host (or a
//! `server-alias`), then the single-label wildcard, then the catch-all server; within a host
//! `=` exact locations first, then nginx's 301 for a prefix location ending in `/` requested
//! without the slash, then the regex locations (`use-regex`, `rewrite-target`) first match in
//! ingress-nginx's order, then the longest prefix. Also the per-location rewrite settings the
//! proxy applies (`RewritePolicy`).

use std::borrow::Cow;
use std::sync::Arc;

// PERF: foldhash for the host and exact-path maps, looked up on every request: with 5 000
// Ingresses, match_host 712 -> 560 instructions per request (callgrind, wrk over random
// hosts). These maps are built from configuration; a request can only look up, never
// insert, so a flooding client has no collisions to grow.
use foldhash::HashMap;

use http::{HeaderValue, StatusCode};
use regex::bytes::Regex;

use super::RouteId;

/// The locations of one server (one host).
#[derive(Debug, Clone)]
pub struct VHost {
    /// `location = /path` entries.
    pub exact: HashMap<Box<str>, RouteId>,
    /// `location /path` entries, longest first.
    prefixes: Vec<Prefix>,
    /// Where requests that match no location go (the host's implicit `/`).
    pub fallback: RouteId,
    /// Some `exact` path ends with `/` (only then can an exact location redirect).
    exact_with_slash: bool,
    /// `location ~* "^path"` entries in evaluation order (see [`VHost::add_regex`]).
    regexes: Vec<RegexLocation>,
    /// `app-root`: a request for `/` answers 302 to this path (server level in ingress-nginx:
    /// checked before any location).
    pub app_root: Option<Arc<str>>,
    /// `from-to-www-redirect`: this server only redirects, to this host, with this status.
    pub redirect_to_host: Option<(Arc<str>, u16)>,
}

#[derive(Debug, Clone)]
struct RegexLocation {
    path: Box<str>,
    regex: Regex,
    route: RouteId,
}

#[derive(Debug, Clone)]
struct Prefix {
    path: Box<str>,
    route: RouteId,
}

/// Result of routing one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    Route(RouteId),
    /// nginx's automatic 301 to the path with a trailing slash (the request named a prefix
    /// location without its final `/`, and no location equals the request path).
    AddSlash(RouteId),
}

impl VHost {
    pub fn with_fallback(fallback: RouteId) -> VHost {
        VHost {
            exact: HashMap::default(),
            prefixes: Vec::new(),
            fallback,
            exact_with_slash: false,
            regexes: Vec::new(),
            app_root: None,
            redirect_to_host: None,
        }
    }

    /// Add `location ~* "^path"`: case-insensitive, anchored at the start only. Locations are
    /// kept in ingress-nginx's order (path length descending, then path descending, then the
    /// order added); the first that matches wins, not the longest. An identical path added
    /// again is ignored (`Ok(false)`); a path that is no valid regex is an error.
    pub fn add_regex(&mut self, path: &str, route: RouteId) -> Result<bool, regex::Error> {
        if self.regexes.iter().any(|r| &*r.path == path) {
            return Ok(false);
        }
        let regex = location_regex(path)?;
        let at = self.regexes.partition_point(|r| {
            r.path.len() > path.len() || (r.path.len() == path.len() && &*r.path >= path)
        });
        self.regexes.insert(
            at,
            RegexLocation {
                path: path.into(),
                regex,
                route,
            },
        );
        Ok(true)
    }

    /// Regex locations in evaluation order, as (path, route).
    pub fn regexes(&self) -> impl Iterator<Item = (&str, RouteId)> {
        self.regexes.iter().map(|r| (&*r.path, r.route))
    }

    /// Add `location = path`. The first one added for a path wins.
    pub fn add_exact(&mut self, path: &str, route: RouteId) -> bool {
        if self.exact.contains_key(path) {
            return false;
        }
        self.exact_with_slash |= path.ends_with('/');
        self.exact.insert(path.into(), route);
        true
    }

    /// Add `location path` (a prefix). The first one added for a path wins.
    pub fn add_prefix(&mut self, path: &str, route: RouteId) -> bool {
        if self.prefixes.iter().any(|p| &*p.path == path) {
            return false;
        }
        let at = self
            .prefixes
            .partition_point(|p| p.path.len() >= path.len());
        self.prefixes.insert(
            at,
            Prefix {
                path: path.into(),
                route,
            },
        );
        true
    }

    pub fn has_prefix(&self, path: &str) -> bool {
        self.prefixes.iter().any(|p| &*p.path == path)
    }

    /// `location path` entries in match order (longest first).
    pub fn prefixes(&self) -> impl Iterator<Item = (&str, RouteId)> {
        self.prefixes.iter().map(|p| (&*p.path, p.route))
    }

    /// nginx's location selection: `=` locations, then the auto-redirect of a `/`-ending
    /// location, then regex locations (against the normalised URI), then the longest prefix.
    pub fn match_path(&self, path: &str) -> RouteMatch {
        if self.regexes.is_empty() {
            return self.match_static(path);
        }
        if let Some(route) = self.exact.get(path) {
            return RouteMatch::Route(*route);
        }
        let by_prefix = self.match_static(path);
        if let RouteMatch::AddSlash(_) = by_prefix {
            return by_prefix;
        }
        let uri = normalize_path(path);
        for location in &self.regexes {
            if location.regex.is_match(&uri) {
                return RouteMatch::Route(location.route);
            }
        }
        by_prefix
    }

    fn match_static(&self, path: &str) -> RouteMatch {
        if let Some(route) = self.exact.get(path) {
            return RouteMatch::Route(*route);
        }
        // nginx's auto-redirect applies to `location = /foo/` as well (proxy_pass sets it on
        // any location whose name ends with `/`).
        let mut redirect = if !self.exact_with_slash {
            None
        } else {
            let mut with_slash = String::with_capacity(path.len() + 1);
            with_slash.push_str(path);
            with_slash.push('/');
            self.exact.get(with_slash.as_str()).copied()
        };
        for prefix in &self.prefixes {
            let p = prefix.path.as_bytes();
            if path.len() + 1 == p.len() && p[p.len() - 1] == b'/' && p.starts_with(path.as_bytes())
            {
                // A longer location `/foo/` for a request `/foo`: nginx answers 301 unless a
                // location named exactly `/foo` exists (checked below, it would be shorter).
                redirect = redirect.or(Some(prefix.route));
                continue;
            }
            if path.as_bytes().starts_with(p) {
                if p.len() == path.len() {
                    return RouteMatch::Route(prefix.route);
                }
                return match redirect {
                    Some(route) => RouteMatch::AddSlash(route),
                    None => RouteMatch::Route(prefix.route),
                };
            }
        }
        match redirect {
            Some(route) => RouteMatch::AddSlash(route),
            None => RouteMatch::Route(self.fallback),
        }
    }
}

/// All servers of a snapshot.
#[derive(Debug, Clone)]
pub struct Router {
    exact: HashMap<Box<str>, VHost>,
    /// Wildcard servers by the part after `*.`.
    wildcard: HashMap<Box<str>, VHost>,
    /// `server-alias` names -> the host whose server answers them.
    aliases: HashMap<Box<str>, Box<str>>,
    /// The `_` server: rules without host and the default backend.
    pub catch_all: VHost,
}

/// Which server a host resolved to (for the `host` metric label and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMatch<'a> {
    Exact(&'a str),
    Wildcard(&'a str),
    CatchAll,
}

impl Router {
    pub fn new(catch_all: VHost) -> Router {
        Router {
            exact: HashMap::default(),
            wildcard: HashMap::default(),
            aliases: HashMap::default(),
            catch_all,
        }
    }

    /// The server configured for `host` (`*.suffix` for wildcards), if any.
    pub fn vhost_named_mut(&mut self, host: &str) -> Option<&mut VHost> {
        match host.strip_prefix("*.") {
            Some(suffix) => self.wildcard.get_mut(suffix),
            None => self.exact.get_mut(host),
        }
    }

    /// Whether a request for `name` would reach a server configured for exactly that name (a
    /// host or an alias).
    pub fn has_name(&self, name: &str) -> bool {
        self.exact.contains_key(name) || self.aliases.contains_key(name)
    }

    /// Answer `alias` with the server of `host` (`server-alias`). Refused (`false`) when the
    /// name already has a server or an alias, or `host` has no server.
    pub fn add_alias(&mut self, alias: &str, host: &str) -> bool {
        if self.has_name(alias) || !self.exact.contains_key(host) {
            return false;
        }
        self.aliases.insert(alias.into(), host.into());
        true
    }

    /// `server-alias` names and their hosts.
    pub fn aliases(&self) -> impl Iterator<Item = (&str, &str)> {
        self.aliases.iter().map(|(a, h)| (&**a, &**h))
    }

    /// The server for a host as configured (lower case; `*.suffix` for wildcards).
    pub fn vhost_mut(&mut self, host: &str, fallback: RouteId) -> &mut VHost {
        match host.strip_prefix("*.") {
            Some(suffix) => self
                .wildcard
                .entry(suffix.into())
                .or_insert_with(|| VHost::with_fallback(fallback)),
            None => self
                .exact
                .entry(host.into())
                .or_insert_with(|| VHost::with_fallback(fallback)),
        }
    }

    pub fn hosts(&self) -> impl Iterator<Item = (&str, &VHost)> {
        self.exact.iter().map(|(h, v)| (&**h, v))
    }

    pub fn wildcard_hosts(&self) -> impl Iterator<Item = (&str, &VHost)> {
        self.wildcard.iter().map(|(h, v)| (&**h, v))
    }

    /// Pick the server for a request's host (any case, port allowed).
    pub fn match_host(&self, host: &str) -> (&VHost, HostMatch<'_>) {
        let host = strip_port(host);
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if let Some((key, vhost)) = self.exact.get_key_value(host) {
            return (vhost, HostMatch::Exact(key));
        }
        if !self.aliases.is_empty() {
            if let Some((key, vhost)) = self
                .aliases
                .get(host)
                .and_then(|h| self.exact.get_key_value(h))
            {
                return (vhost, HostMatch::Exact(key));
            }
        }
        if let Some((_, parent)) = host.split_once('.') {
            if let Some((key, vhost)) = self.wildcard.get_key_value(parent) {
                return (vhost, HostMatch::Wildcard(key));
            }
        }
        (&self.catch_all, HostMatch::CatchAll)
    }

    /// Route a request: server by host, then location by path.
    pub fn match_route(&self, host: &str, path: &str) -> RouteMatch {
        self.match_host(host).0.match_path(path)
    }
}

/// Compile a location path as nginx's `~* "^path"`. Byte-oriented and ASCII-case-insensitive
/// like PCRE without UTF mode; a path that needs Unicode classes falls back to Unicode mode.
fn location_regex(path: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("(?i-u)^{path}")).or_else(|_| Regex::new(&format!("(?i)^{path}")))
}

/// Compile a path as the unanchored, case-insensitive regex of `rewrite "(?i)path" ...`.
pub fn rewrite_regex(path: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("(?i-u){path}")).or_else(|_| Regex::new(&format!("(?i){path}")))
}

/// nginx's `$uri`: the request path percent-decoded once, with `//` merged and `.`/`..`
/// segments resolved (`..` never climbs above `/`). Borrowed when nothing changes.
pub fn normalize_path(path: &str) -> Cow<'_, [u8]> {
    let raw = path.as_bytes();
    let needs_work = raw.contains(&b'%') || raw.windows(2).any(|w| w == b"//" || w == b"/.");
    if !needs_work || !path.starts_with('/') {
        return Cow::Borrowed(raw);
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                decoded.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        decoded.push(raw[i]);
        i += 1;
    }
    let parts: Vec<&[u8]> = decoded.split(|&c| c == b'/').collect();
    let last = parts.len() - 1;
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for (index, segment) in parts.iter().enumerate().skip(1) {
        match *segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
                continue;
            }
        }
        trailing_slash = index == last;
    }
    let mut out = Vec::with_capacity(decoded.len());
    for segment in &segments {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if segments.is_empty() || trailing_slash {
        out.push(b'/');
    }
    Cow::Owned(out)
}

/// What a location does to the URI and the upstream request besides routing: resolved at
/// translate time from `rewrite-target`, `permanent-redirect`/`temporal-redirect`,
/// `x-forwarded-prefix` and `upstream-vhost`.
#[derive(Debug, Clone, Default)]
pub struct RewritePolicy {
    /// `return <code> <url>` instead of proxying (temporal-redirect, else permanent-redirect).
    pub redirect: Option<(StatusCode, HeaderValue)>,
    /// `rewrite "(?i)<path>" <target> break;`.
    pub rewrite: Option<Rewrite>,
    /// `X-Forwarded-Prefix` to the upstream (only with a rewrite, as ingress-nginx); `$n`
    /// are the rewrite's captures.
    pub x_forwarded_prefix: Option<Box<str>>,
    /// `upstream-vhost`: the Host header to the upstream.
    pub upstream_vhost: Option<HeaderValue>,
}

/// A compiled `rewrite-target`.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// The Ingress path, unanchored and case-insensitive.
    pub regex: Regex,
    /// The target with `$1`..`$9` captures.
    pub target: Box<str>,
}

impl PartialEq for RewritePolicy {
    fn eq(&self, other: &Self) -> bool {
        let rewrite = |r: &Option<Rewrite>| {
            r.as_ref()
                .map(|r| (r.regex.as_str().to_string(), r.target.clone()))
        };
        self.redirect == other.redirect
            && rewrite(&self.rewrite) == rewrite(&other.rewrite)
            && self.x_forwarded_prefix == other.x_forwarded_prefix
            && self.upstream_vhost == other.upstream_vhost
    }
}

/// `host:port` -> `host`; `[v6]:port` -> `[v6]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    // PERF: a byte scan back over the port's digits instead of `rsplit_once(':')` and its
    // pattern searcher: match_host 491 -> 323 instructions per request (callgrind h1-small).
    let bytes = host.as_bytes();
    let digits_from = bytes
        .iter()
        .rposition(|b| !b.is_ascii_digit())
        .map_or(0, |i| i + 1);
    match digits_from.checked_sub(1) {
        Some(colon) if bytes[colon] == b':' => &host[..colon],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_and_exact_first() {
        let mut v = VHost::with_fallback(0);
        v.add_prefix("/", 1);
        v.add_prefix("/foo/", 2);
        v.add_exact("/foo", 3);
        v.add_prefix("/foo/bar", 4);
        assert_eq!(v.match_path("/foo"), RouteMatch::Route(3));
        assert_eq!(v.match_path("/foo/"), RouteMatch::Route(2));
        assert_eq!(v.match_path("/foo/bar/baz"), RouteMatch::Route(4));
        assert_eq!(v.match_path("/foobar"), RouteMatch::Route(1));
        assert_eq!(v.match_path("/other"), RouteMatch::Route(1));
    }

    #[test]
    fn trailing_slash_location_redirects_unless_a_location_names_the_path() {
        let mut v = VHost::with_fallback(0);
        v.add_prefix("/", 1);
        v.add_prefix("/foo/", 2);
        assert_eq!(v.match_path("/foo"), RouteMatch::AddSlash(2));
        v.add_prefix("/foo", 3);
        assert_eq!(v.match_path("/foo"), RouteMatch::Route(3));
        assert_eq!(v.match_path("/foox"), RouteMatch::Route(3));
        // The root location matches everything.
        let mut w = VHost::with_fallback(0);
        w.add_prefix("/", 1);
        assert_eq!(w.match_path("/"), RouteMatch::Route(1));
        assert_eq!(w.match_path("/anything"), RouteMatch::Route(1));
        // `location = /bar/` redirects `/bar` too.
        w.add_exact("/bar/", 2);
        assert_eq!(w.match_path("/bar"), RouteMatch::AddSlash(2));
        assert_eq!(w.match_path("/bar/"), RouteMatch::Route(2));
        assert_eq!(w.match_path("/bar/x"), RouteMatch::Route(1));
    }

    #[test]
    fn hosts_exact_wildcard_catch_all() {
        let mut r = Router::new(VHost::with_fallback(0));
        r.vhost_mut("a.example.com", 1);
        r.vhost_mut("*.example.com", 2);
        assert_eq!(r.match_host("A.Example.COM:8080").0.fallback, 1);
        assert_eq!(r.match_host("b.example.com").0.fallback, 2);
        assert_eq!(r.match_host("b.example.com.").0.fallback, 2);
        // One label only.
        assert_eq!(r.match_host("x.b.example.com").0.fallback, 0);
        assert_eq!(r.match_host("example.com").0.fallback, 0);
        assert_eq!(r.match_host("[::1]:80").0.fallback, 0);
    }

    #[test]
    fn regex_locations_first_match_in_length_order() {
        let mut v = VHost::with_fallback(0);
        v.add_regex("/", 1).unwrap();
        v.add_regex("/api", 2).unwrap();
        v.add_regex("/api/v[0-9]+/(.*)", 3).unwrap();
        v.add_regex("/api/", 4).unwrap();
        assert_eq!(v.match_path("/API/V2/users"), RouteMatch::Route(3));
        assert_eq!(v.match_path("/api/other"), RouteMatch::Route(4));
        assert_eq!(v.match_path("/apiary"), RouteMatch::Route(2));
        assert_eq!(v.match_path("/x"), RouteMatch::Route(1));
        // Anchored at the start only: `^/api` matches inside a longer path too.
        assert_eq!(v.match_path("/apix/y"), RouteMatch::Route(2));
        // Not the longest match: a shorter regex listed earlier wins over a later, longer
        // match. Equal lengths: reverse lexical order (`/b.` before `/a.`).
        let mut w = VHost::with_fallback(0);
        w.add_regex("/a.", 1).unwrap();
        w.add_regex("/b.", 2).unwrap();
        w.add_regex("/.", 3).unwrap();
        let order: Vec<&str> = w.regexes().map(|(p, _)| p).collect();
        assert_eq!(order, ["/b.", "/a.", "/."]);
        assert_eq!(w.match_path("/bb"), RouteMatch::Route(2));
        // The same path twice: the first stays.
        assert_eq!(w.add_regex("/a.", 9), Ok(false));
        assert!(w.add_regex("/broken(", 5).is_err());
    }

    #[test]
    fn regexes_match_the_normalised_uri() {
        let mut v = VHost::with_fallback(0);
        v.add_regex("/files/a b$", 1).unwrap();
        v.add_regex("/x/y$", 2).unwrap();
        assert_eq!(v.match_path("/files/a%20b"), RouteMatch::Route(1));
        assert_eq!(v.match_path("//x/./z/../y"), RouteMatch::Route(2));
        assert_eq!(v.match_path("/x/y/"), RouteMatch::Route(0));
    }

    #[test]
    fn mixed_static_and_regex_locations() {
        // A host where only one Ingress's paths are regexes (host-wide regex opted out).
        let mut v = VHost::with_fallback(0);
        v.add_prefix("/", 1);
        v.add_exact("/api", 2);
        v.add_prefix("/docs/", 3);
        v.add_regex("/api(/|$)(.*)", 4).unwrap();
        // `=` wins over regexes; nginx's auto-redirect too.
        assert_eq!(v.match_path("/api"), RouteMatch::Route(2));
        assert_eq!(v.match_path("/docs"), RouteMatch::AddSlash(3));
        // A regex wins over any prefix.
        assert_eq!(v.match_path("/api/x"), RouteMatch::Route(4));
        assert_eq!(v.match_path("/API/x"), RouteMatch::Route(4));
        // No regex matches: the longest prefix, case-sensitive as before.
        assert_eq!(v.match_path("/docs/x"), RouteMatch::Route(3));
        assert_eq!(v.match_path("/DOCS/x"), RouteMatch::Route(1));
    }

    #[test]
    fn normalize_path_cases() {
        let n = |p: &str| String::from_utf8(normalize_path(p).into_owned()).unwrap();
        assert_eq!(n("/a/b"), "/a/b");
        assert!(matches!(normalize_path("/a/b"), Cow::Borrowed(_)));
        assert_eq!(n("/a//b"), "/a/b");
        assert_eq!(n("/a/./b/"), "/a/b/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/../../b"), "/b");
        assert_eq!(n("/%41%2fb"), "/A/b");
        assert_eq!(n("/%25"), "/%");
        assert_eq!(n("/bad%zz"), "/bad%zz");
        assert_eq!(n("/"), "/");
        assert_eq!(n("/.."), "/");
    }

    #[test]
    fn aliases_answer_with_their_server() {
        let mut r = Router::new(VHost::with_fallback(0));
        r.vhost_mut("a.example.com", 1);
        r.vhost_mut("b.example.com", 2);
        assert!(r.add_alias("alias.example.com", "a.example.com"));
        // A name with its own server, or already an alias, is refused.
        assert!(!r.add_alias("b.example.com", "a.example.com"));
        assert!(!r.add_alias("alias.example.com", "b.example.com"));
        assert!(!r.add_alias("x.example.com", "missing.example.com"));
        let (v, m) = r.match_host("Alias.Example.com:8080");
        assert_eq!((v.fallback, m), (1, HostMatch::Exact("a.example.com")));
        assert_eq!(r.match_host("b.example.com").0.fallback, 2);
    }

    #[test]
    fn strip_port_cases() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("[::1]:443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        // Only digits after the last colon are a port (an empty one too, as nginx takes it).
        assert_eq!(strip_port("a.b:"), "a.b");
        assert_eq!(strip_port("a:1b2"), "a:1b2");
        assert_eq!(strip_port("a.b:x80"), "a.b:x80");
        assert_eq!(strip_port("8080"), "8080");
        assert_eq!(strip_port(":80"), "");
        assert_eq!(strip_port(""), "");
    }
}
