//! Backends: the endpoints behind one Service port, and the load-balancing policy of a
//! location (`load-balance`, `upstream-hash-by`, cookie affinity, canary), resolved at
//! translate time. The request-time choice lives in `proxy::balance`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use http::HeaderName;

/// Where a backend's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// Ready endpoint addresses from the Service's EndpointSlices (empty: 503).
    Endpoints(Vec<SocketAddr>),
    /// An ExternalName Service: resolved by DNS when a connection is made.
    ExternalName { host: String, port: u16 },
    /// The Service, or the port the Ingress names, does not exist: 503.
    Missing,
}

/// One Service port as an upstream (`<namespace>-<service>-<port>` in ingress-nginx's terms).
#[derive(Debug)]
pub struct Backend {
    /// `proxy_upstream_name`: `<namespace>-<service>-<port>`.
    pub name: String,
    pub namespace: String,
    pub service: String,
    /// The port as the Ingress named it (number or name).
    pub port: String,
    pub kind: BackendKind,
    next: AtomicUsize,
    /// Consistent-hash ring over the endpoints, built on first use in this generation.
    ring: OnceLock<Ring>,
    /// `md5(md5(name) .. name)` in hex: the second half of an affinity cookie, as
    /// ingress-nginx computes it, so cookies issued by ingress-nginx keep their backend.
    key: OnceLock<String>,
}

impl Backend {
    pub fn new(namespace: &str, service: &str, port: &str, kind: BackendKind) -> Backend {
        Backend {
            name: format!("{namespace}-{service}-{port}"),
            namespace: namespace.to_string(),
            service: service.to_string(),
            port: port.to_string(),
            kind,
            next: AtomicUsize::new(0),
            ring: OnceLock::new(),
            key: OnceLock::new(),
        }
    }

    /// Round robin over the endpoints (position kept per snapshot; `proxy::balance` keeps
    /// its own across snapshots).
    pub fn pick(&self) -> Option<SocketAddr> {
        match &self.kind {
            BackendKind::Endpoints(endpoints) if !endpoints.is_empty() => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                Some(endpoints[n % endpoints.len()])
            }
            _ => None,
        }
    }

    /// The ready endpoints (empty for ExternalName and missing Services).
    pub fn endpoints(&self) -> &[SocketAddr] {
        match &self.kind {
            BackendKind::Endpoints(endpoints) => endpoints,
            _ => &[],
        }
    }

    /// How many distinct endpoints a request may try.
    pub fn endpoint_count(&self) -> usize {
        match &self.kind {
            BackendKind::Endpoints(endpoints) => endpoints.len(),
            BackendKind::ExternalName { .. } => 1,
            BackendKind::Missing => 0,
        }
    }

    /// The consistent-hash ring of the endpoints (`upstream-hash-by`, balanced affinity).
    pub fn ring(&self) -> &Ring {
        self.ring.get_or_init(|| Ring::new(self.endpoints()))
    }

    /// The endpoint owning `key` on the ring.
    pub fn ring_find(&self, key: &[u8]) -> Option<SocketAddr> {
        self.ring()
            .find_index(key)
            .and_then(|i| self.endpoints().get(i).copied())
    }

    /// The backend half of an affinity cookie.
    pub fn affinity_key(&self) -> &str {
        self.key.get_or_init(|| {
            let inner = md5_hex(self.name.as_bytes());
            md5_hex(format!("{inner}{}", self.name).as_bytes())
        })
    }

    /// The persistent-affinity key of an endpoint: `md5(<backend name><ip:port>)`, as
    /// ingress-nginx's `sticky_persistent` names it.
    pub fn endpoint_key(&self, endpoint: SocketAddr) -> String {
        md5_hex(format!("{}{}", self.name, endpoint).as_bytes())
    }
}

/// Lower-case hex MD5 (nginx's `ngx.md5`).
pub fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    let digest = Md5::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Virtual points per endpoint on the ring (ketama uses 160 per unit of weight).
const POINTS_PER_ENDPOINT: u32 = 160;

