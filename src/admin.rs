//! The health and metrics server (port 10254): `/healthz` is 200 once the first snapshot is
//! live and until shutdown begins, 503 otherwise; `/metrics` is Prometheus text.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::{Metrics, PROMETHEUS_CONTENT_TYPE};

/// Readiness as /healthz reports it.
#[derive(Debug, Default)]
pub struct Health {
    /// The first snapshot has been published.
    pub ready: AtomicBool,
    /// SIGTERM received.
    pub shutting_down: AtomicBool,
    /// The internal CA's certificate, served at `/internal-ca.crt` (with `--internal-ca`).
    pub internal_ca_pem: std::sync::OnceLock<Arc<str>>,
    /// Secrets in the store after the last batch of changes (a debug and test hook: cluster
    /// mode keeps only the referenced ones).
    pub stored_secrets: std::sync::atomic::AtomicUsize,
}

impl Health {
    pub fn healthy(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutting_down.load(Ordering::Acquire)
    }
}

/// What the admin server answers.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub healthz: bool,
    pub metrics: bool,
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn route(
    req: &Request<Incoming>,
    endpoints: Endpoints,
    health: &Health,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        );
    }
    match req.uri().path() {
        "/healthz" | "/healthz/ping" | "/healthz/sluice" if endpoints.healthz => {
            if health.healthy() {
                respond(StatusCode::OK, "text/plain", "ok")
            } else if health.shutting_down.load(Ordering::Acquire) {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "shutting down\n",
                )
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no configuration loaded yet\n",
                )
            }
        }
        "/internal-ca.crt" if endpoints.healthz && health.internal_ca_pem.get().is_some() => {
            let pem = health.internal_ca_pem.get().expect("checked by the guard");
            respond(StatusCode::OK, "application/x-pem-file", pem.to_string())
        }
        "/metrics" if endpoints.metrics => match metrics.render() {
            Ok(text) => respond(StatusCode::OK, PROMETHEUS_CONTENT_TYPE, text),
            Err(_) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "encoding failed\n",
            ),
        },
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serve until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => { tokio::time::sleep(std::time::Duration::from_millis(20)).await; continue }
            },
            _ = stop.changed() => return,
        };
        let health = health.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = route(&req, endpoints, &health, &metrics);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
