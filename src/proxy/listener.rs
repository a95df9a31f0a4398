//! Client listeners: bind, accept within the connection cap (`max-worker-connections`), and
//! serve each connection with HTTP/1.1 and HTTP/2 (prior knowledge on cleartext), watched for
//! graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use super::conn_timer::{ConnActivity, TimedIo};
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
                None => serve_connection(stream, peer, local, "http", None, &state, drain).await,
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
                                serve_connection(
                                    stream,
                                    peer,
                                    local,
                                    "https",
                                    client_cert,
                                    &state,
                                    drain,
                                )
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

/// Serve HTTP/1.1 or HTTP/2 (by ALPN on TLS, by the connection preface on cleartext) on one
/// client connection until it ends or drains.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    local: SocketAddr,
    scheme: &'static str,
    client_cert: Option<Arc<super::client_cert::PeerCert>>,
    state: &Arc<ProxyState>,
    mut drain: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(ConnActivity::default());
    let info = Arc::new(ConnInfo {
        peer,
        local,
        scheme,
        client_cert,
        requests: Default::default(),
        activity: activity.clone(),
    });
    let settings = state.snapshot.load().settings.clone();
    // hyper's one header timer also runs while a keep-alive connection idles, so both
    // client-header-timeout and keep-alive are kept by the IO wrapper instead.
    let io = TimedIo::new(
        io,
        activity,
        settings.client_header_timeout,
        settings.keep_alive,
    );
    // large-client-header-buffers: a request header must fit in number x size (hyper answers
    // 431 beyond; its buffer cannot be smaller than 8 KiB).
    let (buffers, buffer_size) = settings.large_client_header_buffers;
    let header_limit = buffers.saturating_mul(buffer_size).max(8192);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(!settings.keep_alive.is_zero())
        .header_read_timeout(None)
        .max_buf_size(header_limit);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(header_limit).unwrap_or(u32::MAX))
        .max_concurrent_streams(settings.http2_max_concurrent_streams);
    // use-http2 false: TLS clients get HTTP/1.1 only, even if they send the h2 preface
    // without having negotiated it.
    if scheme == "https" && !settings.use_http2 {
        builder = builder.http1_only();
    }
    let service_state = state.clone();
    // PERF: the request future is boxed. hyper keeps its in-flight slot allocated for the
    // whole connection and moves the future into it: unboxed that slot was as large as the
    // pipeline's state (13 KB), held by every idle keep-alive connection, and copied several
    // times per request. Callgrind, h1 keep-alive: memcpy was 48% of the 109 000 user-space
    // instructions per request; boxed, 62 000. RSS per idle connection: 34.8 -> 23.8 KB.
    let service = service_fn(move |req| Box::pin(handle(service_state.clone(), info.clone(), req)));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = async { let _ = drain.wait_for(|d| *d).await; } => {
            // HTTP/1.1: close when idle, or after the response in flight;
            // HTTP/2: GOAWAY, then finish the open streams.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
    }
}
