//! The [`Aggregator`]: samples in, a [`Report`] out, with noise cancellation as in
//! Twitter's Diffy.
//!
//! Every sample is compared twice when it can be: live against candidate (the *raw*
//! differences) and, for the `noise_sample` share of requests that were also sent a second
//! time to the live slot, live against live (the *noise*). Both are counted per endpoint and
//! field (path and kind), once per request. A field counts against the candidate only when
//! its raw difference rate (requests with that difference / requests compared) exceeds its
//! noise rate (noise samples with it / noise samples) by both margins of
//! [`NoiseOptions`]:
//!
//! ```text
//! raw_rate > noise_rate × (1 + relative_margin)  and  raw_rate − noise_rate > absolute_margin
//! ```
//!
//! Rates, not counts, so that a small noise sample cancels noise all the same. An endpoint
//! without noise samples of its own (a rare route) takes the noise rates pooled over all
//! endpoints (the same path and kind, over all noise samples); with no noise samples at
//! all, noise rates are 0. Whether a field is noise is decided when the
//! report is made (the rates change as samples come in), so a request's verdict is too:
//! a request is *mismatched* when at least one of its differing fields counts against the
//! candidate, *noise* when it differed only in fields cancelled as noise.
//!
//! Memory is bounded whatever the traffic:
//! - endpoints: [`MAX_ENDPOINTS`]; requests of further endpoints are counted under
//!   [`OTHER_ENDPOINT`];
//! - fields: [`MAX_FIELDS_PER_ENDPOINT`] per endpoint; further differences are counted
//!   under the path [`OTHER_FIELD`] (with their kind);
//! - requests with differences are kept as a count per distinct *set* of differing fields
//!   (all requests that differ only by a timestamp and an id share one entry); past
//!   [`MAX_FIELD_SETS`] distinct sets in all, a request with a new set is judged when it
//!   arrives, with the rates known then, and only its verdict is kept;
//! - one example per field; the first [`MAX_EXAMPLES_WITH_BODIES`] examples also keep
//!   both response bodies (pretty-printed, cut at [`MAX_EXAMPLE_BODY`] bytes);
//! - latencies in fixed log histograms (1.1× buckets, like the data plane's).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compare::{self, CompareOptions, Compiled, DiffKind, Difference};
use crate::histogram::{self, Histogram};
use crate::report::{
    EndpointReport, Example, FieldReport, LatencyHistogram, LatencyPair, Quantiles, Report,
};
use crate::types::{ResponseCopy, Sample};

/// The most endpoints an [`Aggregator`] tells apart.
pub const MAX_ENDPOINTS: usize = 500;
/// The endpoint under which requests past [`MAX_ENDPOINTS`] are counted.
pub const OTHER_ENDPOINT: &str = "other";
/// The most fields (path and kind) counted per endpoint.
pub const MAX_FIELDS_PER_ENDPOINT: usize = 256;
/// The path under which differences past [`MAX_FIELDS_PER_ENDPOINT`] are counted.
pub const OTHER_FIELD: &str = "other";
/// The most distinct sets of differing fields kept for deciding request verdicts.
pub const MAX_FIELD_SETS: usize = 10_000;
/// How many examples keep response bodies.
pub const MAX_EXAMPLES_WITH_BODIES: usize = 1_000;
/// The longest example body kept, in bytes (cut on a character boundary).
pub const MAX_EXAMPLE_BODY: usize = 4_096;
/// The path of the difference recorded when the candidate (or the live slot's second
/// copy) sent no response at all.
pub const ERROR_FIELD: &str = "error";

/// The margins by which a field's difference rate against the candidate must exceed its
/// rate between live and live to count against the candidate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseOptions {
    /// Relative margin: 0.2 means the candidate's rate must be over 1.2 times the noise
    /// rate.
    pub relative_margin: f64,
    /// Absolute margin, as a share of the endpoint's compared requests: 0.0003 means the
    /// candidate's rate must be over the noise rate plus 0.03 %.
    pub absolute_margin: f64,
}

impl Default for NoiseOptions {
    fn default() -> Self {
        NoiseOptions {
            relative_margin: 0.2,
            absolute_margin: 0.0003,
        }
    }
}

impl NoiseOptions {
    /// Whether a raw rate counts against the candidate, given the noise rate.
    pub fn counts_against(&self, raw_rate: f64, noise_rate: f64) -> bool {
        raw_rate > noise_rate * (1.0 + self.relative_margin)
            && raw_rate - noise_rate > self.absolute_margin
    }
}

/// What the data plane counted that the samples do not show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Copies sent to the candidate.
    pub mirrored: u64,
    /// Copies not sent (queue full) or whose answer was not awaited (shadow timeouts of
    /// the tap itself).
    pub dropped: u64,
    /// Requests not eligible because of their size (body over `max_body`).
    pub skipped: u64,
    /// How late the thread that sent the copies and timed their answers ran (p99), when
    /// known: copies' latencies may include up to this much of waiting for CPU. `None`
    /// for a replay.
    #[serde(default)]
    pub mirror_delay_p99: Option<Duration>,
}

