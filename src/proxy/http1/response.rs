//! Writing an HTTP/1.1 response: the head with its framing (Content-Length, chunked, or
//! close-delimited), the `Date` header, and a write queue that sends the head and small
//! body frames in one system call.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};
use tokio::io::AsyncWrite;

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Nothing follows the head (HEAD, 1xx, 204, 304, upgrades).
    None,
    Length(u64),
    Chunked,
    /// The end of the body is the end of the connection (HTTP/1.0 client, unknown length).
    Close,
}

/// What the request tells the response writer.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub method: &'a Method,
    pub version: Version,
    /// Whether the connection may stay open after this response.
    pub keep_alive: bool,
}

/// Encode the response head into `out` and decide its framing and whether the connection
/// stays open. `exact` is the body's known length, if any.
pub fn encode_head(
    status: StatusCode,
    headers: &mut HeaderMap,
    exact: Option<u64>,
    exchange: Exchange<'_>,
    out: &mut Vec<u8>,
) -> (BodyFraming, bool) {
    let mut keep_alive = exchange.keep_alive;
    if let Some(connection) = headers.get(header::CONNECTION) {
        if has_token(connection, b"close") {
            keep_alive = false;
        }
    }
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        if status != StatusCode::NOT_MODIFIED {
            headers.remove(header::CONTENT_LENGTH);
        }
        headers.remove(header::TRANSFER_ENCODING);
        BodyFraming::None
    } else if *exchange.method == Method::HEAD {
        // The head describes the body a GET would get; nothing is sent. A body of known
        // length (the proxy's own pages) is declared as nginx does; an upstream's answer to
        // HEAD brings its own Content-Length and an empty body.
        if let Some(length) = exact.filter(|&n| n > 0) {
            if !headers.contains_key(header::CONTENT_LENGTH) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
        }
        BodyFraming::None
    } else if let Some(length) = declared_length(headers) {
        headers.remove(header::TRANSFER_ENCODING);
        BodyFraming::Length(length)
    } else if let Some(length) = exact {
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        BodyFraming::Length(length)
    } else if exchange.version == Version::HTTP_11 {
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        BodyFraming::Chunked
    } else {
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        keep_alive = false;
        BodyFraming::Close
    };
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if !keep_alive {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        } else if exchange.version == Version::HTTP_10 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        }
    }

    // nginx answers every version with an HTTP/1.1 status line.
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        append_date(out);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// The response's one valid Content-Length; an unusable one is removed (the body is then
/// framed as if none was given).
fn declared_length(headers: &mut HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    let length = first
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if length.is_none() || values.next().is_some() {
        headers.remove(header::CONTENT_LENGTH);
        return None;
    }
    length
}

fn has_token(value: &HeaderValue, token: &[u8]) -> bool {
    value
        .as_bytes()
        .split(|&c| c == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

thread_local! {
    /// The `Date` value, formatted once per second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

fn append_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *at = secs;
            } else {
                out.extend_from_slice(formatted.as_bytes());
                return;
            }
        }
        out.extend_from_slice(&text[..]);
    });
}

/// Frames copied into the queue's own buffer rather than queued by reference: below this a
/// copy is cheaper than another iovec (and keeps a small response to one write).
const COPY_BELOW: usize = 4096;
/// Stop taking body frames while this much waits to be written (backpressure).
pub const HIGH_WATER: usize = 64 * 1024;

/// Bytes waiting to be written, in order.
#[derive(Debug, Default)]
pub struct WriteQueue {
    segments: VecDeque<Segment>,
    len: usize,
}

#[derive(Debug)]
enum Segment {
    Owned(Vec<u8>),
    Shared(Bytes),
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Owned(v) => v,
            Segment::Shared(b) => b,
        }
    }
}

impl WriteQueue {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Append bytes to copy (heads, chunk framing, small frames).
    pub fn copy(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        if let Some(Segment::Owned(last)) = self.segments.back_mut() {
            last.extend_from_slice(bytes);
            return;
        }
        self.segments.push_back(Segment::Owned(bytes.to_vec()));
    }

    /// Append an owned buffer as it is (a response head).
    pub fn push_owned(&mut self, bytes: Vec<u8>) {
        self.len += bytes.len();
        self.segments.push_back(Segment::Owned(bytes));
    }

    /// Append a body frame: copied when small, else queued without a copy.
    pub fn push_data(&mut self, data: Bytes) {
        if data.len() < COPY_BELOW {
            self.copy(&data);
        } else {
            self.len += data.len();
            self.segments.push_back(Segment::Shared(data));
        }
    }

