//! Our own HTTP/1.1: the server connection loop for clients (here), and the client
//! connection to plain-TCP upstreams (`client.rs`). Why the loop: hyper's server
//! connection keeps a 16 KiB read buffer, an 8 KiB write buffer and its dispatcher state
//! for as long as a keep-alive connection lives; this loop holds no buffer at all between
//! requests (nginx frees its buffers too), parses heads with httparse, enforces the framing
//! rules itself, and writes the head and a small body in one system call. HTTP/2 stays with
//! hyper: a cleartext connection that opens with the HTTP/2 preface is handed back to the
//! caller.
//!
//! PERF: 10 000 idle keep-alive connections (benches/compare.sh idle-10k): peak RSS 215 MiB
//! on hyper's server connection, 39.7 MiB on this loop, 26.8-27.5 MiB since `serve` borrows
//! its transport and the connection's future was slimmed (nginx: 26 MiB), 25.5-25.6 MiB
//! since the task cell is 384 bytes and heads are first read into 1 KiB (nginx: 25.7-26.1),
//! 24.2-25.0 MiB since the timers are entries in one registry (nginx: 25.8-26.4).
//! h1-small CPU per request 1.27x -> 1.21x nginx's (benches/README.md).

pub mod body;
pub mod client;
mod request;
mod response;
mod upgrade;

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body::Body;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::deadline::Deadlines;
use super::drain::Drain;
use body::PumpEnd;
pub use body::RequestBody;
use response::{BodyFraming, Exchange, WriteQueue, HIGH_WATER};
use upgrade::PendingUpgrade;
pub use upgrade::{ClientUpgrade, Rewind, Upgraded, UpgradedIo};

/// What a connection needs from its transport beyond reads and writes.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when the next read would find data. Transports that cannot tell without
    /// reading (TLS) say ready at once, and the loop then waits in a read with a buffer.
    fn poll_read_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for TcpStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl<T: Transport> Transport for tokio_rustls::server::TlsStream<T> {}

/// In-memory connections (the `http1` fuzz target and tests).
impl Transport for tokio::io::DuplexStream {}

/// Connection limits (from the ConfigMap at accept time) and the gauge of connections
/// reading a request head.
#[derive(Debug, Clone)]
pub struct Config {
    /// `large-client-header-buffers` (number x size): a longer head gets 400 (nginx's
    /// "Request Header Or Cookie Too Large").
    pub header_limit: usize,
    /// `client-header-timeout`: from accept (first request) or from the first byte of a
    /// head until the head is complete.
    pub header_timeout: Duration,
    /// `keep-alive`: idle time allowed between requests; zero closes after each response.
    pub keep_alive: Duration,
    /// Hand a connection that opens with the HTTP/2 preface back to the caller.
    pub detect_h2: bool,
    /// `nginx_process_connections{state="reading"}`.
    pub reading: Gauge,
    /// Where the connection's timer is kept.
    pub deadlines: Arc<Deadlines>,
}

/// `Config`'s limits as the connection loop keeps them: milliseconds (up to 49 days) and
/// bytes (up to 4 GiB), saturating.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_limit: u32,
    header_timeout_ms: u32,
    keep_alive_ms: u32,
}

impl Limits {
    fn new(config: &Config) -> Limits {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        Limits {
            header_limit: u32::try_from(config.header_limit).unwrap_or(u32::MAX),
            header_timeout_ms: ms(config.header_timeout),
            keep_alive_ms: ms(config.keep_alive),
        }
    }

    fn header_limit(self) -> usize {
        self.header_limit as usize
    }
}

/// One connection counted in the `reading` gauge while it lives.
struct Reading(Gauge);

