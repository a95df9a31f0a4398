//! Upstream connections: a keep-alive pool of HTTP/1.1 connections per endpoint, with
//! ingress-nginx's upstream-keepalive limits, and the connect step (TCP with a timeout, DNS
//! for ExternalName Services).
//!
//! Our own pool rather than hyper-util's legacy client, because the proxy needs what that
//! client hides: a connect timeout per request, whether a connection was reused (metrics,
//! safe retries), and the connect time (`connect_duration_seconds`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::{OnUpstreamEnd, ProxyBody};
use super::error::ProxyError;
use crate::settings::Settings;

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

/// What the pool is keyed by: an endpoint address, or an ExternalName and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PoolKey {
    Addr(SocketAddr),
    Name(Arc<str>, u16),
}

struct IdleConn {
    sender: http1::SendRequest<ProxyBody>,
    peer: SocketAddr,
    idle_since: Instant,
    created: Instant,
    uses: u64,
}

/// A connection checked out for one request.
pub struct Conn {
    pub sender: http1::SendRequest<ProxyBody>,
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

struct PoolInner {
    idle: Mutex<HashMap<PoolKey, Vec<IdleConn>>>,
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
                idle: Mutex::new(HashMap::new()),
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

    /// A connection to `key`: an idle one if any is alive, else a new one within
    /// `connect_timeout`.
    pub async fn checkout(
        &self,
        key: &PoolKey,
        connect_timeout: Duration,
    ) -> Result<Conn, ProxyError> {
        while let Some(mut idle) = self.take_idle(key) {
            // The previous response was read to its end; readiness is immediate unless the
            // upstream closed the connection meanwhile.
            if idle.sender.ready().await.is_ok() {
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
        let started = Instant::now();
        let peer = match key {
            PoolKey::Addr(addr) => *addr,
            PoolKey::Name(host, port) => resolve(host, *port).await?,
        };
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(peer)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ProxyError::Connect { addr: peer, source }),
            Err(_) => return Err(ProxyError::ConnectTimeout { addr: peer }),
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ProxyError::Handshake { addr: peer, source })?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(upstream = %peer, error = %e, "upstream connection ended with an error");
            }
        });
        self.inner.stats.created.fetch_add(1, Ordering::Relaxed);
        Ok(Conn {
            sender,
            key: key.clone(),
            peer,
            created: Instant::now(),
            uses: 0,
            reused: false,
            connect_time: started.elapsed(),
        })
    }

    /// Give a connection back after its response was read to the end.
    fn checkin(&self, conn: Conn) {
        let config = self.inner.config.load();
        let uses = conn.uses + 1;
        if config.max_idle_per_endpoint == 0
            || uses >= config.max_requests
            || conn.created.elapsed() >= config.max_age
            || conn.sender.is_closed()
        {
            return;
        }
        let Ok(mut idle) = self.inner.idle.lock() else {
            return;
        };
        let list = idle.entry(conn.key).or_default();
        let now = Instant::now();
        list.retain(|c| {
            now.duration_since(c.idle_since) < config.idle_timeout && !c.sender.is_closed()
        });
        if list.len() >= config.max_idle_per_endpoint {
            // Drop the oldest idle connection to make room, as nginx's keepalive cache does.
            list.remove(0);
        }
        list.push(IdleConn {
            sender: conn.sender,
            peer: conn.peer,
            idle_since: now,
            created: conn.created,
            uses,
        });
    }

    /// Close idle connections past their timeout (run periodically).
    pub fn sweep(&self) {
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

    /// A hook that returns `conn` to this pool when its response body ends.
    pub fn return_on_end(&self, conn: Conn) -> Box<dyn OnUpstreamEnd> {
        Box::new(Checkin {
            pool: self.clone(),
            conn,
        })
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
