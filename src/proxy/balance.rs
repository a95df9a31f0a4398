//! Endpoint choice: canary routing (header > cookie > weight, after existing affinity), then
//! round robin, peak EWMA, consistent hashing (`upstream-hash-by`, with subsets) or cookie
//! affinity, as ingress-nginx's Lua balancer does. Round-robin positions and EWMA scores
//! live in [`Balancers`], kept across snapshots by backend name.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// PERF: foldhash: one lookup by backend name per request, ~210 instructions with SipHash.
use foldhash::HashMap;

use http::header::{self, HeaderMap, HeaderValue};
use http::Request;

use super::upstream::Endpoint;
use crate::snapshot::backend::{Affinity, AffinityMode, Balance, HashBy, HashPart, Ring};
use crate::snapshot::{Backend, BackendKind, Route, Snapshot};

/// ingress-nginx's `DECAY_TIME` of the EWMA, in seconds.
const EWMA_DECAY_SECS: f64 = 10.0;
/// Response time counted for a failed attempt, so EWMA steers away from a failing
/// endpoint (ingress-nginx would count the near-zero time of a refused connection).
const EWMA_FAILURE_SECS: f64 = 1.0;
/// Tries to find a new balanced-affinity key that avoids failed endpoints (ingress-nginx's
/// `MAX_UPSTREAM_CHECKS_COUNT`).
const MAX_STICKY_CHECKS: u32 = 20;
/// Entries kept before idle backends are forgotten.
const PRUNE_ABOVE: usize = 256;
/// A backend unused this long loses its balancer state.
const IDLE_SECS: u64 = 600;

/// Balancer state of every backend, by `proxy_upstream_name`, across snapshots.
#[derive(Debug, Default)]
pub struct Balancers {
    by_name: RwLock<HashMap<String, Arc<BackendState>>>,
    epoch: OnceInstant,
}

#[derive(Debug)]
struct OnceInstant(Instant);

impl Default for OnceInstant {
    fn default() -> Self {
        OnceInstant(Instant::now())
    }
}

/// A subset ring and the (endpoints, subset size) it was built for.
type SubsetRing = (Vec<SocketAddr>, usize, Arc<Ring>);

/// What one backend's balancer remembers between requests and snapshots.
#[derive(Debug, Default)]
pub struct BackendState {
    rr: AtomicUsize,
    /// Peak EWMA per endpoint: (score in seconds, when last updated).
    ewma: Mutex<HashMap<SocketAddr, (f64, Instant)>>,
    /// Subset ring of `upstream-hash-by-subset`, for (endpoints, subset size).
    subsets: Mutex<Option<SubsetRing>>,
    last_used: AtomicU64,
}

impl Balancers {
    fn state(&self, backend: &Backend) -> Arc<BackendState> {
        let now = self.epoch.0.elapsed().as_secs();
        if let Some(state) = self
            .by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&backend.name)
        {
            state.last_used.store(now, Ordering::Relaxed);
            return state.clone();
        }
        let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = map.get(&backend.name) {
            return state.clone();
        }
        if map.len() >= PRUNE_ABOVE {
            map.retain(|_, s| now.saturating_sub(s.last_used.load(Ordering::Relaxed)) < IDLE_SECS);
        }
        let state = Arc::new(BackendState::default());
        state.last_used.store(now, Ordering::Relaxed);
        map.insert(backend.name.clone(), state.clone());
        state
    }
}

/// The facts of a request the balancer needs.
pub struct RequestFacts<'a> {
    pub headers: &'a HeaderMap,
    pub uri: &'a http::Uri,
    pub method: &'a http::Method,
    pub client: IpAddr,
    /// The request came over HTTPS (`$https` is `on`).
    pub https: bool,
}

