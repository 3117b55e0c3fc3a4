//! The accept loop and the graceful stop: no new connections, open ones finish their
//! requests in flight (keep-alive connections close after their current request, HTTP/2
//! ones get a GOAWAY) for up to `shutdown_grace`.
//!
//! Each connection is served by `h1server::serve_conn`, which speaks HTTP/1.1 itself and
//! hands HTTP/2 (prior knowledge) connections to hyper.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::Inner;

pub(crate) async fn serve(
    inner: Arc<Inner>,
    listener: TcpListener,
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
        let guard = (open_tx.clone(), OpenGuard::new(&open));
        let conn = crate::h1server::serve_conn(inner.clone(), stream, peer, stop_rx.clone());
        tokio::spawn(async move {
            conn.await;
            drop(guard);
        });
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
