//! Traffic shadowing: the mirror workers that send copies of tapped requests to the
//! candidate (the tap on the live path is `tap.rs`).
//!
//! Mirror jobs are taken from the queue by one dispatcher task per shadow, which runs at
//! most `concurrency` of them at a time, each in a task of its own: the copy goes to an
//! upstream of the target slot (round robin over healthy ones, on that upstream's pool of
//! idle connections or a new one), with `X-Turnout-Shadow: 1` and `Content-Length`
//! framing, within `timeout`; for the `noise_sample` share an identical copy goes to the
//! slot that answered the live request, at the same time. A connection goes back to its
//! pool only when its response was read exactly to the end, as on the live path. The
//! copies are counted in no slot's statistics.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Semaphore};
use turnout_core::SlotName;
use turnout_shadow::{RequestCopy, ResponseCopy, Sample};

use crate::client::{ConnHome, Head, RawConn};
use crate::table::Table;
use crate::tap::{
    bump, cut_response, Capture, CaptureHandle, Job, RespRec, Shadow, ShadowCounters, ShadowHandle,
    ShadowOptions, TapState, DELAY_PROBE_EVERY, SHADOW_HEADER,
};

/// What the mirror needs of the data plane (implemented by its shared state): the taps,
/// the routing table, the connect timeout and the mirror's runtime. The mirror knows
/// nothing else of it.
pub(crate) trait MirrorHost: Send + Sync + 'static {
    /// The tap state.
    fn taps(&self) -> &TapState;
    /// The routing table in force.
    fn table(&self) -> arc_swap::Guard<Arc<Table>>;
    /// `[upstream] connect_timeout`.
    fn connect_timeout(&self) -> Duration;
    /// The mirror's runtime, started on first use ([`MirrorRuntime::start`]).
    fn runtime(&self) -> &MirrorRuntime;
}

/// The mirror's own runtime: one OS thread at the lowest CPU priority the system allows
/// (`SCHED_IDLE`, else nice 19), running a current-thread Tokio runtime, with a pool of
/// connections of its own. Copies run there, so that under load the live requests get
/// the CPU first and copies are what gives way (the queue fills, and further copies are
/// dropped and counted). Its connections never serve live requests, and live ones never
/// serve copies: each is bound to the runtime that made it.
pub(crate) struct MirrorRuntime {
    pub(crate) handle: tokio::runtime::Handle,
    pub(crate) pool: Arc<MirrorPool>,
}

/// Where a copy's connection goes after its response: the mirror's own pool.
pub(crate) struct MirrorHome(Arc<MirrorPool>, Arc<str>);

impl ConnHome for MirrorHome {
    fn checkin(&self, conn: RawConn) {
        self.0.checkin(&self.1, conn)
    }
}

/// Idle keep-alive connections of the mirror, by upstream address.
#[derive(Default)]
pub(crate) struct MirrorPool {
    idle: Mutex<std::collections::HashMap<Arc<str>, Vec<RawConn>>>,
}

/// Idle connections kept per upstream by the mirror.
const MIRROR_IDLE: usize = 64;

impl MirrorPool {
    fn checkout(&self, addr: &str) -> Option<RawConn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.get_mut(addr).and_then(Vec::pop)
    }

    pub(crate) fn checkin(&self, addr: &Arc<str>, conn: RawConn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.entry(addr.clone()).or_default();
        if conns.len() < MIRROR_IDLE {
            conns.push(conn);
        }
    }
}

impl MirrorRuntime {
    /// Starts the mirror's thread and runtime.
    pub(crate) fn start() -> MirrorRuntime {
        {
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
            .name("turnout-mirror".into())
            .spawn(move || {
                lower_thread_priority();
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = tx.send(Some(rt.handle().clone()));
                        rt.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start the mirror runtime; copies run on the data plane's");
                        let _ = tx.send(None);
                    }
                }
            });
            let handle = spawned
                .ok()
                .and_then(|_| rx.recv().ok().flatten())
                .unwrap_or_else(tokio::runtime::Handle::current);
            MirrorRuntime {
                handle,
                pool: Arc::new(MirrorPool::default()),
            }
        }
    }
}

/// Puts the calling thread at the lowest CPU priority: `SCHED_IDLE` (it runs only when a
/// core has nothing else to do), else nice 19. Best effort, through `chrt` and `renice`
/// (util-linux), so that no unsafe code is needed; a failure is logged and ignored. For
/// side work that must never take CPU from live requests (mirror copies, comparisons).
pub fn lower_thread_priority() {
    use std::process::{Command, Stdio};
    let Some(tid) = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    else {
        tracing::debug!("no /proc/thread-self: the thread keeps its priority");
        return;
    };
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if run("chrt", &["--idle", "-p", "0", &tid]) || run("renice", &["-n", "19", "-p", &tid]) {
        tracing::debug!(tid = %tid, "side-work thread at idle priority");
    } else {
        tracing::warn!(tid = %tid, "could not lower the priority of a side-work thread (chrt and renice failed); it competes with live requests for CPU");
    }
}

