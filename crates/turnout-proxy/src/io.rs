//! The byte streams the data plane writes to, client side and upstream side alike: a
//! plain socket, a TLS stream, or either towards an upstream. Writes that fit go out
//! without waiting ([`ClientIo::try_write`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::{TlsStream, UpstreamStream};

/// A connection the data plane writes to: a client's (plain socket or TLS stream) or an
/// upstream's.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    const TLS: bool;

    /// Writes what fits without waiting; `WouldBlock` when nothing does (or when the
    /// type cannot tell: the caller then writes and flushes as usual).
    fn try_write(&self, data: &[u8]) -> io::Result<usize>;

    /// Waits until the socket is readable, for a connection whose reads have all been
    /// taken (a read returned pending since).
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_;
}

impl ClientIo for TcpStream {
    const TLS: bool = false;

    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, data)
    }

    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        TcpStream::readable(self)
    }
}

impl ClientIo for TlsStream {
    const TLS: bool = true;

    fn try_write(&self, _data: &[u8]) -> io::Result<usize> {
        // Records must go through the session: never straight to the socket.
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        // A read that returned pending left no plaintext in the session, so new data
        // can only come from the socket.
        self.get_ref().0.readable()
    }
}

impl ClientIo for UpstreamStream {
    const TLS: bool = false;

    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            UpstreamStream::Plain(s) => s.try_write(data),
            // Records must go through the session: never straight to the socket.
            UpstreamStream::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        self.tcp().readable()
    }
}

/// A socket with some bytes already read from it, to be read again first.
pub(crate) struct Prefixed<S> {
    pub(crate) pre: Bytes,
    pub(crate) io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// One read attempt that does not wait: what the stream has now (a TLS session may hold
/// plaintext that its socket will not announce again), or `Pending` when it has
/// nothing — after which the socket's readiness is the thing to wait for.
pub(crate) async fn read_now<S: ClientIo>(
    stream: &mut S,
    buf: &mut bytes::BytesMut,
) -> Poll<io::Result<usize>> {
    use tokio::io::AsyncReadExt;
    std::future::poll_fn(|cx| {
        let read = stream.read_buf(buf);
        tokio::pin!(read);
        Poll::Ready(Future::poll(read.as_mut(), cx))
    })
    .await
}

/// Waits for a client's next bytes holding no buffer, and reads them into a set taken
/// from the pool then: `None` when the client closed or sent nothing before `limit`.
/// A read that finds nothing comes first (a TLS session may hold plaintext its socket
/// will not announce again); the socket's readiness may wake it spuriously, which only
/// costs another such read.
pub(crate) async fn next_bytes<S: ClientIo>(
    stream: &mut S,
    limit: std::time::Instant,
) -> Option<crate::bufpool::Buffers> {
    loop {
        let mut b = crate::bufpool::take();
        match read_now(stream, &mut b.buf).await {
            Poll::Ready(Ok(n)) if n > 0 => return Some(b),
            Poll::Ready(_) => {
                crate::bufpool::give(b);
                return None;
            }
            Poll::Pending => crate::bufpool::give(b),
        }
        match tokio::time::timeout_at(limit.into(), stream.readable()).await {
            Ok(Ok(())) => {}
            _ => return None,
        }
    }
}
