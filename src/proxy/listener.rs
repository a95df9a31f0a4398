//! Client listeners: bind, accept within the connection cap (`max-worker-connections`), and
//! serve each connection with HTTP/1.1 and HTTP/2 (prior knowledge on cleartext), watched for
//! graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use super::body::Inbound;
use super::conn_timer::{ConnActivity, TimedIo};
use super::http1;
use super::service::{handle, ConnInfo};
use super::tls::TlsContext;
use super::ProxyState;

/// Bind a listening socket with the options a proxy wants (address reuse, a deep backlog).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept and serve until `stop` turns true; then the listening socket is closed (new
/// connections are refused) and connections already open drain when `drain` turns true.
/// With `tls`, every connection is a TLS connection (HTTPS listener).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsContext>>,
    state: Arc<ProxyState>,
    mut stop: watch::Receiver<bool>,
    drain: watch::Receiver<bool>,
) {
    let closed = Arc::new(Notify::new());
    loop {
        // Stay under the connection cap; re-read it so a ConfigMap change applies live.
        loop {
            let limit = state.snapshot.load().settings.max_worker_connections as i64;
            if state.metrics.connections_active.get() < limit {
                break;
            }
            tokio::select! {
                _ = closed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop.changed() => return,
            }
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        if *stop.borrow() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        state.metrics.connections_active.inc();
        state.metrics.connections_accepted.inc();
        let state = state.clone();
        let closed = closed.clone();
        let drain = drain.clone();
        let guard = state.connections.open();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _guard = guard;
            match tls {
                None => serve_connection(stream, peer, local, None, &state, drain).await,
                // PERF: boxed, so a plain-HTTP connection's task does not carry the TLS
                // handshake and TLS stream states (task 6.3 KB per connection, now 2.3 KB;
                // RSS per idle connection 23.8 -> 21.1 KB).
                Some(tls) => {
                    Box::pin(async {
                        // The configuration is chosen by SNI (client certificates per host).
                        let accept = super::client_cert::accept(&tls, stream);
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                            Ok(Ok((mut stream, _)))
                                if super::tls::is_acme_tls_alpn(stream.get_ref().1) =>
                            {
                                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                            }
                            Ok(Ok((stream, client_cert))) => {
                                let alpn_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                                let tls = TlsFacts {
                                    client_cert,
                                    alpn_h2,
                                };
                                serve_connection(stream, peer, local, Some(tls), &state, drain)
                                    .await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                        }
                    })
                    .await
                }
            }
            state.metrics.connections_active.dec();
            closed.notify_one();
        });
    }
}

/// What the TLS handshake settled for a connection.
struct TlsFacts {
    client_cert: Option<Arc<super::client_cert::PeerCert>>,
    /// ALPN chose HTTP/2.
    alpn_h2: bool,
}

/// Serve HTTP/1.1 (our loop, `http1`) or HTTP/2 (hyper; by ALPN on TLS, by the connection
/// preface on cleartext) on one client connection until it ends or drains.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<TlsFacts>,
    state: &Arc<ProxyState>,
    drain: watch::Receiver<bool>,
) where
    I: http1::Transport,
{
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (client_cert, alpn_h2) = tls.map_or((None, false), |t| (t.client_cert, t.alpn_h2));
    let info = Arc::new(ConnInfo {
        peer,
        local,
        scheme,
        client_cert,
        requests: Default::default(),
        activity: Arc::new(ConnActivity::default()),
    });
    let settings = state.snapshot.load().settings.clone();
    // large-client-header-buffers: a request header must fit in number x size (400 beyond).
    let (buffers, buffer_size) = settings.large_client_header_buffers;
    let header_limit = buffers.saturating_mul(buffer_size).max(1024);
    let limits = ConnLimits {
        header_limit,
        header_timeout: settings.client_header_timeout,
        keep_alive: settings.keep_alive,
        http2_max_concurrent_streams: settings.http2_max_concurrent_streams,
    };
    // Boxed (both places): the HTTP/2 state must not sit in every HTTP/1 connection's task.
    if alpn_h2 {
        return Box::pin(serve_http2(io, info, limits, state, drain)).await;
    }
    let config = http1::Config {
        header_limit,
        header_timeout: settings.client_header_timeout,
        keep_alive: settings.keep_alive,
        // use-http2 false: TLS clients get HTTP/1.1 only, even if they send the h2 preface
        // without having negotiated it.
        detect_h2: scheme == "http" || settings.use_http2,
        reading: state.metrics.connections_reading.clone(),
    };
    let service_state = state.clone();
    let service_info = info.clone();
    // PERF: the request future is boxed, so the connection's own future stays small while
    // it idles (the pipeline's state is 13 KB) and is not copied as it moves.
    // PERF: `Box::pin(handle(..))` builds the pipeline's future in its box. Wrapping it in
    // an async block that unwrapped the `Infallible` moved the 13 KB future on first poll:
    // 13 100 of 75 600 instructions per request were that memcpy (callgrind).
    let service = move |req: Request<http1::RequestBody>| {
        Box::pin(handle(
            service_state.clone(),
            service_info.clone(),
            req.map(Inbound::Http1),
        ))
    };
    let served = http1::serve(io, config, service, drain.clone()).await;
    if let Some(http1::Handoff::Http2(io)) = served {
        Box::pin(serve_http2(io, info, limits, state, drain)).await;
    }
}

/// What an HTTP/2 connection takes from the settings.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    header_limit: usize,
    header_timeout: Duration,
    keep_alive: Duration,
    http2_max_concurrent_streams: u32,
}

/// Serve HTTP/2 with hyper until the connection ends or drains (GOAWAY, then the open
/// streams finish).
async fn serve_http2<I>(
    io: I,
    info: Arc<ConnInfo>,
    limits: ConnLimits,
    state: &Arc<ProxyState>,
    mut drain: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TimedIo::new(
        io,
        info.activity.clone(),
        limits.header_timeout,
        limits.keep_alive,
    );
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.header_limit).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_max_concurrent_streams);
    let service_state = state.clone();
    let peer = info.peer;
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        Box::pin(handle(
            service_state.clone(),
            info.clone(),
            req.map(Inbound::Hyper),
        ))
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = async { let _ = drain.wait_for(|d| *d).await; } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
    }
}
