//! Upgraded connections (WebSocket and other `Upgrade` protocols): bytes relayed both ways
//! until either side closes — or, once the tunnel's slot is no longer live, until
//! `upgrade_drain` has passed. Then a WebSocket client gets a Close frame (1001, going away)
//! at a frame boundary and both sides get an orderly TCP shutdown.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use turnout_core::SlotName;

/// After the drain deadline, how long the close handshake may take before the tunnel is
/// dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A WebSocket Close frame from a server: status 1001 (going away) and a reason.
const WS_CLOSE_GOING_AWAY: &[u8] = b"\x88\x1b\x03\xe9turnout: slot is not live";

/// When a tunnel must end.
pub(crate) struct DrainWhen {
    /// The slot the tunnel's upstream belongs to.
    pub(crate) slot: SlotName,
    /// The live slot, as it changes.
    pub(crate) live: watch::Receiver<Option<SlotName>>,
    /// How long the tunnel may go on once its slot is not live.
    pub(crate) after: Duration,
    /// The router's stop signal: drain at once.
    pub(crate) stop: watch::Receiver<bool>,
    /// How long the tunnel may go on once the router stops: zero for a plain stop; on a
    /// handover to a new router process, `upgrade_drain` (within the grace period), so
    /// that a reload or an upgrade does not cut every WebSocket at once.
    pub(crate) on_stop: std::sync::Arc<dyn Fn() -> Duration + Send + Sync>,
}

/// Relays until both sides are done; `early` holds bytes the upstream sent right after
/// its 101 response, which go to the client first.
pub(crate) async fn relay<C, U>(
    client: C,
    upstream: U,
    early: bytes::Bytes,
    websocket: bool,
    when: DrainWhen,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let DrainWhen {
        slot,
        live,
        after: drain,
        mut stop,
        on_stop,
    } = when;
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);

    // Client to upstream: a plain copy; EOF is passed on as a shutdown.
    let up = async {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await;
    };

    // Upstream to client, frame-aware so that a Close frame can be put between frames.
    let down = async {
        let mut frames = FrameTracker::default();
        if !early.is_empty() {
            // Flushed: a TLS client stream may otherwise keep the records in its session.
            if cw.write_all(&early).await.is_err() || cw.flush().await.is_err() {
                return false;
            }
            frames.feed(&early);
        }
        let mut buf = vec![0u8; 16 * 1024];
        // Drain when the slot has not been live for `drain`, or at once when the router
        // stops (a graceful stop closes WebSockets with 1001 too).
        let deadline = async {
            tokio::select! {
                () = drain_deadline(live, slot, drain) => {}
                () = async {
                    let _ = stop.wait_for(|s| *s).await;
                    tokio::time::sleep(on_stop()).await;
                } => {}
            }
        };
        tokio::pin!(deadline);
        let mut draining = false;
        // Once draining, a frame boundary must come within CLOSE_GRACE; an upstream
        // stalled mid-frame is cut off then.
        let cut = tokio::time::sleep(Duration::from_secs(86400 * 365));
        tokio::pin!(cut);
        loop {
            if draining && (!websocket || frames.at_boundary()) {
                if websocket {
                    let _ = cw.write_all(WS_CLOSE_GOING_AWAY).await;
                }
                let _ = cw.shutdown().await;
                tracing::info!(slot = %slot, "upgraded connection closed: its slot is no longer live and the drain time is over");
                return true;
            }
            tokio::select! {
                read = ur.read(&mut buf) => match read {
                    Ok(0) | Err(_) => {
                        let _ = cw.shutdown().await;
                        return false;
                    }
                    Ok(n) => {
                        if cw.write_all(&buf[..n]).await.is_err() || cw.flush().await.is_err() {
                            return false;
                        }
                        frames.feed(&buf[..n]);
                    }
                },
                () = &mut deadline, if !draining => {
                    draining = true;
                    cut.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
                }
                () = &mut cut, if draining => {
                    let _ = cw.shutdown().await;
                    tracing::info!(slot = %slot, "upgraded connection cut off: no frame boundary within the close grace");
                    return true;
                }
            }
        }
    };

    tokio::pin!(up);
    tokio::pin!(down);
    tokio::select! {
        () = &mut up => {
            // The client is done sending; let the upstream finish its answer.
            let _ = (&mut down).await;
        }
        _ = &mut down => {
            // Drained: let the client's Close reply reach the upstream. Upstream gone:
            // let the client finish. Either way, not forever.
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut up).await;
        }
    }
}

/// Resolves once `slot` has been not live for `drain` without interruption.
async fn drain_deadline(
    mut live: watch::Receiver<Option<SlotName>>,
    slot: SlotName,
    drain: Duration,
) {
    loop {
        // Wait until the slot is not live.
        let gone = live.wait_for(|l| *l != Some(slot)).await.is_ok();
        if !gone {
            return std::future::pending().await;
        }
        let back = async { live.wait_for(|l| *l == Some(slot)).await.is_ok() };
        tokio::select! {
            () = tokio::time::sleep(drain) => return,
            back = back => {
                if !back {
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// Follows WebSocket frame boundaries in a byte stream (RFC 6455 §5.2).
#[derive(Default, Debug)]
struct FrameTracker {
    header: [u8; 14],
    header_len: usize,
    remaining: u64,
}

impl FrameTracker {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            self.header[self.header_len] = data[0];
            self.header_len += 1;
            data = &data[1..];
            if let Some((len, payload)) = parse_header(&self.header[..self.header_len]) {
                if self.header_len == len {
                    self.remaining = payload;
                    self.header_len = 0;
                }
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.header_len == 0
    }
}

/// The length of a frame header and its payload length, once enough bytes are known.
fn parse_header(h: &[u8]) -> Option<(usize, u64)> {
    if h.len() < 2 {
        return None;
    }
    let masked = h[1] & 0x80 != 0;
    let (ext, short) = match h[1] & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let len = 2 + ext + if masked { 4 } else { 0 };
    if h.len() < 2 + ext {
        return None;
    }
    let payload = short.unwrap_or_else(|| {
        h[2..2 + ext]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    });
    Some((len, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_tracker_finds_boundaries_across_reads() {
        let mut frame = vec![0x81, 126, 0x01, 0x00]; // text, 256 bytes
        frame.extend(std::iter::repeat_n(b'a', 256));
        frame.extend([0x82, 0x85, 1, 2, 3, 4, 9, 9, 9, 9, 9]); // masked binary, 5 bytes
        frame.extend([0x89, 0x00]); // ping
                                    // Feed in every split size: the tracker is at a boundary exactly at frame ends.
        let ends = [260usize, 271, 273];
        for chunk in 1..=7 {
            let mut t = FrameTracker::default();
            let mut pos = 0;
            for piece in frame.chunks(chunk) {
                t.feed(piece);
                pos += piece.len();
                let expect = ends.contains(&pos) || pos == 0;
                assert_eq!(t.at_boundary(), expect, "chunk {chunk} pos {pos}");
            }
        }
    }

    #[test]
    fn close_frame_is_well_formed() {
        assert_eq!(WS_CLOSE_GOING_AWAY[0], 0x88);
        assert_eq!(
            usize::from(WS_CLOSE_GOING_AWAY[1]),
            WS_CLOSE_GOING_AWAY.len() - 2
        );
        assert_eq!(
            u16::from_be_bytes([WS_CLOSE_GOING_AWAY[2], WS_CLOSE_GOING_AWAY[3]]),
            1001
        );
    }
}