impl<'a> RequestFacts<'a> {
    pub fn of<B>(req: &'a Request<B>, client: IpAddr, https: bool) -> RequestFacts<'a> {
        RequestFacts {
            headers: req.headers(),
            uri: req.uri(),
            method: req.method(),
            client,
            https,
        }
    }
}

/// The backend a request goes to and how its endpoint is picked. Handed to `forward_route`,
/// which asks it for an endpoint on every attempt.
#[derive(Debug, Clone)]
pub struct Selection {
    pub backend: Arc<Backend>,
    /// Set when the canary was chosen: its upstream name (the `canary` metrics label).
    pub canary: Option<Arc<str>>,
    inner: Arc<Picker>,
}

#[derive(Debug)]
struct Picker {
    balance: Balance,
    state: Arc<BackendState>,
    /// The rendered `upstream-hash-by` key.
    hash_key: Option<Vec<u8>>,
    /// The endpoint half of this backend's affinity cookie, when the request carries one.
    cookie_key: Option<String>,
    /// The location path, the default cookie path.
    location_path: Arc<str>,
    https: bool,
    user_agent: Option<HeaderValue>,
    /// The Set-Cookie to add to the response.
    set_cookie: Mutex<Option<HeaderValue>>,
}

/// Choose the backend of a request to `route` (whose target is `primary`): the canary when
/// the location has one and the request qualifies, else the primary.
pub fn select(
    balancers: &Balancers,
    snapshot: &Snapshot,
    route: &Route,
    primary: &Arc<Backend>,
    facts: &RequestFacts<'_>,
) -> Selection {
    let primary_balance = route
        .policy
        .balance
        .clone()
        .unwrap_or_else(|| default_balance(&snapshot.settings.load_balance));
    let mut chosen = (primary.clone(), primary_balance, None);
    // ingress-nginx answers 503 before looking at the canary when the main backend has no
    // endpoint; forward() does the same here.
    if let Some(canary) = route
        .policy
        .canary
        .as_ref()
        .filter(|_| primary.endpoint_count() > 0)
    {
        let alternative = snapshot.backends.get(canary.backend as usize);
        if let Some(alternative) = alternative.filter(|b| b.endpoint_count() > 0) {
            if route_to_canary(
                &chosen.1,
                primary,
                &canary.balance,
                alternative,
                &canary.rule,
                facts,
            ) {
                chosen = (
                    alternative.clone(),
                    canary.balance.clone(),
                    Some(canary.upstream_name.clone()),
                );
            }
        }
    }
    let (backend, balance, canary) = chosen;
    let hash_key = match &balance {
        Balance::Hash(by) => Some(render_hash_key(by, facts)),
        _ => None,
    };
    let cookie_key = match &balance {
        Balance::Sticky(affinity) => cookie(facts.headers, &affinity.name).and_then(|v| {
            let (endpoint_key, _) = split_affinity(&v);
            (!endpoint_key.is_empty()).then(|| endpoint_key.to_string())
        }),
        _ => None,
    };
    Selection {
        inner: Arc::new(Picker {
            state: balancers.state(&backend),
            balance,
            hash_key,
            cookie_key,
            location_path: route.labels.path.clone(),
            https: facts.https,
            user_agent: facts.headers.get(header::USER_AGENT).cloned(),
            set_cookie: Mutex::new(None),
        }),
        backend,
        canary,
    }
}

/// `load-balance` of the ConfigMap as the default of locations that set none.
fn default_balance(name: &str) -> Balance {
    match name {
        "ewma" => Balance::Ewma,
        _ => Balance::RoundRobin,
    }
}

/// ingress-nginx's `route_to_alternative_balancer`.
fn route_to_canary(
    primary_balance: &Balance,
    primary: &Backend,
    canary_balance: &Balance,
    canary: &Backend,
    rule: &crate::snapshot::backend::CanaryRule,
    facts: &RequestFacts<'_>,
) -> bool {
    if affinitized(primary_balance, primary, facts.headers) {
        return false;
    }
    if affinitized(canary_balance, canary, facts.headers) {
        return true;
    }
    if let Some(name) = &rule.header {
        if let Some(value) = facts.headers.get(name).and_then(|v| v.to_str().ok()) {
            if let Some(expected) = rule.header_value.as_deref().filter(|v| !v.is_empty()) {
                if value == expected {
                    return true;
                }
            } else if let Some(pattern) = &rule.header_pattern {
                if pattern.0.is_match(value) {
                    return true;
                }
            } else if value == "always" {
                return true;
            } else if value == "never" {
                return false;
            }
        }
    }
    if let Some(name) = &rule.cookie {
        match cookie(facts.headers, name).as_deref() {
            Some("always") => return true,
            Some("never") => return false,
            _ => {}
        }
    }
    let total = rule.weight_total.max(100);
    rule.weight > 0 && rand::random_range(1..=total) <= rule.weight
}

/// The request carries this backend's affinity cookie.
fn affinitized(balance: &Balance, backend: &Backend, headers: &HeaderMap) -> bool {
    let Balance::Sticky(affinity) = balance else {
        return false;
    };
    cookie(headers, &affinity.name)
        .is_some_and(|v| split_affinity(&v).1 == Some(backend.affinity_key()))
}

/// `<endpoint key>|<backend key>`.
fn split_affinity(value: &str) -> (&str, Option<&str>) {
    match value.split_once('|') {
        Some((endpoint, backend)) => (endpoint, Some(backend)),
        None => (value, None),
    }
}

/// `$cookie_<name>`: the first cookie of that name.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

/// The `upstream-hash-by` value with its variables replaced, as nginx renders it.
fn render_hash_key(by: &HashBy, facts: &RequestFacts<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    for part in &by.parts {
        match part {
            HashPart::Literal(text) => out.extend_from_slice(text.as_bytes()),
            HashPart::RequestUri => {
                let pq = facts.uri.path_and_query().map_or("/", |pq| pq.as_str());
                out.extend_from_slice(pq.as_bytes());
            }
            HashPart::Uri => out.extend_from_slice(facts.uri.path().as_bytes()),
            HashPart::Args => out.extend_from_slice(facts.uri.query().unwrap_or("").as_bytes()),
            HashPart::Arg(name) => {
                let value = facts
                    .uri
                    .query()
                    .unwrap_or("")
                    .split('&')
                    .filter_map(|p| p.split_once('=').or(Some((p, ""))))
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v);
                out.extend_from_slice(value.unwrap_or("").as_bytes());
            }
            HashPart::RemoteAddr => out.extend_from_slice(facts.client.to_string().as_bytes()),
            HashPart::Host => {
                let host = facts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or(facts.uri.host())
                    .unwrap_or("");
                let host = crate::snapshot::route::strip_port(host).to_ascii_lowercase();
                out.extend_from_slice(host.as_bytes());
            }
            HashPart::Header(name) => {
                if let Some(v) = facts.headers.get(name) {
                    out.extend_from_slice(v.as_bytes());
                }
            }
            HashPart::Cookie(name) => {
                if let Some(v) = cookie(facts.headers, name) {
                    out.extend_from_slice(v.as_bytes());
                }
            }
            HashPart::Scheme => out.extend_from_slice(if facts.https { b"https" } else { b"http" }),
            HashPart::Method => out.extend_from_slice(facts.method.as_str().as_bytes()),
        }
    }
    out
}

