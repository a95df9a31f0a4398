//! Upstream connections: a keep-alive pool of HTTP/1.1 connections per endpoint, with
//! ingress-nginx's upstream-keepalive limits, and the connect step (TCP with a timeout, DNS
//! for ExternalName Services).
//!
//! Our own pool rather than hyper-util's legacy client, because the proxy needs what that
//! client hides: a connect timeout per request, whether a connection was reused (metrics,
//! safe retries), and the connect time (`connect_duration_seconds`).
//!
//! Plain HTTP/1.1 upstreams are spoken to by our own client connection (proxy/http1/client.rs);
//! TLS and HTTP/2 upstreams by hyper's.
//!
//! PERF: the own client, against hyper's client connection (h1-small, `h2load --h1 -n 5000
//! -c 10`, callgrind, profiling build): 61.6k -> 55.9k user-space instructions per request;
//! `benches/cpu_split.sh` (release, 3 x 200 000 requests): user CPU 9.2 -> 7.7 ms per 1 000
//! requests, req/s +6 %. An idle pooled connection is now its socket only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use foldhash::HashMap;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::body::{BoxError, OnUpstreamEnd, ProxyBody};
use super::error::ProxyError;
use super::http1::client::{ClientBody, ClientConn};
use crate::settings::Settings;
use crate::snapshot::UpstreamTls;

/// Pool limits, from the ConfigMap's upstream-keepalive-* keys.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Idle connections kept per endpoint (`upstream-keepalive-connections`); 0 = no reuse.
    pub max_idle_per_endpoint: usize,
    /// `upstream-keepalive-timeout`.
    pub idle_timeout: Duration,
    /// `upstream-keepalive-requests`.
    pub max_requests: u64,
    /// `upstream-keepalive-time`.
    pub max_age: Duration,
}

impl From<&Settings> for PoolConfig {
    fn from(s: &Settings) -> PoolConfig {
        PoolConfig {
            max_idle_per_endpoint: s.upstream_keepalive_connections,
            idle_timeout: s.upstream_keepalive_timeout,
            max_requests: s.upstream_keepalive_requests,
            max_age: s.upstream_keepalive_time,
        }
    }
}

/// Where an upstream is: an endpoint address, or an ExternalName and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Addr(SocketAddr),
    Name(Arc<str>, u16),
}

/// What the pool is keyed by: the endpoint and how we speak to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub endpoint: Endpoint,
    pub http2: bool,
    /// `UpstreamTls::id` when the connection is TLS.
    pub tls: Option<u64>,
}

/// How to open a connection for a [`PoolKey`].
#[derive(Debug, Clone)]
pub struct ConnectSpec {
    pub http2: bool,
    /// TLS settings and the name to verify (and send as SNI when configured).
    pub tls: Option<(Arc<UpstreamTls>, ServerName<'static>)>,
}

/// A request sender on an upstream connection.
pub enum Sender {
    /// Plain HTTP/1.1 on our own client connection (proxy/http1/client.rs); taken by the
    /// request it carries, and put back with the connection when the response ends.
    Plain(Option<ClientConn>),
    /// HTTP/1.1 over TLS, on hyper's client connection.
    H1(http1::SendRequest<ProxyBody>),
    /// Shared by every request on the connection (multiplexed).
    H2(http2::SendRequest<ProxyBody>),
}

/// An upstream response body from either kind of connection.
pub enum UpstreamIncoming {
    Plain(ClientBody),
    Hyper(hyper::body::Incoming),
}

impl http_body::Body for UpstreamIncoming {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamIncoming::Plain(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamIncoming::Hyper(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamIncoming::Plain(b) => b.is_end_stream(),
            UpstreamIncoming::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamIncoming::Plain(b) => b.size_hint(),
            UpstreamIncoming::Hyper(b) => b.size_hint(),
        }
    }
}

/// A request that got no response: why, and the request itself when none of it was
/// written, so it can go elsewhere.
pub struct SendError {
    pub source: BoxError,
    pub returned: Option<http::Request<ProxyBody>>,
}

impl From<hyper::client::conn::TrySendError<http::Request<ProxyBody>>> for SendError {
    fn from(mut e: hyper::client::conn::TrySendError<http::Request<ProxyBody>>) -> SendError {
        let returned = e.take_message();
        SendError {
            source: Box::new(e.into_error()),
            returned,
        }
    }
}

pub type SendResult = Result<http::Response<UpstreamIncoming>, SendError>;

impl Sender {
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::Plain(conn) => conn.as_ref().is_none_or(ClientConn::is_closed),
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    pub fn is_http2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }

