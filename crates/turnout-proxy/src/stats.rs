//! Per-slot request statistics for the bake analysis: request and error counters and a
//! latency histogram, all atomics, recorded on the request path without locks or
//! allocation. A reader takes a [`StatsSnapshot`] now and then and subtracts an earlier
//! one ([`StatsSnapshot::since`]) to get a sliding window.
//!
//! The histogram has geometric buckets: each bound is 1.1 times the one before, from
//! 100 µs to about 62 s, plus one bucket below (0–100 µs) and one overflow bucket above.
//! A quantile is reported as the upper bound of its bucket, so it is at most 10 % above
//! the true value (between 100 µs and 62 s).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (inclusive, in nanoseconds) of the bounded buckets.
const FIRST_BOUND_NS: u64 = 100_000;
/// How many times the bounds grow by 10 %: 100 µs × 1.1^140 ≈ 62 s.
const STEPS: usize = 140;
const BOUNDS: [u64; STEPS + 1] = bounds();
/// The bounded buckets, then the overflow bucket.
const BUCKETS: usize = BOUNDS.len() + 1;

const fn bounds() -> [u64; STEPS + 1] {
    let mut b = [0u64; STEPS + 1];
    b[0] = FIRST_BOUND_NS;
    let mut i = 1;
    while i <= STEPS {
        // ×1.1, in integers; at 100 µs and up the rounding is far below 0.1 %.
        b[i] = b[i - 1] + b[i - 1] / 10;
        i += 1;
    }
    b
}

/// The bucket a latency falls in: the first whose upper bound is not below it.
fn bucket(latency: Duration) -> usize {
    let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    // A branch-light binary search over 141 bounds; the overflow bucket when above all.
    BOUNDS.partition_point(|&b| b < ns)
}

/// One slot's request statistics since the router started. Only atomics (Relaxed):
/// recording is three atomic additions at most.
pub struct SlotStats {
    requests: AtomicU64,
    /// Requests by status class: 1xx to 5xx (index 0 to 4); anything else in 5xx.
    classes: [AtomicU64; 5],
    /// The sum of the recorded latencies, in nanoseconds.
    latency_ns: AtomicU64,
    errors: AtomicU64,
    cancelled: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for SlotStats {
    fn default() -> Self {
        SlotStats::new()
    }
}

impl std::fmt::Debug for SlotStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotStats")
            .field("requests", &self.requests.load(Relaxed))
            .field("errors", &self.errors.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl SlotStats {
    /// All counters at zero.
    pub fn new() -> SlotStats {
        SlotStats {
            requests: AtomicU64::new(0),
            classes: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_ns: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// A request that got a response with `status` (the upstream's, or turnout's own
    /// error response) after `latency`. A status of 500 or more counts as an error.
    pub fn record(&self, status: u16, latency: Duration) {
        self.classes[class_index(status)].fetch_add(1, Relaxed);
        self.count(status >= 500, latency);
    }

    /// A request that got no response at all from the upstream, for a reason on the
    /// upstream's side. Counts as an error.
    pub fn record_failure(&self, latency: Duration) {
        self.classes[4].fetch_add(1, Relaxed);
        self.count(true, latency);
    }

    /// A request the client gave up on (closed the connection, reset the HTTP/2 stream)
    /// before its response head: like nginx's 499, neither a request of the version's
    /// nor an error — browsers cancel requests all the time.
    pub fn record_cancelled(&self) {
        self.cancelled.fetch_add(1, Relaxed);
    }

    /// A response already counted by its status that broke off on the upstream's side
    /// (the connection closed or the framing was invalid before the end of the body):
    /// one more error for the version, since the client got a truncated response.
    pub fn record_broken(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    /// Requests cancelled by their clients (see [`SlotStats::record_cancelled`]).
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Relaxed)
    }

    fn count(&self, error: bool, latency: Duration) {
        self.requests.fetch_add(1, Relaxed);
        if error {
            self.errors.fetch_add(1, Relaxed);
        }
        self.buckets[bucket(latency)].fetch_add(1, Relaxed);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_ns.fetch_add(ns, Relaxed);
    }

    /// The counters for the metrics export: exact counts by status class and latency
    /// bucket since start (see [`Counts`]).
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for (to, from) in c.classes.iter_mut().zip(&self.classes) {
            *to = from.load(Relaxed);
        }
        for (to, from) in c.buckets.iter_mut().zip(&self.buckets) {
            *to = from.load(Relaxed);
        }
        c.latency_ns = self.latency_ns.load(Relaxed);
        c
    }

    /// The counters now. Not one atomic read: a request recorded meanwhile may be in
    /// some counters and not yet in others.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut buckets = Box::new([0u64; BUCKETS]);
        for (to, from) in buckets.iter_mut().zip(&self.buckets) {
            *to = from.load(Relaxed);
        }
        StatsSnapshot {
            requests: self.requests.load(Relaxed),
            errors: self.errors.load(Relaxed),
            buckets,
        }
    }
}

/// The index of a status code's class: 1xx to 5xx as 0 to 4; a code out of that range
/// (none reaches here: statuses are checked on the way in) counts as 5xx.
fn class_index(status: u16) -> usize {
    match status / 100 {
        1..=5 => usize::from(status / 100 - 1),
        _ => 4,
    }
}

/// The status classes of [`Counts::classes`], in order.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A slot's request counts for a metrics export, all since the router started: by status
/// class, and by latency bucket (not cumulative) with the latency sum. Every request
/// recorded with a status (or as a failure, as 5xx) is in one class and one bucket; a
/// cancelled one in neither. Subtracting an earlier `Counts` gives the counts between.
#[derive(Clone, Debug, PartialEq)]
pub struct Counts {
    /// Requests per status class, in the order of [`STATUS_CLASSES`].
    pub classes: [u64; 5],
    /// Requests per latency bucket: those with the bounds of [`Counts::bucket_bounds`],
    /// then the overflow bucket.
    pub buckets: [u64; BUCKETS],
    /// The sum of their latencies, in nanoseconds.
    pub latency_ns: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            classes: [0; 5],
            buckets: [0; BUCKETS],
            latency_ns: 0,
        }
    }
}

