//! `GET /metrics`: Prometheus metrics (OpenMetrics text), through `prometheus-client`.
//!
//! Nothing is counted here: the data plane counts each request once in its per-slot
//! atomics (`SlotStats`, no map lookup or lock on the request path), and a custom
//! [`Collector`] reads them at scrape time, with the routing table, the controller's
//! switch and shadow counters and the running deployment. Counts are exact: every request
//! routed to a slot is in exactly one `turnout_requests_total` series and one histogram
//! observation, under the version its slot had (a request still in flight when its slot's
//! version changes counts for the new one).
//!
//! Metrics (the SPEC's names):
//! - `turnout_requests_total{slot,version,code_class}` (counter; code_class `1xx`..`5xx`,
//!   a request that got no response from the upstream counts as turnout's own 5xx);
//! - `turnout_request_duration_seconds{slot,version}` (histogram; bounds 100 µs × 1.1^5k,
//!   up to about 60 s);
//! - `turnout_upstream_healthy{slot,addr}` (gauge, 1 healthy, 0 not);
//! - `turnout_live_slot{slot}` (gauge, 1 for the live slot);
//! - `turnout_switches_total` (counter; routing changes that moved the live slot);
//! - `turnout_shadow_requests_total{outcome}` (counter; mirrored, dropped, skipped,
//!   failed);
//! - `turnout_fleet_leader`, `turnout_fleet_etcd_connected` (gauges, with
//!   `[state] backend = "etcd"` only);
//! - `turnout_deployment_stage{stage}` (gauge, 1 for the running deployment's stage,
//!   `none` when no deployment runs);
//! - `turnout_access_log_dropped_total` (counter; access log lines dropped, queue full);
//! - `turnout_client_connections` (gauge; client connections open now),
//!   `turnout_connections_refused_total` (counter; refused past `max_connections`),
//!   `process_resident_memory_bytes` (gauge; the process's RSS, Linux).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use turnout_core::{SlotName, Stage};
use turnout_pipeline::Controller;
use turnout_proxy::{Counts, STATUS_CLASSES};

use crate::AdminState;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every exported histogram bound is this many of the data plane's buckets (1.1× each):
/// bounds 1.61× apart, 29 of them, each count exact.
const BUCKET_STEP: usize = 5;

/// The stages `turnout_deployment_stage` has a series for, in pipeline order.
const STAGES: [Stage; 10] = [
    Stage::PreDeploy,
    Stage::Provision,
    Stage::Health,
    Stage::Verify,
    Stage::Shadow,
    Stage::Gate,
    Stage::Switch,
    Stage::Bake,
    Stage::Decommission,
    Stage::Rollback,
];

/// `GET /metrics` (no token: metrics hold no secrets, and scrapers rarely carry one).
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AdminState>) -> Response {
    match render(&state.controller) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        )
            .into_response(),
    }
}

/// The metrics of `controller`'s router, as OpenMetrics text.
pub fn render(controller: &Arc<Controller>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(TurnoutCollector {
        controller: controller.clone(),
    }));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

struct TurnoutCollector {
    controller: Arc<Controller>,
}

impl std::fmt::Debug for TurnoutCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnoutCollector").finish_non_exhaustive()
    }
}

/// This process's resident memory, from `/proc/self/status` (Linux; `None` elsewhere).
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    if let [(&[], value)] = series {
        return ConstCounter::new(*value).encode(metric);
    }
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Vec<(&str, &str)>, i64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    if let [(labels, value)] = series {
        if labels.is_empty() {
            return ConstGauge::new(*value).encode(metric);
        }
    }
    for (labels, value) in series {
        ConstGauge::new(*value).encode(metric.encode_family(&labels.as_slice())?)?;
    }
    Ok(())
}

/// The histogram buckets of `c` at the exported bounds: (upper bound in seconds, count
/// in that bucket, not cumulative), the last one `+Inf` (`f64::MAX`).
fn buckets(c: &Counts) -> Vec<(f64, u64)> {
    let bounds = Counts::bucket_bounds();
    let mut out = Vec::with_capacity(bounds.len() / BUCKET_STEP + 2);
    let mut acc = 0u64;
    for (i, n) in c.buckets.iter().enumerate() {
        acc += n;
        if i < bounds.len() && i % BUCKET_STEP == 0 {
            out.push((bounds[i] as f64 / 1e9, acc));
            acc = 0;
        }
    }
    // prometheus-client writes `le="+Inf"` for f64::MAX.
    out.push((f64::MAX, acc));
    out
}

