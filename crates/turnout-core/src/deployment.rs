//! A deployment's record: what ran, when, and how it ended. The pipeline writes it at every
//! stage edge; `history` and `status` read it.

use serde::{Deserialize, Serialize};

use crate::SlotName;

/// The stages of the release pipeline, in the order they run. A deployment records the
/// ones it entered; skipped ones are recorded with [`Outcome::Skipped`] when the reason
/// is worth showing (no `[verify]`, no `[shadow]`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The `pre_deploy` hook (the expand migration) and, after it, the live slot's
    /// verify checks against the live slot: does the old version work on the new schema?
    PreDeploy,
    /// Starting the candidate's instances (or asking infrastructure for them).
    Provision,
    /// Waiting until every candidate upstream passes its health check.
    Health,
    /// `[verify]` checks and command against the candidate.
    Verify,
    /// Mirrored traffic compared against live (`[shadow]`).
    Shadow,
    /// Waiting for `turnout promote` (manual mode or `deploy --manual`).
    Gate,
    /// Traffic moves to the candidate: at once, or in canary steps with analysis at each.
    Switch,
    /// Watching the new live slot; a breach rolls back.
    Bake,
    /// Retiring the previous version after `[decommission] delay`.
    Decommission,
    /// Sending traffic back to the previous version.
    Rollback,
}

impl Stage {
    /// The name used in JSON, logs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::PreDeploy => "pre_deploy",
            Stage::Provision => "provision",
            Stage::Health => "health",
            Stage::Verify => "verify",
            Stage::Shadow => "shadow",
            Stage::Gate => "gate",
            Stage::Switch => "switch",
            Stage::Bake => "bake",
            Stage::Decommission => "decommission",
            Stage::Rollback => "rollback",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a stage ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Not ended yet.
    Running,
    /// Done, and it passed.
    Passed,
    /// Done, and it failed (the deployment's reason says why).
    Failed,
    /// Not run (not configured, or not needed).
    Skipped,
    /// Stopped from outside: `abort`, `rollback`, or a router restart.
    Aborted,
}

/// How a deployment ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Still running.
    InProgress,
    /// Switched, baked and kept.
    Promoted,
    /// Users saw it, and traffic went back to the previous version.
    RolledBack,
    /// Ended by `abort` (or a restart) before its switch; users never saw it.
    Aborted,
    /// A stage before the switch failed; users never saw it.
    Failed,
}

impl Verdict {
    /// The name used in JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::InProgress => "in_progress",
            Verdict::Promoted => "promoted",
            Verdict::RolledBack => "rolled_back",
            Verdict::Aborted => "aborted",
            Verdict::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stage as it ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageRecord {
    /// Which stage.
    pub stage: Stage,
    /// RFC 3339 time it started.
    pub started_at: String,
    /// RFC 3339 time it ended; `None` while running.
    pub ended_at: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// What happened, in a sentence (the check that failed, the canary step reached...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The numbers of one bake (or canary step) evaluation, kept with the deployment so that a
/// verdict can be explained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Analysis {
    /// Requests in the window.
    pub requests: u64,
    /// Failed requests (5xx or no response) in the window.
    pub errors: u64,
    /// `errors / requests`, when there were requests.
    pub error_rate: Option<f64>,
    /// p99 latency in the window, in milliseconds.
    pub p99_ms: Option<f64>,
    /// p99 of the previous version before the switch, in milliseconds.
    pub baseline_p99_ms: Option<f64>,
    /// Percent of traffic on the candidate when measured.
    pub weight: u8,
    /// How far the current bake or canary step is, in milliseconds.
    #[serde(default)]
    pub elapsed_ms: u64,
    /// How long the current bake or canary step lasts, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
}

/// Milliseconds for people: `0.4 ms`, `12 ms`, `230 ms`.
pub fn format_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// One run of the release pipeline for one version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deployment {
    /// Unique, sortable by start time.
    pub id: String,
    /// The version deployed.
    pub version: String,
    /// The slot it went to.
    pub slot: SlotName,
    /// How it ended (or `in_progress`).
    pub verdict: Verdict,
    /// Why it ended as it did, with the numbers that decided it.
    pub reason: Option<String>,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 end time; `None` while in progress.
    pub ended_at: Option<String>,
    /// The stages entered, in order.
    pub stages: Vec<StageRecord>,
    /// The slot that was live when it started (the rollback target), if any.
    pub previous: Option<SlotName>,
    /// The version that was live when it started.
    pub previous_version: Option<String>,
    /// The candidate's upstreams, once known.
    pub upstreams: Vec<String>,
    /// Whether a manual gate was asked for (`deploy --manual`).
    pub manual: bool,
    /// The latest bake or canary analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

impl Deployment {
    /// The stage running now, or the last one entered.
    pub fn current_stage(&self) -> Option<&StageRecord> {
        self.stages.last()
    }

