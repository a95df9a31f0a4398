//! Reading an HTTP/1.x request head: httparse for the syntax, then the framing rules a proxy
//! must enforce itself (RFC 9112 section 6, and what nginx refuses) so no request can be
//! framed two ways.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

/// Header fields a head is first parsed for (slots on the stack; hyper's limit).
const MAX_HEADERS: usize = 100;
/// Header fields any head may have. nginx has no count limit, only the head's size
/// (large-client-header-buffers, proxy-buffer-size), so a head with more than
/// `MAX_HEADERS` is parsed again with a slot per line, up to this (HeaderMap's own ceiling
/// is 32 768).
const MAX_HEADERS_ANY: usize = 8192;

/// Run an httparse parse of `buf` (request or response head: `parse`) over header slots:
/// `MAX_HEADERS` on the stack, and for a head with more fields, again with one slot per line
/// received so far (a field takes a line, so the cost stays in proportion to the parse), up
/// to `MAX_HEADERS_ANY`. `Ok(None)`: incomplete.
pub(super) fn parse_with_slots<'b, T>(
    buf: &'b [u8],
    mut parse: impl FnMut(&mut [httparse::Header<'b>]) -> Result<Option<T>, httparse::Error>,
) -> Result<Option<T>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match parse(&mut headers) {
        Err(httparse::Error::TooManyHeaders) => {
            let lines = buf.iter().filter(|&&b| b == b'\n').count();
            parse(&mut vec![
                httparse::EMPTY_HEADER;
                lines.clamp(MAX_HEADERS, MAX_HEADERS_ANY)
            ])
        }
        parsed => parsed,
    }
}

pub(super) type Range = (usize, usize);

/// Where `part`, a slice of `buf`, lies in it.
fn range_in(buf: &[u8], part: &[u8]) -> Range {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    (start, start + part.len())
}

/// Where each parsed field's name and value lie in `buf`.
pub(super) fn field_ranges(buf: &[u8], fields: &[httparse::Header<'_>]) -> Vec<(Range, Range)> {
    fields
        .iter()
        .map(|h| (range_in(buf, h.name.as_bytes()), range_in(buf, h.value)))
        .collect()
}

/// The HTTP version httparse read (`0`: HTTP/1.0).
pub(super) fn version_of(minor: Option<u8>) -> Version {
    if minor == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (no Content-Length and no Transfer-Encoding, or a length of 0).
    None,
    Length(u64),
    Chunked,
}

/// A parsed and validated request head.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The client asked for `100 Continue` before it sends the body.
    pub expect_continue: bool,
    /// The client lets the connection stay open after this exchange.
    pub keep_alive: bool,
    /// `Connection: upgrade` with an `Upgrade` header (WebSocket).
    pub wants_upgrade: bool,
}

/// Why a head was refused: the status to answer with before closing the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub StatusCode);

/// Parse the head at the start of `buf`. `Ok(None)`: incomplete, read more. On success the
/// head's length in bytes is returned with it; header values share `buf`'s memory once the
/// caller hands the head bytes over (see `build`).
pub fn parse(buf: &[u8]) -> Result<Option<(Parsed, usize)>, Refused> {
    let parsed = parse_with_slots(buf, |headers| {
        let mut req = httparse::Request::new(headers);
        let httparse::Status::Complete(len) = req.parse(buf)? else {
            return Ok(None);
        };
        let parsed = Parsed {
            method: range_in(buf, req.method.unwrap_or_default().as_bytes()),
            target: range_in(buf, req.path.unwrap_or_default().as_bytes()),
            version: version_of(req.version),
            fields: field_ranges(buf, req.headers),
        };
        Ok(Some((parsed, len)))
    });
    parsed.map_err(|e| match e {
        httparse::Error::TooManyHeaders => Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        _ => Refused(StatusCode::BAD_REQUEST),
    })
}

/// Where the parts of a head lie in its bytes: httparse borrows the read buffer, which the
/// caller then splits off and freezes so values can share it without a copy.
#[derive(Debug)]
pub struct Parsed {
    method: Range,
    target: Range,
    version: Version,
    fields: Vec<(Range, Range)>,
}