impl Collector for TurnoutCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let proxy = self.controller.proxy();
        let by_slot: Vec<(SlotName, String, Counts)> = SlotName::ALL
            .iter()
            .flat_map(|&slot| {
                proxy
                    .version_counts(slot)
                    .into_iter()
                    .map(move |(v, c)| (slot, v.as_deref().unwrap_or("").to_owned(), c))
            })
            .collect();

        // Requests by slot, version and status class.
        {
            let mut metric = encoder.encode_descriptor(
                "turnout_requests",
                "Requests routed to a slot, by the slot's version and the response's status class.",
                None,
                MetricType::Counter,
            )?;
            for (slot, version, c) in &by_slot {
                for (class, n) in STATUS_CLASSES.iter().zip(c.classes) {
                    let labels = [
                        ("slot", slot.as_str()),
                        ("version", version.as_str()),
                        ("code_class", class),
                    ];
                    ConstCounter::new(n).encode(metric.encode_family(&labels)?)?;
                }
            }
        }

        // Latency histogram by slot and version.
        {
            let mut metric = encoder.encode_descriptor(
                "turnout_request_duration_seconds",
                "Time from the complete request head to the response head.",
                None,
                MetricType::Histogram,
            )?;
            for (slot, version, c) in &by_slot {
                let labels = [("slot", slot.as_str()), ("version", version.as_str())];
                let count: u64 = c.buckets.iter().sum();
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        c.latency_ns as f64 / 1e9,
                        count,
                        &buckets(c),
                        None,
                    )?;
            }
        }

        let table = proxy.table();
        let health: Vec<(Vec<(&str, &str)>, i64)> = table
            .slots
            .iter()
            .flat_map(|pool| {
                pool.upstreams.iter().map(move |u| {
                    (
                        vec![("slot", pool.name.as_str()), ("addr", u.addr.as_str())],
                        i64::from(u.is_healthy()),
                    )
                })
            })
            .collect();
        gauge(
            &mut encoder,
            "turnout_upstream_healthy",
            "Whether an upstream passes its health checks (1) or not (0).",
            &health,
        )?;
        let live: Vec<(Vec<(&str, &str)>, i64)> = SlotName::ALL
            .iter()
            .map(|s| {
                (
                    vec![("slot", s.as_str())],
                    i64::from(table.live == Some(*s)),
                )
            })
            .collect();
        gauge(
            &mut encoder,
            "turnout_live_slot",
            "1 for the live slot, 0 for the other.",
            &live,
        )?;

        counter(
            &mut encoder,
            "turnout_switches",
            "Routing changes that moved the live slot (switches, rollbacks, promotions).",
            &[(&[], self.controller.switches())],
        )?;

        let shadow = self.controller.shadow_counts();
        counter(
            &mut encoder,
            "turnout_shadow_requests",
            "Requests eligible for shadowing, by outcome: mirrored, dropped (load or size), skipped, failed (the copy got no answer).",
            &[
                (&[("outcome", "mirrored")], shadow.mirrored),
                (
                    &[("outcome", "dropped")],
                    shadow.dropped + shadow.samples_dropped,
                ),
                (&[("outcome", "skipped")], shadow.skipped),
                (&[("outcome", "failed")], shadow.failed),
            ],
        )?;

        let current = self
            .controller
            .current()
            .and_then(|d| d.current_stage().map(|s| s.stage));
        let mut stages: Vec<(Vec<(&str, &str)>, i64)> = STAGES
            .iter()
            .map(|s| (vec![("stage", s.as_str())], i64::from(current == Some(*s))))
            .collect();
        stages.push((vec![("stage", "none")], i64::from(current.is_none())));
        gauge(
            &mut encoder,
            "turnout_deployment_stage",
            "1 for the stage the running deployment is in (`none`: no deployment runs).",
            &stages,
        )?;

        if let Some((leader, connected)) = self.controller.fleet_flags() {
            gauge(
                &mut encoder,
                "turnout_fleet_leader",
                "1 while this replica leads the fleet (runs the deployments), else 0.",
                &[(Vec::new(), i64::from(leader))],
            )?;
            gauge(
                &mut encoder,
                "turnout_fleet_etcd_connected",
                "1 while this replica's calls to etcd get through, 0 while it serves with the last routing it knew.",
                &[(Vec::new(), i64::from(connected))],
            )?;
        }

        counter(
            &mut encoder,
            "turnout_access_log_dropped",
            "Access log lines dropped because the log's queue was full.",
            &[(&[], proxy.access_log_dropped())],
        )?;
        gauge(
            &mut encoder,
            "turnout_client_connections",
            "Client connections open now, on every listener (busy and idle).",
            &[(
                Vec::new(),
                i64::try_from(proxy.open_connections()).unwrap_or(i64::MAX),
            )],
        )?;
        counter(
            &mut encoder,
            "turnout_connections_refused",
            "Client connections refused because [listen] max_connections were open.",
            &[(&[], proxy.refused_connections())],
        )?;
        if let Some(rss) = resident_memory_bytes() {
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory of the router process (VmRSS).",
                &[(Vec::new(), i64::try_from(rss).unwrap_or(i64::MAX))],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_keep_every_count() {
        let mut c = Counts::default();
        let n = c.buckets.len();
        for (i, b) in c.buckets.iter_mut().enumerate() {
            *b = i as u64 + 1;
        }
        let out = buckets(&c);
        let total: u64 = out.iter().map(|(_, n)| n).sum();
        assert_eq!(total, (n * (n + 1) / 2) as u64);
        // First bound: 100 µs, holding bucket 0 only; then every fifth bound.
        assert_eq!(out[0], (0.0001, 1));
        assert_eq!(out[1].1, 2 + 3 + 4 + 5 + 6);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(out.last().unwrap().0, f64::MAX);
        assert!(out[out.len() - 2].0 >= 60.0);
    }
}
