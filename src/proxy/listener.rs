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
use tokio::sync::watch;

use super::body::Inbound;
use super::conn_timer::{ConnActivity, TimedIo};
use super::http1;
use super::service::{handle, ConnInfo, Listening};
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
/// connections are refused) and connections already open drain when `state.drain` is set.
/// With `tls`, every connection is a TLS connection (HTTPS listener).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsContext>>,
    state: Arc<ProxyState>,
    mut stop: watch::Receiver<bool>,
) {
    // What every connection here shares (scheme, port for X-Forwarded-Port and auth's server
    // port): made once, so no getsockname per connection and no port formatted per request.
    let scheme = if tls.is_some() { "https" } else { "http" };
    let port = listener.local_addr().map_or(0, |a| a.port());
    let listening = Arc::new(Listening::new(scheme, port));
    loop {
        // Stay under the connection cap; re-read it so a ConfigMap change applies live.
        loop {
            let limit = state.snapshot.load().settings.max_worker_connections as i64;
            if state.metrics.connections_active.get() < limit {
                break;
            }
            tokio::select! {
                _ = state.connections.one_left() => {}
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
        let slot = ConnSlot::open(&state);
        // PERF: one task type per transport, so the plain-HTTP task carries no TLS state,
        // and no argument twice (an `async fn` keeps its arguments for its whole life
        // beside the locals they are moved into; see serve_connection). Task cell per idle
        // plain connection 1 280 -> 512 bytes (the size test below).
        match &tls {
            None => {
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    listening.clone(),
                    None,
                    slot,
                ));
            }
            Some(tls) => {
                tokio::spawn(serve_tls(
                    tls.clone(),
                    stream,
                    peer,
                    listening.clone(),
                    slot,
                ));
            }
        }
    }
}

/// A client connection counted open (gauges, the shutdown's tracker) for as long as its
/// task holds this; dropped when the task ends, however it ends, which also wakes an accept
/// loop waiting at the connection cap. Only the shared state: it is in every idle
/// connection's future.
struct ConnSlot {
    state: Arc<ProxyState>,
}

