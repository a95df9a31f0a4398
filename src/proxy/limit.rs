//! Rate and connection limits per client address (`limit-rps`, `limit-rpm`,
//! `limit-connections`, reference §3d): governor's GCRA over a bounded key store, and the
//! registry that keeps limiter state across configuration generations.
//!
//! Memory is bounded. A rate zone keeps at most [`MAX_KEYS`] client addresses in 64 shards;
//! a full shard evicts its least recently used eighth (nginx evicts the least recently used
//! states of a full zone too). An evicted client starts again with a full burst, so a flood
//! of new addresses can make limits more lenient for others, never stricter. Each rate zone
//! stays under [`MEMORY_CAP_BYTES`] (about 2.1 MiB); keys whose state is back to "fresh" are
//! also dropped every [`MAINTENANCE_INTERVAL`]. Connection zones hold only clients with a
//! request in flight, so they are bounded by the connection cap.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use super::error::Refusal;
use crate::snapshot::access::{cidrs_contain, LimitPolicy, RateLimit};
use crate::snapshot::Snapshot;

const SHARDS: usize = 64;
/// hashbrown fills 1024 buckets to 7/8 = 896 entries: a shard capped there never grows
/// past 1024 buckets.
const KEYS_PER_SHARD: usize = 896;
const BUCKETS_PER_SHARD: usize = 1024;
/// Most client addresses one rate zone remembers.
pub const MAX_KEYS: usize = SHARDS * KEYS_PER_SHARD;
/// Bytes of one stored client: the address (16) and its state (16), plus hashbrown's
/// control byte.
pub const ENTRY_BYTES: usize = std::mem::size_of::<([u8; 16], Slot)>() + 1;
/// Upper bound of a rate zone's memory: full tables (plus hashbrown's 16 trailing control
/// bytes) and the shard headers.
pub const MEMORY_CAP_BYTES: usize =
    SHARDS * (BUCKETS_PER_SHARD * ENTRY_BYTES + 16 + std::mem::size_of::<Mutex<Shard>>());
// The cap the module docs promise (about 2.1 MiB per rate zone).
const _: () = assert!(MEMORY_CAP_BYTES < 2_300_000);
/// How often idle keys are dropped and zones no snapshot uses are released.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

/// The state of one client address.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// GCRA theoretical arrival time, in nanoseconds since the limiter started.
    tat: u64,
    /// Shard-local use counter, for least-recently-used eviction.
    used: u64,
}

#[derive(Debug, Default)]
pub struct Shard {
    map: HashMap<[u8; 16], Slot>,
    tick: u64,
}

impl Shard {
    /// Drop the `n` least recently used keys (at least), rebuilding the table at
    /// `capacity`: removing in place would leave tombstones, and hashbrown doubles a table
    /// whose free slots are used up by them.
    fn evict_idlest(&mut self, n: usize, capacity: usize) {
        let mut used: Vec<u64> = self.map.values().map(|s| s.used).collect();
        if used.is_empty() {
            return;
        }
        let index = n.clamp(1, used.len()) - 1;
        let (_, cutoff, _) = used.select_nth_unstable(index);
        let cutoff = *cutoff;
        let mut map = HashMap::with_capacity(capacity);
        map.extend(
            std::mem::take(&mut self.map)
                .into_iter()
                .filter(|(_, s)| s.used > cutoff),
        );
        self.map = map;
    }
}

/// IPv4 as IPv4-mapped IPv6, so one key type fits both.
fn key_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// governor's keyed state store with a hard cap on keys (see the module docs).
#[derive(Debug)]
pub struct BoundedStore {
    shards: Box<[Mutex<Shard>]>,
    /// Picks the shard; random per store so a client cannot aim at one shard.
    hasher: RandomState,
    per_shard: usize,
}

impl Default for BoundedStore {
    fn default() -> BoundedStore {
        BoundedStore::with_capacity_per_shard(KEYS_PER_SHARD)
    }
}

