//! Our own HTTP/1.1 connection to an upstream over plain TCP, in place of hyper's client
//! connection. hyper drives each upstream connection from a task of its own, handing every
//! request and response across channels, and keeps its read and write buffers for as long as
//! the connection idles in the pool. Here the request's own task writes the head, reads the
//! response and its body, and an idle connection is a bare socket.
//!
//! The wire behaviour follows hyper's client where it has a choice (how a request body is
//! framed, which responses have a body, when a connection may be reused), so switching did
//! not change what upstreams see. TLS and HTTP/2 upstreams stay on hyper (proxy/upstream.rs).
//!
//! PERF: see proxy/upstream.rs for the before and after numbers.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::body::{Decoder, Piece};
use super::request::{
    field_ranges, parse_length, parse_with_slots, version_of, ConnectionTokens, Range,
};
use super::response::chunk_size_line;
use super::upgrade::Rewind;
use crate::proxy::body::{BoxError, ProxyBody};

/// The largest response head accepted (hyper's client limit: 8 KiB plus 100 x 4 KiB).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// The first read for a response: its head and, for small responses, its whole body.
/// ingress-nginx's `proxy-buffer-size` default (4k); larger heads grow the buffer.
/// PERF: 8 KiB before: every request in flight held the other 4 KiB (idle-10k's 200
/// parallel openers, benches/README.md).
const FIRST_READ: usize = 4 * 1024;
/// Reads while a body streams in.
const BODY_READ: usize = 32 * 1024;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("writing the request: {0}")]
    Write(#[source] io::Error),
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    #[error("the upstream closed the connection before a complete response head")]
    Closed,
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
    #[error("the response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("reading the request body: {0}")]
    RequestBody(#[source] BoxError),
}

/// A failed send; `returned` holds the request when none of it was written, so it may be
/// sent again elsewhere.
pub struct SendFailure {
    pub error: ClientError,
    pub returned: Option<Request<ProxyBody>>,
}

/// An upstream connection between requests: nothing but the socket.
#[derive(Debug)]
pub struct ClientConn {
    io: TcpStream,
}

impl ClientConn {
    pub fn new(io: TcpStream) -> ClientConn {
        ClientConn { io }
    }

    /// Whether the upstream closed an idle connection (or sent bytes nobody asked for). No
    /// system call unless the reactor has seen the socket become readable.
    pub fn is_closed(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Send one request and read the response head. The body streams from the returned
    /// response; at its end the connection is handed to [`ClientBody::on_reusable`].
    pub async fn send(
        mut self,
        req: Request<ProxyBody>,
    ) -> Result<Response<ClientBody>, SendFailure> {
        let (parts, mut body) = req.into_parts();
        let framing = request_framing(&parts.method, parts.version, &parts.headers, &body);
        let mut head = BytesMut::with_capacity(256 + parts.headers.len() * 48);
        encode_head(&parts, framing, &mut head);
        // Nothing is written until the first write succeeds: a connection the upstream
        // closed while idle fails here and the request can go elsewhere intact.
        let mut written = 0;
        while written < head.len() {
            let error = match self.io.write(&head[written..]).await {
                Ok(0) => io::ErrorKind::WriteZero.into(),
                Ok(n) => {
                    written += n;
                    continue;
                }
                Err(e) => e,
            };
            let returned = (written == 0).then(|| Request::from_parts(parts, body));
            return Err(SendFailure {
                error: ClientError::Write(error),
                returned,
            });
        }
        drop(head);

        let mut buf = BytesMut::new();
        let mut reusable = ConnectionTokens::of(&parts.headers).keep_alive(parts.version);
        let response = if matches!(framing, RequestFraming::None) {
            read_head(&mut self.io, &mut buf).await
        } else {
            // The body goes out while the response is awaited: an upstream may answer
            // (413, 401) before reading it all. Then the rest is not sent, and the
            // connection, with a body cut short, is not reused.
            let (mut reader, mut writer) = self.io.split();
            let write = write_body(&mut writer, &mut body, framing);
            let read = read_head(&mut reader, &mut buf);
            tokio::pin!(write, read);
            let mut body_sent = false;
            loop {
                tokio::select! {
                    biased;
                    head = &mut read => {
                        reusable &= body_sent;
                        break head;
                    }
                    sent = &mut write, if !body_sent => match sent {
                        Ok(()) => body_sent = true,
                        Err(e) => return Err(fail(e)),
                    },
                }
            }
        };
        let head = response.map_err(fail)?;
        let kind = response_body(&parts.method, &head).map_err(fail)?;
        Ok(respond(head, kind, buf, Some(self), reusable))
    }
}

fn fail(error: ClientError) -> SendFailure {
    SendFailure {
        error,
        returned: None,
    }
}

/// How a request's body goes on the wire.
#[derive(Debug, Clone, Copy)]
enum RequestFraming {
    None,
    Length(u64),
    Chunked,
}

/// As hyper frames a request body: none when the body has ended already; a Content-Length
/// already in the headers, else the body's exact length; else chunked, which HTTP/1.0 does
/// not have (hyper then sends no body; the same here).
fn request_framing(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    body: &ProxyBody,
) -> RequestFraming {
    if body.is_end_stream() {
        return RequestFraming::None;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared.or(body.size_hint().exact()) {
        Some(0) => RequestFraming::None,
        Some(n) => RequestFraming::Length(n),
        None if version == Version::HTTP_10 => RequestFraming::None,
        // GET, HEAD and CONNECT almost never have bodies: hyper sends none then.
        None if matches!(*method, Method::GET | Method::HEAD | Method::CONNECT) => {
            RequestFraming::None
        }
        None => RequestFraming::Chunked,
    }
}

fn encode_head(parts: &http::request::Parts, framing: RequestFraming, out: &mut BytesMut) {
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.put_slice(target.as_bytes());
    out.put_slice(if parts.version == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    let mut has_length = false;
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        has_length |= name == header::CONTENT_LENGTH;
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Length(n) if !has_length => {
            out.put_slice(b"content-length: ");
            out.put_slice(n.to_string().as_bytes());
            out.put_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    out.put_slice(b"\r\n");
}

async fn write_body<W: AsyncWrite + Unpin>(
    io: &mut W,
    body: &mut ProxyBody,
    framing: RequestFraming,
) -> Result<(), ClientError> {
    let chunked = matches!(framing, RequestFraming::Chunked);
    let mut left = match framing {
        RequestFraming::Length(n) => n,
        _ => u64::MAX,
    };
    // Asking is_end_stream before each poll matters: the progress wrapper (proxy/body.rs)
    // learns there that the body went out, and the wait for the response switches from
    // proxy-send-timeout to proxy-read-timeout.
    while !body.is_end_stream() {
        let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
        else {
            break;
        };
        let frame = frame.map_err(ClientError::RequestBody)?;
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers: nginx does not pass them on either
        };
        if data.is_empty() {
            continue;
        }
        if !chunked {
            // Never more than the declared length: the rest would be read as a request.
            if data.len() as u64 > left {
                data.truncate(left as usize);
            }
            left -= data.len() as u64;
            io.write_all(&data).await.map_err(ClientError::Write)?;
            continue;
        }
        let mut size = [0u8; 18];
        let size = chunk_size_line(data.len(), &mut size);
        if data.len() <= 16 * 1024 {
            // One write per chunk: its size line, data and CRLF copied together.
            let mut chunk = BytesMut::with_capacity(size.len() + data.len() + 2);
            chunk.put_slice(size);
            chunk.put_slice(&data);
            chunk.put_slice(b"\r\n");
            io.write_all(&chunk).await.map_err(ClientError::Write)?;
        } else {
            io.write_all(size).await.map_err(ClientError::Write)?;
            io.write_all(&data).await.map_err(ClientError::Write)?;
            io.write_all(b"\r\n").await.map_err(ClientError::Write)?;
        }
    }
    match framing {
        RequestFraming::Chunked => io.write_all(b"0\r\n\r\n").await.map_err(ClientError::Write),
        // A body that ended short of its declared length cannot be completed.
        RequestFraming::Length(_) if left > 0 => Err(ClientError::RequestBody(
            "the request body ended before its declared length".into(),
        )),
        _ => Ok(()),
    }
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    keep_alive: bool,
}

/// Read until a final (or `101`) response head is complete. What follows the head stays in
/// `buf`.
async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
) -> Result<Head, ClientError> {
    loop {
        if let Some(head) = next_head(buf)? {
            return Ok(head);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(if buf.is_empty() {
                FIRST_READ
            } else {
                buf.len()
            });
        }
        let read =
            std::future::poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf))
                .await
                .map_err(ClientError::Read)?;
        if read == 0 {
            return Err(ClientError::Closed);
        }
    }
}

/// The first final (or `101`) head in `buf`, split off it; interim 1xx heads are skipped, as
/// hyper does. `Ok(None)`: incomplete.
fn next_head(buf: &mut BytesMut) -> Result<Option<Head>, ClientError> {
    while !buf.is_empty() {
        let Some((head, len)) = parse_head(buf)? else {
            if buf.len() >= MAX_HEAD {
                return Err(ClientError::HeadTooLarge);
            }
            return Ok(None);
        };
        let bytes = buf.split_to(len).freeze();
        let head = build_head(head, &bytes)?;
        if !head.status.is_informational() || head.status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(Some(head));
        }
    }
    Ok(None)
}

