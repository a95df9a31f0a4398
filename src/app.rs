//! Wiring: sources -> publisher -> snapshot <- listeners, plus the admin server, and the
//! shutdown order (health 503, grace period, stop accepting, drain, exit).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::access_log::{AccessLog, Format};
use crate::acme::challenges::{ChallengePublisher, LocalPublisher};
use crate::admin::{self, Endpoints, Health};
use crate::cli::Cli;
use crate::metrics::{ControllerLabels, Metrics, MetricsOptions};
use crate::proxy::{listener, ProxyState};
use crate::publish::Publisher;
use crate::snapshot::Snapshot;
use crate::source::file::{self, ManifestDir};
use crate::translate::TranslateOptions;

/// Why Sluice could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("--internal-ca: {0}")]
    InternalCa(String),
    #[error("ACME: {0}")]
    Acme(String),
    #[error("cannot generate the fake TLS certificate: {0}")]
    FakeCertificate(String),
    #[error("--manifests {0}: not a readable folder")]
    Manifests(String),
    #[error("Kubernetes mode: {0}")]
    Kube(#[from] crate::source::kube::ClientError),
}

/// Where objects come from: the manifest folder, or the API server.
enum Source {
    Dir(std::path::PathBuf),
    Kube(kube::Client),
}

/// The cluster-mode tasks that must stop in order: status (may clear Ingress status), then
/// the leader election (releases the Lease).
struct KubeTasks {
    stop_status: watch::Sender<bool>,
    status: Option<JoinHandle<()>>,
    stop_leader: watch::Sender<bool>,
    leader: Option<JoinHandle<()>>,
}

impl KubeTasks {
    async fn stop(self) {
        let _ = self.stop_status.send(true);
        if let Some(task) = self.status {
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                tracing::warn!("status writer did not stop within 10 s");
            }
        }
        let _ = self.stop_leader.send(true);
        if let Some(task) = self.leader {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("leader election did not stop within 5 s");
            }
        }
    }
}

/// This pod's name: --pod-name / POD_NAME, else the host name.
fn pod_name(cli: &Cli) -> String {
    cli.pod_name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|n| !n.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| "sluice".to_string())
}

/// This pod's namespace: --pod-namespace / POD_NAMESPACE, else the service account's, else
/// `default`.
fn pod_namespace(cli: &Cli) -> String {
    cli.pod_namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| "default".to_string())
}

/// A started Sluice: its bound addresses, and how to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub https_addr: SocketAddr,
    /// The health server's address (also metrics when the ports are equal).
    pub healthz_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub state: Arc<ProxyState>,
    pub health: Arc<Health>,
    /// Publishes ACME challenges so that any replica answers them.
    pub acme_publisher: Arc<dyn ChallengePublisher>,
    stop_accepting: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    kube: Option<KubeTasks>,
    grace_period: Duration,
    drain_timeout: Duration,
}

/// The controller's identity for metric labels, from the pod environment as ingress-nginx
/// reads it (POD_NAMESPACE, POD_NAME).
fn controller_labels(cli: &Cli) -> ControllerLabels {
    ControllerLabels {
        namespace: cli.pod_namespace.clone().unwrap_or_default(),
        class: cli.controller_class.clone(),
        pod: cli
            .pod_name
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default(),
    }
}

fn bind(what: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    listener::bind(addr).map_err(|source| StartError::Bind { what, addr, source })
}

/// Wait until the first configuration is published; false when stopped before. The traffic
/// listeners wait here (bound, so clients queue in the backlog) as ingress-nginx starts nginx
/// only after its first sync: no client ever gets the empty start-up snapshot's 404.
async fn first_configuration(health: &Health, mut stop: watch::Receiver<bool>) -> bool {
    loop {
        if health.ready.load(Ordering::Acquire) {
            return true;
        }
        if *stop.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    return false;
                }
            }
        }
    }
}

/// Bind every port and start every task. Returns once listening; `/healthz` turns 200 when
/// the first snapshot is published.
pub async fn start(cli: Cli) -> Result<Running, StartError> {
    start_with_access_log(cli, true).await
}