#[derive(Clone, Debug)]
struct StoredExample {
    request: String,
    live: String,
    candidate: String,
    live_body: Option<Arc<str>>,
    candidate_body: Option<Arc<str>>,
}

#[derive(Clone, Debug)]
struct FieldStats {
    path: String,
    kind: DiffKind,
    /// Requests whose live and candidate responses differ here.
    count: u64,
    /// Noise samples whose two live responses differ here.
    noise_count: u64,
    example: Option<StoredExample>,
}

#[derive(Clone, Debug)]
struct EndpointStats {
    name: String,
    compared: u64,
    failed: u64,
    noise_samples: u64,
    live: Histogram,
    candidate: Histogram,
    /// The live slot's answers to the noise copies (sent like the candidate's), and the
    /// candidate's answers to the same requests.
    live_copies: Histogram,
    candidate_paired: Histogram,
    fields: Vec<FieldStats>,
    field_index: HashMap<(String, DiffKind), u32>,
    /// Requests by their (sorted) set of differing field ids.
    sets: HashMap<Vec<u32>, u64>,
    /// Requests judged on arrival (past [`MAX_FIELD_SETS`]).
    judged_mismatched: u64,
    judged_noise: u64,
}

impl EndpointStats {
    fn new(name: String) -> EndpointStats {
        EndpointStats {
            name,
            compared: 0,
            failed: 0,
            noise_samples: 0,
            live: Histogram::default(),
            candidate: Histogram::default(),
            live_copies: Histogram::default(),
            candidate_paired: Histogram::default(),
            fields: Vec::new(),
            field_index: HashMap::new(),
            sets: HashMap::new(),
            judged_mismatched: 0,
            judged_noise: 0,
        }
    }

    fn field(&mut self, path: &str, kind: DiffKind) -> u32 {
        if let Some(&id) = self.field_index.get(&(path.to_string(), kind)) {
            return id;
        }
        let path = if self.fields.len() >= MAX_FIELDS_PER_ENDPOINT {
            if let Some(&id) = self.field_index.get(&(OTHER_FIELD.to_string(), kind)) {
                return id;
            }
            OTHER_FIELD
        } else {
            path
        };
        let id = self.fields.len() as u32;
        self.fields.push(FieldStats {
            path: path.to_string(),
            kind,
            count: 0,
            noise_count: 0,
            example: None,
        });
        self.field_index.insert((path.to_string(), kind), id);
        id
    }

    /// The field's noise rate: the endpoint's own, or the pooled one when the endpoint
    /// has no noise samples.
    fn noise_rate(&self, f: &FieldStats, pooled: &Pooled) -> Option<f64> {
        if self.noise_samples > 0 {
            Some(f.noise_count as f64 / self.noise_samples as f64)
        } else if pooled.samples > 0 {
            let n = pooled
                .counts
                .get(&(f.path.clone(), f.kind))
                .copied()
                .unwrap_or(0);
            Some(n as f64 / pooled.samples as f64)
        } else {
            None
        }
    }

    fn rate(&self, f: &FieldStats) -> f64 {
        if self.compared == 0 {
            0.0
        } else {
            f.count as f64 / self.compared as f64
        }
    }

    fn is_noise(&self, f: &FieldStats, noise: &NoiseOptions, pooled: &Pooled) -> bool {
        !noise.counts_against(self.rate(f), self.noise_rate(f, pooled).unwrap_or(0.0))
    }
}

/// Noise counts over all endpoints, for endpoints without noise samples of their own.
#[derive(Clone, Debug, Default)]
struct Pooled {
    samples: u64,
    /// Noise samples with a difference, per path and kind.
    counts: HashMap<(String, DiffKind), u64>,
}

/// Collects comparisons of samples into a [`Report`], with bounded memory (see the module
/// documentation). Not thread-safe by itself: the caller keeps it behind a lock or in
/// one task.
#[derive(Clone, Debug)]
pub struct Aggregator {
    compare: Compiled,
    noise: NoiseOptions,
    endpoints: Vec<EndpointStats>,
    index: HashMap<String, usize>,
    field_sets: usize,
    bodies_kept: usize,
    pooled: Pooled,
    live: Histogram,
    candidate: Histogram,
    live_copies: Histogram,
    candidate_paired: Histogram,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new(compare: CompareOptions, noise: NoiseOptions) -> Aggregator {
        Aggregator {
            compare: Compiled::new(&compare),
            noise,
            endpoints: Vec::new(),
            index: HashMap::new(),
            field_sets: 0,
            bodies_kept: 0,
            pooled: Pooled::default(),
            live: Histogram::default(),
            candidate: Histogram::default(),
            live_copies: Histogram::default(),
            candidate_paired: Histogram::default(),
        }
    }