/// The endpoint for the next attempt of a request; `tried` holds the endpoints that failed
/// it already. Without a [`Selection`] (requests the proxy makes itself), round robin.
pub fn pick_endpoint(
    backend: &Backend,
    tried: &[SocketAddr],
    selection: Option<&Selection>,
) -> Endpoint {
    if let BackendKind::ExternalName { host, port } = &backend.kind {
        return Endpoint::Name(Arc::from(host.as_str()), *port);
    }
    let endpoints = backend.endpoints();
    let pick = match selection.filter(|s| s.backend.name == backend.name) {
        Some(selection) => selection.inner.pick(backend, endpoints, tried),
        None => {
            let mut pick = backend.pick();
            for _ in 0..endpoints.len() {
                match pick {
                    Some(addr) if tried.contains(&addr) => pick = backend.pick(),
                    _ => break,
                }
            }
            pick
        }
    };
    // forward() checks endpoint_count() > 0 before asking.
    Endpoint::Addr(pick.unwrap_or_else(|| endpoints[0]))
}

fn untried(endpoints: &[SocketAddr], tried: &[SocketAddr]) -> Vec<SocketAddr> {
    let fresh: Vec<SocketAddr> = endpoints
        .iter()
        .copied()
        .filter(|e| !tried.contains(e))
        .collect();
    if fresh.is_empty() {
        endpoints.to_vec()
    } else {
        fresh
    }
}