impl BoundedStore {
    fn with_capacity_per_shard(per_shard: usize) -> BoundedStore {
        BoundedStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            per_shard: per_shard.max(1),
        }
    }

    fn shard(&self, key: &[u8; 16]) -> MutexGuard<'_, Shard> {
        // The top bits of the hash pick one of the 64 shards.
        let index = (self.hasher.hash_one(key) >> 58) as usize % SHARDS;
        // A panic while holding the lock cannot leave a map half-updated in a way that
        // matters for limiting; keep going.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn for_each_shard(&self, mut f: impl FnMut(&mut Shard)) {
        for shard in self.shards.iter() {
            f(&mut shard.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }

    /// Addresses stored now.
    pub fn len(&self) -> usize {
        let mut n = 0;
        self.for_each_shard(|s| n += s.map.len());
        n
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the tables now (allocated buckets, not just live keys).
    pub fn memory_bytes(&self) -> usize {
        let mut bytes = SHARDS * std::mem::size_of::<Mutex<Shard>>();
        self.for_each_shard(|s| {
            let capacity = s.map.capacity();
            if capacity > 0 {
                // hashbrown keeps buckets at a power of two, at most 7/8 full.
                let buckets = if capacity < 8 {
                    capacity + 1
                } else {
                    capacity * 8 / 7
                }
                .next_power_of_two();
                bytes += buckets * ENTRY_BYTES + 16;
            }
        });
        bytes
    }
}

impl StateStore for BoundedStore {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let key = key_bytes(*key);
        let mut shard = self.shard(&key);
        shard.tick += 1;
        let tick = shard.tick;
        if let Some(slot) = shard.map.get_mut(&key) {
            // Refused clients count as used too: eviction must not hand them a fresh burst.
            slot.used = tick;
            let (outcome, tat) = f(Some(Nanos::from(slot.tat)))?;
            slot.tat = tat.into();
            return Ok(outcome);
        }
        let (outcome, tat) = f(None)?;
        if shard.map.len() >= self.per_shard {
            shard.evict_idlest(self.per_shard / 8, self.per_shard);
        }
        shard.map.insert(
            key,
            Slot {
                tat: tat.into(),
                used: tick,
            },
        );
        Ok(outcome)
    }
}

impl ShrinkableKeyedStateStore<IpAddr> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below: u64 = drop_below.into();
        self.for_each_shard(|s| {
            let before = s.map.len();
            s.map.retain(|_, slot| slot.tat > drop_below);
            if s.map.len() < before {
                // Reallocate without the tombstones (see `evict_idlest`).
                s.map.shrink_to_fit();
            }
        });
    }

    fn shrink_to_fit(&self) {
        self.for_each_shard(|s| s.map.shrink_to_fit());
    }

    fn len(&self) -> usize {
        BoundedStore::len(self)
    }

    fn is_empty(&self) -> bool {
        BoundedStore::is_empty(self)
    }
}

/// Lets the zone keep a handle on the store that governor owns, for memory accounting.
#[derive(Debug, Clone)]
struct SharedStore(Arc<BoundedStore>);