/// As [`start`]; `access_log` false writes no access log (benchmarks, some tests).
pub async fn start_with_access_log(cli: Cli, access_log: bool) -> Result<Running, StartError> {
    let source = match cli.manifests.clone() {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(StartError::Manifests(dir.display().to_string()));
            }
            Source::Dir(dir)
        }
        None => Source::Kube(crate::source::kube::client(&cli).await?),
    };

    let http_listener = bind(
        "--http-port",
        SocketAddr::new(cli.bind_address, cli.http_port),
    )?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "--http-port",
            addr: SocketAddr::new(cli.bind_address, cli.http_port),
            source,
        })?;
    let https_listener = bind(
        "--https-port",
        SocketAddr::new(cli.bind_address, cli.https_port),
    )?;
    let https_addr = https_listener
        .local_addr()
        .expect("bound socket has an address");
    let healthz_listener = bind(
        "--healthz-port",
        SocketAddr::new(cli.healthz_host, cli.healthz_port),
    )?;
    let healthz_addr = healthz_listener
        .local_addr()
        .expect("bound socket has an address");
    let separate_metrics = cli.metrics_port != cli.healthz_port;
    let metrics_listener = if separate_metrics {
        Some(bind(
            "--metrics-port",
            SocketAddr::new(cli.healthz_host, cli.metrics_port),
        )?)
    } else {
        None
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(|l| l.local_addr().expect("bound socket has an address"))
        .unwrap_or(healthz_addr);

    let metrics = Arc::new(Metrics::with_options(
        &controller_labels(&cli),
        MetricsOptions::from(&cli),
    ));
    let health = Arc::new(Health::default());
    let live = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
    let access_log = access_log.then(|| {
        let format = if cli.access_log_format == "json" {
            Format::Json
        } else {
            Format::Upstream
        };
        AccessLog::start(format, std::io::stdout())
    });
    let fake = crate::proxy::tls::fake_certificate()
        .map_err(|e| StartError::FakeCertificate(e.to_string()))?;
    let state = Arc::new(ProxyState::new(live.clone(), metrics.clone(), access_log));
    let tls = Arc::new(crate::proxy::tls::TlsContext::with_acme(
        live.clone(),
        fake,
        state.acme_challenges.clone(),
    ));

    let (stop_accepting, stop_rx) = watch::channel(false);
    let (stop_admin, admin_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let (events_tx, events_rx) = mpsc::channel(64);
    let publisher = Publisher::new(
        TranslateOptions::from(&cli),
        live,
        state.pool.clone(),
        metrics.clone(),
        health.clone(),
    )
    .with_tls(tls.clone());
    // Cluster mode's internal CA starts below, once leadership is known.
    let mut cluster_cert_requests = None;
    let publisher = if cli.internal_ca {
        let (requests_tx, requests_rx) = watch::channel(Vec::new());
        match &source {
            Source::Dir(_) => {
                let ca_dir = cli.state_dir.join("internal-ca");
                let ca = crate::internal_ca::InternalCa::load_or_create(&ca_dir)
                    .map_err(|e| StartError::InternalCa(e.to_string()))?;
                let ca = Arc::new(ca);
                let _ = health.internal_ca_pem.set(Arc::from(ca.ca_pem()));
                tasks.push(tokio::spawn(crate::internal_ca::run(
                    ca,
                    ca_dir,
                    requests_rx,
                    events_tx.clone(),
                )));
            }
            Source::Kube(_) => cluster_cert_requests = Some(requests_rx),
        }
        publisher.with_cert_requests(requests_tx)
    } else {
        publisher
    };
    // ACME: translation sends the Secrets to fill; the manager starts below per mode.
    let acme = crate::acme::AcmeConfig::from_cli(&cli);
    let (publisher, acme_requests) = match &acme {
        Some(config) => {
            // A bad --acme-ca-bundle stops the start, not the first order.
            crate::acme::client::http_client(config.ca_bundle.as_deref())
                .map_err(|e| StartError::Acme(e.to_string()))?;
            let (tx, rx) = watch::channel(Vec::new());
            (publisher.with_acme_requests(tx), Some(rx))
        }
        None => (publisher, None),
    };
    let mut kube_tasks = None;
    // Where the ACME order flow publishes challenges: this process's book, or (cluster mode)
    // Secrets every replica mirrors.
    let mut acme_publisher: Arc<dyn ChallengePublisher> =
        Arc::new(LocalPublisher(state.acme_challenges.clone()));
    match source {
        Source::Dir(dir) => {
            if let (Some(config), Some(requests)) = (acme.clone(), acme_requests.clone()) {
                let manager = crate::acme::Manager {
                    storage: crate::acme::storage::Storage::Dir {
                        dir: cli.state_dir.join("acme"),
                        events: events_tx.clone(),
                    },
                    config,
                    publisher: acme_publisher.clone(),
                    metrics: metrics.clone(),
                    events: None,
                };
                // Standalone: this instance is the only one placing orders.
                let (leader_tx, leader_rx) = watch::channel(true);
                tasks.push(tokio::spawn(async move {
                    let _leader = leader_tx;
                    crate::acme::run(manager, requests, leader_rx).await
                }));
            }
            tasks.push(tokio::spawn(publisher.run(events_rx)));
            tasks.push(tokio::spawn(file::run(ManifestDir::new(dir), events_tx)));
        }
        Source::Kube(client) => {
            let (served_tx, served_rx) = watch::channel(Arc::new(Vec::new()));
            let (problems_tx, problems_rx) = mpsc::unbounded_channel();
            let publisher = publisher
                .report_served(served_tx)
                .report_problems(problems_tx);
            tasks.push(tokio::spawn(publisher.run(events_rx)));
            tasks.push(tokio::spawn(crate::source::kube::run(
                client.clone(),
                crate::source::kube::Scope::from(&cli),
                events_tx,
            )));
            let identity = pod_name(&cli);
            let namespace = pod_namespace(&cli);
            tasks.push(tokio::spawn(crate::events::run(
                crate::events::Recorder::new(client.clone(), &identity),
                problems_rx,
            )));
            let (stop_status, stop_status_rx) = watch::channel(false);
            let (stop_leader, stop_leader_rx) = watch::channel(false);
            let mut control = KubeTasks {
                stop_status,
                status: None,
                stop_leader,
                leader: None,
            };
            // Whether this pod leads; without an election every pod does (for the internal
            // CA; Ingress status is not written then).
            let (leader_tx, leader_rx) = watch::channel(cli.disable_leader_election);
            if cli.acme_directory.is_some() {
                // Every replica answers challenges the leader publishes as Secrets.
                let (publisher, sharing) = crate::acme::challenges::start_cluster(
                    client.clone(),
                    &namespace,
                    &cli.ingress_class,
                    state.acme_challenges.clone(),
                    leader_rx.clone(),
                );
                tasks.extend(sharing);
                acme_publisher = publisher;
            }
            if let (Some(config), Some(requests)) = (acme.clone(), acme_requests.clone()) {
                let manager = crate::acme::Manager {
                    storage: crate::acme::storage::Storage::Kube {
                        client: client.clone(),
                        namespace: namespace.clone(),
                    },
                    config,
                    publisher: acme_publisher.clone(),
                    metrics: metrics.clone(),
                    events: Some((client.clone(), identity.clone())),
                };
                tasks.push(tokio::spawn(crate::acme::run(
                    manager,
                    requests,
                    leader_rx.clone(),
                )));
            }
            if let Some(requests_rx) = cluster_cert_requests.take() {
                tasks.push(tokio::spawn(crate::internal_ca::cluster::run(
                    client.clone(),
                    crate::internal_ca::cluster::ClusterCaConfig {
                        namespace: namespace.clone(),
                        secret_name: cli.internal_ca_secret.clone(),
                    },
                    health.clone(),
                    requests_rx,
                    leader_rx.clone(),
                )));
            }
            if cli.disable_leader_election {
                tracing::info!("leader election disabled: Ingress status is not written");
            } else {
                control.leader = Some(tokio::spawn(crate::leader::run(
                    client.clone(),
                    crate::leader::ElectionConfig::from_ttl(
                        &cli.election_id,
                        &namespace,
                        &identity,
                        cli.election_ttl,
                    ),
                    metrics.clone(),
                    leader_tx,
                    stop_leader_rx,
                )));
                if cli.update_status {
                    let pod = crate::cli::NamespacedName {
                        namespace: namespace.clone(),
                        name: identity.clone(),
                    };
                    let config = crate::status::StatusConfig::from_cli(&cli, Some(pod));
                    control.status = Some(tokio::spawn(crate::status::run(
                        crate::status::StatusWriter::new(client.clone(), config),
                        leader_rx,
                        served_rx,
                        stop_status_rx,
                    )));
                }
            }
            kube_tasks = Some(control);
        }
    }

    for (listener, tls) in [(http_listener, None), (https_listener, Some(tls))] {
        let (health, state, stop) = (health.clone(), state.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            if first_configuration(&health, stop.clone()).await {
                listener::serve(listener, tls, state, stop).await;
            }
        }));
    }
    tasks.push(tokio::spawn(admin::serve(
        healthz_listener,
        Endpoints {
            healthz: true,
            metrics: !separate_metrics,
        },
        health.clone(),
        metrics.clone(),
        admin_rx.clone(),
    )));
    if let Some(l) = metrics_listener {
        tasks.push(tokio::spawn(admin::serve(
            l,
            Endpoints {
                healthz: false,
                metrics: true,
            },
            health.clone(),
            metrics.clone(),
            admin_rx,
        )));
    }
    // Close idle upstream connections past their keep-alive timeout.
    let pool = state.pool.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            pool.sweep();
        }
    }));

    tracing::info!(http = %http_addr, https = %https_addr, healthz = %healthz_addr, metrics = %metrics_addr, "listening");
    Ok(Running {
        http_addr,
        https_addr,
        healthz_addr,
        metrics_addr,
        state,
        health,
        acme_publisher,
        stop_accepting,
        stop_admin,
        tasks,
        kube: kube_tasks,
        grace_period: cli.shutdown_grace_period,
        drain_timeout: cli.shutdown_drain_timeout,
    })
}