/// Starts a shadow (replacing any running one).
pub(crate) fn start_shadow<H: MirrorHost>(inner: &Arc<H>, opts: ShadowOptions) -> ShadowHandle {
    let queue = opts.queue.max(1);
    let (jobs_tx, jobs_rx) = mpsc::channel(queue);
    // Room for every job queued or in flight: a copy that was sent is not lost for want
    // of room when many end at once (with `queue = 1`, 32 copies can end together).
    let (samples_tx, samples_rx) = mpsc::channel(queue + opts.concurrency.max(1));
    let counters = Arc::new(ShadowCounters::default());
    let shadow = Arc::new(Shadow {
        opts,
        counters: counters.clone(),
        jobs: jobs_tx,
        samples: samples_tx.clone(),
    });
    inner.runtime().handle.spawn(dispatch(
        Arc::downgrade(inner),
        Arc::downgrade(&shadow),
        shadow.opts.clone(),
        jobs_rx,
        samples_tx,
        counters.clone(),
    ));
    let probed = Arc::downgrade(&shadow);
    inner.taps().update(|t| t.shadow = Some(shadow));
    // After the tap has it: the probe runs while this shadow is the data plane's.
    inner
        .runtime()
        .handle
        .spawn(probe_delay(Arc::downgrade(inner), probed, counters.clone()));
    ShadowHandle {
        samples: samples_rx,
        counters,
    }
}

pub(crate) fn stop_shadow<H: MirrorHost>(inner: &H) {
    inner.taps().update(|t| t.shadow = None);
}

pub(crate) fn start_capture<H: MirrorHost>(
    inner: &H,
    sample: f64,
    max_body: usize,
    queue: usize,
) -> CaptureHandle {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let capture = Arc::new(Capture {
        sample,
        max_body,
        tx,
        dropped: dropped.clone(),
    });
    inner.taps().update(|t| t.captures.push(capture));
    CaptureHandle {
        exchanges: rx,
        dropped,
    }
}

