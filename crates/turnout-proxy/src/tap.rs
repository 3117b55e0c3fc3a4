//! Traffic shadowing and capture: the tap on the live request path (the mirror workers
//! that send the copies are `mirror.rs`).
//!
//! **Off** (no shadow, no capture): a request pays one relaxed atomic load
//! ([`TapState::is_on`]) and nothing else.
//!
//! **On**: after routing, [`TapState::begin`] decides from the request head whether any
//! tap wants the request — the shadow's filter (method, path allow/deny prefixes, not the
//! candidate's own traffic, not an upgrade, no `X-Turnout-Shadow` already) and the
//! `sample` shares of the shadow and of each capture, all drawn from the request id (see
//! [`request_id`]) so that a request and its responses are chosen together. A chosen
//! request gets a [`Tap`], which records the head as forwarded and copies body bytes that
//! are already in memory, up to the largest `max_body` wanted, while they stream to the
//! upstream and to the client; the tap never waits and never changes what is relayed.
//! When the live response has ended, [`Tap::finish`] hands an `Exchange` to each capture
//! and a job to the shadow's bounded queue, all with `try_send`: full means dropped and
//! counted. A tap dropped before that (the exchange failed or broke off) counts the
//! request as skipped.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use turnout_core::SlotName;
use turnout_shadow::{Exchange, RequestCopy, ResponseCopy, Sample};

use crate::head::{RequestHead, ResponseHead};

/// The header that marks a mirrored copy. Requests that carry it are never mirrored.
pub const SHADOW_HEADER: &str = "x-turnout-shadow";

/// What to mirror, where, and how much of it.
#[derive(Clone, Debug)]
pub struct ShadowOptions {
    /// The slot copies go to: the candidate. Requests routed to it (during a canary) are
    /// not mirrored.
    pub target: SlotName,
    /// Methods mirrored (compared without regard to case).
    pub methods: Vec<String>,
    /// Path prefixes mirrored (plain string prefixes of the path, query excluded); empty:
    /// every path.
    pub paths: Vec<String>,
    /// Path prefixes never mirrored (they win over `paths`).
    pub skip_paths: Vec<String>,
    /// Share of the requests that pass the filter to mirror, 0.0 to 1.0, chosen by a hash
    /// of the request id.
    pub sample: f64,
    /// Share of the mirrored requests also sent a second time to the live slot, made
    /// exactly like the candidate's copy (chosen by other bits of the same hash).
    pub noise_sample: f64,
    /// Bodies (request, and every response) are copied up to this many bytes; a request
    /// with a longer body is not mirrored (counted as skipped).
    pub max_body: usize,
    /// Time allowed for one copy: connect, send, response head and body.
    pub timeout: Duration,
    /// Length of the bounded queue of copies waiting for a worker; the samples channel
    /// holds `queue + concurrency`.
    pub queue: usize,
    /// How many copies are in flight at most.
    pub concurrency: usize,
}

impl ShadowOptions {
    /// Defaults: GET, HEAD and OPTIONS, every path, all of them (`sample` 1.0), no noise
    /// copies, bodies up to 1 MiB, 10 s per copy, a queue of 1024, 32 in flight.
    pub fn new(target: SlotName) -> ShadowOptions {
        ShadowOptions {
            target,
            methods: vec!["GET".into(), "HEAD".into(), "OPTIONS".into()],
            paths: Vec::new(),
            skip_paths: Vec::new(),
            sample: 1.0,
            noise_sample: 0.0,
            max_body: 1024 * 1024,
            timeout: Duration::from_secs(10),
            queue: 1024,
            concurrency: 32,
        }
    }
}

