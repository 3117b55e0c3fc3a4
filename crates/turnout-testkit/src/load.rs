//! Steady load through the data plane: a few keep-alive clients, each sending one request
//! after another at a bounded rate, recording every answer (or failure) with its times and
//! the version that answered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::client::{HttpClient, Reply};

/// No load runs longer than this, even if never stopped.
const MAX_RUN: Duration = Duration::from_secs(180);
/// A request that takes longer than this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One request as a user saw it.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When the client started sending it.
    pub sent: Instant,
    /// When the answer (or the failure) came.
    pub received: Instant,
    /// The status; 0 when no response came (connection refused, reset, timeout).
    pub status: u16,
    /// Who answered: the `version` field of a JSON body, else the `x-backend` header.
    pub version: Option<String>,
    /// What went wrong, when no response came.
    pub error: Option<String>,
}

impl Sample {
    /// A response that is not a success: no response at all, or a 5xx.
    pub fn failed(&self) -> bool {
        self.status == 0 || self.status >= 500
    }

    /// Whether `version` answered.
    pub fn from(&self, version: &str) -> bool {
        self.version.as_deref() == Some(version)
    }
}

/// Clients sending requests until [`Load::stop`] (or for at most three minutes).
pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// `clients` keep-alive HTTP/1.1 connections to `addr` sending `GET path`, each at
    /// most one request per `pace`. A client whose connection fails records the failure
    /// and opens a new one.
    pub fn start(addr: &str, path: &str, clients: usize, pace: Duration) -> Load {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let begun = Instant::now();
        let tasks = (0..clients)
            .map(|_| {
                let (addr, path) = (addr.to_owned(), path.to_owned());
                let (samples, stop) = (samples.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(pace);
                    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    let mut client: Option<HttpClient> = None;
                    while !stop.load(Ordering::SeqCst) && begun.elapsed() < MAX_RUN {
                        tick.tick().await;
                        let sent = Instant::now();
                        let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
                            if client.is_none() {
                                client = Some(HttpClient::http1(&addr).await?);
                            }
                            match client.as_mut() {
                                Some(c) => c.get(&path).await,
                                None => anyhow::bail!("no connection"),
                            }
                        })
                        .await
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 10s")));
                        // A client honours `Connection: close`, as every HTTP/1.1 client
                        // does: the next request goes on a new connection.
                        if result.as_ref().is_ok_and(|r| {
                            r.headers
                                .get("connection")
                                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
                        }) {
                            client = None;
                        }
                        let sample = match result {
                            Ok(reply) => Sample {
                                sent,
                                received: Instant::now(),
                                status: reply.status.as_u16(),
                                version: version_of(&reply),
                                error: None,
                            },
                            Err(e) => {
                                client = None;
                                Sample {
                                    sent,
                                    received: Instant::now(),
                                    status: 0,
                                    version: None,
                                    error: Some(format!("{e:#}")),
                                }
                            }
                        };
                        samples
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(sample);
                    }
                })
            })
            .collect();
        Load {
            samples,
            stop,
            tasks,
        }
    }

    /// What was recorded so far, in the order the answers came.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many requests were answered (or failed) so far.
    pub fn count(&self) -> usize {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// How many answers came from `version` so far.
    pub fn count_from(&self, version: &str) -> usize {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.from(version))
            .count()
    }

    /// Stops the clients (each finishes its request in flight) and returns every sample.
    pub async fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn version_of(reply: &Reply) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v.get("version")?.as_str().map(str::to_owned))
        .or_else(|| {
            reply
                .headers
                .get("x-backend")
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

/// A short account of the failed samples, for assertion messages.
pub fn describe_failures(samples: &[Sample]) -> String {
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.failed()).collect();
    let first = failed.first().map(|s| s.sent);
    let lines: Vec<String> = failed
        .iter()
        .take(10)
        .map(|s| {
            format!(
                "  +{:?} status {} {}",
                first.map(|f| s.sent.duration_since(f)).unwrap_or_default(),
                s.status,
                s.error.as_deref().unwrap_or("")
            )
        })
        .collect();
    format!(
        "{} of {} requests failed; the first ones:\n{}",
        failed.len(),
        samples.len(),
        lines.join("\n")
    )
}