/// A response as the client reads it when `input` is everything the upstream sent before it
/// closed the connection: its head, and its body over what follows. For the fuzz target
/// `upstream_response`, which checks the body against the input.
pub fn read_response(
    method: &Method,
    input: Bytes,
) -> Result<(http::response::Parts, ClientBody), ClientError> {
    let mut buf = BytesMut::from(input);
    let head = next_head(&mut buf)?.ok_or(ClientError::Closed)?;
    let kind = response_body(method, &head)?;
    Ok(respond(head, kind, buf, None, true).into_parts())
}

/// The response for `head`: its body is read from `buf`, then from `conn` (`None`: the
/// upstream closed after `buf`). The connection is reusable after the body when the request
/// allowed it (`request_keep_alive`), the response does, and the body has a delimited end.
fn respond(
    head: Head,
    kind: BodyKind,
    buf: BytesMut,
    conn: Option<ClientConn>,
    request_keep_alive: bool,
) -> Response<ClientBody> {
    let reusable = request_keep_alive
        && head.keep_alive
        && !matches!(kind, BodyKind::Close | BodyKind::Upgrade);
    let mut response = Response::new(ClientBody {
        conn,
        buf,
        kind,
        reusable,
        finished: false,
        offered: false,
        home: None,
    });
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    response
}

