//! Client connection timers hyper does not tell apart: `client-header-timeout` (from the
//! first byte of a request header, or from accept, until the header is complete: a slowloris
//! that trickles header bytes is cut off) and `keep-alive` (idle time between requests).
//! hyper has one timer for both, so the connection's IO is wrapped and the pipeline reports
//! when requests start and end.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What the pipeline tells an HTTP/2 connection: for its timers, and when
/// `keep-alive-requests` is used up.
#[derive(Debug, Default)]
pub struct ConnActivity {
    started: AtomicU64,
    finished: AtomicU64,
    upgraded: AtomicBool,
    used_up: tokio::sync::Notify,
}

impl ConnActivity {
    /// A request header was parsed and the request handed to the pipeline; the request
    /// counts as in flight until the guard is dropped (with the response body).
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.started.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    /// The connection has had its `keep-alive-requests`: it should take no more (GOAWAY).
    pub fn requests_used_up(&self) {
        self.used_up.notify_one();
    }

    /// Resolves once `requests_used_up` was called (at once if it already was).
    pub async fn wait_used_up(&self) {
        self.used_up.notified().await;
    }

    /// The connection became a tunnel (WebSocket): its own idle timeout applies from now on.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    fn in_flight(&self) -> bool {
        self.started.load(Ordering::Acquire) > self.finished.load(Ordering::Acquire)
    }
}

/// One request in flight on a connection; dropping it ends the request (also when the
/// pipeline's future is cancelled).
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnActivity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A client connection's IO that fails reads with `TimedOut` when a header takes longer
    /// than `header_timeout` or the connection idles longer than `keep_alive`.
    pub struct TimedIo<I> {
        #[pin]
        io: I,
        activity: Arc<ConnActivity>,
        header_timeout: Duration,
        keep_alive: Duration,
        // When the header being received started, and the requests started before it.
        head: Option<(Instant, u64)>,
        last_io: Instant,
        // HTTP/2 (seen by its preface): no header phase, streams are multiplexed.
        h2: Option<bool>,
        timer: Pin<Box<Sleep>>,
    }
}

impl<I> TimedIo<I> {
    pub fn new(
        io: I,
        activity: Arc<ConnActivity>,
        header_timeout: Duration,
        keep_alive: Duration,
    ) -> TimedIo<I> {
        let now = Instant::now();
        TimedIo {
            io,
            activity,
            header_timeout,
            keep_alive,
            // nginx gives a fresh connection client-header-timeout to send its first header.
            head: Some((now, 0)),
            last_io: now,
            h2: None,
            timer: Box::pin(tokio::time::sleep_until(now + header_timeout)),
        }
    }
}

/// Which timer runs now, if any.
fn deadline(
    activity: &ConnActivity,
    head: Option<(Instant, u64)>,
    last_io: Instant,
    header_timeout: Duration,
    keep_alive: Duration,
) -> Option<Instant> {
    if activity.upgraded.load(Ordering::Acquire) || activity.in_flight() {
        return None;
    }
    let started = activity.started.load(Ordering::Acquire);
    match head {
        Some((since, before)) if before == started => Some(since + header_timeout),
        _ if keep_alive.is_zero() => None,
        _ => Some(last_io + keep_alive),
    }
}

impl<I: AsyncRead> AsyncRead for TimedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        match this.io.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    let now = Instant::now();
                    *this.last_io = now;
                    if this.h2.is_none() {
                        *this.h2 = Some(read.starts_with(b"PRI "));
                    }
                    let started = this.activity.started.load(Ordering::Acquire);
                    let head_done = this.head.is_none_or(|(_, b)| b != started);
                    if *this.h2 == Some(true) {
                        *this.head = None;
                    } else if head_done && !this.activity.in_flight() {
                        // The first byte of a new request header.
                        *this.head = Some((now, started));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(at) = deadline(
                    this.activity,
                    *this.head,
                    *this.last_io,
                    *this.header_timeout,
                    *this.keep_alive,
                ) else {
                    return Poll::Pending;
                };
                if this.timer.deadline() != at {
                    this.timer.as_mut().reset(at);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let what = match this.head {
                            Some((_, b)) if *b == this.activity.started.load(Ordering::Acquire) => {
                                "client-header-timeout"
                            }
                            _ => "keep-alive",
                        };
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("client connection closed after {what}"),
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<I: AsyncWrite> AsyncWrite for TimedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            if *n > 0 {
                *this.last_io = Instant::now();
            }
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            if *n > 0 {
                *this.last_io = Instant::now();
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_trickled_header_is_cut_but_idle_keep_alive_is_not() {
        let activity = Arc::new(ConnActivity::default());
        let (client, server) = tokio::io::duplex(1024);
        let mut io = TimedIo::new(
            server,
            activity.clone(),
            Duration::from_secs(1),
            Duration::from_secs(5),
        );
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let _ = &mut client_read;
        // A complete request, answered: the connection is idle, not in a header.
        client_write.write_all(b"G").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        drop(activity.request_started());
        let idle = Instant::now();
        // Idle for 3 s (> header timeout) and still open, then a header trickles in.
        let reader = tokio::spawn(async move {
            let mut n = 0;
            loop {
                match io.read(&mut buf).await {
                    Ok(0) => return Err(n),
                    Ok(k) => n += k,
                    Err(e) => return Ok((n, e.kind(), Instant::now())),
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        for _ in 0..20 {
            if client_write.write_all(b"x").await.is_err() {
                break; // the server side is gone
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (n, kind, at) = reader.await.unwrap().unwrap();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert!((5..=6).contains(&n), "{n}");
        let cut = at - idle;
        assert!(
            cut >= Duration::from_secs(4) && cut <= Duration::from_millis(4100),
            "{cut:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_close_after_keep_alive() {
        let activity = Arc::new(ConnActivity::default());
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = TimedIo::new(
            server,
            activity.clone(),
            Duration::from_secs(1),
            Duration::from_secs(5),
        );
        client.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        drop(activity.request_started());
        let start = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed().as_secs(), 5);
    }
}