    /// Adds one sample: compares live with candidate (and live with the noise copy when
    /// there is one) and counts the differences.
    ///
    /// A candidate that sent no response (`Err`) counts as *failed*, and as compared with a
    /// difference at path [`ERROR_FIELD`] (kind `value`), so that it goes through noise
    /// cancellation like any field: a candidate that times out as often as the live slot's
    /// own second copy does is not held against it. A noise copy that failed counts as
    /// noise at [`ERROR_FIELD`] the same way. Only candidate responses that arrived give
    /// candidate latencies.
    pub fn add(&mut self, sample: &Sample) {
        let req = &sample.request;
        let name = crate::endpoint(&req.method, &req.target);
        let ei = self.endpoint_index(name);
        self.live.record(sample.live.latency);

        let diffs = match &sample.candidate {
            Ok(c) => {
                self.candidate.record(c.latency);
                self.compare.compare(&sample.live, c)
            }
            Err(e) => vec![error_difference(&sample.live, e)],
        };
        let noise_diffs = sample.noise.as_ref().map(|n| match n {
            Ok(r) => self.compare.compare(&sample.live, r),
            Err(e) => vec![error_difference(&sample.live, e)],
        });
        // The same request to both, sent together: latencies measured alike.
        let paired = match (&sample.candidate, &sample.noise) {
            (Ok(c), Some(Ok(n))) => Some((c.latency, n.latency)),
            _ => None,
        };
        if let Some((c, n)) = paired {
            self.candidate_paired.record(c);
            self.live_copies.record(n);
        }

        let keep_bodies = self.bodies_kept < MAX_EXAMPLES_WITH_BODIES;
        let mut bodies: Option<(Option<Arc<str>>, Option<Arc<str>>)> = None;
        let e = &mut self.endpoints[ei];
        e.compared += 1;
        e.live.record(sample.live.latency);
        match &sample.candidate {
            Ok(c) => e.candidate.record(c.latency),
            Err(_) => e.failed += 1,
        }
        if let Some((c, n)) = paired {
            e.candidate_paired.record(c);
            e.live_copies.record(n);
        }

        let mut ids: Vec<u32> = Vec::with_capacity(diffs.len());
        for d in &diffs {
            let id = e.field(&d.path, d.kind);
            if ids.contains(&id) {
                continue;
            }
            ids.push(id);
            let f = &mut e.fields[id as usize];
            f.count += 1;
            if f.example.is_none() {
                let (live_body, candidate_body) = if keep_bodies {
                    bodies
                        .get_or_insert_with(|| {
                            (
                                Some(example_body(&sample.live, &self.compare)),
                                sample
                                    .candidate
                                    .as_ref()
                                    .ok()
                                    .map(|c| example_body(c, &self.compare)),
                            )
                        })
                        .clone()
                } else {
                    (None, None)
                };
                f.example = Some(StoredExample {
                    request: compare::short(&format!("{} {}", req.method, req.target)),
                    live: d.live.clone(),
                    candidate: d.candidate.clone(),
                    live_body,
                    candidate_body,
                });
            }
        }
        if bodies.is_some() {
            self.bodies_kept += 1;
        }

        if let Some(nd) = noise_diffs {
            e.noise_samples += 1;
            self.pooled.samples += 1;
            let mut seen: Vec<u32> = Vec::with_capacity(nd.len());
            for d in &nd {
                let id = e.field(&d.path, d.kind);
                if !seen.contains(&id) {
                    seen.push(id);
                    let f = &mut e.fields[id as usize];
                    f.noise_count += 1;
                    // Bounded like the fields: one entry per endpoint field at most.
                    *self
                        .pooled
                        .counts
                        .entry((f.path.clone(), f.kind))
                        .or_insert(0) += 1;
                }
            }
        }

        if ids.is_empty() {
            return;
        }
        ids.sort_unstable();
        if let Some(n) = e.sets.get_mut(&ids) {
            *n += 1;
        } else if self.field_sets < MAX_FIELD_SETS {
            e.sets.insert(ids, 1);
            self.field_sets += 1;
        } else {
            let (noise, pooled) = (&self.noise, &self.pooled);
            let mismatched = ids
                .iter()
                .any(|&id| !e.is_noise(&e.fields[id as usize], noise, pooled));
            if mismatched {
                e.judged_mismatched += 1;
            } else {
                e.judged_noise += 1;
            }
        }
    }

    fn endpoint_index(&mut self, name: String) -> usize {
        if let Some(&i) = self.index.get(&name) {
            return i;
        }
        let name = if self.endpoints.len() >= MAX_ENDPOINTS {
            if let Some(&i) = self.index.get(OTHER_ENDPOINT) {
                return i;
            }
            OTHER_ENDPOINT.to_string()
        } else {
            name
        };
        let i = self.endpoints.len();
        self.endpoints.push(EndpointStats::new(name.clone()));
        self.index.insert(name, i);
        i
    }