    /// Write as much as the transport takes now; `Ready(Ok)` once the queue is empty.
    pub fn poll_flush<T: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut T,
    ) -> Poll<io::Result<()>> {
        while self.len > 0 {
            let written = {
                let mut slices = [IoSlice::new(&[]); 8];
                let mut count = 0;
                for segment in self.segments.iter().take(slices.len()) {
                    slices[count] = IoSlice::new(segment.bytes());
                    count += 1;
                }
                match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            };
            self.consume(written);
        }
        // TLS keeps records until flushed; a socket's flush is free.
        Pin::new(&mut *io).poll_flush(cx)
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                return;
            };
            let len = front.bytes().len();
            if n >= len {
                n -= len;
                self.segments.pop_front();
            } else {
                match front {
                    Segment::Owned(v) => {
                        v.drain(..n);
                    }
                    Segment::Shared(b) => b.advance(n),
                }
                return;
            }
        }
        // Drop empty segments left at the front (a zero-length head cannot happen, but a
        // queue must never hand out an empty first slice).
        while self.segments.front().is_some_and(|s| s.bytes().is_empty()) {
            self.segments.pop_front();
        }
    }
}

/// A chunk-size line for `len` bytes of data.
pub fn chunk_line(len: usize, out: &mut WriteQueue) {
    let mut line = [0u8; 18];
    out.copy(chunk_size_line(len, &mut line));
}

/// `{len:x}\r\n` in `line` (also the upstream client's request chunks).
pub(super) fn chunk_size_line(len: usize, line: &mut [u8; 18]) -> &[u8] {
    let mut at = 16;
    let mut n = len;
    loop {
        at -= 1;
        line[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    line[16] = b'\r';
    line[17] = b'\n';
    &line[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(
        status: StatusCode,
        headers: &[(&'static str, &'static str)],
        exact: Option<u64>,
        method: Method,
        version: Version,
    ) -> (String, BodyFraming, bool) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_static(v));
        }
        let mut out = Vec::new();
        let exchange = Exchange {
            method: &method,
            version,
            keep_alive: true,
        };
        let (framing, keep) = encode_head(status, &mut map, exact, exchange, &mut out);
        (String::from_utf8(out).unwrap(), framing, keep)
    }

    #[test]
    fn known_lengths_are_declared_and_unknown_ones_chunked() {
        let (text, framing, keep) =
            head(StatusCode::OK, &[], Some(2), Method::GET, Version::HTTP_11);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ndate: "), "{text}");
        assert!(text.contains("content-length: 2\r\n"));
        assert_eq!((framing, keep), (BodyFraming::Length(2), true));
        let (text, framing, _) = head(StatusCode::OK, &[], None, Method::GET, Version::HTTP_11);
        assert!(text.contains("transfer-encoding: chunked\r\n"));
        assert_eq!(framing, BodyFraming::Chunked);
    }

    #[test]
    fn http10_clients_get_close_delimited_or_kept_alive_bodies() {
        let (text, framing, keep) = head(StatusCode::OK, &[], None, Method::GET, Version::HTTP_10);
        assert_eq!((framing, keep), (BodyFraming::Close, false));
        assert!(text.contains("connection: close\r\n"));
        let (text, _, keep) = head(StatusCode::OK, &[], Some(0), Method::GET, Version::HTTP_10);
        assert!(keep && text.contains("connection: keep-alive\r\n"));
    }

    #[test]
    fn bodiless_responses_send_no_body() {
        let (text, framing, _) = head(
            StatusCode::OK,
            &[("content-length", "10")],
            Some(0),
            Method::HEAD,
            Version::HTTP_11,
        );
        assert_eq!(framing, BodyFraming::None);
        assert!(text.contains("content-length: 10\r\n"));
        let (text, framing, _) = head(
            StatusCode::NOT_FOUND,
            &[],
            Some(3),
            Method::HEAD,
            Version::HTTP_11,
        );
        assert_eq!(framing, BodyFraming::None);
        assert!(text.contains("content-length: 3\r\n"), "{text}");
        let (text, framing, _) = head(
            StatusCode::NO_CONTENT,
            &[("content-length", "0")],
            None,
            Method::GET,
            Version::HTTP_11,
        );
        assert_eq!(framing, BodyFraming::None);
        assert!(!text.contains("content-length"));
    }

    #[test]
    fn a_connection_close_from_the_pipeline_ends_keep_alive() {
        let (_, _, keep) = head(
            StatusCode::OK,
            &[("connection", "close")],
            Some(0),
            Method::GET,
            Version::HTTP_11,
        );
        assert!(!keep);
    }

    #[test]
    fn chunk_lines_are_lowercase_hex() {
        let mut q = WriteQueue::default();
        chunk_line(0x1f40, &mut q);
        chunk_line(0, &mut q);
        assert_eq!(q.segments[0].bytes(), b"1f40\r\n0\r\n");
    }

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        let mut out = [0u8; 18];
        assert_eq!(chunk_size_line(1, &mut out), b"1\r\n");
        assert_eq!(chunk_size_line(0x1f40, &mut out), b"1f40\r\n");
        assert_eq!(
            chunk_size_line(usize::MAX, &mut out),
            b"ffffffffffffffff\r\n"
        );
    }
}