/// What happened to the requests a shadow saw. Every eligible request ends up in exactly
/// one of `mirrored`, `dropped` and `skipped` (once its live response has ended).
#[derive(Debug, Default)]
pub struct ShadowCounters {
    /// Requests that passed the filter and the sample.
    pub eligible: AtomicU64,
    /// Queued for a copy to the candidate.
    pub mirrored: AtomicU64,
    /// Not mirrored: the queue was full (or the shadow was stopping).
    pub dropped: AtomicU64,
    /// Not mirrored: the request body was over `max_body`, or the live exchange failed or
    /// broke off (nothing to compare with), or the request ended up on the target slot.
    pub skipped: AtomicU64,
    /// Copies the candidate gave no response to (timeout, refused, broken).
    pub failed: AtomicU64,
    /// Samples lost because the samples channel was full (the copy was made).
    pub samples_dropped: AtomicU64,
    /// How late the mirror's thread ran while the shadow ran (see [`DelayHistogram`]).
    pub delay: DelayHistogram,
}

/// How late the mirror's idle-priority thread wakes up, measured by a timer on it every
/// [`DELAY_PROBE_EVERY`] while a shadow runs: when the router's cores are busy, a copy's
/// answer can wait that long before the thread reads it, so a copy's latency may include
/// up to this much of waiting for CPU. Buckets 1.25 times apart from 250 µs, lock-free,
/// fixed size.
#[derive(Debug)]
pub struct DelayHistogram {
    buckets: [AtomicU64; DELAY_BUCKETS],
}

const DELAY_BUCKETS: usize = 56;
const DELAY_FIRST_BOUND_US: f64 = 250.0;

/// Between two wake-ups of the mirror's delay probe.
pub const DELAY_PROBE_EVERY: Duration = Duration::from_millis(10);

impl Default for DelayHistogram {
    fn default() -> DelayHistogram {
        DelayHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl DelayHistogram {
    fn bound_us(i: usize) -> f64 {
        DELAY_FIRST_BOUND_US * 1.25f64.powi(i as i32)
    }

    /// Counts one wake-up that came `late`.
    pub fn record(&self, late: Duration) {
        let us = late.as_secs_f64() * 1e6;
        let i = (0..DELAY_BUCKETS - 1)
            .find(|&i| us <= Self::bound_us(i))
            .unwrap_or(DELAY_BUCKETS - 1);
        bump(&self.buckets[i]);
    }

    /// The q-quantile (the lower bound of its bucket, so that what is taken off a
    /// candidate's latency is never more than was measured: at most 20 % low; zero in the
    /// first bucket); `None` before any wake-up.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        let i = counts
            .iter()
            .position(|&n| {
                seen += n;
                seen >= rank
            })
            .unwrap_or(DELAY_BUCKETS - 1);
        let lower_us = i.checked_sub(1).map_or(0.0, Self::bound_us);
        Some(Duration::from_secs_f64(lower_us / 1e6))
    }
}

/// A snapshot of [`ShadowCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowCounts {
    /// See [`ShadowCounters::eligible`].
    pub eligible: u64,
    /// See [`ShadowCounters::mirrored`].
    pub mirrored: u64,
    /// See [`ShadowCounters::dropped`].
    pub dropped: u64,
    /// See [`ShadowCounters::skipped`].
    pub skipped: u64,
    /// See [`ShadowCounters::failed`].
    pub failed: u64,
    /// See [`ShadowCounters::samples_dropped`].
    pub samples_dropped: u64,
    /// The p99 of [`ShadowCounters::delay`]; `None` before the first wake-up.
    pub delay_p99: Option<Duration>,
}

