//! The bake rules: one evaluation of a window of requests against `[bake]`.

use std::time::Duration;

use turnout_core::Analysis;

use crate::options::BakeOptions;

/// What one evaluation found.
#[derive(Clone, Debug, PartialEq)]
pub enum Tick {
    /// Too few requests in the window to judge.
    NoData(Analysis),
    /// Enough requests, and every rule passed.
    Pass(Analysis),
    /// A rule was broken: why, with the numbers.
    Breach(String, Analysis),
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Evaluates a window: `requests` and `errors` in it, its p99, and the previous
/// version's p99 before the switch.
pub fn evaluate(
    rules: &BakeOptions,
    requests: u64,
    errors: u64,
    p99: Option<Duration>,
    baseline_p99: Option<Duration>,
    weight: u8,
) -> Tick {
    let analysis = Analysis {
        requests,
        errors,
        error_rate: (requests > 0).then(|| errors as f64 / requests as f64),
        p99_ms: p99.map(ms),
        baseline_p99_ms: baseline_p99.map(ms),
        weight,
        elapsed_ms: 0,
        duration_ms: 0,
    };
    if requests < rules.min_requests.max(1) {
        return Tick::NoData(analysis);
    }
    let rate = errors as f64 / requests as f64;
    if rate > rules.max_error_rate {
        let why = format!(
            "error rate {:.1}% ({errors} of {requests} requests failed) is above max_error_rate {:.1}%",
            rate * 100.0,
            rules.max_error_rate * 100.0
        );
        return Tick::Breach(why, analysis);
    }
    if let (Some(max), Some(p99)) = (rules.max_p99, p99) {
        if p99 > max {
            let why = format!(
                "p99 latency {:.0} ms (over {requests} requests) is above max_p99 {:.0} ms",
                ms(p99),
                ms(max)
            );
            return Tick::Breach(why, analysis);
        }
    }
    if let (Some(ratio), Some(p99), Some(base)) = (rules.max_p99_ratio, p99, baseline_p99) {
        let base_ms = ms(base).max(1.0);
        if ms(p99) > base_ms * ratio {
            let why = format!(
                "p99 latency {:.0} ms is {:.1}× the previous version's {:.0} ms, above max_p99_ratio {ratio}",
                ms(p99),
                ms(p99) / base_ms,
                ms(base)
            );
            return Tick::Breach(why, analysis);
        }
    }
    Tick::Pass(analysis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> BakeOptions {
        BakeOptions {
            max_error_rate: 0.01,
            max_p99: Some(Duration::from_millis(300)),
            max_p99_ratio: Some(2.0),
            min_requests: 20,
            ..BakeOptions::default()
        }
    }

    #[test]
    fn the_rules_in_order() {
        let ms = Duration::from_millis;
        // (requests, errors, p99, baseline, expected kind, text in the reason)
        let cases: &[(u64, u64, Option<Duration>, Option<Duration>, &str, &str)] = &[
            (19, 19, Some(ms(900)), None, "nodata", ""),
            (0, 0, None, None, "nodata", ""),
            (100, 1, Some(ms(10)), Some(ms(10)), "pass", ""),
            (
                100,
                2,
                Some(ms(10)),
                None,
                "breach",
                "error rate 2.0% (2 of 100",
            ),
            (100, 30, Some(ms(10)), None, "breach", "max_error_rate 1.0%"),
            (100, 0, Some(ms(301)), None, "breach", "p99 latency 301 ms"),
            (
                100,
                0,
                Some(ms(250)),
                Some(ms(100)),
                "breach",
                "2.5× the previous",
            ),
            (100, 0, Some(ms(150)), Some(ms(100)), "pass", ""),
            // A baseline under 1 ms does not make any latency a breach.
            (
                100,
                0,
                Some(ms(2)),
                Some(Duration::from_micros(100)),
                "pass",
                "",
            ),
        ];
        for (requests, errors, p99, base, kind, text) in cases {
            let got = evaluate(&rules(), *requests, *errors, *p99, *base, 100);
            let (got_kind, why) = match &got {
                Tick::NoData(_) => ("nodata", String::new()),
                Tick::Pass(_) => ("pass", String::new()),
                Tick::Breach(why, _) => ("breach", why.clone()),
            };
            assert_eq!(
                got_kind, *kind,
                "{requests} {errors} {p99:?} {base:?}: {got:?}"
            );
            assert!(why.contains(text), "{why}");
        }
    }
}