impl Running {
    /// Graceful shutdown: /healthz 503 and `Connection: close` on every further HTTP/1
    /// response at once (keep-alive clients move to new connections, which the load balancer
    /// sends elsewhere); keep serving for the grace period; stop accepting; let requests in
    /// flight and WebSockets finish within the drain timeout.
    pub async fn shutdown(mut self) {
        self.health.shutting_down.store(true, Ordering::Release);
        self.state.draining.store(true, Ordering::Release);
        // Cluster mode: clear Ingress status if this is the last pod, release the Lease.
        if let Some(kube) = self.kube.take() {
            kube.stop().await;
        }
        tracing::info!(grace = ?self.grace_period, drain = ?self.drain_timeout, "shutting down");
        if !self.grace_period.is_zero() {
            tokio::time::sleep(self.grace_period).await;
        }
        let _ = self.stop_accepting.send(true);
        // Give idle keep-alive clients a moment to send a request that is still answered
        // (with Connection: close) before their connections are closed.
        let linger = Duration::from_millis(250).min(self.drain_timeout);
        tokio::time::sleep(linger).await;
        let drained = tokio::time::timeout(self.drain_timeout.saturating_sub(linger), async {
            self.state.drain.start();
            self.state.connections.wait_idle().await;
            self.state.tunnels.wait_idle().await;
        })
        .await;
        match drained {
            Ok(()) => tracing::info!("all connections drained"),
            Err(_) => tracing::warn!(
                tunnels = self.state.tunnels.count(),
                "drain timeout reached; closing the remaining connections"
            ),
        }
        let _ = self.stop_admin.send(true);
        for task in self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_wait_for_the_first_configuration() {
        let health = Arc::new(Health::default());
        let (_stop_tx, stop_rx) = watch::channel(false);
        let waiting = tokio::spawn({
            let health = health.clone();
            async move { first_configuration(&health, stop_rx).await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiting.is_finished(), "served before any configuration");
        health.ready.store(true, Ordering::Release);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn a_stop_before_the_first_configuration_ends_the_wait() {
        let health = Health::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopping = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            stop_tx.send_replace(true);
        };
        let (served, ()) = tokio::join!(first_configuration(&health, stop_rx), stopping);
        assert!(!served);
        let (_, dropped) = watch::channel(false);
        assert!(!first_configuration(&health, dropped).await);
    }
}
