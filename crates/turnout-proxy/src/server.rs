//! The accept loop and the graceful stop: no new connections, open ones finish their
//! requests in flight (keep-alive connections close after their current request, HTTP/2
//! ones get a GOAWAY) for up to `shutdown_grace`.
//!
//! Each connection starts in its own task: on the TLS listener the handshake first
//! (within `header_timeout`), then the first bytes say the protocol — the HTTP/2 preface
//! goes to `h2.rs` (hyper's server), anything else to `h1conn.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::shared::Inner;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

use crate::io::{next_bytes, ClientIo, Prefixed};
use crate::tls::TlsCert;

pub(crate) async fn serve(
    inner: Arc<Inner>,
    listener: TcpListener,
    tls: Option<TlsCert>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a sender; when all are gone, `recv` returns `None`.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let open = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Some(slot) = crate::limits::ConnSlot::take(&inner) else {
            crate::limits::refuse(&inner, stream, tls.is_none());
            continue;
        };
        let guard = (open_tx.clone(), OpenGuard::new(&open), slot);
        let (inner, stop) = (inner.clone(), stop_rx.clone());
        match &tls {
            None => {
                // The connection's future is made inside the task: captured whole and
                // then awaited, it would take its room twice in the task.
                tokio::spawn(async move {
                    serve_conn(inner, stream, peer, stop).await;
                    drop(guard);
                });
            }
            Some(tls) => {
                // Boxed: the handshake's state is gone once it is done.
                let handshake = Box::pin(tls.accept(stream));
                tokio::spawn(async move {
                    let limit = inner.opts.header_timeout;
                    match tokio::time::timeout(limit, handshake).await {
                        Ok(Ok(stream)) => {
                            serve_conn(inner, stream, peer, stop).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer, "TLS handshake not done within header_timeout");
                        }
                    }
                    drop(guard);
                });
            }
        }
    }
    drop(listener);
    drop(open_tx);
    let _ = stop_tx.send(true);
    let grace = inner.opts.shutdown_grace;
    tracing::info!(
        open = open.load(Ordering::Relaxed),
        grace_ms = grace.as_millis() as u64,
        "data plane stopped accepting; finishing requests in flight"
    );
    if tokio::time::timeout(grace, open_rx.recv()).await.is_err() {
        tracing::warn!(
            open = open.load(Ordering::Relaxed),
            "grace period over; closing the remaining connections"
        );
    }
}

/// Serves one client connection: HTTP/2 when it starts with the prior-knowledge
/// preface (or, on TLS, when ALPN chose `h2`: its first bytes are the preface too),
/// HTTP/1.x otherwise.
async fn serve_conn<S: ClientIo>(
    inner: Arc<Inner>,
    mut stream: S,
    peer: std::net::SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let first_deadline = crate::h1conn::deadline_after(inner.opts.header_timeout);
    // Until its first bytes, a connection holds no buffer.
    let Some(mut b) = next_bytes(&mut stream, first_deadline).await else {
        return;
    };
    match detect(&mut stream, &mut b.buf, first_deadline).await {
        Some(Protocol::Http2) => {
            let io = Prefixed {
                pre: b.buf.split().freeze(),
                io: stream,
            };
            crate::bufpool::give(b);
            // Boxed: hyper's HTTP/2 connection is large, and an HTTP/1.1 connection's
            // task must not be sized for it.
            Box::pin(crate::h2::serve(inner, io, peer, S::TLS, stop)).await
        }
        Some(Protocol::Http1) => {
            crate::h1conn::serve(inner, stream, b, peer, stop, first_deadline).await
        }
        None => crate::bufpool::give(b),
    }
}

/// The protocol a client connection speaks.
enum Protocol {
    Http1,
    Http2,
}

/// Reads the first bytes into `buf`: HTTP/2 when they are its preface, HTTP/1.x for
/// anything else; `None` when the client went away or sent nothing in time.
async fn detect<S: ClientIo>(
    stream: &mut S,
    buf: &mut BytesMut,
    deadline: std::time::Instant,
) -> Option<Protocol> {
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Some(Protocol::Http1);
        }
        if n == H2_PREFACE.len() {
            return Some(Protocol::Http2);
        }
        buf.reserve(crate::bufpool::READ_CHUNK);
        match tokio::time::timeout_at(deadline.into(), stream.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(_)) => {}
        }
    }
}

/// Counts open client connections (for the shutdown log).
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(count: &Arc<AtomicUsize>) -> OpenGuard {
        count.fetch_add(1, Ordering::Relaxed);
        OpenGuard(count.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