/// A consistent-hash ring: each node owns [`POINTS_PER_ENDPOINT`] points, a key goes to the
/// owner of the first point at or after its hash. Adding or removing one node moves only
/// the keys of that node's arcs.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// A ring over endpoints, each placed by its `ip:port`.
    pub fn new(endpoints: &[SocketAddr]) -> Ring {
        Ring::of_names(endpoints.iter().map(|e| e.to_string()))
    }

    /// A ring over nodes named `names` (node `i` is the `i`-th name).
    pub fn of_names(names: impl Iterator<Item = String>) -> Ring {
        let mut points = Vec::new();
        for (i, name) in names.enumerate() {
            for v in 0..POINTS_PER_ENDPOINT {
                points.push((stable_hash(format!("{name}-{v}").as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The node index owning `key`; `None` on an empty ring.
    pub fn find_index(&self, key: &[u8]) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = stable_hash(key);
        let at = self.points.partition_point(|(p, _)| *p < h);
        let (_, node) = self.points[at % self.points.len()];
        Some(node as usize)
    }
}

/// FNV-1a 64 with a murmur finaliser: stable across processes and versions (unlike std's
/// hasher), so every replica hashes a key to the same endpoint.
pub fn stable_hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// How a location picks an endpoint of its backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Balance {
    /// `load-balance: round_robin` (the default).
    RoundRobin,
    /// `load-balance: ewma`: peak EWMA of response times, best of two random endpoints.
    Ewma,
    /// `upstream-hash-by`: consistent hashing on the rendered key.
    Hash(Arc<HashBy>),
    /// `affinity: cookie`.
    Sticky(Arc<Affinity>),
}

/// `upstream-hash-by` (+ `-subset`, `-subset-size`).
#[derive(Debug, Clone, PartialEq)]
pub struct HashBy {
    /// The nginx complex value, split into literal text and variables.
    pub parts: Vec<HashPart>,
    /// `upstream-hash-by-subset: "true"`: hash to a subset of this many endpoints, then
    /// pick at random within it.
    pub subset_size: Option<usize>,
}

/// One piece of an `upstream-hash-by` value.
#[derive(Debug, Clone, PartialEq)]
pub enum HashPart {
    Literal(String),
    /// `$request_uri`: path and query as the client sent them.
    RequestUri,
    /// `$uri`: the path.
    Uri,
    /// `$args` / `$query_string`.
    Args,
    /// `$arg_<name>`.
    Arg(String),
    /// `$remote_addr` / `$binary_remote_addr`: the client address.
    RemoteAddr,
    /// `$host`: the Host without port, lower case.
    Host,
    /// `$http_<name>`.
    Header(HeaderName),
    /// `$cookie_<name>`.
    Cookie(String),
    /// `$scheme`.
    Scheme,
    /// `$request_method`.
    Method,
}

/// `affinity-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AffinityMode {
    /// Sessions follow the consistent-hash ring: rebalanced when endpoints are added.
    #[default]
    Balanced,
    /// A session keeps its endpoint as long as it exists.
    Persistent,
}

/// Cookie affinity (`affinity: cookie` and `session-cookie-*`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Affinity {
    pub mode: AffinityMode,
    /// `session-cookie-name` (`INGRESSCOOKIE`).
    pub name: String,
    /// `session-cookie-path`; `None`: the location's Ingress path.
    pub path: Option<String>,
    /// `session-cookie-domain`.
    pub domain: Option<String>,
    /// `session-cookie-samesite`: `None`, `Lax` or `Strict`.
    pub samesite: Option<String>,
    /// `session-cookie-conditional-samesite-none`: omit `SameSite=None` for browsers that
    /// reject it.
    pub conditional_samesite_none: bool,
    /// `session-cookie-expires` in seconds.
    pub expires: Option<i64>,
    /// `session-cookie-max-age` in seconds.
    pub max_age: Option<i64>,
    /// `session-cookie-secure`; `None`: Secure when the request came over HTTPS.
    pub secure: Option<bool>,
    /// `session-cookie-change-on-failure`: a session whose endpoint failed moves to
    /// another one and gets a new cookie.
    pub change_on_failure: bool,
}

/// `canary-*` traffic shaping of an alternative backend (ingress-nginx's
/// `trafficShapingPolicy`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CanaryRule {
    /// `canary-by-header`.
    pub header: Option<HeaderName>,
    /// `canary-by-header-value` (wins over the pattern).
    pub header_value: Option<String>,
    /// `canary-by-header-pattern`.
    pub header_pattern: Option<CanaryPattern>,
    /// `canary-by-cookie`.
    pub cookie: Option<String>,
    /// `canary-weight`.
    pub weight: u32,
    /// `canary-weight-total` (100; values under 100 count as 100, as in ingress-nginx).
    pub weight_total: u32,
}

