//! Store changed -> debounce -> translate -> swap. The only writer of the live snapshot:
//! every change becomes one new immutable generation, stored with one `ArcSwap::store`, so a
//! change never restarts a listener or touches a connection.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::admin::Health;
use crate::diagnostics::Diagnostic;
use crate::metrics::Metrics;
use crate::proxy::upstream::{Pool, PoolConfig};
use crate::snapshot::Snapshot;
use crate::store::{Store, StoreEvent};
use crate::translate::{translate, TranslateOptions};

/// How long to gather a burst of events into one publish. Keeps a change live well within 1 s
/// while a relist of thousands of objects becomes one translation.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// Owns the store and publishes snapshots.
pub struct Publisher {
    store: Store,
    options: TranslateOptions,
    live: Arc<ArcSwap<Snapshot>>,
    pool: Pool,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    generation: u64,
    reported: HashSet<Diagnostic>,
}

impl Publisher {
    pub fn new(
        options: TranslateOptions,
        live: Arc<ArcSwap<Snapshot>>,
        pool: Pool,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Publisher {
        Publisher {
            store: Store::default(),
            options,
            live,
            pool,
            metrics,
            health,
            generation: 0,
            reported: HashSet::new(),
        }
    }

    /// Apply events until the sources close.
    pub async fn run(mut self, mut events: mpsc::Receiver<StoreEvent>) {
        while let Some(event) = events.recv().await {
            self.store.apply(event);
            // Gather the rest of the burst.
            loop {
                while let Ok(event) = events.try_recv() {
                    self.store.apply(event);
                }
                tokio::time::sleep(DEBOUNCE).await;
                if events.is_empty() {
                    break;
                }
            }
            let store = self.store.clone();
            let options = self.options.clone();
            let started = Instant::now();
            // Translation is CPU work (tens of ms for thousands of Ingresses): keep it off
            // the request threads.
            let translation = match tokio::task::spawn_blocking(move || translate(&store, &options))
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    // A bug in translate: keep serving the last good snapshot.
                    tracing::error!(error = %e, "translation failed; keeping the last good configuration");
                    self.metrics.reload_errors.inc();
                    self.metrics.config_last_reload_successful.set(0);
                    continue;
                }
            };
            self.publish(
                translation.snapshot,
                translation.diagnostics,
                translation.served_ingresses.len(),
                started,
            );
        }
    }

    fn publish(
        &mut self,
        mut snapshot: Snapshot,
        diagnostics: Vec<Diagnostic>,
        ingresses: usize,
        started: Instant,
    ) {
        let current: HashSet<Diagnostic> = diagnostics.into_iter().collect();
        for d in current.difference(&self.reported) {
            tracing::warn!("{d}");
        }
        let resolved = self.reported.difference(&current).count();
        if resolved > 0 {
            tracing::info!("{resolved} earlier configuration problem(s) no longer present");
        }
        self.reported = current;

        self.generation += 1;
        snapshot.generation = self.generation;
        self.pool.set_config(PoolConfig::from(&*snapshot.settings));
        let hash = snapshot.config_hash;
        let hosts = snapshot.router.hosts().count() + snapshot.router.wildcard_hosts().count();
        let backends = snapshot.backends.len();
        self.live.store(Arc::new(snapshot));
        self.health.ready.store(true, Ordering::Release);

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.metrics.config_hash.set(hash as f64);
        self.metrics.config_last_reload_successful.set(1);
        self.metrics
            .config_last_reload_successful_timestamp
            .set(now as i64);
        self.metrics.reload_success.inc();
        self.metrics.snapshot_generation.set(self.generation as i64);
        tracing::info!(
            generation = self.generation,
            ingresses,
            hosts,
            backends,
            problems = self.reported.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "configuration published"
        );
    }
}
