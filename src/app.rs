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
use crate::admin::{self, Endpoints, Health};
use crate::cli::Cli;
use crate::metrics::{ControllerLabels, Metrics};
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
    #[error("--manifests {0}: not a readable folder")]
    Manifests(String),
    #[error("Kubernetes mode (no --manifests) is not implemented in this version; run with --manifests DIR")]
    NoSource,
}

/// A started Sluice: its bound addresses, and how to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    /// The health server's address (also metrics when the ports are equal).
    pub healthz_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub state: Arc<ProxyState>,
    pub health: Arc<Health>,
    stop_accepting: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    drain: watch::Sender<bool>,
    grace_period: Duration,
    drain_timeout: Duration,
}

/// The controller's identity for metric labels, from the pod environment as ingress-nginx
/// reads it (POD_NAMESPACE, POD_NAME).
fn controller_labels(cli: &Cli) -> ControllerLabels {
    ControllerLabels {
        namespace: std::env::var("POD_NAMESPACE").unwrap_or_default(),
        class: cli.controller_class.clone(),
        pod: std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_default(),
    }
}

fn bind(what: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    listener::bind(addr).map_err(|source| StartError::Bind { what, addr, source })
}

/// Bind every port and start every task. Returns once listening; `/healthz` turns 200 when
/// the first snapshot is published.
pub async fn start(cli: Cli) -> Result<Running, StartError> {
    start_with_access_log(cli, true).await
}

/// As [`start`]; `access_log` false writes no access log (benchmarks, some tests).
pub async fn start_with_access_log(cli: Cli, access_log: bool) -> Result<Running, StartError> {
    let Some(dir) = cli.manifests.clone() else {
        return Err(StartError::NoSource);
    };
    if !dir.is_dir() {
        return Err(StartError::Manifests(dir.display().to_string()));
    }

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

    let metrics = Arc::new(Metrics::new(
        &controller_labels(&cli),
        cli.enable_metrics,
        cli.metrics_per_host,
    ));
    let health = Arc::new(Health::default());
    let live = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
    let access_log = access_log.then(|| {
        let format = if cli.access_log_format == "json" {
            Format::Json
        } else {
            Format::Upstream
        };
        AccessLog::start(format, false, std::io::stdout())
    });
    let state = Arc::new(ProxyState::new(live.clone(), metrics.clone(), access_log));

    let (stop_accepting, stop_rx) = watch::channel(false);
    let (stop_admin, admin_rx) = watch::channel(false);
    let (drain, drain_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let (events_tx, events_rx) = mpsc::channel(64);
    let publisher = Publisher::new(
        TranslateOptions::from(&cli),
        live,
        state.pool.clone(),
        metrics.clone(),
        health.clone(),
    );
    tasks.push(tokio::spawn(publisher.run(events_rx)));
    tasks.push(tokio::spawn(file::run(ManifestDir::new(dir), events_tx)));

    tasks.push(tokio::spawn(listener::serve(
        http_listener,
        "http",
        state.clone(),
        stop_rx.clone(),
        drain_rx,
    )));
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

    tracing::info!(http = %http_addr, healthz = %healthz_addr, metrics = %metrics_addr, "listening");
    Ok(Running {
        http_addr,
        healthz_addr,
        metrics_addr,
        state,
        health,
        stop_accepting,
        stop_admin,
        tasks,
        drain,
        grace_period: cli.shutdown_grace_period,
        drain_timeout: cli.shutdown_drain_timeout,
    })
}

impl Running {
    /// Graceful shutdown: /healthz 503 and `Connection: close` on every further HTTP/1
    /// response at once (keep-alive clients move to new connections, which the load balancer
    /// sends elsewhere); keep serving for the grace period; stop accepting; let requests in
    /// flight and WebSockets finish within the drain timeout.
    pub async fn shutdown(self) {
        self.health.shutting_down.store(true, Ordering::Release);
        self.state.draining.store(true, Ordering::Release);
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
            let _ = self.drain.send(true);
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