/// Turn the parsed head into typed parts and apply the framing rules.
pub fn build(parsed: Parsed, bytes: &Bytes) -> Result<Head, Refused> {
    let bad = || Refused(StatusCode::BAD_REQUEST);
    let slice = |(a, b): Range| bytes.slice(a..b);
    let method = Method::from_bytes(&bytes[parsed.method.0..parsed.method.1]).map_err(|_| bad())?;
    let uri = Uri::from_maybe_shared(slice(parsed.target)).map_err(|_| bad())?;
    let version = parsed.version;
    let mut headers = HeaderMap::with_capacity(parsed.fields.len());
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut hosts = 0;
    let mut connection = ConnectionTokens::default();
    let mut expect_continue = false;
    for (name, value) in parsed.fields {
        let name = HeaderName::from_bytes(&bytes[name.0..name.1]).map_err(|_| bad())?;
        let value = HeaderValue::from_maybe_shared(slice(value)).map_err(|_| bad())?;
        match name {
            header::CONTENT_LENGTH => {
                // nginx: "client sent duplicate header line" for a second Content-Length,
                // equal or not.
                if content_length.is_some() {
                    return Err(bad());
                }
                content_length = Some(parse_length(value.as_bytes()).ok_or_else(bad)?);
            }
            header::TRANSFER_ENCODING => {
                if transfer_encoding || version == Version::HTTP_10 {
                    return Err(bad());
                }
                transfer_encoding = true;
                // `chunked` must close the list (RFC 9112 6.3: else the length is unknown,
                // 400); and only `chunked` alone is implemented (nginx: 501 "unknown
                // Transfer-Encoding").
                let mut codings = value.as_bytes().rsplit(|&c| c == b',');
                let last = codings.next().unwrap_or_default().trim_ascii();
                if !last.eq_ignore_ascii_case(b"chunked") {
                    return Err(bad());
                }
                if codings.next().is_some() {
                    return Err(Refused(StatusCode::NOT_IMPLEMENTED));
                }
                chunked = true;
            }
            header::HOST => hosts += 1,
            header::CONNECTION => connection.scan(&value),
            header::EXPECT => {
                expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        headers.append(name, value);
    }
    // Both framings at once is the smuggling vector; nginx refuses it with 400.
    if chunked && content_length.is_some() {
        return Err(bad());
    }
    // RFC 9112 3.2: a Host is required in HTTP/1.1 and never repeated (nginx: 400).
    if hosts > 1 || (hosts == 0 && version == Version::HTTP_11) {
        return Err(bad());
    }
    let framing = match (chunked, content_length) {
        (true, _) => Framing::Chunked,
        (false, Some(0)) | (false, None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    let keep_alive = connection.keep_alive(version);
    Ok(Head {
        wants_upgrade: connection.upgrade && headers.contains_key(header::UPGRADE),
        method,
        uri,
        version,
        headers,
        framing,
        expect_continue: expect_continue && version == Version::HTTP_11,
        keep_alive,
    })
}

/// The tokens of `Connection` headers that matter to HTTP/1 framing (requests here,
/// responses and upstream requests in client.rs).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
}

impl ConnectionTokens {
    /// Every `Connection` value in `headers`.
    pub fn of(headers: &HeaderMap) -> ConnectionTokens {
        let mut tokens = ConnectionTokens::default();
        for value in headers.get_all(header::CONNECTION) {
            tokens.scan(value);
        }
        tokens
    }

    pub fn scan(&mut self, value: &HeaderValue) {
        for token in value.as_bytes().split(|&c| c == b',') {
            let token = token.trim_ascii();
            self.close |= token.eq_ignore_ascii_case(b"close");
            self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            self.upgrade |= token.eq_ignore_ascii_case(b"upgrade");
        }
    }

    /// Whether a message of `version` lets its connection carry another one: HTTP/1.1
    /// unless `close`, HTTP/1.0 only with `keep-alive`.
    pub fn keep_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_10 {
            self.keep_alive && !self.close
        } else {
            !self.close
        }
    }
}

/// A Content-Length value: digits only, no sign, no list, within u64.
pub(super) fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Head, Refused> {
        let bytes = Bytes::copy_from_slice(raw.as_bytes());
        let (parsed, len) = parse(&bytes)?.expect("complete head");
        assert_eq!(len, raw.find("\r\n\r\n").unwrap() + 4);
        build(parsed, &bytes)
    }

    #[test]
    fn a_plain_get_keeps_alive_and_shares_its_values() {
        let h = head("GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Y: z\r\n\r\n").unwrap();
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri.path(), "/a");
        assert_eq!(h.headers["x-y"], "z");
        assert_eq!(h.framing, Framing::None);
        assert!(h.keep_alive && !h.expect_continue && !h.wants_upgrade);
    }

    #[test]
    fn more_than_a_hundred_fields_are_read_as_nginx_does() {
        let fields = |n: usize| {
            (0..n)
                .map(|i| format!("X-F{i}: {i}\r\n"))
                .collect::<String>()
        };
        let h = head(&format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", fields(300))).unwrap();
        assert_eq!(h.headers.len(), 301);
        assert_eq!(h.headers["x-f299"], "299");
        // Incomplete past the first 100 fields: still asks for more.
        let partial = format!("GET / HTTP/1.1\r\nHost: a\r\n{}", fields(150));
        assert!(parse(partial.as_bytes()).unwrap().is_none());
        // Beyond any real head (nginx's size limits come first in practice): 431.
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
            fields(MAX_HEADERS_ANY)
        );
        assert_eq!(
            head(&raw).unwrap_err().0,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn incomplete_heads_ask_for_more() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn framing_follows_the_headers() {
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Length(12));
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::None);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let status = |raw: &str| head(raw).unwrap_err().0.as_u16();
        for raw in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert_eq!(status(raw), 400, "{raw:?}");
        }
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            400
        );
    }

    #[test]
    fn connection_tokens_decide_keep_alive_and_upgrade() {
        let h = head("GET / HTTP/1.0\r\nHost: a\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h = head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
        let h = head("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h =
            head("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .unwrap();
        assert!(h.wants_upgrade);
        let h = head("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n").unwrap();
        assert!(h.expect_continue);
    }
}