impl ShadowCounters {
    /// The counts now (each read on its own, relaxed).
    pub fn snapshot(&self) -> ShadowCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ShadowCounts {
            eligible: get(&self.eligible),
            mirrored: get(&self.mirrored),
            dropped: get(&self.dropped),
            skipped: get(&self.skipped),
            failed: get(&self.failed),
            samples_dropped: get(&self.samples_dropped),
            delay_p99: self.delay.quantile(0.99),
        }
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A running shadow. Dropping it (the receiver) stops mirroring; so do
/// [`Proxy::stop_shadow`](crate::Proxy::stop_shadow) and a new
/// [`Proxy::start_shadow`](crate::Proxy::start_shadow). When the shadow has stopped and
/// its last copies are done, `samples` ends (`recv` gives `None`).
#[derive(Debug)]
pub struct ShadowHandle {
    /// One sample per mirrored request whose copies are done.
    pub samples: mpsc::Receiver<Sample>,
    /// The shadow's counters.
    pub counters: Arc<ShadowCounters>,
}

/// A running capture. Dropping it stops the capture.
#[derive(Debug)]
pub struct CaptureHandle {
    /// Live exchanges (request and response), once each response has ended.
    pub exchanges: mpsc::Receiver<Exchange>,
    /// Exchanges lost because the channel was full.
    pub dropped: Arc<AtomicU64>,
}

pub(crate) struct Shadow {
    pub(crate) opts: ShadowOptions,
    pub(crate) counters: Arc<ShadowCounters>,
    pub(crate) jobs: mpsc::Sender<Job>,
    /// Only to see whether the handle was dropped.
    pub(crate) samples: mpsc::Sender<Sample>,
}

impl Shadow {
    /// Whether a request passes the filter (the sample is checked by the caller).
    fn wants(&self, req: &RequestView<'_>) -> bool {
        let o = &self.opts;
        if req.slot == o.target || req.marked || self.samples.is_closed() {
            return false;
        }
        if !o.methods.iter().any(|m| m.eq_ignore_ascii_case(req.method)) {
            return false;
        }
        let path = req.target.split('?').next().unwrap_or("");
        (o.paths.is_empty() || o.paths.iter().any(|p| path.starts_with(p.as_str())))
            && !o.skip_paths.iter().any(|p| path.starts_with(p.as_str()))
    }
}

pub(crate) struct Capture {
    pub(crate) sample: f64,
    pub(crate) max_body: usize,
    pub(crate) tx: mpsc::Sender<Exchange>,
    pub(crate) dropped: Arc<AtomicU64>,
}

/// Who taps the live traffic now.
#[derive(Default)]
pub(crate) struct Taps {
    pub(crate) shadow: Option<Arc<Shadow>>,
    pub(crate) captures: Vec<Arc<Capture>>,
}

impl Taps {
    fn is_empty(&self) -> bool {
        self.shadow.is_none() && self.captures.is_empty()
    }
}

/// The data plane's tap state, in `Inner`.
pub(crate) struct TapState {
    /// Whether any tap runs: the one thing every request reads.
    on: AtomicBool,
    taps: ArcSwap<Taps>,
    /// Serialises changes of `taps` (never held across an await).
    change: Mutex<()>,
    /// For request ids of requests without `X-Request-Id`.
    seed: std::collections::hash_map::RandomState,
    counter: AtomicU64,
}

/// What the tap needs to know of a request head.
pub(crate) struct RequestView<'a> {
    pub(crate) method: &'a str,
    /// Origin form.
    pub(crate) target: &'a str,
    pub(crate) request_id: Option<&'a [u8]>,
    /// It carries `X-Turnout-Shadow`.
    pub(crate) marked: bool,
    /// The slot it was routed to.
    pub(crate) slot: SlotName,
}

impl TapState {
    pub(crate) fn new() -> TapState {
        TapState {
            on: AtomicBool::new(false),
            taps: ArcSwap::from_pointee(Taps::default()),
            change: Mutex::new(()),
            seed: std::collections::hash_map::RandomState::new(),
            counter: AtomicU64::new(0),
        }
    }

