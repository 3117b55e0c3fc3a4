//! Traffic shadowing and capture: the tap on the live request path, and the mirror
//! workers that send copies to the candidate.
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
//!
//! Mirror jobs are taken from the queue by one dispatcher task per shadow, which runs at
//! most `concurrency` of them at a time, each in a task of its own: the copy goes to an
//! upstream of the target slot (round robin over healthy ones, on that upstream's pool of
//! idle connections or a new one), with `X-Turnout-Shadow: 1` and `Content-Length`
//! framing, within `timeout`; for the `noise_sample` share an identical copy goes to the
//! slot that answered the live request, at the same time. A connection goes back to its
//! pool only when its response was read exactly to the end, as on the live path. The
//! copies are counted in no slot's statistics.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Semaphore};
use turnout_core::SlotName;
use turnout_shadow::{Exchange, RequestCopy, ResponseCopy, Sample};

use crate::h1::{ConnHome, Head, RawConn};
use crate::Inner;

/// The header that marks a mirrored copy. Requests that carry it are never mirrored.
pub const SHADOW_HEADER: &str = "x-turnout-shadow";

/// Most header lines of a head the tap parses (the request head turnout wrote holds up
/// to 100 of the client's lines plus a few of turnout's).
const MAX_TAP_HEADERS: usize = 128;

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

fn bump(c: &AtomicU64) {
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
    opts: ShadowOptions,
    counters: Arc<ShadowCounters>,
    jobs: mpsc::Sender<Job>,
    /// Only to see whether the handle was dropped.
    samples: mpsc::Sender<Sample>,
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
    sample: f64,
    max_body: usize,
    tx: mpsc::Sender<Exchange>,
    dropped: Arc<AtomicU64>,
}

/// Who taps the live traffic now.
#[derive(Default)]
pub(crate) struct Taps {
    shadow: Option<Arc<Shadow>>,
    captures: Vec<Arc<Capture>>,
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

    fn update(&self, f: impl FnOnce(&mut Taps)) {
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

    fn remove_shadow(&self, which: &Weak<Shadow>) {
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

    /// The tap for a request, when some shadow or capture wants it. `headers` gives the
    /// head as forwarded (names in lower case, framing headers left out); `framed`: it has
    /// a body or a `Content-Length`; `has_body`: a body follows the head.
    pub(crate) fn begin(
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
    total: u64,
    /// The body ended (the tap saw all of it go by).
    complete: bool,
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
struct RespRec {
    status: u16,
    /// End-to-end headers, `content-length` left out when a body follows.
    headers: Vec<(String, Bytes)>,
    has_body: bool,
    latency: Duration,
    body: BodyRec,
}

impl RespRec {
    fn new(
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
    fn into_copy(mut self) -> ResponseCopy {
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

    /// The response head as relayed to an HTTP/1.1 client: the final head in `out`
    /// (after any interim ones).
    pub(crate) fn response_head_h1(&mut self, out: &[u8], head_request: bool, latency: Duration) {
        let mut rest = out;
        loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_TAP_HEADERS];
            let mut resp = httparse::Response::new(&mut slots);
            let Ok(httparse::Status::Complete(n)) = resp.parse(rest) else {
                // Cannot happen for a head turnout wrote; the request is skipped.
                return;
            };
            let status = resp.code.unwrap_or(0);
            if (100..200).contains(&status) && status != 101 {
                rest = &rest[n..];
                continue;
            }
            let whole = Bytes::copy_from_slice(&rest[..n]);
            let headers = resp
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), slice_of(&whole, rest, h.value)));
            self.response = Some(RespRec::new(
                status,
                headers,
                response_has_body(head_request, status),
                latency,
                self.limit,
            ));
            return;
        }
    }

    /// The response head as relayed to an HTTP/2 client.
    pub(crate) fn response_head_h2(&mut self, status: u16, headers: &HeaderMap, latency: Duration) {
        let head_request = self.method == "HEAD";
        self.response = Some(RespRec::new(
            status,
            header_pairs(headers),
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
fn cut_response(mut resp: ResponseCopy, max: usize) -> ResponseCopy {
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
fn header_pairs(headers: &HeaderMap) -> impl Iterator<Item = (String, Bytes)> + '_ {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
}

/// `part` (a sub-slice of `base`) as a slice of `whole`, a copy of `base`.
fn slice_of(whole: &Bytes, base: &[u8], part: &[u8]) -> Bytes {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    whole.slice(start..start + part.len())
}

/// The tap for an HTTP/1.x request: `up_head` is the head turnout wrote for the upstream.
pub(crate) fn begin_h1(
    state: &TapState,
    up_head: &[u8],
    slot: SlotName,
    has_body: bool,
) -> Option<Box<Tap>> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_TAP_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(_)) = req.parse(up_head) else {
        return None;
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return None;
    };
    let find = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let view = RequestView {
        method,
        target,
        request_id: find("x-request-id"),
        marked: find(SHADOW_HEADER).is_some(),
        slot,
    };
    let framed = has_body || find("content-length").is_some();
    let headers = || {
        // One copy of the head; the values are slices of it.
        let whole = Bytes::copy_from_slice(up_head);
        req.headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    slice_of(&whole, up_head, h.value),
                )
            })
            .filter(|(n, _)| n != "content-length" && n != "transfer-encoding")
            .collect()
    };
    state.begin(&view, headers, framed, has_body)
}

