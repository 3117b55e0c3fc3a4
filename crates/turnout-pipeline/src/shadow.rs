//! The shadow stage: the data plane mirrors live requests to the candidate
//! (`Proxy::start_shadow`), a blocking-pool thread feeds every sample to a
//! `turnout_shadow::Aggregator`, and at the end of `[shadow] duration` the report decides
//! the gate. The running aggregator is reachable from the API, so the report is live during
//! the stage; the last report is saved under the store key `shadow/last`.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use turnout_proxy::{ShadowCounters, ShadowCounts};
use turnout_shadow::{Aggregator, Counts, Report};

/// The store key of the last shadow report.
pub(crate) const LAST_KEY: &str = "shadow/last";

/// A shadow comparison in progress.
pub(crate) struct ShadowRun {
    pub(crate) deployment: String,
    pub(crate) version: String,
    pub(crate) live_version: Option<String>,
    pub(crate) aggregator: Arc<Mutex<Aggregator>>,
    pub(crate) counters: Arc<ShadowCounters>,
}

impl ShadowRun {
    /// The report so far.
    pub(crate) fn report(&self, running: bool) -> ShadowReport {
        let report = self
            .aggregator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report(counts(self.counters.snapshot()));
        ShadowReport {
            deployment: self.deployment.clone(),
            version: self.version.clone(),
            live_version: self.live_version.clone(),
            running,
            report,
        }
    }
}

/// The data plane's counts, as the report takes them.
pub(crate) fn counts(c: ShadowCounts) -> Counts {
    Counts {
        mirrored: c.mirrored,
        dropped: c.dropped + c.samples_dropped,
        skipped: c.skipped,
        mirror_delay_p99: c.delay_p99,
    }
}

/// `GET /api/v1/shadow/report`: the report with what it is about.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ShadowReport {
    /// The deployment whose candidate was compared.
    pub deployment: String,
    /// The candidate's version.
    pub version: String,
    /// The live version it was compared with.
    pub live_version: Option<String>,
    /// Whether the comparison is still running (the numbers so far).
    pub running: bool,
    /// The comparison.
    #[serde(flatten)]
    pub report: Report,
}

/// Stops the data plane's mirroring when the stage ends in any way.
pub(crate) struct StopMirror(pub(crate) turnout_proxy::Proxy);

impl Drop for StopMirror {
    fn drop(&mut self) {
        self.0.stop_shadow();
    }
}
