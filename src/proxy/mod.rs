//! The data plane: listeners, the per-request pipeline (route, forward, respond), the
//! upstream pool, and every response the proxy makes itself. Reads the current snapshot
//! once per request; knows nothing of Kubernetes.

pub mod access;
pub mod acme;
pub mod balance;
pub mod body;
pub mod client_cert;
pub mod client_ip;
pub mod compress;
pub mod conn_timer;
pub mod cors;
pub mod custom_errors;
pub mod deadline;
pub mod drain;
pub mod error;
pub mod forward;
pub mod headers;
pub mod http1;
pub mod limit;
pub mod listener;
pub mod request_body;
pub mod rewrite;
pub mod service;
pub mod tls;
pub mod upstream;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::access_log::AccessLog;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// Everything the request path shares.
#[derive(Debug)]
pub struct ProxyState {
    /// The configuration being served; swapped whole by `publish`.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub pool: upstream::Pool,
    pub metrics: Arc<Metrics>,
    pub access_log: Option<AccessLog>,
    /// Set at shutdown: every response then carries `Connection: close`.
    pub draining: AtomicBool,
    /// Set after the grace period: connections finish (idle ones close at once).
    pub drain: drain::Drain,
    /// HTTP/1 client connections' `keep-alive` and `client-header-timeout` deadlines.
    pub deadlines: Arc<deadline::Deadlines>,
    /// Open WebSocket (upgraded) tunnels, which shutdown waits for.
    pub tunnels: Arc<Tracker>,
    /// Open client connections, which shutdown waits for.
    pub connections: Arc<Tracker>,
    /// Rate and connection limiter state, kept across snapshots.
    pub limits: Arc<limit::LimitRegistry>,
    /// Round-robin positions and EWMA scores per backend, kept across snapshots.
    pub balancers: balance::Balancers,
    /// Pending ACME challenges, answered before routing (HTTP-01) and in the handshake
    /// (TLS-ALPN-01).
    pub acme_challenges: Arc<crate::acme::challenges::ChallengeBook>,
    /// Answers of auth services kept by `auth-cache-key`, across snapshots.
    pub auth_cache: Arc<crate::auth::AuthCache>,
}

impl ProxyState {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        access_log: Option<AccessLog>,
    ) -> ProxyState {
        let pool = upstream::Pool::new(upstream::PoolConfig::from(&*snapshot.load().settings));
        let limits = Arc::new(limit::LimitRegistry::default());
        limits.spawn_maintenance(&snapshot);
        let stats = pool.clone();
        metrics.attach_pool_stats(Box::new(move || stats.stats()));
        if let Some(log) = &access_log {
            metrics.attach_access_log(log.dropped.clone());
        }
        ProxyState {
            snapshot,
            pool,
            metrics,
            access_log,
            draining: AtomicBool::new(false),
            drain: drain::Drain::default(),
            deadlines: deadline::Deadlines::start(),
            tunnels: Arc::new(Tracker::default()),
            connections: Arc::new(Tracker::default()),
            limits,
            balancers: Default::default(),
            acme_challenges: Arc::default(),
            auth_cache: Arc::default(),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// A count of open things (connections, tunnels) and ways to wait until none are left or
/// one more has closed.
#[derive(Debug, Default)]
pub struct Tracker {
    open: AtomicUsize,
    closed: Notify,
    left: Notify,
}

/// Held while the thing is open; closing it is dropping it.
#[derive(Debug)]
pub struct TrackerGuard(Arc<Tracker>);

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Tracker {
    pub fn open(self: &Arc<Self>) -> TrackerGuard {
        self.enter();
        TrackerGuard(self.clone())
    }

    /// One more open, for owners that close it themselves with `leave` (exactly once).
    pub fn enter(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    pub fn leave(&self) {
        let was = self.open.fetch_sub(1, Ordering::AcqRel);
        self.left.notify_one();
        if was == 1 {
            self.closed.notify_waiters();
        }
    }

    /// Resolves after a `leave` (perhaps one that came before the call: then at once).
    pub async fn one_left(&self) {
        self.left.notified().await;
    }

    pub fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves when no tunnel is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.closed.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}
