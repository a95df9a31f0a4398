//! Request bodies on our HTTP/1 connections: the connection task decodes the body
//! (Content-Length or chunked) from its read buffer and hands it over one frame at a time,
//! only when the pipeline asks for one, so nothing is read ahead of demand (backpressure,
//! and `100 Continue` is sent only when the body is wanted, as hyper and nginx do).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::request::Framing;

/// Longest chunk-size line (with extensions) and the most trailer bytes accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// How much the read buffer grows by while a body streams in.
const BODY_READ: usize = 16 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Why a request body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the client closed the connection before the end of the request body")]
    Incomplete,
    #[error("malformed chunked request body: {0}")]
    Malformed(&'static str),
    #[error("reading the request body: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Default)]
struct State {
    /// One decoded frame waiting for the pipeline.
    slot: Option<Result<Bytes, BodyError>>,
    /// The pump reached the end (or an error); nothing follows `slot`.
    ended: bool,
    /// The pipeline is waiting for a frame.
    waiting: bool,
    /// The pipeline dropped its end.
    dropped: bool,
    receiver: Option<Waker>,
    pump: Option<Waker>,
}

#[derive(Debug, Default)]
struct Shared(Mutex<State>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep going with it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The pipeline's end of a request body.
#[derive(Debug)]
pub struct RequestBody {
    /// `None` for a request without a body.
    shared: Option<Arc<Shared>>,
    /// Bytes still to come when the length was declared.
    remaining: Option<u64>,
}

impl RequestBody {
    /// The body of a request that has none.
    pub fn empty() -> RequestBody {
        RequestBody {
            shared: None,
            remaining: Some(0),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let mut state = shared.lock();
        state.dropped = true;
        if let Some(pump) = state.pump.take() {
            pump.wake();
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // No Arc clone per poll: the slot is borrowed, `remaining` updated after unlocking.
        let this = self.get_mut();
        let Some(shared) = &this.shared else {
            return Poll::Ready(None);
        };
        let mut state = shared.lock();
        if let Some(frame) = state.slot.take() {
            state.waiting = false;
            drop(state);
            if let (Ok(data), Some(remaining)) = (&frame, this.remaining.as_mut()) {
                *remaining = remaining.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(frame.map(Frame::data)));
        }
        if state.ended {
            return Poll::Ready(None);
        }
        state.waiting = true;
        state.receiver = Some(cx.waker().clone());
        if let Some(pump) = state.pump.take() {
            pump.wake();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0)
            || self.shared.as_ref().is_none_or(|shared| {
                let state = shared.lock();
                state.ended && state.slot.is_none()
            })
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// The connection's end: decodes and delivers on demand.
#[derive(Debug)]
pub struct BodyPump {
    shared: Arc<Shared>,
    decoder: Decoder,
    /// Bytes of `100 Continue` still to write (0 when none is owed).
    continue_owed: usize,
    /// The final response went out before the body was wanted: no `100 Continue` was sent.
    continue_withheld: bool,
    finished: bool,
    failed: bool,
    /// After the response: bytes that may still be read and dropped.
    discard: Option<u64>,
}

/// Where the pump stands after a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// The whole body was read off the connection.
    Complete,
    /// The body was malformed or cut, or too much was left to discard: the connection
    /// cannot carry another request.
    Unfinished,
    /// The pipeline let go before the end (the rest may still be discarded).
    Abandoned,
}

/// A body channel for a request head's framing; `None` when the request has no body.
pub fn channel(framing: Framing, expect_continue: bool) -> Option<(RequestBody, BodyPump)> {
    let decoder = match framing {
        Framing::None => return None,
        Framing::Length(n) => Decoder::Length(n),
        Framing::Chunked => Decoder::Chunked(Chunked::Size),
    };
    let shared = Arc::new(Shared::default());
    let remaining = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    Some((
        RequestBody {
            shared: Some(shared.clone()),
            remaining,
        },
        BodyPump {
            shared,
            decoder,
            continue_owed: if expect_continue { CONTINUE.len() } else { 0 },
            continue_withheld: false,
            finished: false,
            failed: false,
            discard: None,
        },
    ))
}

impl BodyPump {
    /// Whether the body never started to be read (a `100 Continue` is still owed, or was
    /// withheld because the final response came first).
    pub fn untouched(&self) -> bool {
        self.continue_withheld || self.continue_owed == CONTINUE.len()
    }

    /// The final response head is queued next, and a `100 Continue` must not follow it. One
    /// not yet begun is never sent (as hyper does; the client sends its body after its own
    /// wait, or not at all); the rest of one begun is returned, to go out before the head.
    pub fn final_head(&mut self) -> &'static [u8] {
        if self.continue_owed == CONTINUE.len() {
            self.continue_withheld = true;
            self.continue_owed = 0;
            return b"";
        }
        let rest = &CONTINUE[CONTINUE.len() - self.continue_owed..];
        self.continue_owed = 0;
        rest
    }

    /// After the response: read what is left of the body and drop it, up to `limit` bytes,
    /// so the connection can carry the next request (nginx discards unread bodies too). A
    /// client still waiting for `100 Continue` never sends the body: nothing to read.
    pub fn discard_rest(&mut self, limit: u64) {
        if self.untouched() {
            self.continue_owed = 0;
            self.failed = true;
        }
        self.discard = Some(limit);
    }

    /// Deliver frames while the pipeline wants them. `Ready` once the pump has nothing
    /// more to do; `Pending` while it waits for demand or for the client.
    pub fn poll_pump<T>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut T,
        buf: &mut BytesMut,
    ) -> Poll<PumpEnd>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            if self.finished {
                return Poll::Ready(PumpEnd::Complete);
            }
            if self.failed {
                return Poll::Ready(PumpEnd::Unfinished);
            }
            if self.discard.is_none() {
                let mut state = self.shared.lock();
                if state.dropped {
                    return Poll::Ready(PumpEnd::Abandoned);
                }
                if state.slot.is_some() || !state.waiting {
                    state.pump = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            // The body is wanted: a client that waits for permission gets it now.
            while self.continue_owed > 0 {
                let sent = CONTINUE.len() - self.continue_owed;
                match Pin::new(&mut *io).poll_write(cx, &CONTINUE[sent..]) {
                    Poll::Ready(Ok(0)) => return self.fail(BodyError::Incomplete),
                    Poll::Ready(Ok(n)) => self.continue_owed -= n,
                    Poll::Ready(Err(e)) => return self.fail(e.into()),
                    Poll::Pending => return Poll::Pending,
                }
            }
            match self.decoder.decode(buf) {
                Ok(Some(Piece::Data(data))) => match &mut self.discard {
                    None => {
                        // The last bytes of a declared length end the body with them, so
                        // the reader needs no further round trip to learn it.
                        let last = matches!(self.decoder, Decoder::Length(0));
                        self.finished = last;
                        self.deliver(Ok(data), last);
                    }
                    Some(left) if *left >= data.len() as u64 => *left -= data.len() as u64,
                    Some(_) => return Poll::Ready(PumpEnd::Unfinished),
                },
                Ok(Some(Piece::End)) => {
                    self.finished = true;
                    self.end();
                }
                Ok(None) => {
                    if buf.capacity() - buf.len() < 1024 {
                        buf.reserve(BODY_READ);
                    }
                    match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
                        Poll::Ready(Ok(0)) => return self.fail(BodyError::Incomplete),
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => return self.fail(e.into()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(what) => return self.fail(BodyError::Malformed(what)),
            }
        }
    }

    fn deliver(&self, frame: Result<Bytes, BodyError>, last: bool) {
        let mut state = self.shared.lock();
        state.slot = Some(frame);
        state.ended = last;
        if let Some(receiver) = state.receiver.take() {
            receiver.wake();
        }
    }

    fn end(&self) {
        let mut state = self.shared.lock();
        state.ended = true;
        if let Some(receiver) = state.receiver.take() {
            receiver.wake();
        }
    }

    fn fail(&mut self, error: BodyError) -> Poll<PumpEnd> {
        self.failed = true;
        self.deliver(Err(error), true);
        Poll::Ready(PumpEnd::Unfinished)
    }
}

/// One step of decoding.
#[derive(Debug)]
pub(super) enum Piece {
    Data(Bytes),
    End,
}

/// A body decoder for a declared length or chunked coding (request bodies here, response
/// bodies in client.rs).
#[derive(Debug)]
pub(super) enum Decoder {
    Length(u64),
    Chunked(Chunked),
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one (bytes seen so far).
    Trailers(usize),
    Done,
}

impl Decoder {
    pub(super) fn length(n: u64) -> Decoder {
        Decoder::Length(n)
    }

    pub(super) fn chunked() -> Decoder {
        Decoder::Chunked(Chunked::Size)
    }

    /// Bytes left to decode, when known (zero once a chunked body has ended).
    pub(super) fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Chunked(Chunked::Done) => Some(0),
            Decoder::Chunked(_) => None,
        }
    }

    /// The next piece from `buf`, `Ok(None)` when more input is needed.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Piece>, &'static str> {
        match self {
            Decoder::Length(0) => Ok(Some(Piece::End)),
            Decoder::Length(remaining) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = (*remaining).min(buf.len() as u64) as usize;
                *remaining -= take as u64;
                Ok(Some(Piece::Data(buf.split_to(take).freeze())))
            }
            Decoder::Chunked(state) => loop {
                match *state {
                    Chunked::Done => return Ok(Some(Piece::End)),
                    Chunked::Size => {
                        let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                            return Ok(None);
                        };
                        let size = chunk_size(&line)?;
                        *state = if size == 0 {
                            Chunked::Trailers(0)
                        } else {
                            Chunked::Data(size)
                        };
                    }
                    Chunked::Data(remaining) => {
                        if buf.is_empty() {
                            return Ok(None);
                        }
                        let take = remaining.min(buf.len() as u64) as usize;
                        *state = match remaining - take as u64 {
                            0 => Chunked::DataEnd,
                            left => Chunked::Data(left),
                        };
                        return Ok(Some(Piece::Data(buf.split_to(take).freeze())));
                    }
                    Chunked::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(None);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err("chunk data longer than its size");
                        }
                        buf.advance(2);
                        *state = Chunked::Size;
                    }
                    Chunked::Trailers(seen) => {
                        let Some(line) = take_line(buf, MAX_TRAILERS - seen)? else {
                            return Ok(None);
                        };
                        // Trailer fields are read and dropped: nginx does not pass them on.
                        *state = if line.is_empty() {
                            Chunked::Done
                        } else {
                            Chunked::Trailers(seen + line.len() + 2)
                        };
                    }
                }
            },
        }
    }
}