/// The tap for an HTTP/2 request, once prepared for its HTTP/1.1 upstream.
pub(crate) fn begin_h2<B>(
    state: &TapState,
    req: &http::Request<B>,
    slot: SlotName,
    has_body: bool,
) -> Option<Box<Tap>> {
    let headers = req.headers();
    let view = RequestView {
        method: req.method().as_str(),
        target: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        request_id: headers.get("x-request-id").map(|v| v.as_bytes()),
        marked: headers.contains_key(SHADOW_HEADER),
        slot,
    };
    let framed = has_body || headers.contains_key(http::header::CONTENT_LENGTH);
    let pairs = || {
        header_pairs(headers)
            .filter(|(n, _)| n != "content-length" && n != "transfer-encoding")
            .collect()
    };
    state.begin(&view, pairs, framed, has_body)
}

/// A copy waiting for a worker.
struct Job {
    request: Arc<RequestCopy>,
    live: ResponseCopy,
    /// The slot that answered the live request (noise copies go there).
    live_slot: SlotName,
    noise: bool,
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

fn mirror_runtime(inner: &Inner) -> &MirrorRuntime {
    inner.mirror.get_or_init(|| {
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
    })
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
pub(crate) fn start_shadow(inner: &Arc<Inner>, opts: ShadowOptions) -> ShadowHandle {
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
    mirror_runtime(inner).handle.spawn(dispatch(
        Arc::downgrade(inner),
        Arc::downgrade(&shadow),
        shadow.opts.clone(),
        jobs_rx,
        samples_tx,
        counters.clone(),
    ));
    let probed = Arc::downgrade(&shadow);
    inner.tap.update(|t| t.shadow = Some(shadow));
    // After the tap has it: the probe runs while this shadow is the data plane's.
    mirror_runtime(inner).handle.spawn(probe_delay(
        Arc::downgrade(inner),
        probed,
        counters.clone(),
    ));
    ShadowHandle {
        samples: samples_rx,
        counters,
    }
}

pub(crate) fn stop_shadow(inner: &Inner) {
    inner.tap.update(|t| t.shadow = None);
}

pub(crate) fn start_capture(
    inner: &Inner,
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
    inner.tap.update(|t| t.captures.push(capture));
    CaptureHandle {
        exchanges: rx,
        dropped,
    }
}

/// Takes jobs off the queue and runs up to `concurrency` at a time. Ends when the queue
/// is closed and empty (the shadow was stopped or replaced), or at once when the handle
/// was dropped (the jobs still queued are dropped with it).
async fn dispatch(
    inner: Weak<Inner>,
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
            let sample = run_job(&strong, &opts, job).await;
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
        inner.tap.remove_shadow(&shadow);
    }
}

/// Measures, while `shadow` is the data plane's shadow, how late the mirror's thread
/// wakes up from a timer (into [`ShadowCounters::delay`]). It ends when the shadow is
/// stopped or replaced (requests still in flight may hold the old one for a while).
async fn probe_delay(inner: Weak<Inner>, shadow: Weak<Shadow>, counters: Arc<ShadowCounters>) {
    // The timer's own granularity (a millisecond) is not the thread's delay.
    let slack = Duration::from_millis(1);
    let current = || {
        inner.upgrade().is_some_and(|inner| {
            inner
                .tap
                .taps
                .load()
                .shadow
                .as_ref()
                .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), shadow.as_ptr()))
        })
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
async fn run_job(inner: &Inner, opts: &ShadowOptions, job: Job) -> Sample {
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
async fn send_copy(
    inner: &Inner,
    slot: SlotName,
    wire: &[u8],
    head_request: bool,
    resend: bool,
    opts: &ShadowOptions,
) -> Result<ResponseCopy, String> {
    let pool = inner.table.load().slot(slot).clone();
    let Some(up) = pool.pick(None).cloned() else {
        return Err(format!("no healthy upstream in slot {slot}"));
    };
    let timeout = opts.timeout;
    let max_body = opts.max_body;
    let rt = mirror_runtime(inner);
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
                Err(e) if e.nothing_received && resend => break,
                Err(e) => return Err(e.error.to_string()),
            }
        }
        let stream = up
            .connect_stream(inner.opts.connect_timeout)
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
        header_pairs(&head.headers),
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