    /// Send a request and wait for the response head; see [`SendError`].
    pub async fn send(&mut self, req: http::Request<ProxyBody>) -> SendResult {
        match self {
            Sender::Plain(slot) => {
                let Some(conn) = slot.take() else {
                    return Err(SendError {
                        source: "the upstream connection already carried its request".into(),
                        returned: Some(req),
                    });
                };
                // PERF: boxed. The exchange's state (request head, read buffer, body writer)
                // inside the request's future made every enclosing `.await` copy it: 8.5k of
                // 64.4k instructions per request were that memcpy (callgrind, h1-small).
                Box::pin(conn.send(req))
                    .await
                    .map(|r| r.map(UpstreamIncoming::Plain))
                    .map_err(|f| SendError {
                        source: Box::new(f.error),
                        returned: f.returned,
                    })
            }
            Sender::H1(s) => s
                .try_send_request(req)
                .await
                .map(|r| r.map(UpstreamIncoming::Hyper))
                .map_err(SendError::from),
            Sender::H2(s) => s
                .try_send_request(req)
                .await
                .map(|r| r.map(UpstreamIncoming::Hyper))
                .map_err(SendError::from),
        }
    }
}

/// A shared HTTP/2 connection: its sender, the peer, and when it was opened.
type SharedH2 = (http2::SendRequest<ProxyBody>, SocketAddr, Instant);

struct IdleConn {
    /// `Plain` or `H1`.
    sender: Sender,
    peer: SocketAddr,
    idle_since: Instant,
    created: Instant,
    uses: u64,
}

/// A connection checked out for one request.
pub struct Conn {
    pub sender: Sender,
    pub key: PoolKey,
    pub peer: SocketAddr,
    created: Instant,
    uses: u64,
    /// Whether this connection served a request before (a failure on it before any byte of
    /// response is then most likely a close race, and safe to retry).
    pub reused: bool,
    /// Time spent connecting (zero when reused).
    pub connect_time: Duration,
}

#[derive(Default)]
struct PoolStats {
    reused: AtomicU64,
    created: AtomicU64,
}

// PERF: foldhash, not SipHash: two lookups per request (checkout and checkin) cost ~450
// instructions each with SipHash; with the balancer's map, callgrind h1-small went 45 900
// -> 45 300 instructions per request. The keys come from configuration, not from clients.
struct PoolInner {
    idle: Mutex<HashMap<PoolKey, Vec<IdleConn>>>,
    /// One multiplexed HTTP/2 connection per key.
    h2: Mutex<HashMap<PoolKey, SharedH2>>,
    config: ArcSwap<PoolConfig>,
    stats: PoolStats,
}

/// The upstream connection pool, shared by every request.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Default for Pool {
    fn default() -> Pool {
        Pool::new(PoolConfig::from(&Settings::default()))
    }
}

impl Pool {
    pub fn new(config: PoolConfig) -> Pool {
        Pool {
            inner: Arc::new(PoolInner {
                idle: Mutex::new(HashMap::default()),
                h2: Mutex::new(HashMap::default()),
                config: ArcSwap::from_pointee(config),
                stats: PoolStats::default(),
            }),
        }
    }

    /// Apply new limits (a ConfigMap change); idle connections over them age out.
    pub fn set_config(&self, config: PoolConfig) {
        if **self.inner.config.load() != config {
            self.inner.config.store(Arc::new(config));
        }
    }

    pub fn config(&self) -> Arc<PoolConfig> {
        self.inner.config.load_full()
    }