/// Split off one CRLF-terminated line (without the CRLF). A bare LF or CR is malformed.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, &'static str> {
    let Some(lf) = buf.iter().position(|&c| c == b'\n') else {
        return if buf.len() > max {
            Err("line too long")
        } else {
            Ok(None)
        };
    };
    if lf > max {
        return Err("line too long");
    }
    if lf == 0 || buf[lf - 1] != b'\r' || buf[..lf - 1].contains(&b'\r') {
        return Err("bare LF or CR");
    }
    let line = buf.split_to(lf + 1).freeze();
    Ok(Some(line.slice(..lf - 1)))
}

/// `chunk-size [ chunk-ext ]`: hexadecimal within 64 bits, extensions ignored.
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("chunk size is not hexadecimal");
    }
    if digits > 16 {
        return Err("chunk size overflows");
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') {
        return Err("chunk size is not hexadecimal");
    }
    if rest
        .iter()
        .any(|&c| c != b'\t' && !(b' '..=b'~').contains(&c))
    {
        return Err("control character in a chunk extension");
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| "chunk size")?;
    u64::from_str_radix(text, 16).map_err(|_| "chunk size overflows")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, bool, usize), &'static str> {
        let mut decoder = match framing {
            Framing::Length(n) => Decoder::Length(n),
            _ => Decoder::Chunked(Chunked::Size),
        };
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match decoder.decode(&mut buf)? {
                Some(Piece::Data(d)) => out.extend_from_slice(&d),
                Some(Piece::End) => return Ok((out, true, buf.len())),
                None => return Ok((out, false, buf.len())),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_and_leave_the_next_request() {
        let (body, done, left) = decode_all(
            Framing::Chunked,
            b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\nGET /next",
        )
        .unwrap();
        assert_eq!(body, b"Wikipedia");
        assert!(done);
        assert_eq!(left, b"GET /next".len());
    }

    #[test]
    fn partial_chunks_wait_for_more() {
        let (body, done, _) = decode_all(Framing::Chunked, b"a\r\n01234").unwrap();
        assert_eq!(body, b"01234");
        assert!(!done);
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for input in [
            &b"zz\r\nab\r\n0\r\n\r\n"[..],
            b"10000000000000001\r\n",
            b"2\r\nabcd\r\n0\r\n\r\n",
            b"4;\nx\r\nabcd\r\n",
            b"4\n",
            b"4 x\r\n",
        ] {
            assert!(
                decode_all(Framing::Chunked, input).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let (body, done, left) = decode_all(Framing::Length(3), b"abcGET").unwrap();
        assert_eq!(body, b"abc");
        assert!(done);
        assert_eq!(left, 3);
    }
}
