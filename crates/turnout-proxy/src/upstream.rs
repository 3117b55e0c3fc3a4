//! One upstream instance: its address, its health, and its pool of idle keep-alive
//! connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use turnout_core::SlotName;

use crate::client::{ConnHome, RawConn};
use crate::error::{Failed, ProxyError};
use crate::tls::{UpstreamStream, UpstreamTls};

/// A sender on a pooled HTTP/1.1 connection to an upstream.
pub(crate) type Sender = http1::SendRequest<crate::request_body::RequestBody>;

/// One upstream instance of a slot.
pub struct Upstream {
    /// The slot it belongs to.
    pub slot: SlotName,
    /// The address as configured (`host:port`).
    pub addr: String,
    /// The address parsed once, when it is numeric (the common case); names are resolved
    /// at each new connection.
    resolved: Option<SocketAddr>,
    healthy: AtomicBool,
    /// Consecutive check passes / failures (written by the health checker and by passive
    /// ejection only).
    passes: AtomicU32,
    fails: AtomicU32,
    /// Whether any check has run yet: the first result decides the state at once.
    checked: AtomicBool,
    idle: Mutex<Vec<IdleConn>>,
    raw_idle: Mutex<Vec<(RawConn, Instant)>>,
    max_idle: usize,
    /// TLS to the upstream (`[upstream] tls`), or plain TCP.
    tls: Option<UpstreamTls>,
}

struct IdleConn {
    sender: Sender,
    since: Instant,
}

impl Upstream {
    pub(crate) fn new(slot: SlotName, addr: String, max_idle: usize) -> Upstream {
        Upstream {
            slot,
            resolved: addr.parse().ok(),
            addr,
            // Healthy until the first check says otherwise, so that a router starting in
            // front of a running service serves at once.
            healthy: AtomicBool::new(true),
            passes: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            checked: AtomicBool::new(false),
            idle: Mutex::new(Vec::new()),
            raw_idle: Mutex::new(Vec::new()),
            max_idle,
            tls: None,
        }
    }

    /// Unhealthy until its health check passes (`[health] healthy` times in a row).
    pub(crate) fn hold_until_checked(&self) {
        self.healthy.store(false, Ordering::Relaxed);
    }

    /// Speaks TLS to the upstream when `tls` is set.
    pub(crate) fn with_tls(mut self, tls: Option<UpstreamTls>) -> Upstream {
        self.tls = tls;
        self
    }

    /// Whether the upstream takes traffic now.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether its health is known: a check has run (or a connection was refused) since
    /// it joined the routing table.
    pub fn is_checked(&self) -> bool {
        self.checked.load(Ordering::Relaxed)
    }

    /// Records an active check result; returns `Some(new_state)` when the state changed.
    pub(crate) fn record_check(&self, pass: bool, rise: u32, fall: u32) -> Option<bool> {
        let first = !self.checked.swap(true, Ordering::Relaxed);
        let (streak, other) = if pass {
            (&self.passes, &self.fails)
        } else {
            (&self.fails, &self.passes)
        };
        other.store(0, Ordering::Relaxed);
        let n = streak.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let was = self.is_healthy();
        let now = if first {
            pass
        } else if pass && !was {
            n >= rise
        } else if !pass && was {
            n < fall
        } else {
            was
        };
        (now != was).then(|| {
            self.healthy.store(now, Ordering::Relaxed);
            if !now {
                self.drain_idle();
            }
            now
        })
    }

    /// Passive ejection: the upstream refused a connection. It stays out until the active
    /// health check has seen it pass `rise` times in a row.
    pub(crate) fn eject(&self) -> bool {
        self.passes.store(0, Ordering::Relaxed);
        self.checked.store(true, Ordering::Relaxed);
        self.drain_idle();
        self.healthy.swap(false, Ordering::Relaxed)
    }

