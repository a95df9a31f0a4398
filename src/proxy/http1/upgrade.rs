//! Handing a client connection over: after `101 Switching Protocols` to the tunnel, or to
//! hyper's HTTP/2 server when a cleartext connection opens with the HTTP/2 preface; with the
//! bytes already read put back in front.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::Transport;

/// A transport with bytes already read from it put back in front.
pub struct Rewind<T> {
    prefix: Bytes,
    io: T,
}

impl<T> Rewind<T> {
    pub fn new(io: T, prefix: Bytes) -> Rewind<T> {
        Rewind { prefix, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, out)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The upgraded connection a request will get if its response is `101`, kept in the
/// request's extensions (which must be `Clone`, hence the shared slot).
#[derive(Clone)]
pub(super) struct PendingUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl PendingUpgrade {
    pub(super) fn new(rx: oneshot::Receiver<Upgraded>) -> PendingUpgrade {
        PendingUpgrade(Arc::new(Mutex::new(Some(rx))))
    }
}

/// A client transport handed over by `101`, with what the client sent after its head.
pub type Upgraded = Rewind<Box<dyn Transport>>;

/// A client connection after `101 Switching Protocols`, whichever server loop served it.
pub trait UpgradedIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> UpgradedIo for T {}

/// The client side of an upgrade, taken from the request before it is forwarded.
pub enum ClientUpgrade {
    Own(oneshot::Receiver<Upgraded>),
    Hyper(hyper::upgrade::OnUpgrade),
}

impl ClientUpgrade {
    pub fn on<B>(req: &mut Request<B>) -> ClientUpgrade {
        let own = req
            .extensions_mut()
            .remove::<PendingUpgrade>()
            .and_then(|pending| pending.0.lock().ok()?.take());
        match own {
            Some(rx) => ClientUpgrade::Own(rx),
            None => ClientUpgrade::Hyper(hyper::upgrade::on(req)),
        }
    }

    /// The client's transport once the `101` went out.
    pub async fn wait(self) -> Result<Box<dyn UpgradedIo>, String> {
        match self {
            ClientUpgrade::Own(rx) => match rx.await {
                Ok(io) => Ok(Box::new(io)),
                Err(_) => Err("the client connection ended before the upgrade".into()),
            },
            ClientUpgrade::Hyper(on) => match on.await {
                Ok(upgraded) => Ok(Box::new(hyper_util::rt::TokioIo::new(upgraded))),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}