impl StateStore for SharedStore {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<IpAddr> for SharedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below)
    }
    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.0)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether a rate is per second (`limit-rps`) or per minute (`limit-rpm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Per {
    Second,
    Minute,
}

/// One `limit_req` zone: a GCRA limiter per client address.
#[derive(Debug)]
pub struct RateZone<C: Clock = MonotonicClock> {
    limiter: RateLimiter<IpAddr, SharedStore, C, NoOpMiddleware<C::Instant>>,
    store: Arc<BoundedStore>,
}

impl RateZone<MonotonicClock> {
    pub fn new(limit: RateLimit, per: Per) -> RateZone {
        RateZone::with_clock(limit, per, MonotonicClock, KEYS_PER_SHARD)
    }
}

impl<C: Clock> RateZone<C> {
    /// `limit` requests per `per`, `burst` more at once without delay (nginx's `burst=N
    /// nodelay` lets N + 1 through at once).
    pub fn with_clock(limit: RateLimit, per: Per, clock: C, keys_per_shard: usize) -> Self {
        let rate = NonZeroU32::new(limit.limit).unwrap_or(NonZeroU32::MIN);
        let quota = match per {
            Per::Second => Quota::per_second(rate),
            Per::Minute => Quota::per_minute(rate),
        };
        let cells = NonZeroU32::new(limit.burst.saturating_add(1)).unwrap_or(NonZeroU32::MIN);
        let store = Arc::new(BoundedStore::with_capacity_per_shard(keys_per_shard));
        RateZone {
            limiter: RateLimiter::new(quota.allow_burst(cells), SharedStore(store.clone()), clock),
            store,
        }
    }

    /// Whether one more request from `client` is allowed now (and count it if so).
    pub fn check(&self, client: IpAddr) -> bool {
        self.limiter.check_key(&client).is_ok()
    }

    /// Drop clients whose state is indistinguishable from a fresh one.
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
    }

    pub fn keys(&self) -> usize {
        self.store.len()
    }

    pub fn memory_bytes(&self) -> usize {
        self.store.memory_bytes()
    }
}

const CONN_SHARDS: usize = 16;

/// One `limit_conn` zone: requests in flight per client address.
#[derive(Debug)]
pub struct ConnZone {
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
    hasher: RandomState,
}