    /// (requests on reused connections, connections opened).
    pub fn stats(&self) -> (u64, u64) {
        (
            self.inner.stats.reused.load(Ordering::Relaxed),
            self.inner.stats.created.load(Ordering::Relaxed),
        )
    }

    /// Idle connections across all endpoints.
    pub fn idle_count(&self) -> usize {
        self.inner
            .idle
            .lock()
            .map(|idle| idle.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    fn take_idle(&self, key: &PoolKey) -> Option<IdleConn> {
        let config = self.inner.config.load();
        let mut idle = self.inner.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        let now = Instant::now();
        while let Some(conn) = list.pop() {
            let expired = now.duration_since(conn.idle_since) >= config.idle_timeout
                || now.duration_since(conn.created) >= config.max_age;
            if expired || conn.sender.is_closed() {
                continue;
            }
            return Some(conn);
        }
        None
    }

    /// A connection to `key`: an idle (or, for HTTP/2, the shared) one if alive, else a new
    /// one within `connect_timeout` (TCP and TLS together).
    pub async fn checkout(
        &self,
        key: &PoolKey,
        spec: &ConnectSpec,
        connect_timeout: Duration,
    ) -> Result<Conn, ProxyError> {
        if key.http2 {
            let shared = self
                .inner
                .h2
                .lock()
                .ok()
                .and_then(|map| map.get(key).filter(|(s, _, _)| !s.is_closed()).cloned());
            if let Some((mut sender, peer, created)) = shared {
                if sender.ready().await.is_ok() {
                    self.inner.stats.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok(Conn {
                        sender: Sender::H2(sender),
                        key: key.clone(),
                        peer,
                        created,
                        uses: 0,
                        reused: true,
                        connect_time: Duration::ZERO,
                    });
                }
            }
        } else {
            while let Some(mut idle) = self.take_idle(key) {
                // The previous response was read to its end; hyper's readiness is immediate
                // unless the upstream closed the connection meanwhile (take_idle checked ours).
                let ready = match &mut idle.sender {
                    Sender::H1(sender) => sender.ready().await.is_ok(),
                    _ => true,
                };
                if ready {
                    self.inner.stats.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok(Conn {
                        sender: idle.sender,
                        key: key.clone(),
                        peer: idle.peer,
                        created: idle.created,
                        uses: idle.uses,
                        reused: true,
                        connect_time: Duration::ZERO,
                    });
                }
            }
        }
        let started = Instant::now();
        let peer = match &key.endpoint {
            Endpoint::Addr(addr) => *addr,
            Endpoint::Name(host, port) => resolve(host, *port).await?,
        };
        // PERF: boxed, so the TLS handshake state (6.7 KB) is allocated only when a connection
        // is opened, not carried by every request's future.
        let sender =
            match tokio::time::timeout(connect_timeout, Box::pin(connect(peer, spec))).await {
                Ok(result) => result?,
                Err(_) => return Err(ProxyError::ConnectTimeout { addr: peer }),
            };
        self.inner.stats.created.fetch_add(1, Ordering::Relaxed);
        let created = Instant::now();
        if let Sender::H2(h2) = &sender {
            if let Ok(mut map) = self.inner.h2.lock() {
                map.insert(key.clone(), (h2.clone(), peer, created));
            }
        }
        Ok(Conn {
            sender,
            key: key.clone(),
            peer,
            created,
            uses: 0,
            reused: false,
            connect_time: started.elapsed(),
        })
    }

    /// Give a connection back after its response was read to the end. HTTP/2 connections
    /// stay shared in the pool and need nothing.
    fn checkin(&self, conn: Conn) {
        let sender = conn.sender;
        if !matches!(sender, Sender::H1(_) | Sender::Plain(Some(_))) {
            return;
        }
        let config = self.inner.config.load();
        let uses = conn.uses + 1;
        if config.max_idle_per_endpoint == 0
            || uses >= config.max_requests
            || conn.created.elapsed() >= config.max_age
            || sender.is_closed()
        {
            return;
        }
        let Ok(mut idle) = self.inner.idle.lock() else {
            return;
        };
        let list = idle.entry(conn.key).or_default();
        let now = Instant::now();
        if list.len() >= config.max_idle_per_endpoint {
            // Expired and closed ones go first; the sweep and take_idle drop them otherwise,
            // so a checkin below the cap does not walk the list.
            list.retain(|c| {
                now.duration_since(c.idle_since) < config.idle_timeout && !c.sender.is_closed()
            });
        }
        if list.len() >= config.max_idle_per_endpoint {
            // Drop the oldest idle connection to make room, as nginx's keepalive cache does.
            list.remove(0);
        }
        list.push(IdleConn {
            sender,
            peer: conn.peer,
            idle_since: now,
            created: conn.created,
            uses,
        });
    }

    /// Close idle connections past their timeout (run periodically).
    pub fn sweep(&self) {
        if let Ok(mut h2) = self.inner.h2.lock() {
            h2.retain(|_, (sender, _, _)| !sender.is_closed());
        }
        let config = self.inner.config.load();
        let Ok(mut idle) = self.inner.idle.lock() else {
            return;
        };
        let now = Instant::now();
        idle.retain(|_, list| {
            list.retain(|c| {
                now.duration_since(c.idle_since) < config.idle_timeout
                    && now.duration_since(c.created) < config.max_age
                    && !c.sender.is_closed()
            });
            !list.is_empty()
        });
    }

    /// Arrange for `conn` to come back to this pool when `body` has been read to its end:
    /// our own connections come back from the body itself, hyper's through the returned
    /// hook (for [`super::body::UpstreamBody`]).
    pub fn return_on_end(
        &self,
        mut conn: Conn,
        body: &mut UpstreamIncoming,
    ) -> Option<Box<dyn OnUpstreamEnd>> {
        let pool = self.clone();
        match body {
            UpstreamIncoming::Plain(body) => {
                body.on_reusable(Box::new(move |client| {
                    conn.sender = Sender::Plain(Some(client));
                    pool.checkin(conn);
                }));
                None
            }
            UpstreamIncoming::Hyper(_) => Some(Box::new(Checkin { pool, conn })),
        }
    }
}

struct Checkin {
    pool: Pool,
    conn: Conn,
}

impl OnUpstreamEnd for Checkin {
    fn finished(self: Box<Self>) {
        let Checkin { pool, conn } = *self;
        pool.checkin(conn);
    }
}

/// Open TCP, then TLS when asked, then the HTTP/1.1 or HTTP/2 handshake.
async fn connect(peer: SocketAddr, spec: &ConnectSpec) -> Result<Sender, ProxyError> {
    let tcp = TcpStream::connect(peer)
        .await
        .map_err(|source| ProxyError::Connect { addr: peer, source })?;
    let _ = tcp.set_nodelay(true);
    match &spec.tls {
        None if !spec.http2 => Ok(Sender::Plain(Some(ClientConn::new(tcp)))),
        None => handshake(tcp, spec.http2, peer).await,
        Some((tls, name)) => {
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            let stream = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|source| ProxyError::UpstreamTls { addr: peer, source })?;
            handshake(stream, spec.http2, peer).await
        }
    }
}

async fn handshake<I>(io: I, http2: bool, peer: SocketAddr) -> Result<Sender, ProxyError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if http2 {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| ProxyError::Handshake { addr: peer, source })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(upstream = %peer, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(Sender::H2(sender))
    } else {
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| ProxyError::Handshake { addr: peer, source })?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(upstream = %peer, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Sender::H1(sender))
    }
}

/// Resolve an ExternalName. A name that resolves to loopback is refused: it would reach the
/// controller itself (ingress-nginx refuses it too).
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, ProxyError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ProxyError::Resolve {
            host: host.to_string(),
            reason: e.to_string(),
        })?
        .collect();
    if addrs
        .iter()
        .any(|a| a.ip().is_loopback() || a.ip().is_unspecified())
    {
        return Err(ProxyError::ExternalNameLoopback {
            host: host.to_string(),
        });
    }
    addrs.into_iter().next().ok_or_else(|| ProxyError::Resolve {
        host: host.to_string(),
        reason: "no addresses".into(),
    })
}