impl Reading {
    fn new(gauge: &Gauge) -> Reading {
        gauge.inc();
        Reading(gauge.clone())
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// First read size for a head, as ingress-nginx's `client-header-buffer-size` (1k): short
/// heads fit. A head that fills it gets `LARGE_HEAD_READ` more at once, as nginx moves it to
/// a large header buffer (8k), so heads up to 8 KiB take two reads.
/// PERF: 4 KiB before; every request in flight held the other 3 KiB (idle-10k's 200
/// parallel openers, benches/README.md).
const HEAD_READ: usize = 1024;
const LARGE_HEAD_READ: usize = 8192;
/// Body bytes read and dropped after a response so the connection can be reused.
const DISCARD_LIMIT: u64 = 64 * 1024;
/// How long the rest of a request body may take to arrive, or a closing connection to drain
/// (nginx's lingering_timeout).
const LINGER: Duration = Duration::from_secs(5);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a connection ended when it was not closed. `serve` only borrowed the transport;
/// [`Handoff::finish`] hands it on.
pub enum Handoff {
    /// The client spoke HTTP/2 (prior knowledge): the bytes read so far.
    Http2(Bytes),
    /// `101` was sent: the tunnel takes the transport and what the client sent after its
    /// head.
    Upgrade(oneshot::Sender<Upgraded>, Bytes),
}

impl Handoff {
    /// Give the transport to whoever takes over: the tunnel of an upgrade (`None` back), or
    /// the caller, for HTTP/2, with the bytes already read put back in front.
    pub fn finish<T: Transport>(self, io: T) -> Option<Rewind<T>> {
        match self {
            Handoff::Http2(read) => Some(Rewind::new(io, read)),
            Handoff::Upgrade(tx, read) => {
                let io: Box<dyn Transport> = Box::new(io);
                let _ = tx.send(Rewind::new(io, read));
                None
            }
        }
    }
}

/// Serve HTTP/1.x requests on `io` until the client leaves, a timer expires, the
/// connection upgrades or `drain` turns true (idle connections close at once, busy ones
/// after their response).
///
/// The transport and the drain signal are borrowed, so the connection's future holds them
/// once, in the caller. Not an `async fn`, which would keep its arguments for its whole
/// life beside the locals they move into: the block uses them where they were captured.
#[allow(clippy::manual_async_fn)] // why it is not an `async fn`: just above
pub fn serve<'a, T, F, Fut, B>(
    io: &'a mut T,
    config: Config,
    mut service: F,
    drain: &'a Drain,
) -> impl Future<Output = Option<Handoff>> + 'a
where
    T: Transport,
    F: FnMut(Request<RequestBody>) -> Fut + 'a,
    Fut: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    // What the loop keeps of its configuration, compact: every idle connection's future
    // holds it (two `Duration`s and a `usize` would be 40 bytes of it).
    let limits = Limits::new(&config);
    let Config {
        reading: reading_gauge,
        detect_h2,
        deadlines,
        ..
    } = config;
    // client-header-timeout runs from accept for the first request. Made here, so the
    // future keeps the deadline and not also the registry it came from.
    // PERF: one entry in a shared registry, not a boxed tokio timer (proxy/deadline.rs).
    let mut timer = deadlines.deadline(limits.header_timeout_ms);
    async move {
        let mut buf = BytesMut::new();
        let mut first = true;
        // A refused head is answered after the loop: a refusal awaited inside it would keep
        // the parse result (232 bytes) in every connection's future.
        let refused = 'conn: loop {
            // Idle: wait for the next request without holding a buffer.
            if buf.is_empty() && !first {
                timer.reset(limits.keep_alive_ms);
            }
            if buf.is_empty() {
                tokio::select! {
                    biased;
                    ready = poll_fn(|cx| io.poll_read_ready(cx)) => if ready.is_err() { return None },
                    _ = timer.expired() => return None,
                    _ = drain.wait() => return None,
                }
            }
            // client-header-timeout runs from accept for the first request, else from the
            // head's first byte (a transport that cannot tell readiness is still idle here).
            let mut head_timed = first;
            if !head_timed && !buf.is_empty() {
                timer.reset(limits.header_timeout_ms);
                head_timed = true;
            }

            // The head.
            let mut reading = None;
            let (parsed, len) = loop {
                if !buf.is_empty() {
                    // nginx's `reading` state: from the head's first byte to its end.
                    reading.get_or_insert_with(|| Reading::new(&reading_gauge));
                    if first && detect_h2 && is_h2_start(&buf) {
                        if buf.len() >= H2_PREFACE.len() {
                            return Some(Handoff::Http2(buf.freeze()));
                        }
                    } else {
                        match request::parse(&buf) {
                            // The limit holds however the head arrived (one read may bring
                            // more than the limit).
                            Ok(Some((_, len))) if len > limits.header_limit() => {
                                break 'conn StatusCode::BAD_REQUEST;
                            }
                            Ok(Some(done)) => break done,
                            Ok(None) if buf.len() >= limits.header_limit() => {
                                break 'conn StatusCode::BAD_REQUEST;
                            }
                            Ok(None) => {}
                            Err(refused) => break 'conn refused.0,
                        }
                    }
                }
                if buf.capacity() - buf.len() < 512 {
                    buf.reserve(if buf.is_empty() {
                        HEAD_READ
                    } else {
                        LARGE_HEAD_READ.max(buf.len())
                    });
                }
                // No byte of a head yet: still idle, so a drain closes it.
                let idle = buf.is_empty();
                tokio::select! {
                    biased;
                    read = poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut buf)) => match read {
                        Ok(0) | Err(_) => return None,
                        Ok(_) if !head_timed => {
                            timer.reset(limits.header_timeout_ms);
                            head_timed = true;
                        }
                        Ok(_) => {}
                    },
                    // client-header-timeout: nginx closes without an answer (408 in its log).
                    _ = timer.expired() => return None,
                    _ = drain.wait(), if idle => return None,
                }
            };
            drop(reading);
            first = false;
            // In a block, not dropped by hand: a local whose scope spans the awaits below
            // keeps a slot in the connection's future (32 bytes of padding in its largest
            // state) even when dropped before them.
            let head = {
                let head_bytes = buf.split_to(len).freeze();
                match request::build(parsed, &head_bytes) {
                    Ok(head) => head,
                    Err(refused) => break 'conn refused.0,
                }
            };

            // PERF: the exchange is its own boxed future, so an idle connection's task holds
            // only this loop's few fields; unboxed, every idle keep-alive connection carried
            // the response phase's state too (connection task 2 216 bytes; RSS per idle
            // connection: see the module note).
            let exchange = Box::pin(exchange(
                &mut *io,
                &mut buf,
                &mut service,
                head,
                limits.keep_alive_ms == 0 || drain.is_set(),
            ));
            // The outcome is settled before any await, so it takes no slot in the future.
            let then = match exchange.await {
                Outcome::KeepAlive if !drain.is_set() => Then::NextRequest,
                Outcome::KeepAlive | Outcome::Close => Then::Close,
                Outcome::Gone => return None,
                // The tunnel takes the transport and whatever the client sent after its head
                // (the caller finishes the hand-over).
                Outcome::Upgrade(tx, true) => return Some(Handoff::Upgrade(tx, buf.freeze())),
                Outcome::Upgrade(_, false) => Then::Shutdown,
            };
            match then {
                Then::NextRequest => {}
                Then::Close => {
                    Box::pin(close(&mut *io, &mut buf, drain)).await;
                    return None;
                }
                Then::Shutdown => {
                    let _ = io.shutdown().await;
                    return None;
                }
            }
            // Nothing is held while idle unless the client already sent more (pipelining).
            if buf.is_empty() {
                buf = BytesMut::new();
            }
        };
        Box::pin(refuse(&mut *io, refused, drain)).await;
        None
    }
}

