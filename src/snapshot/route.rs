//! Host and path matching as ingress-nginx generates nginx locations: exact host, then the
//! single-label wildcard, then the catch-all server; within a host `=` exact locations first,
//! then the longest prefix, with nginx's 301 for a prefix location ending in `/` requested
//! without the slash.

use std::collections::HashMap;

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
            exact: HashMap::new(),
            prefixes: Vec::new(),
            fallback,
            exact_with_slash: false,
        }
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

    /// nginx's location selection for a non-regex server.
    pub fn match_path(&self, path: &str) -> RouteMatch {
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
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            catch_all,
        }
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

/// `host:port` -> `host`; `[v6]:port` -> `[v6]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
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
    fn strip_port_cases() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("[::1]:443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
