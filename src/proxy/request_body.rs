//! Client request bodies on their way in: the `proxy-body-size` limit (413), the
//! `client-body-timeout` between two reads (408), and `proxy-request-buffering`: the body is
//! read whole before an upstream is chosen, in memory up to `client-body-buffer-size` and in
//! an unlinked temporary file beyond, so memory stays bounded and a retry can send it again.

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::task::JoinHandle;
use tokio::time::Sleep;

use super::body::{full, BoxError, ProxyBody};
use crate::settings::Settings;
use crate::snapshot::RoutePolicy;

/// Why a request body could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("request body larger than proxy-body-size ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("client sent no body data for {0:?} (client-body-timeout)")]
    Timeout(Duration),
    #[error("reading the request body failed: {0}")]
    Read(BoxError),
    #[error("buffering the request body in a temporary file failed: {0}")]
    Spool(std::io::Error),
}

impl ClientBodyError {
    /// nginx's answers: 413, 408, 400 for a broken body, 500 when the disk fails us.
    pub fn status(&self) -> StatusCode {
        match self {
            ClientBodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ClientBodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ClientBodyError::Read(_) => StatusCode::BAD_REQUEST,
            ClientBodyError::Spool(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What stopped a streamed body, read by the pipeline when the upstream exchange failed.
#[derive(Debug, Default)]
pub struct BodyVerdict(AtomicU8);

const VERDICT_TOO_LARGE: u8 = 1;
const VERDICT_TIMEOUT: u8 = 2;
const VERDICT_BROKEN: u8 = 3;

impl BodyVerdict {
    /// The status to answer when the body was cut by a limit or a timeout.
    pub fn status(&self) -> Option<StatusCode> {
        match self.0.load(Ordering::Relaxed) {
            VERDICT_TOO_LARGE => Some(StatusCode::PAYLOAD_TOO_LARGE),
            VERDICT_TIMEOUT => Some(StatusCode::REQUEST_TIMEOUT),
            // A malformed chunked body or a client gone mid-body: nginx's 400, not a 502.
            VERDICT_BROKEN => Some(StatusCode::BAD_REQUEST),
            _ => None,
        }
    }
}

/// The declared Content-Length exceeds the limit: answer 413 before reading anything.
pub fn declared_too_large(headers: &http::HeaderMap, limit: Option<u64>) -> bool {
    let Some(limit) = limit else { return false };
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len > limit)
}

/// A client body that fails once it passes `limit` bytes (never handing on a byte past it)
/// or when the client sends nothing for `timeout` while it is being read. After a limit
/// failure the rest is read and dropped in the background (bounded), so the client gets the
/// 413 rather than a reset.
pub struct ClientBody {
    inner: ProxyBody,
    limit: Option<u64>,
    seen: u64,
    timeout: Duration,
    idle: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    verdict: Arc<BodyVerdict>,
}

impl ClientBody {
    /// `limit` None = unlimited; `timeout` zero = no timeout.
    pub fn new(
        inner: ProxyBody,
        limit: Option<u64>,
        timeout: Duration,
        verdict: Arc<BodyVerdict>,
    ) -> Self {
        ClientBody {
            inner,
            limit,
            seen: 0,
            timeout,
            idle: None,
            waiting: false,
            verdict,
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if self.verdict.status() == Some(StatusCode::PAYLOAD_TOO_LARGE) {
            discard(std::mem::replace(&mut self.inner, super::body::empty()));
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        // The timer counts from when we start waiting for data, not from the last frame: a
        // slow upstream that stops pulling is not the client's fault.
        if !this.waiting && !this.timeout.is_zero() {
            let deadline = tokio::time::Instant::now() + this.timeout;
            match &mut this.idle {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => this.idle = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            this.waiting = true;
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(limit) = this.limit {
                        if this.seen > limit {
                            this.verdict.0.store(VERDICT_TOO_LARGE, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(Box::new(ClientBodyError::TooLarge {
                                limit,
                            }))));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.waiting = false;
                this.verdict.0.store(VERDICT_BROKEN, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(ClientBodyError::Read(e)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if let Some(sleep) = this.idle.as_mut() {
                    if sleep.as_mut().poll(cx).is_ready() {
                        this.verdict.0.store(VERDICT_TIMEOUT, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(ClientBodyError::Timeout(
                            this.timeout,
                        )))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Writes to the temporary file are batched to this size.
const FILE_BATCH: usize = 256 * 1024;
/// Reads back from the file in chunks of this size.
const FILE_CHUNK: usize = 64 * 1024;

/// A request body read whole: in memory when small, else in an unlinked temporary file.
#[derive(Debug)]
pub struct Spool {
    memory: Bytes,
    file: Option<Arc<std::fs::File>>,
    len: u64,
}

impl Spool {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A fresh body with the whole content and an exact length; may be called once per
    /// attempt.
    pub fn body(&self) -> ProxyBody {
        match &self.file {
            None => full(self.memory.clone()),
            Some(file) => FileBody {
                file: file.clone(),
                offset: 0,
                len: self.len,
                reading: None,
            }
            .boxed_unsync(),
        }
    }
}

/// Read `body` to its end: up to `memory_limit` bytes stay in memory, a longer body goes to
/// a temporary file (in `$TMPDIR`).
pub async fn spool<B>(body: B, memory_limit: usize) -> Result<Spool, ClientBodyError>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let mut body = body;
    let mut memory = BytesMut::new();
    let mut file: Option<Arc<std::fs::File>> = None;
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e.downcast::<ClientBodyError>() {
            Ok(e) => *e,
            Err(e) => ClientBodyError::Read(e),
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded by a buffering proxy
        };
        len += data.len() as u64;
        memory.extend_from_slice(&data);
        if file.is_none() && memory.len() > memory_limit {
            let created = tokio::task::spawn_blocking(tempfile::tempfile)
                .await
                .map_err(|e| ClientBodyError::Spool(std::io::Error::other(e)))?
                .map_err(ClientBodyError::Spool)?;
            file = Some(Arc::new(created));
        }
        if let Some(f) = &file {
            if memory.len() >= FILE_BATCH {
                write_batch(f, memory.split().freeze()).await?;
            }
        }
    }
    if let Some(f) = &file {
        if !memory.is_empty() {
            write_batch(f, memory.split().freeze()).await?;
        }
    }
    Ok(Spool {
        memory: memory.freeze(),
        file,
        len,
    })
}

async fn write_batch(file: &Arc<std::fs::File>, data: Bytes) -> Result<(), ClientBodyError> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || (&*file).write_all(&data))
        .await
        .map_err(|e| ClientBodyError::Spool(std::io::Error::other(e)))?
        .map_err(ClientBodyError::Spool)
}

/// A spooled body read back from its file (positional reads, so replays are independent).
struct FileBody {
    file: Arc<std::fs::File>,
    offset: u64,
    len: u64,
    reading: Option<JoinHandle<std::io::Result<Bytes>>>,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.offset >= self.len {
            return Poll::Ready(None);
        }
        if self.reading.is_none() {
            let (file, offset) = (self.file.clone(), self.offset);
            let n = (self.len - offset).min(FILE_CHUNK as u64) as usize;
            self.reading = Some(tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, offset)?;
                Ok(Bytes::from(buf))
            }));
        }
        let reading = self.reading.as_mut().expect("set just above");
        let result = std::task::ready!(Pin::new(reading).poll(cx));
        self.reading = None;
        match result {
            Ok(Ok(bytes)) => {
                self.offset += bytes.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Ok(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.offset)
    }
}

/// The request body as the forwarder sees it.
pub enum RequestBody {
    /// No body (GET and friends).
    Empty,
    /// Streamed as it arrives; can be sent once.
    Stream(ProxyBody),
    /// Read whole first; can be sent again on a retry.
    Buffered(Arc<Spool>),
}

impl RequestBody {
    pub fn is_empty(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Stream(_) => false,
            RequestBody::Buffered(s) => s.is_empty(),
        }
    }

    /// Whether every attempt can get the full body.
    pub fn replayable(&self) -> bool {
        !matches!(self, RequestBody::Stream(_))
    }

    /// The length to announce upstream when the body was buffered.
    pub fn buffered_len(&self) -> Option<u64> {
        match self {
            RequestBody::Buffered(s) => Some(s.len()),
            _ => None,
        }
    }
}

/// What nginx rejects while reading the request, before any other phase: a header line
/// longer than a `large-client-header-buffers` buffer (400; a request line that long gets
/// 414), and a declared Content-Length over `proxy-body-size` (413).
pub fn reject_early(
    settings: &Settings,
    policy: &RoutePolicy,
    parts_uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Option<StatusCode> {
    // nginx takes `Transfer-Encoding: chunked` alone: another coding is 501, a repeated
    // header 400 (hyper accepts any list that ends in chunked, e.g. `gzip, chunked`).
    let mut codings = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next() {
        if codings.next().is_some() {
            return Some(StatusCode::BAD_REQUEST);
        }
        if !coding
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked")
        {
            return Some(StatusCode::NOT_IMPLEMENTED);
        }
    }
    let line_limit = settings.large_client_header_buffers.1;
    if parts_uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > line_limit {
        return Some(StatusCode::URI_TOO_LONG);
    }
    // name, ": ", value
    if headers
        .iter()
        .any(|(name, value)| name.as_str().len() + 2 + value.len() > line_limit)
    {
        return Some(StatusCode::BAD_REQUEST);
    }
    declared_too_large(headers, policy.max_body_size).then_some(StatusCode::PAYLOAD_TOO_LARGE)
}

/// How much of a rejected body is read and thrown away so the client sees the answer instead
/// of a reset (nginx's lingering close), and for how long.
const DISCARD_BYTES: u64 = 16 * 1024 * 1024;
const DISCARD_TIME: Duration = Duration::from_secs(5);

/// Read and drop the body of a request answered without it, within bounds.
pub fn discard<B>(body: B)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let mut total = 0u64;
        let _ = tokio::time::timeout(DISCARD_TIME, async {
            while let Some(Ok(frame)) = body.frame().await {
                total += frame.data_ref().map_or(0, |d| d.len() as u64);
                if total > DISCARD_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}

/// The client's body as the pipeline carries it: within `proxy-body-size` and
/// `client-body-timeout`; not read yet.
pub fn limit_body<B>(
    body: B,
    settings: &Settings,
    policy: &RoutePolicy,
    verdict: &Arc<BodyVerdict>,
) -> RequestBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return RequestBody::Empty;
    }
    RequestBody::Stream(
        ClientBody::new(
            body.map_err(Into::into).boxed_unsync(),
            policy.max_body_size,
            settings.client_body_timeout,
            verdict.clone(),
        )
        .boxed_unsync(),
    )
}

/// `proxy-request-buffering`: read the body whole before an upstream is chosen. gRPC
/// (HTTP/2 upstreams) always streams: its calls may be bidirectional.
pub async fn buffer_body(
    body: RequestBody,
    policy: &RoutePolicy,
) -> Result<RequestBody, ClientBodyError> {
    match body {
        RequestBody::Stream(stream) if policy.request_buffering && !policy.upstream.http2 => {
            let memory = usize::try_from(policy.client_body_buffer_size).unwrap_or(usize::MAX);
            Ok(RequestBody::Buffered(Arc::new(
                spool(stream, memory).await?,
            )))
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn chunks(parts: Vec<&'static [u8]>) -> ProxyBody {
        let frames = parts
            .into_iter()
            .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p))));
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn limit_stops_before_the_byte_past_it() {
        let verdict = Arc::new(BodyVerdict::default());
        let body = ClientBody::new(
            chunks(vec![b"12345", b"678"]),
            Some(6),
            Duration::ZERO,
            verdict.clone(),
        );
        let err = spool(body.boxed_unsync(), 1024).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(verdict.status(), Some(StatusCode::PAYLOAD_TOO_LARGE));
    }

    #[tokio::test]
    async fn large_bodies_go_to_a_file_and_replay() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let body = Full::new(Bytes::from(data.clone())).map_err(|e| match e {});
        let spooled = spool(body.boxed_unsync(), 8192).await.unwrap();
        assert!(spooled.file.is_some());
        assert!(spooled.memory.is_empty());
        for _ in 0..2 {
            let b = spooled.body();
            assert_eq!(b.size_hint().exact(), Some(300_000));
            assert_eq!(b.collect().await.unwrap().to_bytes(), data);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_times_out() {
        let verdict = Arc::new(BodyVerdict::default());
        let pending = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >());
        let body = ClientBody::new(
            pending.boxed_unsync(),
            None,
            Duration::from_secs(60),
            verdict.clone(),
        );
        let err = spool(body.boxed_unsync(), 1024).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
    }
}