    /// The report on everything added so far, with the data plane's `counts`.
    ///
    /// `requests` is `counts.mirrored` (at least the samples compared); `dropped` is
    /// `counts.dropped + counts.skipped` (the spec's "not mirrored because of load or
    /// size"), with `skipped` also on its own.
    pub fn report(&self, counts: Counts) -> Report {
        let mut endpoints: Vec<EndpointReport> = self
            .endpoints
            .iter()
            .map(|e| self.endpoint_report(e, counts.mirror_delay_p99))
            .collect();
        endpoints.sort_by(|a, b| {
            b.mismatched
                .cmp(&a.mismatched)
                .then(b.compared.cmp(&a.compared))
                .then_with(|| a.endpoint.cmp(&b.endpoint))
        });
        let compared: u64 = endpoints.iter().map(|e| e.compared).sum();
        let mismatched: u64 = endpoints.iter().map(|e| e.mismatched).sum();
        let delay = counts.mirror_delay_p99;
        let latency_ms = pair(
            &self.live,
            &self.candidate,
            &self.live_copies,
            &self.candidate_paired,
            delay,
        );
        Report {
            requests: counts.mirrored.max(compared),
            compared,
            mismatched,
            noise: endpoints.iter().map(|e| e.noise).sum(),
            dropped: counts.dropped + counts.skipped,
            skipped: counts.skipped,
            failed: endpoints.iter().map(|e| e.failed).sum(),
            noise_samples: endpoints.iter().map(|e| e.noise_samples).sum(),
            mismatch_rate: rate(mismatched, compared),
            latency_ratio_p99: crate::report::ratio_p99(&latency_ms),
            latency_ms,
            latency_histogram: latency_histogram(&self.live, &self.candidate),
            endpoints,
        }
    }

    fn endpoint_report(&self, e: &EndpointStats, delay: Option<Duration>) -> EndpointReport {
        let noise_flags: Vec<bool> = e
            .fields
            .iter()
            .map(|f| e.is_noise(f, &self.noise, &self.pooled))
            .collect();
        let (mut mismatched, mut noise) = (e.judged_mismatched, e.judged_noise);
        for (ids, n) in &e.sets {
            if ids.iter().any(|&id| !noise_flags[id as usize]) {
                mismatched += n;
            } else {
                noise += n;
            }
        }
        let mut fields: Vec<FieldReport> = e
            .fields
            .iter()
            .zip(&noise_flags)
            .filter(|(f, _)| f.count > 0)
            .map(|(f, &is_noise)| FieldReport {
                path: f.path.clone(),
                kind: f.kind,
                count: f.count,
                noise: is_noise,
                rate: e.rate(f),
                noise_rate: e.noise_rate(f, &self.pooled),
                example: f.example.as_ref().map(|x| Example {
                    request: x.request.clone(),
                    live: x.live.clone(),
                    candidate: x.candidate.clone(),
                    live_body: x.live_body.as_deref().map(str::to_string),
                    candidate_body: x.candidate_body.as_deref().map(str::to_string),
                }),
            })
            .collect();
        fields.sort_by(|a, b| {
            a.noise
                .cmp(&b.noise)
                .then(b.count.cmp(&a.count))
                .then_with(|| a.path.cmp(&b.path))
                .then(a.kind.cmp(&b.kind))
        });
        let latency_ms = pair(
            &e.live,
            &e.candidate,
            &e.live_copies,
            &e.candidate_paired,
            delay,
        );
        EndpointReport {
            endpoint: e.name.clone(),
            compared: e.compared,
            mismatched,
            noise,
            failed: e.failed,
            noise_samples: e.noise_samples,
            mismatch_rate: rate(mismatched, e.compared),
            latency_ratio_p99: crate::report::ratio_p99(&latency_ms),
            latency_ms,
            fields,
        }
    }
}

fn rate(n: u64, of: u64) -> Option<f64> {
    (of > 0).then(|| n.min(of) as f64 / of as f64)
}

/// The quantiles; the paired ones only from [`MIN_LIVE_COPIES`] pairs on.
fn pair(
    live: &Histogram,
    candidate: &Histogram,
    copies: &Histogram,
    paired: &Histogram,
    delay: Option<Duration>,
) -> LatencyPair {
    let q = |h: &Histogram| Quantiles {
        p50: h.quantile_ms(0.5),
        p99: h.quantile_ms(0.99),
    };
    let enough = copies.total() >= MIN_LIVE_COPIES;
    LatencyPair {
        live: q(live),
        candidate: q(candidate),
        live_copies: enough.then(|| q(copies)),
        candidate_paired: enough.then(|| q(paired)),
        mirror_delay_p99: delay.map(|d| d.as_secs_f64() * 1e3),
    }
}

/// How many requests copied to both the candidate and live (the noise share) make their
/// latencies the gate's comparison: measured alike (same thread, same moment, same pool),
/// so that the wait of mirroring itself is not blamed on the candidate. Fewer: the
/// candidate's copies against the users' own latency. 50, so that a p99 is not one
/// outlier.
pub const MIN_LIVE_COPIES: u64 = 50;

/// Both histograms over the range of buckets that hold anything (the overflow bucket
/// folded into the last one).
fn latency_histogram(live: &Histogram, candidate: &Histogram) -> LatencyHistogram {
    let last = histogram::BUCKETS - 1;
    let fold = |h: &Histogram| {
        let mut c: Vec<u64> = h.counts()[..last].to_vec();
        if let Some(l) = c.last_mut() {
            *l += h.counts()[last];
        }
        c
    };
    let (l, c) = (fold(live), fold(candidate));
    let used = |i: &usize| l[*i] > 0 || c[*i] > 0;
    let (Some(first), Some(end)) = ((0..last).find(used), (0..last).rev().find(used)) else {
        return LatencyHistogram::default();
    };
    LatencyHistogram {
        bounds_ms: (first..=end)
            .map(|i| histogram::bound_ms(i).unwrap_or(f64::MAX))
            .collect(),
        live: l[first..=end].to_vec(),
        candidate: c[first..=end].to_vec(),
    }
}