struct ParsedHead {
    status: u16,
    version: Version,
    fields: Vec<(Range, Range)>,
}

fn parse_head(buf: &[u8]) -> Result<Option<(ParsedHead, usize)>, ClientError> {
    let parsed = parse_with_slots(buf, |headers| {
        let mut res = httparse::Response::new(headers);
        let httparse::Status::Complete(len) = res.parse(buf)? else {
            return Ok(None);
        };
        let parsed = ParsedHead {
            status: res.code.unwrap_or_default(),
            version: version_of(res.version),
            fields: field_ranges(buf, res.headers),
        };
        Ok(Some((parsed, len)))
    });
    parsed.map_err(|e| {
        ClientError::Malformed(match e {
            httparse::Error::TooManyHeaders => "more than 8 192 header fields",
            httparse::Error::Status => "status line",
            httparse::Error::Version => "HTTP version",
            _ => "header syntax",
        })
    })
}

/// Typed head; header values share `bytes` (no copy).
fn build_head(parsed: ParsedHead, bytes: &Bytes) -> Result<Head, ClientError> {
    let status =
        StatusCode::from_u16(parsed.status).map_err(|_| ClientError::Malformed("status code"))?;
    let mut headers = HeaderMap::with_capacity(parsed.fields.len());
    for ((ns, ne), (vs, ve)) in parsed.fields {
        let name = HeaderName::from_bytes(&bytes[ns..ne])
            .map_err(|_| ClientError::Malformed("header name"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(vs..ve))
            .map_err(|_| ClientError::Malformed("header value"))?;
        headers.append(name, value);
    }
    let keep_alive = ConnectionTokens::of(&headers).keep_alive(parsed.version);
    Ok(Head {
        status,
        version: parsed.version,
        headers,
        keep_alive,
    })
}

/// How a response's body is delimited.
#[derive(Debug)]
enum BodyKind {
    /// Length or chunked, or already complete (`Decoder` at length 0).
    Framed(Decoder),
    /// Until the upstream closes.
    Close,
    /// `101`: the connection becomes a tunnel.
    Upgrade,
}

/// RFC 9112 6.3, as hyper's client applies it.
fn response_body(method: &Method, head: &Head) -> Result<BodyKind, ClientError> {
    let status = head.status;
    if status == StatusCode::SWITCHING_PROTOCOLS
        || (*method == Method::CONNECT && status.is_success())
    {
        return Ok(BodyKind::Upgrade);
    }
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(BodyKind::Framed(Decoder::length(0)));
    }
    let malformed = ClientError::Malformed;
    let mut transfer_encoding = head.headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = transfer_encoding.next() {
        if head.version == Version::HTTP_10 {
            return Err(malformed("Transfer-Encoding in an HTTP/1.0 response"));
        }
        let last = transfer_encoding.next_back().unwrap_or(first);
        let last_coding = last
            .as_bytes()
            .rsplit(|&c| c == b',')
            .next()
            .unwrap_or_default();
        return Ok(
            if last_coding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                BodyKind::Framed(Decoder::chunked())
            } else {
                BodyKind::Close
            },
        );
    }
    let mut length: Option<u64> = None;
    for value in head.headers.get_all(header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&c| c == b',') {
            let n = parse_length(item).ok_or_else(|| malformed("Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(malformed("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => BodyKind::Framed(Decoder::length(n)),
        None => BodyKind::Close,
    })
}