/// How an exchange left the connection.
enum Outcome {
    /// Ready for the next request.
    KeepAlive,
    /// Close it (with a lingering read).
    Close,
    /// The client is gone or the response failed: drop it.
    Gone,
    /// `101` was sent (or not, if `false`): hand the transport over.
    Upgrade(oneshot::Sender<Upgraded>, bool),
}

/// What the connection does after an exchange that did not end it.
enum Then {
    NextRequest,
    /// Close with a lingering read.
    Close,
    /// The upgrade's `101` was not sent: shut the transport down.
    Shutdown,
}

/// One request and its response on the connection.
async fn exchange<T, F, Fut, B>(
    io: &mut T,
    buf: &mut BytesMut,
    service: &mut F,
    head: request::Head,
    last: bool,
) -> Outcome
where
    T: Transport,
    F: FnMut(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    // The request, and its body fed from this task on demand.
    let (body, mut pump) = match body::channel(head.framing, head.expect_continue) {
        Some((body, pump)) => (body, Some(pump)),
        None => (RequestBody::empty(), None),
    };
    let method = head.method.clone();
    let version = head.version;
    let mut req = Request::new(body);
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers;
    let upgrade = head.wants_upgrade.then(|| {
        let (tx, rx) = oneshot::channel();
        req.extensions_mut().insert(PendingUpgrade::new(rx));
        tx
    });
    let mut pump_end = None;
    let response = {
        let future = service(req);
        tokio::pin!(future);
        poll_fn(|cx| {
            if let (Some(p), None) = (pump.as_mut(), pump_end) {
                if let Poll::Ready(end) = p.poll_pump(cx, &mut *io, &mut *buf) {
                    pump_end = Some(end);
                }
            }
            future.as_mut().poll(cx)
        })
        .await
    };
    let Ok(response) = response;

    // The response head.
    let (mut parts, mut body) = response.into_parts();
    let exchange = Exchange {
        method: &method,
        version,
        keep_alive: head.keep_alive && !last,
    };
    let mut out = WriteQueue::default();
    let mut head_out = Vec::with_capacity(256 + parts.headers.len() * 48);
    let (framing, mut keep_alive) = response::encode_head(
        parts.status,
        &mut parts.headers,
        body.size_hint().exact(),
        exchange,
        &mut head_out,
    );
    // A `100 Continue` goes out before the final head or never (inside it or its body it
    // would corrupt the response): see `BodyPump::final_head`.
    if let Some(rest) = pump.as_mut().map(|p| p.final_head()) {
        if !rest.is_empty() {
            out.copy(rest);
        }
    }
    out.push_owned(head_out);

    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let flushed = poll_fn(|cx| out.poll_flush(cx, &mut *io)).await;
        drop(body);
        return match upgrade {
            Some(tx) => Outcome::Upgrade(tx, flushed.is_ok()),
            None => Outcome::Gone,
        };
    }

    // The response body, while the request body keeps flowing if still wanted.
    let mut sent = 0u64;
    let mut body_done = framing == BodyFraming::None;
    let written = poll_fn(|cx| {
        if let (Some(p), None) = (pump.as_mut(), pump_end) {
            if let Poll::Ready(end) = p.poll_pump(cx, &mut *io, &mut *buf) {
                pump_end = Some(end);
            }
        }
        loop {
            let mut progressed = false;
            if !body_done && out.len() < HIGH_WATER {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        progressed = true;
                        if let Ok(data) = frame.into_data() {
                            if let Err(e) = queue_data(&mut out, framing, &mut sent, data) {
                                return Poll::Ready(Err(e));
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!(error = %e, "response body failed; closing the client connection");
                        // What was queued still goes out; the client sees a cut body.
                        body_done = true;
                        keep_alive = false;
                        progressed = true;
                    }
                    Poll::Ready(None) => {
                        body_done = true;
                        progressed = true;
                        match framing {
                            BodyFraming::Chunked => out.copy(b"0\r\n\r\n"),
                            BodyFraming::Length(n) if sent < n => keep_alive = false,
                            _ => {}
                        }
                    }
                    Poll::Pending => {}
                }
            }
            let before = out.len();
            match out.poll_flush(cx, &mut *io) {
                Poll::Ready(Ok(())) if body_done => return Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // Room again below the high-water mark: the body is polled next.
                Poll::Ready(Ok(())) | Poll::Pending => progressed |= out.len() < before,
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await;
    // The response's end: metrics and the access log are recorded as it drops.
    drop(body);
    if written.is_err() {
        return Outcome::Gone;
    }
    if framing == BodyFraming::Close {
        keep_alive = false;
    }

    // What is left of the request body: read on while the pipeline reads it; what it
    // abandoned is dropped if it is already here, else the connection closes (as
    // hyper does; a stalled client is not waited for).
    if let (Some(p), true) = (pump.as_mut(), keep_alive) {
        let mut end = pump_end;
        let finished = tokio::time::timeout(LINGER, async {
            loop {
                match end {
                    Some(PumpEnd::Complete) => return true,
                    Some(PumpEnd::Unfinished) => return false,
                    Some(PumpEnd::Abandoned) => {
                        p.discard_rest(DISCARD_LIMIT);
                        let now = poll_fn(|cx| p.poll_pump(cx, &mut *io, &mut *buf));
                        return now.now_or_never() == Some(PumpEnd::Complete);
                    }
                    None => end = Some(poll_fn(|cx| p.poll_pump(cx, &mut *io, &mut *buf)).await),
                }
            }
        })
        .await;
        if finished != Ok(true) {
            keep_alive = false;
        }
    }
    if keep_alive {
        Outcome::KeepAlive
    } else {
        Outcome::Close
    }
}

/// Queue one data frame with the response's framing.
fn queue_data(
    out: &mut WriteQueue,
    framing: BodyFraming,
    sent: &mut u64,
    mut data: Bytes,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            if *sent + data.len() as u64 > n {
                // More than the head declared: send what was declared and end the
                // connection rather than frame a second response from the excess.
                data.truncate((n - *sent) as usize);
                *sent = n;
                out.push_data(data);
                return Err(io::Error::other(
                    "response body longer than its Content-Length",
                ));
            }
            *sent += data.len() as u64;
            out.push_data(data);
        }
        BodyFraming::Chunked => {
            *sent += data.len() as u64;
            response::chunk_line(data.len(), out);
            out.push_data(data);
            out.copy(b"\r\n");
        }
        BodyFraming::Close => {
            *sent += data.len() as u64;
            out.push_data(data);
        }
    }
    Ok(())
}

/// Whether `buf` could be the start of the HTTP/2 connection preface.
fn is_h2_start(buf: &[u8]) -> bool {
    let n = buf.len().min(H2_PREFACE.len());
    buf[..n] == H2_PREFACE[..n]
}

/// Answer a request that cannot be served (bad syntax, ambiguous framing, too large) and
/// close: nothing after it on the connection can be trusted.
async fn refuse<T: Transport>(io: &mut T, status: StatusCode, drain: &Drain) {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = tokio::time::timeout(LINGER, async {
        io.write_all(&out).await?;
        io.flush().await
    })
    .await;
    close(io, &mut BytesMut::new(), drain).await;
}

/// Close after a response: send FIN, then read and drop what the client still sends for a
/// short while, so unread input does not make the kernel reset the connection before the
/// client has read the response (nginx's lingering close). A drain cuts the wait short.
async fn close<T: Transport>(io: &mut T, buf: &mut BytesMut, drain: &Drain) {
    let _ = tokio::time::timeout(LINGER, io.shutdown()).await;
    let linger = tokio::time::timeout(LINGER, async {
        let mut drained = 0u64;
        loop {
            buf.clear();
            if buf.capacity() < 1024 {
                buf.reserve(4096);
            }
            match poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)).await {
                Ok(n) if n > 0 && drained < DISCARD_LIMIT => drained += n as u64,
                _ => return,
            }
        }
    });
    tokio::select! {
        _ = linger => {}
        _ = drain.wait() => {}
    }
}