impl PartialEq for CanaryPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// A compiled `canary-by-header-pattern`.
#[derive(Debug, Clone)]
pub struct CanaryPattern(pub regex::Regex);

/// The canary of a location: where the alternative traffic goes and how it is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    /// Index of the canary's backend in the snapshot.
    pub backend: u32,
    /// `proxy_alternative_upstream_name`: the `canary` label of the request metrics.
    pub upstream_name: Arc<str>,
    pub rule: CanaryRule,
    /// How the canary's own endpoints are picked (its own `load-balance`/`upstream-hash-by`;
    /// affinity copied from the primary unless `affinity-canary-behavior: legacy`).
    pub balance: Balance,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_visits_every_endpoint() {
        let eps: Vec<SocketAddr> = vec![
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        ];
        let b = Backend::new("ns", "svc", "80", BackendKind::Endpoints(eps.clone()));
        let picks: Vec<_> = (0..4).map(|_| b.pick().unwrap()).collect();
        assert_eq!(picks, vec![eps[0], eps[1], eps[0], eps[1]]);
        assert_eq!(b.name, "ns-svc-80");
        let empty = Backend::new("ns", "svc", "80", BackendKind::Endpoints(vec![]));
        assert_eq!(empty.pick(), None);
    }

    fn endpoints(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| format!("10.0.0.{i}:8080").parse().unwrap())
            .collect()
    }

    #[test]
    fn ring_moves_only_the_keys_of_a_new_endpoint() {
        let four = Backend::new("ns", "svc", "80", BackendKind::Endpoints(endpoints(4)));
        let five = Backend::new("ns", "svc", "80", BackendKind::Endpoints(endpoints(5)));
        let keys: Vec<String> = (0..2000).map(|i| format!("/item/{i}")).collect();
        let mut moved = 0;
        let mut per_node = [0usize; 5];
        for k in &keys {
            let a = four.ring_find(k.as_bytes()).unwrap();
            let b = five.ring_find(k.as_bytes()).unwrap();
            per_node[endpoints(5).iter().position(|e| *e == b).unwrap()] += 1;
            if a != b {
                // A key that moves, moves to the new endpoint only.
                assert_eq!(b, endpoints(5)[4], "{k} moved between old endpoints");
                moved += 1;
            }
        }
        // About 1/5 of the keys move; every endpoint gets a fair share.
        assert!((250..=550).contains(&moved), "moved {moved}");
        for n in per_node {
            assert!((200..=650).contains(&n), "{per_node:?}");
        }
    }

    #[test]
    fn affinity_keys_are_ingress_nginx_md5s() {
        let b = Backend::new("default", "web", "80", BackendKind::Endpoints(vec![]));
        // ngx.md5(ngx.md5("default-web-80") .. "default-web-80")
        let inner = md5_hex(b"default-web-80");
        assert_eq!(
            b.affinity_key(),
            md5_hex(format!("{inner}default-web-80").as_bytes())
        );
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            b.endpoint_key("10.0.0.1:8080".parse().unwrap()),
            md5_hex(b"default-web-8010.0.0.1:8080")
        );
    }
}
