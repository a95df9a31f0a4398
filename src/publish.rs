//! Store changed -> debounce -> translate -> swap. The only writer of the live snapshot:
//! every change becomes one new immutable generation, stored with one `ArcSwap::store`, so a
//! change never restarts a listener or touches a connection.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use k8s_openapi::api::networking::v1::Ingress;
use tokio::sync::{mpsc, watch};

use crate::admin::Health;
use crate::diagnostics::Diagnostic;
use crate::metrics::Metrics;
use crate::proxy::tls::TlsContext;
use crate::proxy::upstream::{Pool, PoolConfig};
use crate::snapshot::Snapshot;
use crate::store::{Store, StoreEvent};
use crate::translate::{translate, TranslateOptions};

/// How long to gather a burst of events into one publish. Keeps a change live well within 1 s
/// while a relist of thousands of objects becomes one translation.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// The Ingresses the live snapshot serves, as the store holds them (with their status).
pub type ServedIngresses = Arc<Vec<Arc<Ingress>>>;

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
    served: Option<watch::Sender<ServedIngresses>>,
    problems: Option<mpsc::UnboundedSender<Vec<Diagnostic>>>,
    tls: Option<Arc<TlsContext>>,
    cert_requests: Option<tokio::sync::watch::Sender<Vec<crate::internal_ca::CertRequest>>>,
    acme_requests: Option<watch::Sender<Vec<crate::acme::AcmeRequest>>>,
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
            served: None,
            problems: None,
            tls: None,
            cert_requests: None,
            acme_requests: None,
        }
    }

    /// Send the internal CA's certificate requests after each translation.
    pub fn with_cert_requests(
        mut self,
        tx: tokio::sync::watch::Sender<Vec<crate::internal_ca::CertRequest>>,
    ) -> Publisher {
        self.cert_requests = Some(tx);
        self
    }

    /// Send the ACME client's certificate requests after each translation.
    pub fn with_acme_requests(
        mut self,
        tx: watch::Sender<Vec<crate::acme::AcmeRequest>>,
    ) -> Publisher {
        self.acme_requests = Some(tx);
        self
    }

    /// Also keep this TLS configuration in step with the settings.
    pub fn with_tls(mut self, tls: Arc<TlsContext>) -> Publisher {
        self.tls = Some(tls);
        self
    }

    /// After every publish, send the served Ingresses here (the status writer reads them).
    pub fn report_served(mut self, tx: watch::Sender<ServedIngresses>) -> Publisher {
        self.served = Some(tx);
        self
    }

    /// After every publish, send the problems not reported by the previous one here (they
    /// become Kubernetes Events). The log gets them either way.
    pub fn report_problems(mut self, tx: mpsc::UnboundedSender<Vec<Diagnostic>>) -> Publisher {
        self.problems = Some(tx);
        self
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
            if let Some(tx) = &self.served {
                let served: Vec<Arc<Ingress>> = translation
                    .served_ingresses
                    .iter()
                    .filter_map(|key| {
                        let (ns, name) = key.split_once('/')?;
                        self.store
                            .ingresses
                            .get(&(ns.to_string(), name.to_string()))
                            .cloned()
                    })
                    .collect();
                tx.send_replace(Arc::new(served));
            }
            if let Some(tx) = &self.cert_requests {
                tx.send_if_modified(|current| {
                    let changed = *current != translation.cert_requests;
                    if changed {
                        *current = translation.cert_requests.clone();
                    }
                    changed
                });
            }
            if let Some(tx) = &self.acme_requests {
                tx.send_if_modified(|current| {
                    let changed = *current != translation.acme_requests;
                    if changed {
                        *current = translation.acme_requests.clone();
                    }
                    changed
                });
            }
            self.metrics.set_orphans(
                translation
                    .orphans
                    .iter()
                    .map(|(ns, name, kind)| (ns.as_str(), name.as_str(), *kind)),
            );
            self.publish(
                translation.snapshot,
                translation.diagnostics,
                translation.served_ingresses.len(),
                started,
            );
            // Counted after the swap, so it describes the configuration being served.
            self.health
                .stored_secrets
                .store(self.store.secrets.len(), Ordering::Relaxed);
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
        let mut new = Vec::new();
        for d in current.difference(&self.reported) {
            tracing::warn!("{d}");
            if self.problems.is_some() {
                new.push(d.clone());
            }
        }
        if let Some(tx) = &self.problems {
            if !new.is_empty() {
                let _ = tx.send(new);
            }
        }
        let resolved = self.reported.difference(&current).count();
        if resolved > 0 {
            tracing::info!("{resolved} earlier configuration problem(s) no longer present");
        }
        self.reported = current;

        self.generation += 1;
        snapshot.generation = self.generation;
        self.pool.set_config(PoolConfig::from(&*snapshot.settings));
        if let Some(tls) = &self.tls {
            tls.update(&snapshot.settings);
        }
        self.metrics
            .set_certificates(&snapshot.tls, &self.options.ingress_class);
        let hash = snapshot.config_hash;
        let hosts = snapshot.router.hosts().count() + snapshot.router.wildcard_hosts().count();
        let backends = snapshot.backends.len();
        snapshot.metric_series = self.metrics.series_table(&snapshot);
        self.live.store(Arc::new(snapshot));
        self.metrics
            .publish_duration
            .observe(started.elapsed().as_secs_f64());
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