impl Default for ConnZone {
    fn default() -> ConnZone {
        ConnZone {
            shards: (0..CONN_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl ConnZone {
    fn shard(&self, client: &IpAddr) -> MutexGuard<'_, HashMap<IpAddr, u32>> {
        let index = (self.hasher.hash_one(client) % CONN_SHARDS as u64) as usize;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Count one more request of `client`, unless it has `limit` in flight already.
    pub fn try_acquire(self: &Arc<Self>, client: IpAddr, limit: u32) -> Option<ConnGuard> {
        let mut shard = self.shard(&client);
        let count = shard.entry(client).or_insert(0);
        if *count >= limit {
            if *count == 0 {
                shard.remove(&client);
            }
            return None;
        }
        *count += 1;
        Some(ConnGuard {
            zone: self.clone(),
            client,
        })
    }

    /// Requests of `client` in flight.
    pub fn in_flight(&self, client: IpAddr) -> u32 {
        self.shard(&client).get(&client).copied().unwrap_or(0)
    }
}

/// One request counted against `limit-connections`; released when dropped (when the
/// response body has ended or was abandoned).
#[derive(Debug)]
pub struct ConnGuard {
    zone: Arc<ConnZone>,
    client: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut shard = self.zone.shard(&self.client);
        if let Some(count) = shard.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                shard.remove(&self.client);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RateKey {
    zone: Arc<str>,
    per: Per,
    limit: RateLimit,
}

/// Limiter state by Ingress and limit values, outliving snapshots: a new generation with
/// the same values finds the same counters; changed values start new ones.
#[derive(Debug, Default)]
pub struct LimitRegistry {
    rates: RwLock<HashMap<RateKey, Arc<RateZone>>>,
    conns: RwLock<HashMap<Arc<str>, Arc<ConnZone>>>,
}

impl LimitRegistry {
    fn rate_zone(&self, zone: &Arc<str>, per: Per, limit: RateLimit) -> Arc<RateZone> {
        let key = RateKey {
            zone: zone.clone(),
            per,
            limit,
        };
        if let Some(z) = self
            .rates
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return z.clone();
        }
        self.rates
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert_with(|| Arc::new(RateZone::new(limit, per)))
            .clone()
    }

    /// The connection zone of an Ingress; its counts do not depend on the limit value, so
    /// changing `limit-connections` keeps the requests in flight counted.
    pub fn conn_zone(&self, zone: &Arc<str>) -> Arc<ConnZone> {
        if let Some(z) = self
            .conns
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(zone)
        {
            return z.clone();
        }
        self.conns
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(zone.clone())
            .or_default()
            .clone()
    }

    /// ingress-nginx's order: `limit_conn`, then `limit_req` per second, then per minute.
    /// `Ok` carries the guard that keeps the request counted while it is in flight.
    pub fn apply_limits(
        &self,
        policy: &LimitPolicy,
        client: IpAddr,
    ) -> Result<Option<ConnGuard>, Refusal> {
        if cidrs_contain(&policy.exempt, client) {
            return Ok(None);
        }
        let guard = match policy.connections {
            Some(limit) => Some(
                self.conn_zone(&policy.zone)
                    .try_acquire(client, limit)
                    .ok_or(Refusal::ConnectionLimit {
                        status: policy.conn_status,
                    })?,
            ),
            None => None,
        };
        for (per, limit, which) in [
            (Per::Second, policy.rps, "limit-rps"),
            (Per::Minute, policy.rpm, "limit-rpm"),
        ] {
            if let Some(limit) = limit {
                if !self.rate_zone(&policy.zone, per, limit).check(client) {
                    return Err(Refusal::RateLimit {
                        which,
                        status: policy.req_status,
                    });
                }
            }
        }
        Ok(guard)
    }

    /// Drop idle clients, and the zones `snapshot` no longer uses (a request still on an
    /// older generation may create a zone again; the next pass drops it).
    pub fn maintain(&self, snapshot: &Snapshot) {
        let mut used_rates = std::collections::HashSet::new();
        let mut used_conns = std::collections::HashSet::new();
        for route in &snapshot.routes {
            let Some(limits) = &route.policy.limits else {
                continue;
            };
            for (per, limit) in [(Per::Second, limits.rps), (Per::Minute, limits.rpm)] {
                if let Some(limit) = limit {
                    used_rates.insert(RateKey {
                        zone: limits.zone.clone(),
                        per,
                        limit,
                    });
                }
            }
            if limits.connections.is_some() {
                used_conns.insert(limits.zone.clone());
            }
        }
        let zones: Vec<Arc<RateZone>> = {
            let mut rates = self.rates.write().unwrap_or_else(PoisonError::into_inner);
            rates.retain(|key, _| used_rates.contains(key));
            rates.values().cloned().collect()
        };
        // Outside the registry lock: a sweep must not stall new requests' zone lookups.
        for zone in zones {
            zone.retain_recent();
        }
        self.conns
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| used_conns.contains(key));
    }

    /// Rate zones and connection zones held now.
    pub fn zone_counts(&self) -> (usize, usize) {
        (
            self.rates
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            self.conns
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
        )
    }

    /// Run [`LimitRegistry::maintain`] every [`MAINTENANCE_INTERVAL`] on the live snapshot,
    /// until the registry or the snapshot holder is dropped. Needs a tokio runtime; without
    /// one nothing is spawned (state is still capped).
    pub fn spawn_maintenance(self: &Arc<Self>, live: &Arc<ArcSwap<Snapshot>>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (registry, live): (Weak<Self>, Weak<ArcSwap<Snapshot>>) =
            (Arc::downgrade(self), Arc::downgrade(live));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let (Some(registry), Some(live)) = (registry.upgrade(), live.upgrade()) else {
                    return;
                };
                registry.maintain(&live.load());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::net::Ipv4Addr;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    fn zone(limit: u32, burst: u32, per: Per) -> (RateZone<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let zone = RateZone::with_clock(
            RateLimit { limit, burst },
            per,
            clock.clone(),
            KEYS_PER_SHARD,
        );
        (zone, clock)
    }

    #[test]
    fn burst_is_nginx_burst_plus_one_then_the_rate() {
        // limit-rps 2 × multiplier 5: burst 10, so 11 at once (nginx nodelay).
        let (zone, clock) = zone(2, 10, Per::Second);
        let client = ip(1);
        let passed = (0..20).filter(|_| zone.check(client)).count();
        assert_eq!(passed, 11);
        clock.advance(Duration::from_millis(499));
        assert!(!zone.check(client));
        clock.advance(Duration::from_millis(1));
        assert!(zone.check(client), "one request per 500 ms comes back");
        assert!(!zone.check(client));
        // Back to a full bucket when the theoretical arrival time (6 s) is reached.
        clock.advance(Duration::from_millis(5500));
        assert_eq!(
            (0..20).filter(|_| zone.check(client)).count(),
            11,
            "full burst again at 6 s"
        );
        assert!(zone.check(ip(2)), "another client has its own budget");
    }

    #[test]
    fn per_minute() {
        let (zone, clock) = zone(2, 0, Per::Minute);
        assert!(zone.check(ip(1)));
        assert!(!zone.check(ip(1)));
        clock.advance(Duration::from_secs(29));
        assert!(!zone.check(ip(1)));
        clock.advance(Duration::from_secs(1));
        assert!(zone.check(ip(1)));
    }

    #[test]
    fn retain_recent_drops_replenished_clients() {
        let (zone, clock) = zone(1, 0, Per::Second);
        for n in 0..100 {
            zone.check(ip(n));
        }
        assert_eq!(zone.keys(), 100);
        clock.advance(Duration::from_secs(2));
        zone.check(ip(1000));
        zone.retain_recent();
        assert_eq!(zone.keys(), 1);
    }

    #[test]
    fn connection_guard_counts_and_releases() {
        let zone = Arc::new(ConnZone::default());
        let a = zone.try_acquire(ip(1), 2).unwrap();
        let b = zone.try_acquire(ip(1), 2).unwrap();
        assert!(zone.try_acquire(ip(1), 2).is_none());
        assert!(zone.try_acquire(ip(2), 2).is_some());
        drop(a);
        assert_eq!(zone.in_flight(ip(1)), 1);
        drop(b);
        assert_eq!(zone.in_flight(ip(1)), 0);
        assert!(zone.shard(&ip(1)).is_empty() || !zone.shard(&ip(1)).contains_key(&ip(1)));
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// A flood from 1 million distinct addresses: the zone never holds more than
    /// MAX_KEYS, its tables stay under MEMORY_CAP_BYTES, and a legitimate client that keeps
    /// coming is still limited by its own budget only.
    #[test]
    fn flood_of_a_million_addresses_stays_under_the_cap() {
        let rss_before = rss_kib();
        let (zone, clock) = zone(10, 50, Per::Second);
        let legit = IpAddr::V6("2001:db8::1".parse().unwrap());
        let mut legit_passed = 0;
        let mut max_keys = 0;
        for n in 0..1_000_000u32 {
            // 10.0.0.0 + n: a million distinct sources, one request each.
            zone.check(ip(0x0a00_0000 + n));
            if n % 10_000 == 0 {
                // The legitimate client sends at its rate: one request per 100 ms.
                clock.advance(Duration::from_millis(100));
                legit_passed += zone.check(legit) as usize;
                max_keys = max_keys.max(zone.keys());
            }
        }
        let keys = zone.keys();
        let bytes = zone.memory_bytes();
        eprintln!(
            "flood: {keys} keys kept (cap {MAX_KEYS}), {bytes} bytes of tables (cap {MEMORY_CAP_BYTES}), {ENTRY_BYTES} bytes per key"
        );
        eprintln!(
            "flood: process RSS {} KiB -> {} KiB (other tests run alongside)",
            rss_before,
            rss_kib()
        );
        assert!(max_keys <= MAX_KEYS && keys <= MAX_KEYS);
        assert!(keys > MAX_KEYS / 2, "the cap is used, not cleared: {keys}");
        assert!(bytes <= MEMORY_CAP_BYTES, "{bytes} > {MEMORY_CAP_BYTES}");
        assert_eq!(legit_passed, 100, "the legitimate client was always served");
        assert!(zone.check(legit));
        assert!(zone.check(ip(7)), "a new client is served after the flood");
    }
}