    /// Whether the deployment has ended.
    pub fn is_over(&self) -> bool {
        self.verdict != Verdict::InProgress
    }

    /// Whether traffic ever moved to the candidate (a switch or a canary step started).
    pub fn reached(&self, stage: Stage) -> bool {
        self.stages.iter().any(|s| s.stage == stage)
    }

    /// Starts `stage` at `now`, ending a stage still running as passed.
    pub fn begin(&mut self, stage: Stage, now: &str) {
        self.end_running(Outcome::Passed, now);
        self.stages.push(StageRecord {
            stage,
            started_at: now.to_owned(),
            ended_at: None,
            outcome: Outcome::Running,
            detail: None,
        });
    }

    /// Records `stage` as skipped, with why.
    pub fn skip(&mut self, stage: Stage, why: &str, now: &str) {
        self.end_running(Outcome::Passed, now);
        self.stages.push(StageRecord {
            stage,
            started_at: now.to_owned(),
            ended_at: Some(now.to_owned()),
            outcome: Outcome::Skipped,
            detail: Some(why.to_owned()),
        });
    }

    /// Sets the detail of the running stage.
    pub fn note(&mut self, detail: String) {
        if let Some(s) = self.stages.last_mut() {
            s.detail = Some(detail);
        }
    }

    /// Ends the running stage (if any) with `outcome`.
    pub fn end_running(&mut self, outcome: Outcome, now: &str) {
        if let Some(s) = self.stages.last_mut() {
            if s.outcome == Outcome::Running {
                s.outcome = outcome;
                s.ended_at = Some(now.to_owned());
            }
        }
    }

    /// Ends the deployment with `verdict` and `reason`; a stage still running ends as
    /// passed when the verdict is `promoted`, failed or aborted otherwise.
    pub fn finish(
        &mut self,
        verdict: Verdict,
        reason: Option<String>,
        stage_outcome: Outcome,
        now: &str,
    ) {
        self.end_running(stage_outcome, now);
        self.verdict = verdict;
        self.reason = reason;
        self.ended_at = Some(now.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_recorded_in_order_and_closed() {
        let mut d = Deployment {
            id: "d1".into(),
            version: "v2".into(),
            slot: SlotName::Green,
            verdict: Verdict::InProgress,
            reason: None,
            started_at: "t0".into(),
            ended_at: None,
            stages: Vec::new(),
            previous: Some(SlotName::Blue),
            previous_version: Some("v1".into()),
            upstreams: Vec::new(),
            manual: false,
            analysis: None,
        };
        d.begin(Stage::Provision, "t1");
        d.skip(Stage::Verify, "no [verify] section", "t2");
        d.begin(Stage::Switch, "t3");
        d.finish(
            Verdict::RolledBack,
            Some("error rate".into()),
            Outcome::Failed,
            "t4",
        );
        let got: Vec<_> = d
            .stages
            .iter()
            .map(|s| (s.stage, s.outcome, s.ended_at.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (Stage::Provision, Outcome::Passed, Some("t2")),
                (Stage::Verify, Outcome::Skipped, Some("t2")),
                (Stage::Switch, Outcome::Failed, Some("t4")),
            ]
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["verdict"], "rolled_back");
        assert_eq!(json["stages"][0]["stage"], "provision");
        assert_eq!(json["stages"][1]["outcome"], "skipped");
        assert_eq!(serde_json::from_value::<Deployment>(json).unwrap(), d);
    }
}