    /// An idle pooled connection, most recently used first.
    pub(crate) fn checkout(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Gives a connection whose last response was read to the end back to the pool.
    pub(crate) fn checkin(&self, sender: Sender) {
        if sender.is_closed() || !self.is_healthy() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(IdleConn {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// An idle connection of the hand-written client, most recently used first, with the
    /// instant it went idle.
    pub(crate) fn checkout_raw(&self) -> Option<(RawConn, Instant)> {
        self.raw_idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
    }

    /// Gives a connection of the hand-written client back to the pool.
    pub(crate) fn checkin_raw(&self, conn: RawConn) {
        if !self.is_healthy() {
            return;
        }
        let mut idle = self.raw_idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push((conn, Instant::now()));
        }
    }

    /// Closes pooled connections idle for longer than `max_idle_time`, or closed by the
    /// upstream.
    pub(crate) fn reap_idle(&self, max_idle_time: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|c| !c.sender.is_closed() && c.since.elapsed() < max_idle_time);
        drop(idle);
        let mut raw = self.raw_idle.lock().unwrap_or_else(|p| p.into_inner());
        raw.retain(|(c, since)| since.elapsed() < max_idle_time && c.looks_alive());
    }

    fn drain_idle(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.raw_idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Opens a TCP connection with TCP_NODELAY, within `timeout`.
    pub(crate) async fn connect_tcp(&self, timeout: Duration) -> Result<TcpStream, ProxyError> {
        let connect = async {
            match self.resolved {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect(self.addr.as_str()).await,
            }
        };
        let stream = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(ProxyError::Connect {
                    addr: self.addr.clone(),
                    source,
                })
            }
            Err(_) => {
                return Err(ProxyError::ConnectTimeout {
                    addr: self.addr.clone(),
                })
            }
        };
        // Best effort: a socket that refuses the option still works.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Opens a connection ready for HTTP: TCP, then the TLS handshake when the upstream
    /// speaks TLS, all within `timeout`.
    pub(crate) async fn connect_stream(
        &self,
        timeout: Duration,
    ) -> Result<UpstreamStream, ProxyError> {
        let Some(tls) = &self.tls else {
            return Ok(UpstreamStream::Plain(self.connect_tcp(timeout).await?));
        };
        let start = Instant::now();
        let tcp = self.connect_tcp(timeout).await?;
        let left = timeout.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, tls.connect(&self.addr, tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(source)) => Err(ProxyError::TlsHandshake {
                addr: self.addr.clone(),
                source,
            }),
            Err(_) => Err(ProxyError::ConnectTimeout {
                addr: self.addr.clone(),
            }),
        }
    }

    /// Opens a connection for a live request ([`Upstream::connect_stream`]); a refused
    /// connection ejects the upstream until its health check passes — the one failure
    /// that does (local trouble such as running out of file descriptors must not).
    pub(crate) async fn open(&self, timeout: Duration) -> Result<UpstreamStream, Failed> {
        match self.connect_stream(timeout).await {
            Ok(stream) => Ok(stream),
            Err(e) => {
                if e.is_refused() && self.eject() {
                    tracing::warn!(slot = %self.slot, upstream = %self.addr, error = %e, "upstream ejected until its health check passes");
                }
                Err(e.into())
            }
        }
    }

    /// Opens a new HTTP/1.1 connection for hyper's client ([`Upstream::open`]); its driver
    /// runs on its own task.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<Sender, Failed> {
        let stream = self.open(timeout).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| {
                Failed::from(ProxyError::Handshake {
                    addr: self.addr.clone(),
                    source,
                })
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("slot", &self.slot)
            .field("addr", &self.addr)
            .field("healthy", &self.is_healthy())
            .finish()
    }
}

/// An upstream shared by the routing table, the health checker and in-flight requests.
pub type UpstreamRef = Arc<Upstream>;

/// A live response's connection goes back to its upstream's pool.
impl ConnHome for UpstreamRef {
    fn checkin(&self, conn: RawConn) {
        self.checkin_raw(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_thresholds() {
        // (checks, expected health after each), rise = 2, fall = 3
        let cases: &[(&[bool], &[bool])] = &[
            // The first result decides at once.
            (&[false], &[false]),
            (&[true], &[true]),
            // Then it takes `fall` failures in a row to go down...
            (
                &[true, false, false, true, false, false, false],
                &[true, true, true, true, true, true, false],
            ),
            // ...and `rise` passes in a row to come back.
            (
                &[false, true, false, true, true],
                &[false, false, false, false, true],
            ),
        ];
        for (checks, expected) in cases {
            let u = Upstream::new(SlotName::Blue, "127.0.0.1:1".into(), 4);
            let got: Vec<bool> = checks
                .iter()
                .map(|pass| {
                    u.record_check(*pass, 2, 3);
                    u.is_healthy()
                })
                .collect();
            assert_eq!(&got, expected, "checks {checks:?}");
        }
    }

    #[test]
    fn ejection_needs_rise_passes_to_come_back() {
        let u = Upstream::new(SlotName::Green, "127.0.0.1:1".into(), 4);
        u.record_check(true, 2, 2);
        assert!(u.eject());
        assert!(!u.is_healthy());
        assert_eq!(u.record_check(true, 2, 2), None);
        assert_eq!(u.record_check(true, 2, 2), Some(true));
    }
}
