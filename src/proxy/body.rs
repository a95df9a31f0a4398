//! Body types and wrappers: request bodies that report progress (for proxy-send-timeout),
//! upstream bodies with a read timeout that give their connection back to the pool at the
//! end, and the response body that records metrics and the access log when it finishes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::Sleep;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type both directions use once inside the proxy.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A client's request body as the server loop that read the request delivers it: our
/// HTTP/1 loop, or hyper's HTTP/2 server.
#[derive(Debug)]
pub enum Inbound {
    Http1(super::http1::RequestBody),
    Hyper(hyper::body::Incoming),
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Inbound::Http1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Inbound::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Http1(body) => body.is_end_stream(),
            Inbound::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Http1(body) => body.size_hint(),
            Inbound::Hyper(body) => body.size_hint(),
        }
    }
}

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// How far the upstream has taken a request body, shared with the task waiting for the
/// response header.
#[derive(Debug)]
pub struct BodyProgress {
    start: Instant,
    /// Milliseconds since `start` of the last time the upstream pulled from the body.
    last_pull_ms: AtomicU64,
    /// Milliseconds since `start` when the body ended; `u64::MAX` while it has not.
    done_ms: AtomicU64,
    pub bytes: AtomicU64,
}

impl BodyProgress {
    pub fn new(done: bool) -> Arc<BodyProgress> {
        Arc::new(BodyProgress {
            start: Instant::now(),
            last_pull_ms: AtomicU64::new(0),
            done_ms: AtomicU64::new(if done { 0 } else { u64::MAX }),
            bytes: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// When the wait for the upstream expires: `send_timeout` after the last pull while the
    /// body is still being sent, `read_timeout` after it was sent completely.
    pub fn deadline(&self, send_timeout: Duration, read_timeout: Duration) -> Instant {
        let done = self.done_ms.load(Ordering::Relaxed);
        if done != u64::MAX {
            self.start + Duration::from_millis(done) + read_timeout
        } else {
            self.start
                + Duration::from_millis(self.last_pull_ms.load(Ordering::Relaxed))
                + send_timeout
        }
    }

    pub fn is_done(&self) -> bool {
        self.done_ms.load(Ordering::Relaxed) != u64::MAX
    }
}

pin_project_lite::pin_project! {
    /// A request body on its way upstream, reporting progress.
    pub struct ProgressBody<B> {
        #[pin]
        inner: B,
        progress: Arc<BodyProgress>,
    }
}

impl<B> ProgressBody<B> {
    pub fn new(inner: B, progress: Arc<BodyProgress>) -> Self {
        ProgressBody { inner, progress }
    }
}

impl<B> Body for ProgressBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let now = this.progress.now_ms();
        this.progress.last_pull_ms.store(now, Ordering::Relaxed);
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.progress
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => {
                this.progress
                    .done_ms
                    .store(this.progress.now_ms(), Ordering::Relaxed);
            }
            _ => {}
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        // hyper stops polling a body with a known length once it says it ended, so the
        // `None` that marks it sent may never come: without this the wait for the response
        // would run on send_timeout instead of read_timeout.
        if end && !self.progress.is_done() {
            self.progress
                .done_ms
                .store(self.progress.now_ms(), Ordering::Relaxed);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Something to run once when an upstream response body has been read to its end (give the
/// connection back to the pool).
pub trait OnUpstreamEnd: Send {
    fn finished(self: Box<Self>);
}

pin_project_lite::pin_project! {
    /// An upstream response body: fails with a timeout when the upstream sends nothing for
    /// `read_timeout`, counts bytes, and calls `on_end` at the clean end of the body.
    pub struct UpstreamBody<B>
    where
        B: Body,
    {
        #[pin]
        inner: B,
        read_timeout: Duration,
        #[pin]
        idle: Sleep,
        on_end: Option<Box<dyn OnUpstreamEnd>>,
        bytes: Arc<AtomicU64>,
    }

    impl<B> PinnedDrop for UpstreamBody<B>
    where
        B: Body,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A body with nothing left to read (HEAD, 204, Content-Length: 0) is complete
            // even if hyper never polled it.
            if this.inner.is_end_stream() {
                if let Some(on_end) = this.on_end.take() {
                    on_end.finished();
                }
            }
        }
    }
}

impl<B: Body> UpstreamBody<B> {
    pub fn new(
        inner: B,
        read_timeout: Duration,
        on_end: Option<Box<dyn OnUpstreamEnd>>,
        bytes: Arc<AtomicU64>,
    ) -> Self {
        UpstreamBody {
            inner,
            read_timeout,
            idle: tokio::time::sleep(read_timeout),
            on_end,
            bytes,
        }
    }
}

/// The upstream sent nothing for proxy-read-timeout in the middle of a body.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent no data for {0:?} (proxy-read-timeout)")]
pub struct BodyReadTimeout(pub Duration);

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                let deadline = tokio::time::Instant::now() + *this.read_timeout;
                this.idle.as_mut().reset(deadline);
                if this.inner.is_end_stream() {
                    if let Some(on_end) = this.on_end.take() {
                        on_end.finished();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.on_end.take();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                if let Some(on_end) = this.on_end.take() {
                    on_end.finished();
                }
                Poll::Ready(None)
            }
            Poll::Pending => match this.idle.poll(cx) {
                Poll::Ready(()) => {
                    this.on_end.take();
                    Poll::Ready(Some(Err(Box::new(BodyReadTimeout(*this.read_timeout)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Called once when the response to the client is finished or abandoned.
pub trait OnResponseEnd: Send {
    /// `bytes` body bytes sent; `complete` false when the client went away or the upstream
    /// failed mid-body.
    fn finished(self: Box<Self>, bytes: u64, complete: bool);
}

pin_project_lite::pin_project! {
    /// The body sent to the client; reports its end exactly once (metrics, access log).
    pub struct ResponseBody {
        #[pin]
        inner: ProxyBody,
        bytes: u64,
        on_end: Option<Box<dyn OnResponseEnd>>,
    }

    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(on_end) = this.on_end.take() {
                let complete = this.inner.is_end_stream();
                on_end.finished(*this.bytes, complete);
            }
        }
    }
}

impl ResponseBody {
    pub fn new(inner: ProxyBody, on_end: Box<dyn OnResponseEnd>) -> Self {
        ResponseBody {
            inner,
            bytes: 0,
            on_end: Some(on_end),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(on_end) = this.on_end.take() {
                    on_end.finished(*this.bytes, true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(on_end) = this.on_end.take() {
                    on_end.finished(*this.bytes, false);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