    /// Whether any shadow or capture runs: one relaxed load.
    #[inline]
    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut Taps)) {
        let _guard = self.change.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.taps.load();
        let mut next = Taps {
            shadow: current.shadow.clone(),
            captures: current.captures.clone(),
        };
        f(&mut next);
        let on = !next.is_empty();
        self.taps.store(Arc::new(next));
        self.on.store(on, Ordering::Relaxed);
    }

    /// Removes the captures whose handle was dropped.
    fn prune(&self) {
        self.update(|t| t.captures.retain(|c| !c.tx.is_closed()));
    }

    /// Whether `which` is the shadow the taps use now.
    pub(crate) fn is_current_shadow(&self, which: &Weak<Shadow>) -> bool {
        self.taps
            .load()
            .shadow
            .as_ref()
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), which.as_ptr()))
    }

    pub(crate) fn remove_shadow(&self, which: &Weak<Shadow>) {
        self.update(|t| {
            if t.shadow
                .as_ref()
                .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), which.as_ptr()))
            {
                t.shadow = None;
            }
        });
    }

    /// The two halves of a request id: from `X-Request-Id` (hashed), else random.
    fn id_bits(&self, request_id: Option<&[u8]>) -> (u64, u32) {
        match request_id {
            Some(v) => hash_id(v),
            None => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let mut h = self.seed.build_hasher();
                h.write_u64(n);
                let a = h.finish();
                h.write_u64(!n);
                (a, h.finish() as u32)
            }
        }
    }

    /// The tap for a request routed to `slot`, when some shadow or capture wants it:
    /// `req` is its head as forwarded (either protocol), `has_body` says whether a body
    /// follows it.
    pub(crate) fn begin(
        &self,
        req: &impl RequestHead,
        slot: SlotName,
        has_body: bool,
    ) -> Option<Box<Tap>> {
        let view = RequestView {
            method: req.method(),
            target: req.target(),
            request_id: req.header("x-request-id"),
            marked: req.header(SHADOW_HEADER).is_some(),
            slot,
        };
        let framed = has_body || req.header("content-length").is_some();
        let headers = || {
            let mut pairs = req.header_pairs();
            pairs.retain(|(n, _)| n != "content-length" && n != "transfer-encoding");
            pairs
        };
        self.begin_view(&view, headers, framed, has_body)
    }

    /// [`TapState::begin`] on what the tap reads of a head. `headers` gives the head as
    /// forwarded (names in lower case, framing headers left out); `framed`: it has a body
    /// or a `Content-Length`; `has_body`: a body follows the head.
    pub(crate) fn begin_view(
        &self,
        req: &RequestView<'_>,
        headers: impl FnOnce() -> Vec<(String, Bytes)>,
        framed: bool,
        has_body: bool,
    ) -> Option<Box<Tap>> {
        // A guard, not a clone: a request no tap wants touches no shared counter.
        let taps = self.taps.load();
        if taps.captures.iter().any(|c| c.tx.is_closed()) {
            self.prune();
        }
        let (a, b) = self.id_bits(req.request_id);
        let pick = unit(a);
        let mut limit = 0usize;
        let shadow = taps
            .shadow
            .as_ref()
            .filter(|s| pick < s.opts.sample && s.wants(req));
        let mut noise = false;
        if let Some(s) = shadow {
            bump(&s.counters.eligible);
        }
        // A full queue drops the copy before any of it is made: under load, a request
        // that will not be mirrored costs the live path nothing more.
        let shadow = shadow.filter(|s| {
            let room = s.jobs.capacity() > 0;
            if !room {
                bump(&s.counters.dropped);
            }
            room
        });
        if let Some(s) = shadow {
            limit = s.opts.max_body;
            noise = f64::from(b) / 4_294_967_296.0 < s.opts.noise_sample;
        }
        let mut captures = 0u64;
        for (i, c) in taps.captures.iter().enumerate().take(64) {
            if pick < c.sample && !c.tx.is_closed() {
                captures |= 1 << i;
                limit = limit.max(c.max_body);
            }
        }
        if shadow.is_none() && captures == 0 {
            return None;
        }
        Some(Box::new(Tap {
            shadow: shadow.is_some(),
            taps: Arc::clone(&taps),
            noise,
            captures,
            limit,
            slot: req.slot,
            id: format!("{a:016x}{b:08x}"),
            started: SystemTime::now(),
            method: req.method.to_owned(),
            target: req.target.to_owned(),
            headers: headers(),
            framed,
            body: BodyRec::new(limit, !has_body),
            shared_body: None,
            response: None,
            settled: false,
        }))
    }
}

/// A uniform value in [0, 1) from 53 bits of `x`.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// 96 bits from an `X-Request-Id` value: the same for the same id, in any router.
pub(crate) fn hash_id(value: &[u8]) -> (u64, u32) {
    fn fnv(basis: u64, bytes: &[u8]) -> u64 {
        let mut h = basis;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // splitmix64's finaliser: every input bit moves every output bit.
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }
    let a = fnv(0xcbf2_9ce4_8422_2325, value);
    let b = fnv(0x8422_2325_cbf2_9ce4, value);
    (a, (b >> 32) as u32)
}