/// Where a connection goes when its response body ended cleanly (back to the pool).
pub type Home = Box<dyn FnOnce(ClientConn) + Send>;

/// A response body read off a [`ClientConn`].
pub struct ClientBody {
    /// `None` once handed back or given up.
    conn: Option<ClientConn>,
    /// Bytes read past the head, not yet delivered.
    buf: BytesMut,
    kind: BodyKind,
    /// Whether the connection may carry another request once this body ends.
    reusable: bool,
    /// The body reached its end (`finish` ran).
    finished: bool,
    /// At its end the connection was found fit for another request.
    offered: bool,
    home: Option<Home>,
}

impl std::fmt::Debug for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBody")
            .field("kind", &self.kind)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

/// The upstream closed the connection or sent a malformed body.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the upstream closed the connection before the end of the response body")]
    Incomplete,
    #[error("malformed response body: {0}")]
    Malformed(&'static str),
    #[error("reading the response body: {0}")]
    Io(#[from] io::Error),
}

impl ClientBody {
    /// Where the connection goes once the body has been read to its end (at once when there
    /// is no body).
    pub fn on_reusable(&mut self, home: Home) {
        self.home = Some(home);
        if self.is_end_stream() {
            self.finish();
        }
    }

    /// After `101 Switching Protocols`: the connection, with any bytes read past the head.
    pub fn into_upgraded(mut self) -> Option<Rewind<TcpStream>> {
        let conn = self.conn.take()?;
        let prefix = std::mem::take(&mut self.buf).freeze();
        Some(Rewind::new(conn.io, prefix))
    }

    /// Whether the body ended cleanly with the connection fit for another request (nothing
    /// unread past the body, keep-alive on both sides).
    pub fn offered_for_reuse(&self) -> bool {
        self.offered
    }

    /// The body ended: the connection goes home when it can carry another request.
    fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.offered = self.reusable && self.buf.is_empty();
        let conn = self.conn.take();
        if let (true, Some(conn), Some(home)) = (self.offered, conn, self.home.take()) {
            home(conn);
        }
        self.buf = BytesMut::new();
    }

    fn read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if self.buf.capacity() - self.buf.len() < 1024 {
            let want = match &self.kind {
                BodyKind::Framed(decoder) => decoder.remaining().unwrap_or(BODY_READ as u64),
                _ => BODY_READ as u64,
            };
            self.buf.reserve((want as usize).clamp(1024, BODY_READ));
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut self.buf)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.kind {
                BodyKind::Upgrade => return Poll::Ready(None),
                BodyKind::Close => {
                    if !this.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))));
                    }
                    if this.conn.is_none() {
                        return Poll::Ready(None);
                    }
                    match ready!(this.read_more(cx)) {
                        Ok(0) => {
                            this.conn = None;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            this.conn = None;
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                }
                BodyKind::Framed(decoder) => match decoder.decode(&mut this.buf) {
                    Ok(Some(Piece::Data(data))) => {
                        if decoder.remaining() == Some(0) {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Some(Piece::End)) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(None) => {
                        if this.conn.is_none() {
                            return Poll::Ready(Some(Err(ClientBodyError::Incomplete)));
                        }
                        match ready!(this.read_more(cx)) {
                            Ok(0) => {
                                this.conn = None;
                                return Poll::Ready(Some(Err(ClientBodyError::Incomplete)));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                this.conn = None;
                                return Poll::Ready(Some(Err(e.into())));
                            }
                        }
                    }
                    Err(what) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(ClientBodyError::Malformed(what))));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Framed(decoder) => decoder.remaining() == Some(0),
            BodyKind::Upgrade => true,
            BodyKind::Close => self.conn.is_none() && self.buf.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Framed(decoder) => match decoder.remaining() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
            BodyKind::Upgrade => SizeHint::with_exact(0),
            BodyKind::Close => SizeHint::default(),
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        // A body with nothing left (HEAD, 204, Content-Length: 0, or read to its end but
        // for the last poll) still gives its connection back.
        if matches!(self.kind, BodyKind::Framed(_)) && self.is_end_stream() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        let bytes = Bytes::copy_from_slice(raw.as_bytes());
        let (parsed, len) = parse_head(&bytes).unwrap().expect("complete head");
        assert_eq!(len, raw.len());
        build_head(parsed, &bytes).unwrap()
    }

    fn kind(method: Method, raw: &str) -> Result<String, String> {
        response_body(&method, &head(raw))
            .map(|k| format!("{k:?}"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let get = || Method::GET;
        assert!(kind(get(), "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            .unwrap()
            .contains("Length(5)"));
        assert!(kind(
            get(),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
        )
        .unwrap()
        .contains("Chunked"));
        assert_eq!(
            kind(get(), "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n").unwrap(),
            "Close"
        );
        assert_eq!(kind(get(), "HTTP/1.1 200 OK\r\n\r\n").unwrap(), "Close");
        assert!(
            kind(Method::HEAD, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
                .unwrap()
                .contains("Length(0)")
        );
        assert!(kind(
            get(),
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"
        )
        .unwrap()
        .contains("Length(0)"));
        assert_eq!(
            kind(
                get(),
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"
            )
            .unwrap(),
            "Upgrade"
        );
        // Equal repeated lengths are one length; differing ones, signs and lists that
        // disagree are refused (a 502, never a guess).
        assert!(kind(
            get(),
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n"
        )
        .unwrap()
        .contains("Length(5)"));
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert!(kind(get(), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        assert!(head("HTTP/1.1 200 OK\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.1 200 OK\r\nconnection: Close\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn request_heads_carry_the_body_framing() {
        let encode = |method: Method, version, body: ProxyBody, headers: &[(&str, &str)]| {
            let mut req = Request::new(body);
            *req.method_mut() = method;
            *req.version_mut() = version;
            *req.uri_mut() = "/a?b=c".parse().unwrap();
            for (n, v) in headers {
                req.headers_mut().append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let (parts, body) = req.into_parts();
            let framing = request_framing(&parts.method, parts.version, &parts.headers, &body);
            let mut out = BytesMut::new();
            encode_head(&parts, framing, &mut out);
            String::from_utf8(out.to_vec()).unwrap()
        };
        use crate::proxy::body::{empty, full};
        assert_eq!(
            encode(Method::GET, Version::HTTP_11, empty(), &[("host", "x")]),
            "GET /a?b=c HTTP/1.1\r\nhost: x\r\n\r\n"
        );
        assert_eq!(
            encode(
                Method::POST,
                Version::HTTP_11,
                full("abc"),
                &[("host", "x")]
            ),
            "POST /a?b=c HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\n"
        );
        let stream = || {
            use http_body_util::BodyExt;
            http_body_util::StreamBody::new(futures_util::stream::iter(vec![Ok::<_, BoxError>(
                Frame::data(Bytes::from_static(b"abc")),
            )]))
            .boxed_unsync()
        };
        assert_eq!(
            encode(
                Method::POST,
                Version::HTTP_11,
                stream(),
                &[("host", "x"), ("transfer-encoding", "chunked")]
            ),
            "POST /a?b=c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            encode(Method::POST, Version::HTTP_10, stream(), &[("host", "x")]),
            "POST /a?b=c HTTP/1.0\r\nhost: x\r\n\r\n"
        );
    }
}
