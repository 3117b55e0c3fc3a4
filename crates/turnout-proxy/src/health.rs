//! Active health checks: one task per upstream, which ends when the upstream leaves the
//! routing table.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::broadcast;

use crate::upstream::Upstream;

/// An upstream's health changed.
#[derive(Clone, Debug)]
pub struct HealthEvent {
    /// Its slot.
    pub slot: turnout_core::SlotName,
    /// Its address.
    pub addr: String,
    /// The new state.
    pub healthy: bool,
    /// Why (the failed check, or "check passed").
    pub reason: String,
}

/// How upstreams are checked.
#[derive(Clone, Debug)]
pub struct HealthCheck {
    /// `Some(path)`: an HTTP GET that must answer 2xx or 3xx; `None`: a TCP connect.
    pub path: Option<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Consecutive passes to become healthy.
    pub healthy: u32,
    /// Consecutive failures to become unhealthy.
    pub unhealthy: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy: 2,
            unhealthy: 2,
        }
    }
}

pub(crate) fn spawn(
    upstream: &Arc<Upstream>,
    check: HealthCheck,
    idle_timeout: Duration,
    events: broadcast::Sender<HealthEvent>,
) {
    let weak: Weak<Upstream> = Arc::downgrade(upstream);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(check.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(up) = weak.upgrade() else { return };
            let result = tokio::time::timeout(
                check.timeout,
                probe(&up, check.path.as_deref(), check.timeout),
            )
            .await;
            let pass = matches!(result, Ok(Ok(())));
            if let Some(now) = up.record_check(pass, check.healthy, check.unhealthy) {
                let reason = match result {
                    Ok(Ok(())) => "check passed".to_owned(),
                    Ok(Err(e)) => e,
                    Err(_) => format!("no answer within {} ms", check.timeout.as_millis()),
                };
                tracing::info!(slot = %up.slot, upstream = %up.addr, healthy = now, reason = %reason, "upstream health changed");
                let _ = events.send(HealthEvent {
                    slot: up.slot,
                    addr: up.addr.clone(),
                    healthy: now,
                    reason,
                });
            }
            up.reap_idle(idle_timeout);
        }
    });
}

async fn probe(up: &Upstream, path: Option<&str>, timeout: Duration) -> Result<(), String> {
    let stream = up
        .connect_stream(timeout)
        .await
        .map_err(|e| e.to_string())?;
    let Some(path) = path else { return Ok(()) };
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(header::HOST, up.addr.as_str())
        .header(header::USER_AGENT, "turnout-health-check")
        .header(header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("bad health check request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("GET {path} failed: {e}"))?;
    let status = resp.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("GET {path} answered {status}"))
    }
}