impl Counts {
    /// The upper bounds (inclusive) of the bounded buckets, in nanoseconds; the overflow
    /// bucket after them has none.
    pub fn bucket_bounds() -> &'static [u64] {
        &BOUNDS
    }

    /// Each count minus `earlier`'s (saturating at zero).
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut c = self.clone();
        for (a, b) in c.classes.iter_mut().zip(&earlier.classes) {
            *a = a.saturating_sub(*b);
        }
        for (a, b) in c.buckets.iter_mut().zip(&earlier.buckets) {
            *a = a.saturating_sub(*b);
        }
        c.latency_ns = c.latency_ns.saturating_sub(earlier.latency_ns);
        c
    }

    /// Each count plus `other`'s.
    pub fn add(&mut self, other: &Counts) {
        for (a, b) in self.classes.iter_mut().zip(&other.classes) {
            *a = a.saturating_add(*b);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a = a.saturating_add(*b);
        }
        self.latency_ns = self.latency_ns.saturating_add(other.latency_ns);
    }
}

/// A slot's counters at one moment (since start), or the difference of two
/// ([`StatsSnapshot::since`]).
#[derive(Clone, Debug, PartialEq)]
pub struct StatsSnapshot {
    /// Requests recorded.
    pub requests: u64,
    /// Of those, errors: 5xx responses (turnout's own 502/503/504 too) and requests that
    /// got no response at all.
    pub errors: u64,
    buckets: Box<[u64; BUCKETS]>,
}

impl Default for StatsSnapshot {
    fn default() -> Self {
        StatsSnapshot {
            requests: 0,
            errors: 0,
            buckets: Box::new([0; BUCKETS]),
        }
    }
}