fn error_difference(live: &ResponseCopy, error: &str) -> Difference {
    Difference {
        path: ERROR_FIELD.into(),
        kind: DiffKind::Value,
        live: format!("{} response", live.status),
        candidate: compare::short(error),
    }
}

/// A response as an example shows it: status line, the headers that are compared, a blank
/// line, and the body (JSON pretty-printed), cut at [`MAX_EXAMPLE_BODY`] bytes.
fn example_body(r: &ResponseCopy, compare: &Compiled) -> Arc<str> {
    let mut s = format!("HTTP {}\n", r.status);
    for (name, value) in &r.headers {
        if !compare.header_ignored(&name.to_ascii_lowercase()) {
            s.push_str(name);
            s.push_str(": ");
            s.push_str(&String::from_utf8_lossy(value));
            s.push('\n');
        }
    }
    s.push('\n');
    let body = if r.body_truncated {
        None
    } else if let Ok(v) = serde_json::from_slice::<Value>(&r.body) {
        serde_json::to_string_pretty(&v).ok()
    } else {
        std::str::from_utf8(&r.body)
            .ok()
            .filter(|t| !t.contains('\0'))
            .map(str::to_string)
    };
    match body {
        Some(b) => s.push_str(&b),
        None => s.push_str(&format!(
            "({} bytes{}, fnv64 {:016x})",
            r.body.len(),
            if r.body_truncated { ", truncated" } else { "" },
            compare::fnv64(&r.body)
        )),
    }
    if s.len() > MAX_EXAMPLE_BODY {
        let mut cut = MAX_EXAMPLE_BODY;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("\n… (cut)");
    }
    Arc::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RequestCopy;
    use crate::Gate;
    use bytes::Bytes;
    use std::time::{Duration, SystemTime};

    /// A deterministic pseudo-random generator (xorshift).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn request(method: &str, target: &str) -> Arc<RequestCopy> {
        Arc::new(RequestCopy {
            id: "0123456789abcdef01234567".into(),
            started: SystemTime::UNIX_EPOCH,
            method: method.into(),
            target: target.into(),
            headers: vec![("host".into(), Bytes::from_static(b"shop"))],
            body: Bytes::new(),
            body_truncated: false,
        })
    }

    /// What a version of the shop answers: every answer carries a timestamp, a random
    /// request id in the body and a random trace header (noise); `bug` changes things.
    #[derive(Clone, Copy, PartialEq)]
    enum Bug {
        None,
        PriceAsString,
        OrdersFail,
        CacheHeader,
    }

    fn answer(rng: &mut Rng, target: &str, bug: Bug, latency_ms: u64) -> ResponseCopy {
        let (status, body) = if let Some(id) = target.strip_prefix("/items/") {
            let price = if bug == Bug::PriceAsString {
                serde_json::json!("12.50")
            } else {
                serde_json::json!(12.5)
            };
            (
                200,
                serde_json::json!({"id": id, "price": price, "name": "mug"}),
            )
        } else if target == "/orders" {
            if bug == Bug::OrdersFail {
                (500, serde_json::json!({"error": "boom"}))
            } else {
                (200, serde_json::json!({"orders": [1, 2, 3]}))
            }
        } else {
            (200, serde_json::json!({"items": [{"id": 1}, {"id": 2}]}))
        };
        let mut body = body;
        body["meta"] = serde_json::json!({
            "generated_at": format!("2025-01-01T00:00:{:02}.{:06}Z", rng.next() % 60, rng.next() % 1_000_000),
            "request": format!("{:016x}", rng.next()),
        });
        let mut headers = vec![
            (
                "content-type".to_string(),
                Bytes::from_static(b"application/json"),
            ),
            (
                "date".to_string(),
                Bytes::from(format!("Mon, {}", rng.next() % 100)),
            ),
            (
                "x-trace".to_string(),
                Bytes::from(format!("{:x}", rng.next())),
            ),
        ];
        let cache = if bug == Bug::CacheHeader {
            "no-store"
        } else {
            "max-age=60"
        };
        headers.push(("cache-control".to_string(), Bytes::from(cache)));
        ResponseCopy {
            status,
            headers,
            body: Bytes::from(body.to_string()),
            body_truncated: false,
            latency: Duration::from_millis(latency_ms),
        }
    }

    const TARGETS: [&str; 4] = ["/items/1", "/items/22", "/orders", "/list?page=2"];

    /// `n` requests round robin over TARGETS, every `noise_every`-th with a noise copy (none
    /// when 0).
    fn run(bug: Bug, n: usize, noise_every: usize) -> Report {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut agg = Aggregator::new(CompareOptions::default(), NoiseOptions::default());
        for i in 0..n {
            let target = TARGETS[i % TARGETS.len()];
            let live = answer(&mut rng, target, Bug::None, 10);
            let candidate = answer(&mut rng, target, bug, 12);
            let noise = (noise_every > 0 && i % noise_every == 0)
                .then(|| Ok(answer(&mut rng, target, Bug::None, 10)));
            agg.add(&Sample {
                request: request("GET", target),
                live,
                candidate: Ok(candidate),
                noise,
            });
        }
        agg.report(Counts {
            mirrored: n as u64 + 5,
            dropped: 3,
            skipped: 2,
            mirror_delay_p99: None,
        })
    }

    fn endpoint<'a>(r: &'a Report, name: &str) -> &'a EndpointReport {
        r.endpoints
            .iter()
            .find(|e| e.endpoint == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn identical_candidate_with_timestamps_and_random_ids_has_no_mismatch() {
        // 1 request in 20 gets a noise copy: rates, not counts, cancel the noise.
        let r = run(Bug::None, 400, 19);
        assert_eq!(r.compared, 400);
        assert_eq!(r.mismatched, 0, "{}", r.render_text());
        assert_eq!(r.noise, 400);
        assert_eq!(r.noise_samples, 22);
        assert_eq!(r.mismatch_rate, Some(0.0));
        let e = endpoint(&r, "GET /items/{id}");
        let paths: Vec<(&str, bool)> = e
            .fields
            .iter()
            .map(|f| (f.path.as_str(), f.noise))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("body/meta/generated_at", true),
                ("body/meta/request", true),
                ("header.x-trace", true),
            ]
        );
        assert!(e
            .fields
            .iter()
            .all(|f| f.noise_rate == Some(1.0) && f.rate == 1.0));
        assert!(r.render_text().contains("cancelled as noise"));
        assert!(
            matches!(r.gate(0.01, 1.5, 100), Gate::Pass(_)),
            "{:?}",
            r.gate(0.01, 1.5, 100)
        );
    }

    #[test]
    fn endpoints_without_noise_samples_use_pooled_noise_rates() {
        // Every 20th request is a noise sample: all of them GET /items/1.
        let r = run(Bug::None, 400, 20);
        assert_eq!(endpoint(&r, "GET /items/{id}").noise_samples, 20);
        let orders = endpoint(&r, "GET /orders");
        assert_eq!(orders.noise_samples, 0);
        assert_eq!((r.mismatched, r.noise), (0, 400));
        assert!(orders
            .fields
            .iter()
            .all(|f| f.noise && f.noise_rate == Some(1.0)));
        // ... which does not hide a field that is not noisy anywhere.
        let r = run(Bug::OrdersFail, 400, 20);
        assert_eq!(endpoint(&r, "GET /orders").mismatched, 100);
    }

    #[test]
    fn without_noise_samples_noise_counts_against_the_candidate() {
        let r = run(Bug::None, 100, 0);
        assert_eq!(r.noise_samples, 0);
        assert_eq!(r.mismatched, 100);
        assert!(r.endpoints[0]
            .fields
            .iter()
            .all(|f| !f.noise && f.noise_rate.is_none()));
    }

    #[test]
    fn one_changed_field_on_one_route_is_reported_with_endpoint_and_path() {
        let r = run(Bug::PriceAsString, 400, 19);
        assert_eq!(r.mismatched, 200, "{}", r.render_text());
        assert_eq!(r.endpoints[0].endpoint, "GET /items/{id}");
        let e = endpoint(&r, "GET /items/{id}");
        assert_eq!((e.compared, e.mismatched, e.noise), (200, 200, 0));
        let f = &e.fields[0];
        assert_eq!(
            (f.path.as_str(), f.kind, f.count, f.noise),
            ("body/price", DiffKind::Type, 200, false)
        );
        let x = f.example.as_ref().unwrap();
        assert_eq!(
            (x.request.as_str(), x.live.as_str(), x.candidate.as_str()),
            ("GET /items/1", "12.5", "\"12.50\"")
        );
        assert!(x.live_body.as_deref().unwrap().contains("\"price\": 12.5"));
        assert!(x
            .candidate_body
            .as_deref()
            .unwrap()
            .contains("\"price\": \"12.50\""));
        for other in ["GET /orders", "GET /list"] {
            assert_eq!(endpoint(&r, other).mismatched, 0, "{other}");
        }
        match r.gate(0.01, 1.5, 100) {
            Gate::Fail(s) => {
                assert!(
                    s.contains("200 of 400 compared requests (50.0%) differ"),
                    "{s}"
                );
                assert!(s.contains("GET /items/{id} body/price (type, 200×)"), "{s}");
            }
            g => panic!("{g:?}"),
        }
    }

    #[test]
    fn changed_status_and_header_are_reported() {
        let r = run(Bug::OrdersFail, 400, 19);
        let e = endpoint(&r, "GET /orders");
        assert_eq!(e.mismatched, 100);
        let got: Vec<(&str, DiffKind, bool)> = e
            .fields
            .iter()
            .filter(|f| !f.noise)
            .map(|f| (f.path.as_str(), f.kind, f.noise))
            .collect();
        assert_eq!(
            got,
            vec![
                ("body/error", DiffKind::Extra, false),
                ("body/orders", DiffKind::Missing, false),
                ("status", DiffKind::Value, false),
            ]
        );
        assert_eq!(r.mismatched, 100);

        let r = run(Bug::CacheHeader, 400, 19);
        assert_eq!(r.mismatched, 400);
        let e = endpoint(&r, "GET /list");
        let f = &e.fields[0];
        assert_eq!(
            (f.path.as_str(), f.kind, f.noise),
            ("header.cache-control", DiffKind::Value, false)
        );
        let x = f.example.as_ref().unwrap();
        assert_eq!(
            (x.live.as_str(), x.candidate.as_str()),
            ("max-age=60", "no-store")
        );
    }

    /// Copies that wait (mirroring on a busy machine): candidate and live copies 300 ms,
    /// users' own answers 10 ms. Once enough requests were copied to both, the gate
    /// compares those pairs, so the candidate is not blamed for the wait; with fewer it is
    /// the users' latency (and the ratio shows the wait). A candidate that is slower on
    /// the same copies is still caught.
    #[test]
    fn requests_copied_to_both_are_the_latency_comparison_once_there_are_enough() {
        let mut rng = Rng(7);
        let mut add = |agg: &mut Aggregator, noise: bool, candidate_ms: u64| {
            let live = answer(&mut rng, "/orders", Bug::None, 10);
            let candidate = answer(&mut rng, "/orders", Bug::None, candidate_ms);
            let noise = noise.then(|| Ok(answer(&mut rng, "/orders", Bug::None, 300)));
            agg.add(&Sample {
                request: request("GET", "/orders"),
                live,
                candidate: Ok(candidate),
                noise,
            });
        };
        let counts = Counts {
            mirrored: 200,
            dropped: 0,
            skipped: 0,
            mirror_delay_p99: None,
        };
        let mut agg = Aggregator::new(CompareOptions::default(), NoiseOptions::default());
        for i in 0..200 {
            add(&mut agg, i < MIN_LIVE_COPIES as usize - 1, 300);
        }
        let r = agg.report(counts);
        assert_eq!(r.latency_ms.live_copies, None, "one pair short");
        assert!(r.latency_ratio_p99.unwrap() > 20.0);
        add(&mut agg, true, 300);
        let r = agg.report(counts);
        assert!(r.latency_ms.live_copies.is_some() && r.latency_ms.candidate_paired.is_some());
        let ratio = r.latency_ratio_p99.unwrap();
        assert!((0.9..1.1).contains(&ratio), "{ratio}");
        let e = endpoint(&r, "GET /orders");
        assert!(e.latency_ratio_p99.is_some_and(|x| (0.9..1.1).contains(&x)));
        assert!(
            matches!(r.gate(0.01, 1.5, 10), Gate::Pass(_)),
            "{:?}",
            r.gate(0.01, 1.5, 10)
        );

        // Twice as slow as live on the same copies: the gate fails.
        let mut agg = Aggregator::new(CompareOptions::default(), NoiseOptions::default());
        for _ in 0..MIN_LIVE_COPIES {
            add(&mut agg, true, 600);
        }
        let r = agg.report(counts);
        assert!(
            matches!(r.gate(0.01, 1.5, 10), Gate::Fail(_)),
            "{:?}",
            r.gate(0.01, 1.5, 10)
        );
    }

    #[test]
    fn totals_latency_and_counts() {
        let r = run(Bug::None, 40, 4);
        assert_eq!((r.requests, r.dropped, r.skipped, r.failed), (45, 5, 2, 0));
        let (l, c) = (
            r.latency_ms.live.p50.unwrap(),
            r.latency_ms.candidate.p50.unwrap(),
        );
        assert!(
            (10.0..11.0).contains(&l) && (12.0..13.3).contains(&c),
            "{l} {c}"
        );
        let ratio = r.latency_ratio_p99.unwrap();
        assert!((1.1..1.3).contains(&ratio), "{ratio}");
        assert_eq!(r.latency_histogram.live.iter().sum::<u64>(), 40);
        assert_eq!(r.latency_histogram.candidate.iter().sum::<u64>(), 40);
        assert_eq!(
            r.latency_histogram.bounds_ms.len(),
            r.latency_histogram.live.len()
        );
    }

    #[test]
    fn margins() {
        let n = NoiseOptions::default();
        // (raw rate, noise rate, counts against the candidate)
        let table = [
            (1.0, 1.0, false),
            (0.5, 0.5, false),
            (0.59, 0.5, false),
            (0.61, 0.5, true),
            (0.01, 0.0, true),
            (0.0002, 0.0, false),
            (0.0004, 0.0, true),
            (0.0, 0.0, false),
            (0.3, 1.0, false),
        ];
        for (raw, noise, want) in table {
            assert_eq!(n.counts_against(raw, noise), want, "{raw} {noise}");
        }
    }

    #[test]
    fn a_partly_noisy_field_counts_only_above_its_noise_rate() {
        // Live answers differ from each other half the time; the candidate differs always.
        let mut agg = Aggregator::new(CompareOptions::default(), NoiseOptions::default());
        let resp = |v: u64| ResponseCopy {
            status: 200,
            headers: vec![(
                "content-type".into(),
                Bytes::from_static(b"application/json"),
            )],
            body: Bytes::from(format!("{{\"v\":{v}}}")),
            body_truncated: false,
            latency: Duration::from_millis(1),
        };
        for i in 0..100u64 {
            agg.add(&Sample {
                request: request("GET", "/v"),
                live: resp(0),
                candidate: Ok(resp(if i % 2 == 0 { 0 } else { 1 })),
                noise: Some(Ok(resp(i % 2))),
            });
        }
        let r = agg.report(Counts::default());
        assert_eq!((r.mismatched, r.noise), (0, 50));
        let mut agg2 = Aggregator::new(CompareOptions::default(), NoiseOptions::default());
        for i in 0..100u64 {
            agg2.add(&Sample {
                request: request("GET", "/v"),
                live: resp(0),
                candidate: Ok(resp(1)),
                noise: Some(Ok(resp(i % 2))),
            });
        }
        let r = agg2.report(Counts::default());
        assert_eq!((r.mismatched, r.noise), (100, 0));
        let f = &r.endpoints[0].fields[0];
        assert_eq!((f.rate, f.noise_rate), (1.0, Some(0.5)));
    }

    #[test]
    fn candidate_failures_count_as_failed_and_error() {
        let mut agg = Aggregator::new(CompareOptions::default(), NoiseOptions::default());
        let mut rng = Rng(7);
        for i in 0..10 {
            let live = answer(&mut rng, "/orders", Bug::None, 5);
            let candidate = if i < 3 {
                Err("timed out after 5s".to_string())
            } else {
                Ok(live.clone())
            };
            agg.add(&Sample {
                request: request("GET", "/orders"),
                live,
                candidate,
                noise: None,
            });
        }
        let r = agg.report(Counts::default());
        assert_eq!((r.compared, r.failed, r.mismatched), (10, 3, 3));
        let f = &r.endpoints[0].fields[0];
        assert_eq!((f.path.as_str(), f.count), (ERROR_FIELD, 3));
        let x = f.example.as_ref().unwrap();
        assert_eq!(
            (x.live.as_str(), x.candidate.as_str()),
            ("200 response", "timed out after 5s")
        );
        assert!(x.candidate_body.is_none());
        assert_eq!(r.latency_histogram.candidate.iter().sum::<u64>(), 7);
    }

    #[test]
    fn endpoints_and_fields_are_capped() {
        let mut agg = Aggregator::new(CompareOptions::default(), NoiseOptions::default());
        let resp = |body: String| ResponseCopy {
            status: 200,
            headers: vec![],
            body: Bytes::from(body),
            body_truncated: false,
            latency: Duration::from_millis(1),
        };
        for i in 0..MAX_ENDPOINTS + 10 {
            let target = format!("/e-{i}");
            agg.add(&Sample {
                request: request("GET", &target),
                live: resp("{}".into()),
                candidate: Ok(resp("{}".into())),
                noise: None,
            });
        }
        // One endpoint with more differing fields than it keeps.
        for i in 0..(MAX_FIELDS_PER_ENDPOINT as u64 + 20) / 40 + 1 {
            let a: Vec<String> = (0..40).map(|k| format!("\"k{}_{k}\":1", i)).collect();
            let b: Vec<String> = (0..40).map(|k| format!("\"k{}_{k}\":2", i)).collect();
            agg.add(&Sample {
                request: request("GET", "/e-0"),
                live: resp(format!("{{{}}}", a.join(","))),
                candidate: Ok(resp(format!("{{{}}}", b.join(",")))),
                noise: None,
            });
        }
        let r = agg.report(Counts::default());
        assert_eq!(r.endpoints.len(), MAX_ENDPOINTS + 1);
        assert_eq!(endpoint(&r, OTHER_ENDPOINT).compared, 10);
        let e = endpoint(&r, "GET /e-0");
        assert!(e.fields.len() <= MAX_FIELDS_PER_ENDPOINT + 1);
        assert!(e.fields.iter().any(|f| f.path == OTHER_FIELD));
        assert_eq!(e.mismatched, 7);
    }

    #[test]
    fn past_the_field_set_cap_requests_are_judged_on_arrival() {
        let mut agg = Aggregator::new(CompareOptions::default(), NoiseOptions::default());
        agg.field_sets = MAX_FIELD_SETS;
        let resp = |v: u64| ResponseCopy {
            status: 200,
            headers: vec![],
            body: Bytes::from(format!("{{\"v\":{v}}}")),
            body_truncated: false,
            latency: Duration::from_millis(1),
        };
        for _ in 0..5 {
            agg.add(&Sample {
                request: request("GET", "/v"),
                live: resp(1),
                candidate: Ok(resp(2)),
                noise: None,
            });
        }
        let r = agg.report(Counts::default());
        assert_eq!(r.mismatched, 5);
        assert!(agg.endpoints[0].sets.is_empty());
    }
}