/// The 24-hex-digit [`RequestCopy::id`] turnout derives from an `X-Request-Id` value.
pub fn request_id(x_request_id: &[u8]) -> String {
    let (a, b) = hash_id(x_request_id);
    format!("{a:016x}{b:08x}")
}

/// Body bytes copied up to a limit, and how many there were in all.
#[derive(Debug)]
pub(crate) struct BodyRec {
    buf: BytesMut,
    limit: usize,
    pub(crate) total: u64,
    /// The body ended (the tap saw all of it go by).
    pub(crate) complete: bool,
}

impl BodyRec {
    fn new(limit: usize, complete: bool) -> BodyRec {
        BodyRec {
            buf: BytesMut::new(),
            limit,
            total: 0,
            complete,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.limit - self.buf.len();
        if room > 0 {
            self.buf.extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    pub(crate) fn end(&mut self) {
        self.complete = true;
    }
}

/// A request body streamed by hyper's client task (HTTP/2 clients), copied on the way.
#[derive(Clone, Debug)]
pub(crate) struct SharedBody(Arc<Mutex<BodyRec>>);

impl SharedBody {
    pub(crate) fn push(&self, data: &[u8]) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(data);
    }

    pub(crate) fn end(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).end();
    }
}

#[derive(Debug)]
pub(crate) struct RespRec {
    status: u16,
    /// End-to-end headers, `content-length` left out when a body follows.
    headers: Vec<(String, Bytes)>,
    has_body: bool,
    latency: Duration,
    pub(crate) body: BodyRec,
}

impl RespRec {
    pub(crate) fn new(
        status: u16,
        headers: impl Iterator<Item = (String, Bytes)>,
        has_body: bool,
        latency: Duration,
        limit: usize,
    ) -> RespRec {
        let headers = headers
            .filter(|(n, _)| !(crate::http1::hop_by_hop(n) || (has_body && n == "content-length")))
            .collect();
        RespRec {
            status,
            headers,
            has_body,
            latency,
            body: BodyRec::new(limit, !has_body),
        }
    }

    /// The copy, with the body as recorded. A body copied whole gets one
    /// `content-length`, its real length; a truncated one none.
    pub(crate) fn into_copy(mut self) -> ResponseCopy {
        let truncated = self.body.total > self.body.buf.len() as u64 || !self.body.complete;
        if self.has_body && !truncated {
            self.headers.push(content_length(self.body.total));
        }
        ResponseCopy {
            status: self.status,
            headers: self.headers,
            body: self.body.buf.freeze(),
            body_truncated: truncated,
            latency: self.latency,
        }
    }
}

fn content_length(n: u64) -> (String, Bytes) {
    ("content-length".to_owned(), Bytes::from(n.to_string()))
}

/// One tapped request, from its head to the end of the live response.
pub(crate) struct Tap {
    taps: Arc<Taps>,
    /// The shadow wants it (counted eligible).
    shadow: bool,
    noise: bool,
    /// Bit i: `taps.captures[i]` wants it.
    captures: u64,
    limit: usize,
    slot: SlotName,
    id: String,
    started: SystemTime,
    method: String,
    target: String,
    /// As forwarded, framing headers left out.
    headers: Vec<(String, Bytes)>,
    /// The request had a body or a `Content-Length`.
    framed: bool,
    body: BodyRec,
    shared_body: Option<SharedBody>,
    response: Option<RespRec>,
    /// Counted as mirrored, dropped or skipped already.
    settled: bool,
}

impl Tap {
    /// The request ended up on another slot (retry on standby).
    pub(crate) fn set_slot(&mut self, slot: SlotName) {
        self.slot = slot;
    }

    /// Request body bytes, as they go to the upstream.
    #[inline]
    pub(crate) fn request_body(&mut self, data: &[u8]) {
        self.body.push(data);
    }

    /// The request body ended.
    pub(crate) fn request_end(&mut self) {
        self.body.end();
    }