impl ConnSlot {
    fn open(state: &Arc<ProxyState>) -> ConnSlot {
        state.metrics.connections_active.inc();
        state.metrics.connections_accepted.inc();
        state.connections.enter();
        ConnSlot {
            state: state.clone(),
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.state.metrics.connections_active.dec();
        self.state.connections.leave();
    }
}

/// TLS handshake (configuration chosen by SNI, client certificates per host), then serve.
///
/// PERF: a TLS connection's task is sized by its largest state for its whole life. The
/// handshake (rustls' acceptor and the connection being built, ~4.8 KB) is boxed, and the
/// accepted stream (1 216 bytes) is held once, inside `serve_connection`: as an `async fn`
/// matching on the handshake's result, the task kept the result, the stream and the serving
/// future side by side (5 248-byte cells; sizes in the issue 9 note).
fn serve_tls(
    tls: Arc<TlsContext>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    listening: Arc<Listening>,
    slot: ConnSlot,
) -> impl std::future::Future<Output = ()> + Send {
    let handshake = Box::pin(tokio::time::timeout(HANDSHAKE_TIMEOUT, async move {
        super::client_cert::accept(&tls, stream).await
    }));
    async move {
        // In a block: a local of the handshake's alive across the await below would keep a
        // second copy of the stream's slot in the task.
        let (stream, facts) = {
            let (mut stream, client_cert) = match handshake.await {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(e)) => {
                    return tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                }
                Err(_) => return tracing::debug!(peer = %peer, "TLS handshake timed out"),
            };
            if super::tls::is_acme_tls_alpn(stream.get_ref().1) {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                return;
            }
            let alpn_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let facts = TlsFacts {
                client_cert,
                alpn_h2,
            };
            (stream, facts)
        };
        serve_connection(stream, peer, listening, Some(facts), slot).await
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
///
/// Not an `async fn`: what the connection needs is worked out here, and the future keeps
/// only that (an idle keep-alive connection is this future and little else).
fn serve_connection<I>(
    mut io: I,
    peer: SocketAddr,
    listening: Arc<Listening>,
    tls: Option<TlsFacts>,
    slot: ConnSlot,
) -> impl std::future::Future<Output = ()> + Send
where
    I: http1::Transport,
{
    let https = tls.is_some();
    let (client_cert, alpn_h2) = tls.map_or((None, false), |t| (t.client_cert, t.alpn_h2));
    let info = Arc::new(ConnInfo::new(peer, listening, client_cert, None));
    async move {
        // Boxed (both places): the HTTP/2 state must not sit in every HTTP/1 connection's task.
        if alpn_h2 {
            return Box::pin(serve_http2(io, info, &slot.state)).await;
        }
        let config = {
            let limits = ConnLimits::new(&slot.state.snapshot.load().settings);
            http1::Config {
                header_limit: limits.header_limit,
                header_timeout: limits.header_timeout,
                keep_alive: limits.keep_alive,
                // use-http2 false: TLS clients get HTTP/1.1 only, even if they send the h2
                // preface without having negotiated it.
                detect_h2: !https || limits.use_http2,
                reading: slot.state.metrics.connections_reading.clone(),
                deadlines: slot.state.deadlines.clone(),
            }
        };
        let service_state = slot.state.clone();
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
        let Some(handoff) = http1::serve(&mut io, config, service, &slot.state.drain).await else {
            return;
        };
        // The hand-over is boxed with the transport it takes: inline, the rewound transport
        // was a second copy of `io`'s slot in the task (1 248 bytes on TLS). Bound by
        // `let else`, not `if let`: an `Option` moved out of in an `if let` keeps its slot
        // until the end of the block.
        let hand_over = Box::pin(async move {
            if let Some(io) = handoff.finish(io) {
                serve_http2(io, info, &slot.state).await;
            }
        });
        hand_over.await;
    }
}

/// What a connection takes from the settings when it starts (HTTP/1) or is handed to
/// HTTP/2. Not kept in the connection's future: read again where needed.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    header_limit: usize,
    header_timeout: Duration,
    keep_alive: Duration,
    http2_max_concurrent_streams: u32,
    use_http2: bool,
}

impl ConnLimits {
    fn new(settings: &crate::settings::Settings) -> ConnLimits {
        // large-client-header-buffers: a request header must fit in number x size (400
        // beyond).
        let (buffers, buffer_size) = settings.large_client_header_buffers;
        ConnLimits {
            header_limit: buffers.saturating_mul(buffer_size).max(1024),
            header_timeout: settings.client_header_timeout,
            keep_alive: settings.keep_alive,
            http2_max_concurrent_streams: settings.http2_max_concurrent_streams,
            use_http2: settings.use_http2,
        }
    }
}

/// Serve HTTP/2 with hyper until the connection ends, drains or has had its
/// `keep-alive-requests` (GOAWAY, then the open streams finish).
async fn serve_http2<I>(io: I, info: Arc<ConnInfo>, state: &Arc<ProxyState>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = ConnLimits::new(&state.snapshot.load().settings);
    // The connection's record as HTTP/2 keeps it: with the timers' view of its streams.
    let activity = Arc::new(ConnActivity::default());
    let cert = info.client_cert.clone();
    let info = ConnInfo::new(
        info.peer,
        info.listening.clone(),
        cert,
        Some(activity.clone()),
    );
    let info = Arc::new(info);
    let io = TimedIo::new(
        io,
        activity.clone(),
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
    // keep-alive-requests used up, or shutdown: GOAWAY, and the open streams finish.
    let goaway = async {
        tokio::select! {
            _ = state.drain.wait() => {}
            _ = activity.wait_used_up() => {}
        }
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = goaway => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{ControllerLabels, Metrics};
    use crate::snapshot::Snapshot;
    use arc_swap::ArcSwap;

    /// The proxy's shared state, and an accepted connection's server side with its client.
    async fn accepted() -> (
        Arc<ProxyState>,
        tokio::net::TcpStream,
        SocketAddr,
        tokio::net::TcpStream,
    ) {
        let labels = ControllerLabels {
            namespace: "ns".into(),
            class: "nginx".into(),
            pod: "pod".into(),
        };
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
        let metrics = Arc::new(Metrics::new(&labels, true, false));
        let state = Arc::new(ProxyState::new(snapshot, metrics, None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        (state, stream, peer, client)
    }

    /// An idle keep-alive connection costs its task: the future below plus tokio's task
    /// header, in a cell aligned to 128 bytes. 10 000 idle connections are compare.sh's
    /// idle-10k scenario; this keeps a new field or an unboxed await from growing them all
    /// unnoticed. Raise the bound only knowingly.
    #[tokio::test]
    async fn plain_connection_future_stays_small() {
        let (state, stream, peer, _client) = accepted().await;
        let addr = stream.local_addr().unwrap();
        let slot = ConnSlot::open(&state);
        let future = serve_connection(
            stream,
            peer,
            Arc::new(Listening::new("http", addr.port())),
            None,
            slot,
        );
        let size = std::mem::size_of_val(&future);
        // 248 bytes in release builds, 256 in debug ones: with the 104 bytes tokio adds
        // (header, scheduler, task id, trailer), a 384-byte cell (the cell is aligned to
        // 128); release futures over 280 bytes take a 512-byte one. It was 240 with a
        // boxed tokio timer (112 bytes outside the cell) in place of the registry's
        // deadline, 384 bytes (a 512-byte cell) before the drain's waiter left the future,
        // and 1 160 bytes in a 1 280-byte cell before the connection's future was
        // restructured.
        assert!(size <= 256, "plain connection future is {size} bytes");
    }

    /// The same for a TLS connection: rustls' connection (1 216 bytes with its stream) is
    /// in its task for its whole life; the handshake's state and a second copy of the
    /// stream must not be.
    #[tokio::test]
    async fn tls_connection_future_stays_small() {
        let (state, stream, peer, _client) = accepted().await;
        let addr = stream.local_addr().unwrap();
        let fake = crate::proxy::tls::fake_certificate().unwrap();
        let tls = Arc::new(TlsContext::new(state.snapshot.clone(), fake));
        let slot = ConnSlot::open(&state);
        let future = serve_tls(
            tls,
            stream,
            peer,
            Arc::new(Listening::new("https", addr.port())),
            slot,
        );
        let size = std::mem::size_of_val(&future);
        // 1 496 bytes in debug builds (a 1 664-byte cell in release ones). It was 5 096
        // bytes (5 248-byte cells) with the handshake's state inline and the accepted stream
        // kept three times: as the handshake's result, as a local and in the serving future.
        assert!(size <= 1536, "TLS connection future is {size} bytes");
    }
}
