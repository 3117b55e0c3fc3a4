//! A latency histogram with the same buckets as the data plane's (`turnout-proxy`'s
//! `stats.rs`): each bound 1.1 times the one before, from 100 µs to about 62 s, one bucket
//! below and one overflow bucket above. A quantile is the upper bound of its bucket, at
//! most 10 % above the true value. Fixed size (142 counters), whatever the traffic.

use std::time::Duration;

const FIRST_BOUND_NS: u64 = 100_000;
const STEPS: usize = 140;
const BOUNDS: [u64; STEPS + 1] = bounds();
pub(crate) const BUCKETS: usize = BOUNDS.len() + 1;

const fn bounds() -> [u64; STEPS + 1] {
    let mut b = [0u64; STEPS + 1];
    b[0] = FIRST_BOUND_NS;
    let mut i = 1;
    while i <= STEPS {
        b[i] = b[i - 1] + b[i - 1] / 10;
        i += 1;
    }
    b
}

/// The upper bound of bucket `i` in milliseconds; `None` for the overflow bucket.
pub(crate) fn bound_ms(i: usize) -> Option<f64> {
    // Whole microseconds: the bounds' sub-microsecond digits mean nothing.
    BOUNDS.get(i).map(|&ns| (ns / 1_000) as f64 / 1e3)
}

#[derive(Clone, Debug)]
pub(crate) struct Histogram {
    buckets: Box<[u64; BUCKETS]>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: Box::new([0; BUCKETS]),
            total: 0,
        }
    }
}

impl Histogram {
    pub(crate) fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS.partition_point(|&b| b < ns);
        self.buckets[i] += 1;
        self.total += 1;
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    pub(crate) fn counts(&self) -> &[u64; BUCKETS] {
        &self.buckets
    }

    /// The q-quantile in milliseconds (upper bound of its bucket); `None` when empty. The
    /// overflow bucket reports the last bound.
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.total == 0 || q.is_nan() {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bound_ms(i).or(bound_ms(STEPS));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_bounds() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for _ in 0..99 {
            h.record(Duration::from_millis(10));
        }
        h.record(Duration::from_millis(500));
        let p50 = h.quantile_ms(0.5).unwrap();
        assert!((10.0..=11.0).contains(&p50), "{p50}");
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((10.0..=11.0).contains(&p99), "{p99}");
        let max = h.quantile_ms(1.0).unwrap();
        assert!((500.0..=550.0).contains(&max), "{max}");
        h.record(Duration::from_secs(3600));
        assert!(h.quantile_ms(1.0).unwrap() > 60_000.0);
        assert_eq!(h.total(), 101);
    }
}