    /// For a request body streamed by another task: the sink it copies into.
    pub(crate) fn shared_body(&mut self) -> SharedBody {
        let rec = std::mem::replace(&mut self.body, BodyRec::new(0, false));
        let shared = SharedBody(Arc::new(Mutex::new(rec)));
        self.shared_body = Some(shared.clone());
        shared
    }

    /// The response head as relayed to the client (either protocol).
    pub(crate) fn response_head(&mut self, resp: &impl ResponseHead, latency: Duration) {
        let head_request = self.method == "HEAD";
        let status = resp.status();
        self.response = Some(RespRec::new(
            status,
            resp.header_pairs().into_iter(),
            response_has_body(head_request, status),
            latency,
            self.limit,
        ));
    }

    /// Response body bytes (decoded from chunked), as they go to the client.
    #[inline]
    pub(crate) fn response_body(&mut self, data: &[u8]) {
        if let Some(r) = self.response.as_mut() {
            r.body.push(data);
        }
    }

    /// The live response has ended: hands the exchange to the captures and the copy to
    /// the shadow's queue, never waiting.
    pub(crate) fn finish(mut self: Box<Self>) {
        let Some(mut resp) = self.response.take() else {
            return; // dropped: skipped
        };
        resp.body.complete = true;
        // From here on every path counts the request once (when the shadow wants it).
        self.settled = true;
        let req_body = match self.shared_body.take() {
            Some(shared) => {
                let mut rec = shared.0.lock().unwrap_or_else(|p| p.into_inner());
                std::mem::replace(&mut *rec, BodyRec::new(0, false))
            }
            None => std::mem::replace(&mut self.body, BodyRec::new(0, false)),
        };
        let (complete, total) = (req_body.complete, req_body.total);
        // The copies at the largest limit wanted, made once (moved, not cloned); a
        // consumer with a smaller `max_body` gets them cut.
        let request = Arc::new(self.take_request(req_body));
        let mut live = Some(resp.into_copy());
        let limit = self.limit;
        let request_for = |max: usize| {
            if max >= limit {
                request.clone()
            } else {
                Arc::new(cut_request(&request, max))
            }
        };
        for (i, c) in self.taps.captures.iter().enumerate().take(64) {
            if self.captures & (1 << i) == 0 {
                continue;
            }
            let Some(response) = live.clone() else { break };
            let exchange = Exchange {
                request: request_for(c.max_body),
                response: cut_response(response, c.max_body),
            };
            if let Err(TrySendError::Full(_)) = c.tx.try_send(exchange) {
                bump(&c.dropped);
            }
        }
        if !self.shadow {
            return;
        }
        let Some(shadow) = self.taps.shadow.as_ref() else {
            return;
        };
        let counters = &shadow.counters;
        let max = shadow.opts.max_body;
        if self.slot == shadow.opts.target || !complete || total > max as u64 {
            bump(&counters.skipped);
            return;
        }
        let Some(response) = live.take() else { return };
        let job = Job {
            request: request_for(max),
            live: cut_response(response, max),
            live_slot: self.slot,
            noise: self.noise,
        };
        match shadow.jobs.try_send(job) {
            Ok(()) => bump(&counters.mirrored),
            Err(_) => bump(&counters.dropped),
        }
    }