fn round_robin(
    counter: &AtomicUsize,
    endpoints: &[SocketAddr],
    tried: &[SocketAddr],
) -> Option<SocketAddr> {
    if endpoints.is_empty() {
        return None;
    }
    let mut pick = endpoints[counter.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
    for _ in 0..endpoints.len() {
        if !tried.contains(&pick) {
            break;
        }
        pick = endpoints[counter.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
    }
    Some(pick)
}

impl Picker {
    fn pick(
        &self,
        backend: &Backend,
        endpoints: &[SocketAddr],
        tried: &[SocketAddr],
    ) -> Option<SocketAddr> {
        if endpoints.is_empty() {
            return None;
        }
        match &self.balance {
            Balance::RoundRobin => round_robin(&self.state.rr, endpoints, tried),
            Balance::Ewma => Some(self.ewma_pick(endpoints, tried)),
            Balance::Hash(by) => self.hash_pick(backend, by, endpoints, tried),
            Balance::Sticky(affinity) => self.sticky_pick(backend, affinity, endpoints, tried),
        }
    }

    /// Best of two random endpoints by decayed score (ingress-nginx's `PICK_SET_SIZE` 2).
    fn ewma_pick(&self, endpoints: &[SocketAddr], tried: &[SocketAddr]) -> SocketAddr {
        let candidates = untried(endpoints, tried);
        if candidates.len() == 1 {
            return candidates[0];
        }
        let a = rand::random_range(0..candidates.len());
        let mut b = rand::random_range(0..candidates.len() - 1);
        if b >= a {
            b += 1;
        }
        let now = Instant::now();
        let scores = self.state.ewma.lock().unwrap_or_else(|e| e.into_inner());
        let score = |e: &SocketAddr| {
            scores
                .get(e)
                .map_or(0.0, |(ewma, at)| decay(*ewma, now.duration_since(*at), 0.0))
        };
        if score(&candidates[b]) < score(&candidates[a]) {
            candidates[b]
        } else {
            candidates[a]
        }
    }

    fn hash_pick(
        &self,
        backend: &Backend,
        by: &HashBy,
        endpoints: &[SocketAddr],
        tried: &[SocketAddr],
    ) -> Option<SocketAddr> {
        let key = self.hash_key.as_deref().unwrap_or(b"");
        if let Some(size) = by.subset_size {
            let ring = self.subset_ring(endpoints, size);
            let set = ring.find_index(key)?;
            let members: Vec<SocketAddr> = (0..size)
                .map(|i| endpoints[(set * size + i) % endpoints.len()])
                .collect();
            let members = untried(&members, tried);
            return Some(members[rand::random_range(0..members.len())]);
        }
        let first = backend.ring_find(key)?;
        if !tried.contains(&first) || tried.len() >= endpoints.len() {
            return Some(first);
        }
        // A retry: walk on to another endpoint, the same one for every request of this key.
        (1..=endpoints.len() as u32 * 4)
            .filter_map(|n| {
                let mut k = key.to_vec();
                k.extend_from_slice(format!("#{n}").as_bytes());
                backend.ring_find(&k)
            })
            .find(|e| !tried.contains(e))
            .or(Some(first))
    }

    /// ingress-nginx's `build_subset_map`: endpoints in order, cut into sets of `size`, the
    /// last one filled up from the start.
    fn subset_ring(&self, endpoints: &[SocketAddr], size: usize) -> Arc<Ring> {
        let mut cached = self.state.subsets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((eps, s, ring)) = &*cached {
            if eps == endpoints && *s == size {
                return ring.clone();
            }
        }
        let sets = endpoints.len().div_ceil(size);
        let ring = Arc::new(Ring::of_names((1..=sets).map(|i| format!("set{i}"))));
        *cached = Some((endpoints.to_vec(), size, ring.clone()));
        ring
    }

    /// ingress-nginx's sticky balancer: the cookie's endpoint while it exists (and, with
    /// change-on-failure, while it has not failed this request); else a new one, announced
    /// with a new cookie.
    fn sticky_pick(
        &self,
        backend: &Backend,
        affinity: &Affinity,
        endpoints: &[SocketAddr],
        tried: &[SocketAddr],
    ) -> Option<SocketAddr> {
        let from_cookie = self
            .cookie_key
            .as_deref()
            .and_then(|key| match affinity.mode {
                AffinityMode::Balanced => backend.ring_find(key.as_bytes()),
                AffinityMode::Persistent => endpoints
                    .iter()
                    .copied()
                    .find(|e| backend.endpoint_key(*e) == key),
            });
        let failed = !tried.is_empty();
        if let Some(endpoint) = from_cookie {
            if !(failed && affinity.change_on_failure) {
                return Some(endpoint);
            }
        }
        let (endpoint, key) = match affinity.mode {
            AffinityMode::Balanced => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                let pid = std::process::id();
                let found = (1..=MAX_STICKY_CHECKS).find_map(|i| {
                    let key = format!(
                        "{:.3}.{pid}.{}",
                        now + f64::from(i),
                        rand::random_range(1..=999_999u32)
                    );
                    backend
                        .ring_find(key.as_bytes())
                        .filter(|e| !tried.contains(e))
                        .map(|e| (e, key))
                });
                match found {
                    Some(found) => found,
                    // Every endpoint failed: keep trying the cookie's, without a new cookie.
                    None => return from_cookie.or(Some(endpoints[0])),
                }
            }
            AffinityMode::Persistent => {
                let candidates = untried(endpoints, tried);
                let e = candidates[rand::random_range(0..candidates.len())];
                (e, backend.endpoint_key(e))
            }
        };
        let value = format!("{key}|{}", backend.affinity_key());
        *self.set_cookie.lock().unwrap_or_else(|e| e.into_inner()) = render_cookie(
            affinity,
            &value,
            &self.location_path,
            self.https,
            self.user_agent.as_ref(),
        );
        Some(endpoint)
    }
}

/// `decay_ewma`: the score moves towards `rtt` with a 10 s time constant.
fn decay(ewma: f64, elapsed: Duration, rtt: f64) -> f64 {
    let weight = (-elapsed.as_secs_f64() / EWMA_DECAY_SECS).exp();
    ewma * weight + rtt * (1.0 - weight)
}

impl Selection {
    /// An upstream answered from `addr` after `rtt` (EWMA's `after_balance`).
    pub fn observe(&self, addr: SocketAddr, rtt: Duration) {
        self.record(addr, rtt.as_secs_f64());
    }

    /// The attempt on `addr` failed.
    pub fn observe_failure(&self, addr: SocketAddr) {
        self.record(addr, EWMA_FAILURE_SECS);
    }

    fn record(&self, addr: SocketAddr, rtt: f64) {
        if !matches!(self.inner.balance, Balance::Ewma) {
            return;
        }
        let now = Instant::now();
        let mut scores = self
            .inner
            .state
            .ewma
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Forget endpoints that left the backend.
        let endpoints = self.backend.endpoints();
        if scores.len() > endpoints.len() {
            scores.retain(|e, _| endpoints.contains(e));
        }
        match scores.get_mut(&addr) {
            Some(entry) => *entry = (decay(entry.0, now.duration_since(entry.1), rtt), now),
            // A first measurement is the score (ingress-nginx starts from a time long past).
            None => {
                scores.insert(addr, (rtt, now));
            }
        }
    }

    /// Add the affinity cookie chosen for this request, if any, to the response.
    pub fn finish(&self, headers: &mut HeaderMap) {
        let cookie = self
            .inner
            .set_cookie
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(cookie) = cookie {
            headers.append(header::SET_COOKIE, cookie);
        }
    }
}

/// The Set-Cookie value as lua-resty-cookie bakes it: `name=value; Expires=..; Max-Age=..;
/// Domain=..; Path=..; Secure; HttpOnly; SameSite=..`. `None` if a part would not be a
/// valid header value.
fn render_cookie(
    affinity: &Affinity,
    value: &str,
    location_path: &str,
    https: bool,
    user_agent: Option<&HeaderValue>,
) -> Option<HeaderValue> {
    let mut out = format!("{}={value}", affinity.name);
    if let Some(expires) = affinity.expires {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64
            + expires;
        out.push_str("; Expires=");
        out.push_str(&cookie_time(at));
    }
    if let Some(max_age) = affinity.max_age {
        out.push_str(&format!("; Max-Age={max_age}"));
    }
    if let Some(domain) = &affinity.domain {
        out.push_str(&format!("; Domain={domain}"));
    }
    let path = affinity.path.as_deref().unwrap_or(location_path);
    out.push_str(&format!("; Path={path}"));
    if affinity.secure.unwrap_or(https) {
        out.push_str("; Secure");
    }
    out.push_str("; HttpOnly");
    let samesite = affinity.samesite.as_deref().filter(|s| {
        !(affinity.conditional_samesite_none
            && *s == "None"
            && !same_site_none_compatible(user_agent.and_then(|v| v.to_str().ok()).unwrap_or("")))
    });
    if let Some(samesite) = samesite {
        out.push_str(&format!("; SameSite={samesite}"));
    }
    HeaderValue::from_str(&out).ok()
}

/// ingress-nginx's `same_site_none_compatible`: browsers known to reject `SameSite=None`.
fn same_site_none_compatible(ua: &str) -> bool {
    !(ua.contains("Chrome/4")
        || ua.contains("Chrome/5")
        || ua.contains("Chrome/6")
        || ua.contains("CPU iPhone OS 12")
        || ua.contains("iPad; CPU OS 12")
        || (ua.contains("Macintosh")
            && ua.contains("Intel Mac OS X 10_14")
            && ua.contains("Safari")
            && !ua.contains("Chrome")))
}

/// nginx's `ngx_http_cookie_time`: `Thu, 26-Nov-26 10:00:00 GMT` (two-digit year up to
/// 2037, as Netscape cookies need).
pub fn cookie_time(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let shown_year = if year > 2037 { year } else { year % 100 };
    format!(
        "{}, {:02}-{}-{:02} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        shown_year,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_time_is_nginx_format() {
        assert_eq!(cookie_time(0), "Thu, 01-Jan-70 00:00:00 GMT");
        // 2026-11-25 23:20:15 UTC
        assert_eq!(cookie_time(1_795_648_815), "Wed, 25-Nov-26 23:20:15 GMT");
        // 2040-02-29 12:00:00 UTC: four-digit year after 2037
        assert_eq!(cookie_time(2_214_129_600), "Wed, 29-Feb-2040 12:00:00 GMT");
    }

    #[test]
    fn cookie_attributes_in_resty_cookie_order() {
        let affinity = Affinity {
            name: "INGRESSCOOKIE".into(),
            max_age: Some(172_800),
            domain: Some("example.com".into()),
            samesite: Some("None".into()),
            conditional_samesite_none: true,
            ..Default::default()
        };
        let v = render_cookie(&affinity, "k|b", "/app", true, None).unwrap();
        assert_eq!(
            v,
            "INGRESSCOOKIE=k|b; Max-Age=172800; Domain=example.com; Path=/app; Secure; HttpOnly; SameSite=None"
        );
        let old_chrome = HeaderValue::from_static("Mozilla/5.0 Chrome/51.0.2704.103 Safari/537.36");
        let v = render_cookie(&affinity, "k|b", "/app", false, Some(&old_chrome)).unwrap();
        assert_eq!(
            v,
            "INGRESSCOOKIE=k|b; Max-Age=172800; Domain=example.com; Path=/app; HttpOnly"
        );
    }

    #[test]
    fn cookie_lookup_takes_the_first_of_the_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; canary=always"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("canary=never"));
        assert_eq!(cookie(&h, "canary").as_deref(), Some("always"));
        assert_eq!(cookie(&h, "b"), None);
    }
}