impl StatsSnapshot {
    /// What was recorded between `earlier` and this snapshot (each counter subtracted,
    /// saturating at zero).
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        let mut buckets = self.buckets.clone();
        for (b, e) in buckets.iter_mut().zip(earlier.buckets.iter()) {
            *b = b.saturating_sub(*e);
        }
        StatsSnapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets,
        }
    }

    /// Each counter plus `other`'s (saturating): several routers' counts as one.
    pub fn add(&mut self, other: &StatsSnapshot) {
        for (b, o) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *b = b.saturating_add(*o);
        }
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
    }

    /// The latency buckets that are not empty, as `(bucket index, count)`: the compact
    /// form in which a router publishes its counts to the fleet.
    pub fn sparse_buckets(&self) -> Vec<(u16, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (i as u16, *n))
            .collect()
    }

    /// A snapshot from published parts ([`StatsSnapshot::sparse_buckets`]); indices out
    /// of range (a router of another build) are ignored.
    pub fn from_parts(requests: u64, errors: u64, sparse: &[(u16, u64)]) -> StatsSnapshot {
        let mut s = StatsSnapshot {
            requests,
            errors,
            ..StatsSnapshot::default()
        };
        for &(i, n) in sparse {
            if let Some(b) = s.buckets.get_mut(usize::from(i)) {
                *b = n;
            }
        }
        s
    }

    /// Errors per request, from 0 to 1; `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| (self.errors.min(self.requests)) as f64 / self.requests as f64)
    }

    /// The latency below which a share `q` (0 to 1, clamped) of the requests fell: the
    /// upper bound of the bucket holding the q-quantile, at most 10 % above the true
    /// value. `Duration::MAX` when it lies in the overflow bucket (over about 62 s);
    /// `None` with no latencies recorded or a `q` that is NaN.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if q.is_nan() {
            return None;
        }
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the quantile, 1-based: the smallest r with r >= q × total.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(
                    BOUNDS
                        .get(i)
                        .map_or(Duration::MAX, |&b| Duration::from_nanos(b)),
                );
            }
        }
        None
    }

    /// The median latency ([`StatsSnapshot::quantile`] 0.5).
    pub fn p50(&self) -> Option<Duration> {
        self.quantile(0.5)
    }

    /// The 99th percentile latency ([`StatsSnapshot::quantile`] 0.99).
    pub fn p99(&self) -> Option<Duration> {
        self.quantile(0.99)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1000.0)
    }

    /// Records each (latency in ms, count) pair with status 200.
    fn recorded(samples: &[(f64, u64)]) -> SlotStats {
        let s = SlotStats::new();
        for &(latency, n) in samples {
            for _ in 0..n {
                s.record(200, ms(latency));
            }
        }
        s
    }

    #[test]
    fn a_cancel_is_not_the_versions_error_and_a_broken_body_is() {
        let s = SlotStats::new();
        s.record(200, Duration::from_millis(1));
        s.record_cancelled();
        let snap = s.snapshot();
        assert_eq!((snap.requests, snap.errors, s.cancelled()), (1, 0, 1));
        s.record_broken();
        let snap = s.snapshot();
        assert_eq!((snap.requests, snap.errors), (1, 1));
    }

    #[test]
    fn buckets_are_within_ten_percent() {
        assert!(BOUNDS[STEPS] >= 60_000_000_000, "{}", BOUNDS[STEPS]);
        for w in BOUNDS.windows(2) {
            assert!(
                w[1] > w[0] && w[1] as f64 <= w[0] as f64 * 1.1 + 1.0,
                "{w:?}"
            );
        }
        // Every latency lands in a bucket whose bound is at or above it, and within 10 %.
        let mut ns = FIRST_BOUND_NS;
        while ns < BOUNDS[STEPS] {
            let i = bucket(Duration::from_nanos(ns));
            assert!(
                BOUNDS[i] >= ns && (BOUNDS[i] as f64) <= ns as f64 * 1.1,
                "{ns} -> {}",
                BOUNDS[i]
            );
            assert!(i == 0 || BOUNDS[i - 1] < ns, "{ns}");
            ns += ns / 37 + 1;
        }
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_secs(100)), BUCKETS - 1);
        assert_eq!(bucket(Duration::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_of_known_latencies() {
        // (samples as (ms, count), q, expected ms): the answer is the true quantile, up
        // to 10 % above it.
        let cases: &[(&[(f64, u64)], f64, f64)] = &[
            (&[(5.0, 1)], 0.5, 5.0),
            (&[(5.0, 1)], 0.99, 5.0),
            (&[(1.0, 99), (200.0, 1)], 0.5, 1.0),
            (&[(1.0, 99), (200.0, 1)], 0.99, 1.0),
            (&[(1.0, 98), (200.0, 2)], 0.99, 200.0),
            (&[(1.0, 98), (200.0, 2)], 1.0, 200.0),
            (&[(1.0, 98), (200.0, 2)], 0.0, 1.0),
            (&[(0.3, 50), (30.0, 50)], 0.5, 0.3),
            (&[(0.3, 50), (30.0, 50)], 0.51, 30.0),
            (&[(2.5, 1000), (7.0, 9000)], 0.05, 2.5),
            (&[(2.5, 1000), (7.0, 9000)], 0.5, 7.0),
            (&[(0.1, 10)], 0.5, 0.1),
            (&[(59_000.0, 10)], 0.5, 59_000.0),
            // Out-of-range q is clamped.
            (&[(1.0, 1), (9.0, 1)], 2.0, 9.0),
            (&[(1.0, 1), (9.0, 1)], -1.0, 1.0),
        ];
        for &(samples, q, want) in cases {
            let got = recorded(samples).snapshot().quantile(q).unwrap();
            let want = ms(want);
            assert!(
                got >= want && got.as_secs_f64() <= want.as_secs_f64() * 1.1,
                "{samples:?} q={q}: got {got:?}, want {want:?} (+10 %)"
            );
        }
        // Below 100 µs: the first bucket's bound; above the last bound: MAX.
        assert_eq!(recorded(&[(0.001, 3)]).snapshot().p50(), Some(ms(0.1)));
        assert_eq!(
            recorded(&[(120_000.0, 3)]).snapshot().p99(),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn errors_and_error_rate() {
        let s = SlotStats::new();
        for (status, n) in [
            (200u16, 6u64),
            (101, 1),
            (404, 1),
            (499, 1),
            (500, 1),
            (502, 2),
            (503, 1),
            (504, 1),
        ] {
            for _ in 0..n {
                s.record(status, ms(1.0));
            }
        }
        s.record_failure(ms(1.0));
        let snap = s.snapshot();
        assert_eq!((snap.requests, snap.errors), (15, 6));
        assert_eq!(snap.error_rate(), Some(6.0 / 15.0));
        let p50 = snap.p50().unwrap();
        assert!(p50 >= ms(1.0) && p50 <= ms(1.1), "{p50:?}");
    }

    #[test]
    fn since_subtracts_and_saturates() {
        let s = recorded(&[(1.0, 10)]);
        s.record(500, ms(1.0));
        let before = s.snapshot();
        for _ in 0..3 {
            s.record(503, ms(50.0));
        }
        s.record(200, ms(50.0));
        let window = s.snapshot().since(&before);
        assert_eq!((window.requests, window.errors), (4, 3));
        assert_eq!(window.error_rate(), Some(0.75));
        // Only the window's latencies count: all 50 ms.
        let p50 = window.p50().unwrap();
        assert!(p50 >= ms(50.0) && p50 <= ms(55.0), "{p50:?}");
        assert_eq!(window.p50(), window.p99());
        // Nothing new: an empty window.
        let same = s.snapshot().since(&s.snapshot());
        assert_eq!(same, StatsSnapshot::default());
        // Reversed: saturates at zero rather than wrapping.
        assert_eq!(before.since(&s.snapshot()), StatsSnapshot::default());
    }

    #[test]
    fn counts_by_class_and_bucket() {
        let s = SlotStats::new();
        for status in [101u16, 200, 204, 302, 404, 499, 500, 503] {
            s.record(status, ms(2.0));
        }
        s.record_failure(ms(2.0));
        s.record_cancelled();
        let c = s.counts();
        assert_eq!(c.classes, [1, 2, 1, 2, 3]);
        assert_eq!(c.buckets.iter().sum::<u64>(), 9);
        assert_eq!(c.latency_ns, 9 * 2_000_000);
        s.record(200, ms(1.0));
        let d = s.counts().since(&c);
        assert_eq!(d.classes, [0, 1, 0, 0, 0]);
        assert_eq!(d.latency_ns, 1_000_000);
        let mut sum = c.clone();
        sum.add(&d);
        assert_eq!(sum, s.counts());
    }

    #[test]
    fn empty_is_none() {
        let empty = SlotStats::new().snapshot();
        assert_eq!(empty, StatsSnapshot::default());
        assert_eq!(empty.error_rate(), None);
        assert_eq!(empty.quantile(0.5), None);
        assert_eq!(empty.p50(), None);
        assert_eq!(empty.p99(), None);
        assert_eq!(recorded(&[(1.0, 1)]).snapshot().quantile(f64::NAN), None);
    }
}