/// Takes jobs off the queue and runs up to `concurrency` at a time. Ends when the queue
/// is closed and empty (the shadow was stopped or replaced), or at once when the handle
/// was dropped (the jobs still queued are dropped with it).
async fn dispatch<H: MirrorHost>(
    inner: Weak<H>,
    shadow: Weak<Shadow>,
    opts: ShadowOptions,
    mut jobs: mpsc::Receiver<Job>,
    samples: mpsc::Sender<Sample>,
    counters: Arc<ShadowCounters>,
) {
    let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let opts = Arc::new(opts);
    loop {
        let job = tokio::select! {
            biased;
            () = samples.closed() => break,
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        let permit = tokio::select! {
            biased;
            () = samples.closed() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let (opts, samples, counters) = (opts.clone(), samples.clone(), counters.clone());
        tokio::spawn(async move {
            let sample = run_job(&*strong, &opts, job).await;
            drop(strong);
            if sample.candidate.is_err() {
                bump(&counters.failed);
            }
            if let Err(TrySendError::Full(_)) = samples.try_send(sample) {
                bump(&counters.samples_dropped);
            }
            drop(permit);
        });
    }
    // The handle was dropped: no more copies.
    if let Some(inner) = inner.upgrade() {
        inner.taps().remove_shadow(&shadow);
    }
}

/// Measures, while `shadow` is the data plane's shadow, how late the mirror's thread
/// wakes up from a timer (into [`ShadowCounters::delay`]). It ends when the shadow is
/// stopped or replaced (requests still in flight may hold the old one for a while).
async fn probe_delay<H: MirrorHost>(
    inner: Weak<H>,
    shadow: Weak<Shadow>,
    counters: Arc<ShadowCounters>,
) {
    // The timer's own granularity (a millisecond) is not the thread's delay.
    let slack = Duration::from_millis(1);
    let current = || {
        inner
            .upgrade()
            .is_some_and(|inner| inner.taps().is_current_shadow(&shadow))
    };
    loop {
        let due = Instant::now() + DELAY_PROBE_EVERY;
        tokio::time::sleep_until(due.into()).await;
        let late = Instant::now().saturating_duration_since(due);
        if !current() {
            return;
        }
        counters.delay.record(late.saturating_sub(slack));
    }
}

/// Sends the copy (and the noise copy) and makes the sample.
async fn run_job<H: MirrorHost>(inner: &H, opts: &ShadowOptions, job: Job) -> Sample {
    let wire = encode_copy(&job.request);
    let head_request = job.request.method == "HEAD";
    let resend = matches!(
        job.request.method.as_str(),
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    );
    let copy = |slot| send_copy(inner, slot, &wire, head_request, resend, opts);
    let noise = async {
        if job.noise {
            Some(copy(job.live_slot).await)
        } else {
            None
        }
    };
    let (candidate, noise) = tokio::join!(copy(opts.target), noise);
    Sample {
        request: job.request,
        live: job.live,
        candidate,
        noise,
    }
}

/// The copy as sent: the request as forwarded, `X-Turnout-Shadow: 1` added, the body
/// framed by `Content-Length`.
pub(crate) fn encode_copy(req: &RequestCopy) -> Bytes {
    let mut out = BytesMut::with_capacity(256 + req.body.len());
    out.extend_from_slice(req.method.as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut length = false;
    for (name, value) in &req.headers {
        if name == "transfer-encoding" || name == SHADOW_HEADER {
            continue;
        }
        length |= name == "content-length";
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !length && !req.body.is_empty() {
        out.extend_from_slice(format!("content-length: {}\r\n", req.body.len()).as_bytes());
    }
    out.extend_from_slice(SHADOW_HEADER.as_bytes());
    out.extend_from_slice(b": 1\r\n\r\n");
    out.extend_from_slice(&req.body);
    out.freeze()
}

/// One copy to one slot, within `timeout`.
async fn send_copy<H: MirrorHost>(
    inner: &H,
    slot: SlotName,
    wire: &[u8],
    head_request: bool,
    resend: bool,
    opts: &ShadowOptions,
) -> Result<ResponseCopy, String> {
    let pool = inner.table().slot(slot).clone();
    let Some(up) = pool.pick(None).cloned() else {
        return Err(format!("no healthy upstream in slot {slot}"));
    };
    let timeout = opts.timeout;
    let max_body = opts.max_body;
    let rt = inner.runtime();
    let addr: Arc<str> = Arc::from(up.addr.as_str());
    let home = || MirrorHome(rt.pool.clone(), addr.clone());
    let attempt = async {
        while let Some(mut conn) = rt.pool.checkout(&addr) {
            if !conn.looks_alive() {
                continue;
            }
            let sent = Instant::now();
            match conn
                .exchange_bytes(&up.addr, wire, head_request, timeout)
                .await
            {
                Ok(head) => return read_copy(head, conn, home(), sent, max_body).await,
                // Closed by the upstream meanwhile: once more on a new connection.
                Err(e) if e.sent == crate::error::Sent::NoAnswer && resend => break,
                Err(e) => return Err(e.error.to_string()),
            }
        }
        let stream = up
            .connect_stream(inner.connect_timeout())
            .await
            .map_err(|e| e.to_string())?;
        let mut conn = RawConn::new(stream);
        let sent = Instant::now();
        let head = conn
            .exchange_bytes(&up.addr, wire, head_request, timeout)
            .await
            .map_err(|e| e.error.to_string())?;
        read_copy(head, conn, home(), sent, max_body).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no complete response from {} within {} ms",
            up.addr,
            timeout.as_millis()
        )),
    }
}

/// Reads a copy's response body up to `max_body`; the connection goes back to the pool
/// only when the body was read exactly to its end, and is closed when it is longer.
async fn read_copy(
    head: Head,
    conn: RawConn,
    home: MirrorHome,
    sent: Instant,
    max_body: usize,
) -> Result<ResponseCopy, String> {
    let latency = sent.elapsed();
    let mut rec = RespRec::new(
        head.status.as_u16(),
        crate::tap::header_pairs(&head.headers),
        head.has_body(),
        latency,
        max_body,
    );
    let mut body = head.into_response(conn, home).into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            rec.body.push(&data);
            if rec.body.total > max_body as u64 {
                // Dropping the body closes its connection.
                break;
            }
        }
    }
    rec.body.complete = true;
    Ok(cut_response(rec.into_copy(), max_body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    #[test]
    fn copies_are_framed_by_length_and_marked() {
        let req = RequestCopy {
            id: "0".repeat(24),
            started: SystemTime::UNIX_EPOCH,
            method: "POST".into(),
            target: "/a?b".into(),
            headers: vec![
                ("host".into(), Bytes::from_static(b"x")),
                ("content-length".into(), Bytes::from_static(b"2")),
            ],
            body: Bytes::from_static(b"hi"),
            body_truncated: false,
        };
        assert_eq!(
            &encode_copy(&req)[..],
            b"POST /a?b HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nx-turnout-shadow: 1\r\n\r\nhi"
        );
        let req = RequestCopy {
            headers: vec![("host".into(), Bytes::from_static(b"x"))],
            ..req
        };
        assert_eq!(
            &encode_copy(&req)[..],
            b"POST /a?b HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nx-turnout-shadow: 1\r\n\r\nhi"
        );
    }
}
