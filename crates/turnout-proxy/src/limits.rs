//! Connection and body limits: `max_connections` (a slot per open client connection,
//! taken at accept; past the limit a new connection gets a short `503` and is closed
//! while the open ones are served on) and `max_body` (checked by both drivers before
//! routing, `h1conn.rs` and `h2.rs`, and as bodies stream).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::shared::Inner;

/// What a refused connection is told.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 38\r\nconnection: close\r\n\r\nturnout: too many connections, retry\r\n";
/// Refused connections being answered at once, at most; past that they are closed
/// without an answer (a flood must not cost more than this).
const MAX_REFUSING: usize = 256;
/// How long and how much a refused client may still send while turnout closes (so that
/// the `503` is not destroyed by a reset).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
const REFUSAL_LINGER_BYTES: usize = 64 * 1024;

/// One open client connection, counted against `max_connections` until dropped.
pub(crate) struct ConnSlot(Arc<Inner>);

impl ConnSlot {
    /// A slot, or `None` when `max_connections` are open.
    pub(crate) fn take(inner: &Arc<Inner>) -> Option<ConnSlot> {
        let max = inner.opts.max_connections;
        let open = inner.connections.fetch_add(1, Ordering::AcqRel);
        if max != 0 && open >= max {
            inner.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnSlot(inner.clone()))
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Refuses a connection accepted past `max_connections`: counted, logged (one line a
/// second at most), and on a plain connection answered `503` with `Connection: close`
/// (a TLS one is closed: no handshake is spent on it).
pub(crate) fn refuse(inner: &Arc<Inner>, stream: TcpStream, plain: bool) {
    inner.refused.fetch_add(1, Ordering::Relaxed);
    if let Some(held_back) = inner.refusals.allow() {
        tracing::warn!(
            max_connections = inner.opts.max_connections,
            similar_not_logged = held_back,
            "connection refused: max_connections are open"
        );
    }
    if !plain || inner.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        if plain {
            inner.refusing.fetch_sub(1, Ordering::AcqRel);
        }
        return;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(REFUSAL).await?;
            stream.shutdown().await?;
            // Read what the client sends until it closes, so that its request does not
            // turn the close into a reset that destroys the answer.
            let mut buf = vec![0u8; 4096];
            let mut seen = 0;
            while seen < REFUSAL_LINGER_BYTES {
                match stream.read(&mut buf).await? {
                    0 => break,
                    n => seen += n,
                }
            }
            std::io::Result::Ok(())
        })
        .await;
        inner.refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Whether a body of `len` bytes is over `max_body`.
pub(crate) fn body_too_large(inner: &Inner, len: u64) -> bool {
    inner.opts.max_body.is_some_and(|max| len > max)
}
