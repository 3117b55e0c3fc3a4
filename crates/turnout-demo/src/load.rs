//! Steady load on the data plane during the demo, counted per release.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Load clients, each sending one request per [`LOAD_PERIOD`]: about 100 requests/s.
pub const LOAD_CLIENTS: usize = 4;
/// How often each load client sends a request.
pub const LOAD_PERIOD: Duration = Duration::from_millis(40);
/// A load request with no answer within this counts as failed.
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the load saw during one release.
#[derive(Debug, Clone, Default)]
pub struct PhaseLoad {
    /// Requests sent.
    pub requests: u64,
    /// Answered with a 2xx.
    pub ok: u64,
    /// Failed after some version had answered (errors users of a live service see).
    pub failed: u64,
    /// Failed while no version was live yet (the router answers 503: nothing to route to).
    pub before_live: u64,
    /// Failures by kind (`500`, `connection error`, ...).
    pub kinds: BTreeMap<String, u64>,
    /// Which versions answered, in order of first answer.
    pub versions: Vec<(String, u64)>,
    /// When the first failure (after some version had answered) was seen.
    pub first_error: Option<Instant>,
    /// When the last one was seen.
    pub last_error: Option<Instant>,
}

impl PhaseLoad {
    /// One line for people: requests, failures by kind, the versions that answered.
    pub fn describe(&self) -> String {
        let mut s = format!("load: {} requests, {} failed", self.requests, self.failed);
        if self.failed > 0 {
            let kinds: Vec<String> = self
                .kinds
                .iter()
                .map(|(k, n)| format!("{n}× {k}"))
                .collect();
            s.push_str(&format!(" ({})", kinds.join(", ")));
        }
        if self.before_live > 0 {
            s.push_str(&format!(
                ", {} turned away before any version was live (503: nothing to route to yet)",
                self.before_live
            ));
        }
        let by: Vec<String> = self
            .versions
            .iter()
            .map(|(v, n)| format!("{v} ({n})"))
            .collect();
        if by.is_empty() {
            s.push_str("; no version answered");
        } else {
            s.push_str(&format!("; answered by {}", by.join(", ")));
        }
        s
    }
}

#[derive(Default)]
struct LoadState {
    phases: Vec<PhaseLoad>,
    /// Some version has answered.
    served: bool,
    /// A release has started ([`Load::next_phase`]).
    counting: bool,
}

/// Steady load on the data plane: keep-alive clients sending `GET /api/items` at a fixed
/// pace, counted per release.
pub struct Load {
    state: Arc<Mutex<LoadState>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts [`LOAD_CLIENTS`] clients against the data plane at `addr` (`host:port`), on
    /// the current tokio runtime.
    pub fn start(addr: &str) -> Load {
        let state = Arc::new(Mutex::new(LoadState {
            phases: vec![PhaseLoad::default()],
            ..LoadState::default()
        }));
        let tasks = (0..LOAD_CLIENTS)
            .map(|i| {
                let state = state.clone();
                let addr = addr.to_owned();
                tokio::spawn(async move {
                    // Spread the clients over the period.
                    let offset = LOAD_PERIOD * i as u32 / LOAD_CLIENTS as u32;
                    tokio::time::sleep(offset).await;
                    let mut tick = tokio::time::interval(LOAD_PERIOD);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut conn = None;
                    loop {
                        tick.tick().await;
                        let result = tokio::time::timeout(LOAD_TIMEOUT, get(&mut conn, &addr))
                            .await
                            .unwrap_or_else(|_| Err("timeout".into()));
                        if result.is_err() {
                            conn = None;
                        }
                        record(&state, result);
                    }
                })
            })
            .collect();
        Load { state, tasks }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LoadState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts counting a new release. The first release also counts the few requests
    /// sent before it started.
    pub fn next_phase(&self) {
        let mut s = self.lock();
        if s.counting {
            s.phases.push(PhaseLoad::default());
        }
        s.counting = true;
    }

    /// What the current release saw so far.
    pub fn phase(&self) -> PhaseLoad {
        self.lock().phases.last().cloned().unwrap_or_default()
    }

    /// Stops the clients (dropping the load does too).
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

fn record(state: &Mutex<LoadState>, result: Result<(u16, Option<String>), String>) {
    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
    let served = s.served;
    let Some(p) = s.phases.last_mut() else {
        return;
    };
    p.requests += 1;
    let failure = match result {
        Ok((status, version)) if (200..300).contains(&status) => {
            p.ok += 1;
            let version = version.unwrap_or_else(|| "an unknown version".into());
            match p.versions.iter_mut().find(|(v, _)| *v == version) {
                Some((_, n)) => *n += 1,
                None => p.versions.push((version, 1)),
            }
            s.served = true;
            return;
        }
        Ok((status, _)) => status.to_string(),
        Err(e) => e,
    };
    if !served {
        p.before_live += 1;
        return;
    }
    let now = Instant::now();
    p.failed += 1;
    *p.kinds.entry(failure).or_default() += 1;
    p.first_error.get_or_insert(now);
    p.last_error = Some(now);
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One `GET /api/items` on the kept connection (a new one if there is none): the status
/// and, for a success, the version that answered.
async fn get(conn: &mut Option<Sender>, addr: &str) -> Result<(u16, Option<String>), String> {
    if conn.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|_| "connection error".to_owned())?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| "connection error".to_owned())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *conn = Some(sender);
    }
    let Some(sender) = conn.as_mut() else {
        return Err("connection error".into());
    };
    let broken = |_| "connection error".to_owned();
    sender.ready().await.map_err(broken)?;
    let req = Request::get("/api/items")
        .header("host", addr)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(broken)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|_| "connection error".to_owned())?
        .to_bytes();
    let version = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("version")?.as_str().map(str::to_owned));
    Ok((status, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_failures_before_anything_was_live_are_counted_apart() {
        let state = Mutex::new(LoadState {
            phases: vec![PhaseLoad::default()],
            ..LoadState::default()
        });
        record(&state, Ok((503, None)));
        record(&state, Ok((200, Some("v1".into()))));
        record(&state, Ok((500, None)));
        record(&state, Err("connection error".into()));
        record(&state, Ok((200, Some("v2".into()))));
        let s = state.lock().unwrap();
        let p = &s.phases[0];
        assert_eq!((p.requests, p.ok, p.failed, p.before_live), (5, 2, 2, 1));
        assert_eq!(
            p.describe(),
            "load: 5 requests, 2 failed (1× 500, 1× connection error), 1 turned away before any version was live (503: nothing to route to yet); answered by v1 (1), v2 (1)"
        );
    }
}