    /// The request copy, with the body as recorded (up to the largest limit wanted). A
    /// body copied whole (or a `Content-Length: 0`) gets one `content-length`, its real
    /// length; a truncated one none.
    fn take_request(&mut self, mut rec: BodyRec) -> RequestCopy {
        let truncated = rec.total > rec.buf.len() as u64 || !rec.complete;
        let mut headers = std::mem::take(&mut self.headers);
        if self.framed && !truncated {
            headers.push(content_length(rec.total));
        }
        RequestCopy {
            id: std::mem::take(&mut self.id),
            started: self.started,
            method: std::mem::take(&mut self.method),
            target: std::mem::take(&mut self.target),
            headers,
            body: std::mem::take(&mut rec.buf).freeze(),
            body_truncated: truncated,
        }
    }
}

/// `req` with at most `max` body bytes (no `content-length` once cut).
fn cut_request(req: &RequestCopy, max: usize) -> RequestCopy {
    let mut cut = req.clone();
    if cut.body.len() > max {
        cut.body.truncate(max);
        cut.body_truncated = true;
        cut.headers.retain(|(n, _)| n != "content-length");
    }
    cut
}

/// `resp` with at most `max` body bytes (no `content-length` once cut).
pub(crate) fn cut_response(mut resp: ResponseCopy, max: usize) -> ResponseCopy {
    if resp.body.len() > max {
        resp.body.truncate(max);
        resp.body_truncated = true;
        resp.headers.retain(|(n, _)| n != "content-length");
    }
    resp
}

impl Drop for Tap {
    fn drop(&mut self) {
        if self.shadow && !self.settled {
            if let Some(s) = self.taps.shadow.as_ref() {
                bump(&s.counters.skipped);
            }
        }
    }
}

fn response_has_body(head_request: bool, status: u16) -> bool {
    !(head_request || (100..200).contains(&status) || status == 204 || status == 304)
}

/// `(name, value)` pairs of a header map, names in lower case (as `http` keeps them).
pub(crate) fn header_pairs(
    headers: &http::HeaderMap,
) -> impl Iterator<Item = (String, Bytes)> + '_ {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
}

/// A copy waiting for a worker.
pub(crate) struct Job {
    pub(crate) request: Arc<RequestCopy>,
    pub(crate) live: ResponseCopy,
    /// The slot that answered the live request (noise copies go there).
    pub(crate) live_slot: SlotName,
    pub(crate) noise: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn request_ids_are_stable_and_spread() {
        assert_eq!(request_id(b"abc"), request_id(b"abc"));
        assert_eq!(request_id(b"abc").len(), 24);
        assert!(request_id(b"abc")
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(request_id(b"abc"), request_id(b"abd"));
        // Sequential ids split close to the sample share.
        let n = 10_000;
        let picked = (0..n)
            .filter(|i| unit(hash_id(format!("req-{i}").as_bytes()).0) < 0.25)
            .count();
        assert!((2_250..2_750).contains(&picked), "{picked}");
        let state = TapState::new();
        let (a, _) = state.id_bits(None);
        let (b, _) = state.id_bits(None);
        assert_ne!(a, b);
    }

    #[test]
    fn the_filter() {
        let (tx, _rx) = mpsc::channel(1);
        let (jobs, _jrx) = mpsc::channel(1);
        let mut opts = ShadowOptions::new(SlotName::Green);
        opts.paths = vec!["/api".into()];
        opts.skip_paths = vec!["/api/admin".into()];
        let shadow = Shadow {
            opts,
            counters: Arc::default(),
            jobs,
            samples: tx,
        };
        let view = |method, target, marked, slot| RequestView {
            method,
            target,
            request_id: None,
            marked,
            slot,
        };
        let cases = [
            (view("GET", "/api/items?q=1", false, SlotName::Blue), true),
            (view("get", "/api", false, SlotName::Blue), true),
            (view("HEAD", "/api/x", false, SlotName::Blue), true),
            (view("POST", "/api/items", false, SlotName::Blue), false),
            (view("GET", "/other", false, SlotName::Blue), false),
            (view("GET", "/?/api", false, SlotName::Blue), false),
            (
                view("GET", "/api/admin/users", false, SlotName::Blue),
                false,
            ),
            (view("GET", "/api/items", true, SlotName::Blue), false),
            (view("GET", "/api/items", false, SlotName::Green), false),
        ];
        for (req, want) in cases {
            assert_eq!(shadow.wants(&req), want, "{} {}", req.method, req.target);
        }
    }

    #[test]
    fn bodies_are_copied_up_to_the_limit() {
        let mut rec = BodyRec::new(5, false);
        rec.push(b"abc");
        rec.push(b"defg");
        rec.push(b"h");
        assert_eq!((&rec.buf[..], rec.total), (&b"abcde"[..], 8));
        let mut rec = BodyRec::new(0, false);
        rec.push(b"abc");
        assert_eq!((rec.buf.len(), rec.total), (0, 3));
    }
}
