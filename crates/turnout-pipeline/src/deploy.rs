//! The release pipeline: one task per deployment, running its stages in order.
//!
//! Stages, each recorded (start, end, outcome) and emitted as an event when it starts and
//! ends:
//!
//! | stage | runs | a failure means |
//! |---|---|---|
//! | `pre_deploy` | the `pre_deploy` hook (expand migration), then the verify checks against the **live** slot | `failed`: users are still on the old version |
//! | `provision` | retire a leftover standby in the target slot; start instances / run `up` / take `--upstream`; place them as candidate; `post_provision` hook | `failed` |
//! | `health` | every candidate upstream passes its health check, within `health_timeout` | `failed` |
//! | `verify` | `[verify]` checks and command against every candidate upstream | `failed` |
//! | `shadow` | `[shadow]` on: mirror live traffic to the candidate for `duration` and compare its answers (`shadow_stage`) | mismatch rate over `max_mismatch_rate` or p99 latency ratio over `max_latency_ratio_p99` (too few compared: passes, the bake still watches): `failed` |
//! | `gate` | manual mode or `deploy --manual`: wait for `promote` | — (`abort` ends it) |
//! | `switch` | `pre_switch` hook; canary steps with analysis at each, or one switch; `post_switch` hook | before traffic moved: `failed`; after: rollback |
//! | `bake` | the rules every `interval` over a sliding `window`; `post_bake` hook | rollback |
//! | `decommission` | after `delay`: `pre_decommission`, stop the old version, `post_decommission` (contract migration) | reported; the verdict stays `promoted` |
//! | `rollback` | traffic back to the previous slot, candidate stopped, `on_rollback` hook | — |
//!
//! Signals from the API (`promote`, `abort`, `rollback`) are taken at every await point of
//! a stage (`Run::guarded`), so that an abort during a slow provision or health gate
//! stops it at once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use turnout_core::{Deployment, Outcome, RoutingState, SlotName, Stage, Verdict};
use turnout_proxy::StatsSnapshot;

use crate::analysis::{evaluate, Tick};
use crate::commands::{self, CommandSpec};
use crate::events::Why;
use crate::instances::{InstanceSpec, Instances};
use crate::options::{PromoteMode, Provisioner};
use crate::runtime::{SlotKind, SlotRuntime};
use crate::{verify, ControlError, Event, Inner};

/// What the API asks of a running deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignalKind {
    Promote,
    Abort,
    Rollback,
    /// A new deployment starts while this one waits to decommission: it stops waiting
    /// (the new deployment retires the standby itself).
    Supersede,
}

pub(crate) struct Signal {
    pub(crate) kind: SignalKind,
    pub(crate) reply: oneshot::Sender<Result<(), ControlError>>,
}

/// The handle the controller keeps on the running deployment.
pub(crate) struct RunHandle {
    pub(crate) id: String,
    pub(crate) tx: mpsc::Sender<Signal>,
    pub(crate) record: watch::Receiver<Deployment>,
}

/// Where a run is, for deciding what a signal means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before any user saw the candidate.
    BeforeSwitch,
    /// Waiting for `promote` at the manual gate.
    Gate,
    /// A canary step: `promote` moves on to the next step.
    CanaryStep,
    /// Traffic is on the candidate (bake, hooks after the switch).
    AfterSwitch,
    /// Promoted, waiting to retire the previous version.
    Decommission,
    /// Running something that must finish (decommission and rollback hooks): every
    /// signal is refused, to be retried.
    Busy,
}

/// Why a run stops early.
enum Stop {
    /// A stage before the switch failed: users never saw the candidate.
    Fail(String),
    /// `abort` (or `rollback`) before the switch.
    Abort(String),
    /// After users saw the candidate: send them back.
    Rollback(String),
}

/// What `guarded` returns when a signal ends the wait.
enum Interrupt {
    Promote,
    Stop(Stop),
}

pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A new deployment id: the start time, sortable, plus a few random bits.
pub(crate) fn new_id() -> String {
    let t = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let digits: String = t.chars().filter(|c| c.is_ascii_digit()).collect();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let (date, time) = digits.split_at(digits.len().min(8));
    format!(
        "{date}-{time}-{:04x}",
        (nanos ^ std::process::id()) & 0xffff
    )
}

pub(crate) struct Run {
    inner: Arc<Inner>,
    /// The settings this deployment runs with (those of its start, kept through a
    /// reload: `RunSettings`).
    opts: Arc<crate::options::PipelineOptions>,
    d: Deployment,
    rx: mpsc::Receiver<Signal>,
    record: watch::Sender<Deployment>,
    /// Upstreams named by the deployment request (`deploy --upstream`).
    given: Vec<String>,
    /// The accepted abort/rollback/supersede signal, answered when the run ends.
    waiter: Option<(SignalKind, oneshot::Sender<Result<(), ControlError>>)>,
    /// Whether this run has changed its target slot (retired what it held, placed the
    /// candidate): only then does ending early empty the slot.
    touched_target: bool,
    /// What the target slot held when this run retired it, if that was a standby of
    /// static upstreams (no processes of turnout's, nothing stopped): put back when the
    /// deployment ends before its switch, so that an abort leaves the standby as it was.
    displaced: Option<(Vec<String>, Option<String>)>,
    /// Retry on standby (`[bake] retry_on_standby`), from the candidate's first request
    /// until the bake passed or traffic is back on the previous slot.
    retry: Option<RetryOn>,
}

impl Run {
    pub(crate) fn new(
        inner: Arc<Inner>,
        opts: Arc<crate::options::PipelineOptions>,
        d: Deployment,
        given: Vec<String>,
    ) -> (Run, RunHandle) {
        let (tx, rx) = mpsc::channel(8);
        let (record, record_rx) = watch::channel(d.clone());
        let handle = RunHandle {
            id: d.id.clone(),
            tx,
            record: record_rx,
        };
        (
            Run {
                inner,
                opts,
                d,
                rx,
                record,
                given,
                waiter: None,
                retry: None,
                touched_target: false,
                displaced: None,
            },
            handle,
        )
    }

    fn opts(&self) -> &crate::options::PipelineOptions {
        &self.opts
    }

    /// Publishes the record to watchers and saves it.
    async fn save(&mut self) {
        self.record.send_replace(self.d.clone());
        if let Err(e) = self.inner.store.save_deployment(&self.d).await {
            tracing::warn!(deployment = %self.d.id, error = %e, "the deployment record was not saved: {e}");
        }
    }

    fn emit(&self, message: String) {
        let stage = self.d.current_stage();
        let event = Event {
            id: 0,
            at: now(),
            kind: crate::EventKind::Deployment,
            deployment: Some(self.d.id.clone()),
            version: Some(self.d.version.clone()),
            slot: Some(self.d.slot),
            stage: stage.map(|s| s.stage),
            outcome: stage.map(|s| s.outcome),
            verdict: Some(self.d.verdict),
            message,
            reason: self.d.reason.clone(),
            data: self
                .d
                .analysis
                .as_ref()
                .and_then(|a| serde_json::to_value(a).ok()),
            echo: false,
        };
        tracing::info!(
            deployment = %self.d.id,
            version = %self.d.version,
            stage = ?event.stage.map(|s| s.as_str()),
            verdict = %self.d.verdict,
            "{}", event.message
        );
        self.inner.events.publish(event);
    }

    /// A `gate` event: the shadow gate's or a bake's verdict (`pass`, `no_data`,
    /// `fail`), with the numbers behind it.
    fn gate(&self, gate: &str, verdict: &str, reason: String, data: serde_json::Value) {
        let mut event = Event::new(
            crate::EventKind::Gate,
            format!("{} {gate}: {verdict}: {reason}", self.d.version),
        );
        event.deployment = Some(self.d.id.clone());
        event.version = Some(self.d.version.clone());
        event.slot = Some(self.d.slot);
        event.stage = self.d.current_stage().map(|s| s.stage);
        event.reason = Some(reason);
        event.data = Some(serde_json::json!({ "gate": gate, "verdict": verdict, "numbers": data }));
        self.inner.events.publish(event);
    }

    /// Why this deployment changes the routing.
    fn why(&self, kind: crate::EventKind, reason: impl Into<String>) -> Why {
        Why::deployment(kind, &self.d.id, &self.d.version, reason)
    }

    async fn begin(&mut self, stage: Stage) {
        let t = now();
        self.d.begin(stage, &t);
        self.emit(format!("{stage} started"));
        self.save().await;
    }

    async fn skip(&mut self, stage: Stage, why: &str) {
        let t = now();
        self.d.skip(stage, why, &t);
        self.emit(format!("{stage} skipped: {why}"));
        self.save().await;
    }

    async fn note(&mut self, detail: String) {
        self.d.note(detail.clone());
        self.emit(detail);
        self.save().await;
    }

    /// Runs `fut` while answering signals. Signals that do not apply in `phase` are
    /// refused with a reason and the wait goes on.
    async fn guarded<T>(
        &mut self,
        phase: Phase,
        fut: impl Future<Output = T>,
    ) -> Result<T, Interrupt> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                v = &mut fut => return Ok(v),
                signal = self.rx.recv() => {
                    let Some(Signal { kind, reply }) = signal else {
                        // The controller is gone (the router is stopping): finish the wait.
                        return Ok(fut.await);
                    };
                    let stage = self.d.current_stage().map_or("start", |s| s.stage.as_str());
                    let refuse = |why: String| Err(ControlError::Conflict(why));
                    // Accepted stops are answered when the run has ended (`reply_waiter`),
                    // so that the caller learns what actually happened.
                    let (answer, out) = match (kind, phase) {
                        (_, Phase::Busy) => (refuse(format!(
                            "deployment {} of {} is running a step that must not be cut short (stage: {stage}); retry when it has finished",
                            self.d.id, self.d.version
                        )), None),
                        (SignalKind::Promote, Phase::Gate | Phase::CanaryStep) => (Ok(()), Some(Interrupt::Promote)),
                        (SignalKind::Promote, _) => (refuse(format!(
                            "deployment {} of {} is not waiting for promote (stage: {stage}); promote passes a manual gate or a canary step",
                            self.d.id, self.d.version
                        )), None),
                        (SignalKind::Abort, Phase::BeforeSwitch | Phase::Gate) => (Ok(()), Some(Interrupt::Stop(Stop::Abort(
                            format!("aborted by the operator during {stage}; users never saw it")
                        )))),
                        (SignalKind::Abort, _) => (refuse(format!(
                            "deployment {} of {} has already sent traffic to {} (stage: {stage}); use `turnout rollback` to send it back",
                            self.d.id, self.d.version, self.d.slot
                        )), None),
                        (SignalKind::Rollback, Phase::BeforeSwitch | Phase::Gate) => (Ok(()), Some(Interrupt::Stop(Stop::Abort(
                            format!("rollback asked during {stage}, before the switch; users never saw it")
                        )))),
                        (SignalKind::Rollback, _) => (Ok(()), Some(Interrupt::Stop(Stop::Rollback(
                            format!("rolled back by the operator during {stage}")
                        )))),
                        (SignalKind::Supersede, Phase::Decommission) => (Ok(()), Some(Interrupt::Stop(Stop::Abort(
                            "superseded by a new deployment, which retires the standby".into()
                        )))),
                        (SignalKind::Supersede, _) => (refuse(format!(
                            "deployment {} of {} is in progress (stage: {stage})", self.d.id, self.d.version
                        )), None),
                    };
                    match (answer, &out) {
                        (Ok(()), Some(Interrupt::Stop(_))) => self.waiter = Some((kind, reply)),
                        (answer, _) => {
                            let _ = reply.send(answer);
                        }
                    }
                    if let Some(out) = out {
                        return Err(out);
                    }
                }
            }
        }
    }

    /// Like `guarded`, where `promote` has no meaning: it only stops.
    async fn watch<T>(&mut self, phase: Phase, fut: impl Future<Output = T>) -> Result<T, Stop> {
        match self.guarded(phase, fut).await {
            Ok(v) => Ok(v),
            Err(Interrupt::Stop(stop)) => Err(stop),
            // Only the Gate and CanaryStep phases deliver promote; never used here.
            Err(Interrupt::Promote) => Err(Stop::Fail(
                "internal error: promote delivered outside a gate".into(),
            )),
        }
    }

    /// Answers the signal that stopped the run, now that its outcome is known.
    fn reply_waiter(&mut self) {
        let Some((kind, reply)) = self.waiter.take() else {
            return;
        };
        let d = &self.d;
        let done = match kind {
            SignalKind::Rollback => {
                matches!(d.verdict, Verdict::RolledBack | Verdict::Aborted)
            }
            SignalKind::Abort => d.verdict == Verdict::Aborted,
            SignalKind::Supersede | SignalKind::Promote => true,
        };
        let answer = if done {
            Ok(())
        } else {
            Err(ControlError::Conflict(format!(
                "deployment {} of {} ended {}: {}",
                d.id,
                d.version,
                d.verdict,
                d.reason.as_deref().unwrap_or("no reason recorded")
            )))
        };
        let _ = reply.send(answer);
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("TURNOUT_SLOT".into(), self.d.slot.to_string()),
            ("TURNOUT_VERSION".into(), self.d.version.clone()),
            ("TURNOUT_DEPLOYMENT".into(), self.d.id.clone()),
            (
                "TURNOUT_PREVIOUS_VERSION".into(),
                self.d.previous_version.clone().unwrap_or_default(),
            ),
            (
                "TURNOUT_PREVIOUS_SLOT".into(),
                self.d.previous.map(|s| s.to_string()).unwrap_or_default(),
            ),
        ]
    }

    fn log_path(&self, what: &str) -> std::path::PathBuf {
        self.opts()
            .state_dir
            .join("logs")
            .join(format!("{}-{what}.log", self.d.id))
    }

    /// Runs hook `name` if configured. `Err` carries the message.
    async fn hook(&mut self, name: &str, phase: Phase) -> Result<(), HookFailure> {
        let hooks = &self.opts().hooks;
        let command = match name {
            "pre_deploy" => hooks.pre_deploy.clone(),
            "post_provision" => hooks.post_provision.clone(),
            "pre_switch" => hooks.pre_switch.clone(),
            "post_switch" => hooks.post_switch.clone(),
            "post_bake" => hooks.post_bake.clone(),
            "on_rollback" => hooks.on_rollback.clone(),
            "pre_decommission" => hooks.pre_decommission.clone(),
            "post_decommission" => hooks.post_decommission.clone(),
            _ => None,
        };
        let Some(command) = command else {
            return Ok(());
        };
        let timeout = self.opts().hooks.timeout;
        let env = self.env();
        let log = self.log_path(&format!("hook-{name}"));
        self.emit(format!("hook {name} running: {command}"));
        let label = format!("hook {name}");
        let run = commands::run(CommandSpec {
            name: &label,
            command: &command,
            env,
            timeout,
            log: Some(log),
        });
        match self.watch(phase, run).await {
            Ok(Ok(_)) => {
                self.emit(format!("hook {name} passed"));
                Ok(())
            }
            Ok(Err(e)) => Err(HookFailure::Failed(e.to_string())),
            Err(stop) => Err(HookFailure::Stopped(stop)),
        }
    }

    /// The whole pipeline, from the first stage to the verdict (and decommission).
    pub(crate) async fn drive(mut self) {
        self.emit(format!(
            "deployment of {} into {} started",
            self.d.version, self.d.slot
        ));
        let outcome = match self.before_switch().await {
            Ok(()) => self.switch_and_bake().await,
            Err(stop) => Err(stop),
        };
        match outcome {
            Ok(()) => {
                self.finish_promoted().await;
                self.decommission().await;
            }
            Err(Stop::Fail(why)) => self.end_before_switch(Verdict::Failed, why).await,
            Err(Stop::Abort(why)) => self.end_before_switch(Verdict::Aborted, why).await,
            Err(Stop::Rollback(why)) => self.roll_back(why).await,
        }
    }

    /// Continues a deployment that a previous router process left baking.
    pub(crate) async fn resume_bake(mut self, baseline: Option<Duration>, remaining: Duration) {
        self.emit(format!(
            "router restarted: the bake of {} continues for {}s",
            self.d.version,
            remaining.as_secs()
        ));
        match self.bake(baseline, remaining, None, None).await {
            Ok(()) => {
                self.finish_promoted().await;
                self.decommission().await;
            }
            Err(Stop::Rollback(why)) | Err(Stop::Fail(why)) | Err(Stop::Abort(why)) => {
                self.roll_back(why).await
            }
        }
    }

    /// Ends a deployment a previous router process left before its switch.
    pub(crate) async fn resume_abort(mut self, why: String) {
        self.end_before_switch(Verdict::Aborted, why).await;
    }

    /// Rolls back a canary a previous router process left half-way.
    pub(crate) async fn resume_rollback(mut self, why: String) {
        // Users may still reach the candidate (a canary share) until the rollback is done.
        self.retry_on();
        self.roll_back(why).await;
    }

    /// Continues a promoted deployment's decommission after a restart.
    pub(crate) async fn resume_decommission(mut self) {
        self.decommission().await;
    }

    async fn before_switch(&mut self) -> Result<(), Stop> {
        let phase = Phase::BeforeSwitch;
        // pre_deploy: the expand migration, then "does the live version still work?"
        if self.opts().hooks.pre_deploy.is_some() {
            self.begin(Stage::PreDeploy).await;
            self.hook("pre_deploy", phase)
                .await
                .map_err(|f| f.before())?;
            let live = self.live_upstreams().await;
            if let (Some(verify), Some((live_slot, addrs))) = (self.opts().verify.clone(), live) {
                let prev = self
                    .d
                    .previous_version
                    .clone()
                    .unwrap_or_else(|| "?".into());
                let run = verify::run_checks(&addrs, &verify.checks, verify.timeout);
                match self.watch(phase, run).await? {
                    Ok(_) => {
                        self.note(format!(
                            "the live version {prev} on {live_slot} passes its verify checks after pre_deploy"
                        ))
                        .await
                    }
                    Err(e) => {
                        return Err(Stop::Fail(format!(
                            "after the pre_deploy hook the live version {prev} on {live_slot} fails its verify checks: {e}. The expand step is not compatible with the running version; users are still on it. Fix the migration (or roll it back) before deploying"
                        )))
                    }
                }
            }
        }

        // provision
        self.begin(Stage::Provision).await;
        self.clear_target().await?;
        let upstreams = self.provision().await?;
        self.d.upstreams = upstreams.clone();
        let (slot, version) = (self.d.slot, self.d.version.clone());
        let why = self.why(
            crate::EventKind::Switch,
            format!("deployment {} placed in {slot}", self.d.id),
        );
        let placed = self
            .inner
            .change(why, move |s: &RoutingState, _| {
                s.place_candidate(slot, version, upstreams)
            })
            .await;
        if let Err(e) = placed {
            return Err(Stop::Fail(format!(
                "could not place the candidate in {}: {e}",
                self.d.slot
            )));
        }
        self.note(format!(
            "{} upstream(s) in {}: {}",
            self.d.upstreams.len(),
            self.d.slot,
            self.d.upstreams.join(", ")
        ))
        .await;
        self.hook("post_provision", phase)
            .await
            .map_err(|f| f.before())?;

        // health gate
        self.begin(Stage::Health).await;
        let health = health_gate(
            self.inner.clone(),
            self.d.slot,
            self.opts().health_timeout,
            self.opts().state_dir.join("logs"),
        );
        let healthy = self.watch(phase, health).await?;
        healthy.map_err(Stop::Fail)?;

        // verify
        match self.opts().verify.clone() {
            None => self.skip(Stage::Verify, "no [verify] section").await,
            Some(verify) => {
                self.begin(Stage::Verify).await;
                let addrs = self.d.upstreams.clone();
                let checks = verify::run_checks(&addrs, &verify.checks, verify.timeout);
                match self.watch(phase, checks).await? {
                    Ok(results) => {
                        self.note(format!("{} check(s) passed", results.len()))
                            .await
                    }
                    Err(e) => return Err(Stop::Fail(format!("verify failed: {e}"))),
                }
                if let Some(command) = verify.command.clone() {
                    let mut env = self.env();
                    env.push((
                        "TURNOUT_TARGET".into(),
                        format!("http://{}", self.d.upstreams[0]),
                    ));
                    let log = self.log_path("verify");
                    let run = commands::run(CommandSpec {
                        name: "verify command",
                        command: &command,
                        env,
                        timeout: verify.timeout,
                        log: Some(log),
                    });
                    if let Err(e) = self.watch(phase, run).await? {
                        return Err(Stop::Fail(format!("verify failed: {e}")));
                    }
                }
            }
        }

        self.shadow_stage().await?;

        // manual gate
        if self.d.manual || self.opts().promote.mode == PromoteMode::Manual {
            self.begin(Stage::Gate).await;
            self.note(format!(
                "{} is healthy and verified in {}; waiting for `turnout promote` (or `turnout abort`)",
                self.d.version, self.d.slot
            ))
            .await;
            match self
                .guarded(Phase::Gate, std::future::pending::<()>())
                .await
            {
                Ok(()) | Err(Interrupt::Promote) => {}
                Err(Interrupt::Stop(stop)) => return Err(stop),
            }
            self.note("promoted by the operator".into()).await;
        }
        Ok(())
    }

    /// Mirrors live traffic to the candidate for `[shadow] duration`, then applies the
    /// gate to the comparison.
    async fn shadow_stage(&mut self) -> Result<(), Stop> {
        let Some(sh) = self.opts().shadow.clone() else {
            self.skip(Stage::Shadow, "no [shadow] section").await;
            return Ok(());
        };
        if self.d.previous.is_none() {
            self.skip(Stage::Shadow, "no live version to compare with")
                .await;
            return Ok(());
        }
        self.begin(Stage::Shadow).await;
        let mut mirror = sh.mirror.clone();
        mirror.target = self.d.slot;
        let handle = self.inner.proxy.start_shadow(mirror);
        let stop = crate::shadow::StopMirror(self.inner.proxy.clone());
        let aggregator = Arc::new(std::sync::Mutex::new(turnout_shadow::Aggregator::new(
            sh.compare.clone(),
            sh.noise,
        )));
        let run = crate::shadow::ShadowRun {
            deployment: self.d.id.clone(),
            version: self.d.version.clone(),
            live_version: self.d.previous_version.clone(),
            aggregator: aggregator.clone(),
            counters: handle.counters.clone(),
        };
        self.inner.track_shadow(&handle.counters);
        *self.inner.shadow.lock().unwrap_or_else(|p| p.into_inner()) = Some(run);
        // Comparing is CPU work (JSON bodies up to max_body): on a thread of its own at
        // the lowest priority, never on a data-plane worker nor in its way.
        let mut samples = handle.samples;
        let feed = aggregator.clone();
        let (done_tx, collector) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("turnout-compare".into())
            .spawn(move || {
                turnout_proxy::lower_thread_priority();
                while let Some(sample) = samples.blocking_recv() {
                    feed.lock().unwrap_or_else(|p| p.into_inner()).add(&sample);
                }
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            return Err(Stop::Fail(format!(
                "cannot start the shadow comparison thread: {e}"
            )));
        }
        self.note(format!(
            "mirroring {} requests ({}% sampled) to {} for {}s; `turnout shadow report` shows the comparison so far",
            sh.mirror.methods.join("/"),
            (sh.mirror.sample * 100.0).round(),
            self.d.slot,
            sh.duration.as_secs()
        ))
        .await;
        let waited = self
            .watch(Phase::BeforeSwitch, tokio::time::sleep(sh.duration))
            .await;
        drop(stop);
        // The copies in flight finish within their timeout.
        let _ = tokio::time::timeout(sh.mirror.timeout + Duration::from_secs(2), collector).await;
        let report = {
            let mut current = self.inner.shadow.lock().unwrap_or_else(|p| p.into_inner());
            let report = current.as_ref().map(|r| r.report(false));
            *current = None;
            report
        };
        if let Some(report) = &report {
            match serde_json::to_string(report) {
                Ok(text) => {
                    if let Err(e) = self
                        .inner
                        .store
                        .save_value(crate::shadow::LAST_KEY, &text)
                        .await
                    {
                        tracing::warn!(error = %e, "the shadow report was not saved: {e}");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode the shadow report"),
            }
        }
        waited?;
        let Some(report) = report else {
            return Err(Stop::Fail(
                "internal error: the shadow comparison was lost".into(),
            ));
        };
        let gate = report.report.gate(
            sh.max_mismatch_rate,
            sh.max_latency_ratio_p99,
            sh.min_requests,
        );
        let r = &report.report;
        let numbers = serde_json::json!({
            "requests": r.requests,
            "compared": r.compared,
            "mismatched": r.mismatched,
            "noise": r.noise,
            "dropped": r.dropped,
            "skipped": r.skipped,
            "failed": r.failed,
            "mismatch_rate": r.mismatch_rate,
            "latency_ratio_p99": r.latency_ratio_p99,
            "max_mismatch_rate": sh.max_mismatch_rate,
            "max_latency_ratio_p99": sh.max_latency_ratio_p99,
            "min_requests": sh.min_requests,
        });
        let (verdict, summary) = match &gate {
            turnout_shadow::Gate::Pass(s) => ("pass", s),
            turnout_shadow::Gate::NoData(s) => ("no_data", s),
            turnout_shadow::Gate::Fail(s) => ("fail", s),
        };
        self.gate("shadow gate", verdict, summary.clone(), numbers);
        match gate {
            turnout_shadow::Gate::Pass(summary) => {
                self.note(summary).await;
                Ok(())
            }
            turnout_shadow::Gate::NoData(summary) => {
                self.note(format!(
                    "{summary}: not enough traffic to judge, so the gate passes (the bake still watches)"
                ))
                .await;
                Ok(())
            }
            turnout_shadow::Gate::Fail(summary) => Err(Stop::Fail(format!(
                "shadow gate: {}; `turnout shadow report` shows every difference",
                summary.trim_start_matches("shadow: ")
            ))),
        }
    }

    /// The switch (at once or in canary steps) and the bake.
    async fn switch_and_bake(&mut self) -> Result<(), Stop> {
        self.begin(Stage::Switch).await;
        self.hook("pre_switch", Phase::BeforeSwitch)
            .await
            .map_err(|f| f.before())?;
        let baseline = self.baseline();
        let slot = self.d.slot;
        // Retry on the standby from the first request the candidate gets (a canary step or
        // the switch).
        self.retry_on();
        let canary = self.opts().promote.mode == PromoteMode::Canary && self.d.previous.is_some();
        if canary {
            let steps: Vec<u8> = self.opts().promote.steps.clone();
            let step_duration = self.opts().promote.step_duration;
            for step in steps.into_iter().filter(|s| *s < 100) {
                let why = self.why(
                    crate::EventKind::Switch,
                    format!("deployment {} canary step {step}%", self.d.id),
                );
                let moved = self
                    .inner
                    .change(why, move |s: &RoutingState, p| {
                        s.set_canary(slot, step, p.healthy_count(slot))
                    })
                    .await;
                if let Err(e) = moved {
                    return Err(Stop::Rollback(format!("canary step {step}% refused: {e}")));
                }
                self.note(format!(
                    "canary step {step}%: analysing for {}s",
                    step_duration.as_secs()
                ))
                .await;
                match self
                    .analyse(Phase::CanaryStep, step_duration, baseline, step, None, &mut None)
                    .await
                {
                    Ok(false) if self.opts().bake.require_traffic => {
                        return Err(Stop::Rollback(format!(
                            "canary step {step}% saw no window with {} requests and require_traffic = true",
                            self.opts().bake.min_requests
                        )))
                    }
                    Ok(_) | Err(Interrupt::Promote) => {}
                    Err(Interrupt::Stop(Stop::Rollback(why))) => {
                        return Err(Stop::Rollback(format!("at canary step {step}%: {why}")))
                    }
                    Err(Interrupt::Stop(stop)) => return Err(stop),
                }
            }
        }
        // The bake's first window starts at the switch, not after the records are saved
        // and the post_switch hook has run.
        let from = self.inner.snapshot(slot);
        let why = self.why(
            crate::EventKind::Switch,
            format!("deployment {} switch to {slot}", self.d.id),
        );
        let switched = self
            .inner
            .change(why, move |s: &RoutingState, p| {
                s.switch(slot, p.healthy_count(slot), false)
            })
            .await;
        if let Err(e) = switched {
            let why = format!("the switch to {slot} was refused: {e}");
            return Err(if canary {
                Stop::Rollback(why)
            } else {
                Stop::Fail(why)
            });
        }
        self.note(format!("all traffic on {} ({})", slot, self.d.version))
            .await;
        // post_switch runs while the bake already watches the new version.
        let side = self.spawn_hook("post_switch");
        let duration = self.opts().bake.duration;
        self.bake(baseline, duration, Some(from), side).await
    }

    /// Turns retry on standby on for this run's candidate (when configured and there is a
    /// previous slot), unless it is on already.
    fn retry_on(&mut self) {
        if self.retry.is_some() {
            return;
        }
        if let (true, Some(prev)) = (self.opts().bake.retry_on_standby, self.d.previous) {
            self.retry = Some(RetryOn::start(&self.inner.proxy, self.d.slot, prev));
        }
    }

    /// Starts hook `name` (if configured) as a task of its own.
    fn spawn_hook(&self, name: &'static str) -> Option<SideHook> {
        let command = match name {
            "post_switch" => self.opts().hooks.post_switch.clone(),
            _ => None,
        }?;
        let env = self.env();
        let timeout = self.opts().hooks.timeout;
        let log = self.log_path(&format!("hook-{name}"));
        self.emit(format!("hook {name} running: {command}"));
        let task = tokio::spawn(async move {
            let label = format!("hook {name}");
            commands::run(CommandSpec {
                name: &label,
                command: &command,
                env,
                timeout,
                log: Some(log),
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        });
        Some(SideHook { name, task })
    }

    async fn bake(
        &mut self,
        baseline: Option<Duration>,
        duration: Duration,
        from: Option<StatsSnapshot>,
        mut side: Option<SideHook>,
    ) -> Result<(), Stop> {
        self.begin(Stage::Bake).await;
        self.retry_on();
        let mut result = self
            .analyse(Phase::AfterSwitch, duration, baseline, 100, from, &mut side)
            .await;
        if let (Ok(_), Some(hook)) = (&result, side.as_mut()) {
            // The bake is over before the hook: it passes only once the hook has.
            let name = hook.name;
            match self.guarded(Phase::AfterSwitch, &mut hook.task).await {
                Ok(Ok(Ok(()))) => self.emit(format!("hook {name} passed")),
                Ok(Ok(Err(e))) => {
                    result = Err(Interrupt::Stop(Stop::Rollback(format!(
                        "the {name} hook failed: {e}"
                    ))))
                }
                Ok(Err(e)) => {
                    result = Err(Interrupt::Stop(Stop::Rollback(format!(
                        "the {name} hook did not finish: {e}"
                    ))))
                }
                Err(stop) => result = Err(stop),
            }
        }
        drop(side);
        let seen = match result {
            Ok(seen) => seen,
            Err(Interrupt::Stop(stop)) => return Err(stop),
            Err(Interrupt::Promote) => {
                return Err(Stop::Rollback(
                    "internal error: promote during the bake".into(),
                ))
            }
        };
        if !seen && self.opts().bake.require_traffic {
            return Err(Stop::Rollback(format!(
                "the bake saw no window with {} requests and require_traffic = true",
                self.opts().bake.min_requests
            )));
        }
        let summary = match &self.d.analysis {
            Some(a) if seen => format!(
                "baked for {}s; last window: {} requests, error rate {:.2}%, p99 {}",
                duration.as_secs(),
                a.requests,
                a.error_rate.unwrap_or(0.0) * 100.0,
                a.p99_ms.map_or("-".into(), turnout_core::format_ms)
            ),
            _ => format!(
                "baked for {}s with no traffic to judge (require_traffic = false)",
                duration.as_secs()
            ),
        };
        let numbers = serde_json::to_value(&self.d.analysis).unwrap_or_default();
        let verdict = if seen { "pass" } else { "no_data" };
        self.gate("bake", verdict, summary.clone(), numbers);
        self.note(summary).await;
        self.hook("post_bake", Phase::AfterSwitch)
            .await
            .map_err(|f| f.after("post_bake"))?;
        // The bake passed: the candidate stands on its own from here.
        self.retry = None;
        Ok(())
    }

    /// Evaluates the rules on the candidate every `interval` for `duration`. `Ok(seen)`
    /// says whether any window had enough requests.
    async fn analyse(
        &mut self,
        phase: Phase,
        duration: Duration,
        baseline: Option<Duration>,
        weight: u8,
        from: Option<StatsSnapshot>,
        side: &mut Option<SideHook>,
    ) -> Result<bool, Interrupt> {
        let rules = self.opts().bake.clone();
        let slot = self.d.slot;
        let start = tokio::time::Instant::now();
        let end = start + duration;
        let mut ring: std::collections::VecDeque<(Instant, StatsSnapshot)> =
            std::collections::VecDeque::new();
        let first = from.unwrap_or_else(|| self.inner.snapshot(slot));
        ring.push_back((Instant::now(), first));
        let mut seen = false;
        let mut last_saved = Instant::now();
        loop {
            let next = (tokio::time::Instant::now() + rules.interval).min(end);
            self.guarded(phase, tokio::time::sleep_until(next)).await?;
            let now_snap = self.inner.snapshot(slot);
            let now_t = Instant::now();
            while ring.len() > 1 && now_t.duration_since(ring[1].0) >= rules.window {
                ring.pop_front();
            }
            let window = now_snap.since(&ring[0].1);
            ring.push_back((now_t, now_snap));
            let tick = evaluate(
                &rules,
                window.requests,
                window.errors,
                window.p99(),
                baseline,
                weight,
            );
            let progress = |mut a: turnout_core::Analysis| {
                a.elapsed_ms = start.elapsed().as_millis() as u64;
                a.duration_ms = duration.as_millis() as u64;
                a
            };
            let tick = match tick {
                Tick::Breach(why, a) => Tick::Breach(why, progress(a)),
                Tick::Pass(a) => Tick::Pass(progress(a)),
                Tick::NoData(a) => Tick::NoData(progress(a)),
            };
            match tick {
                Tick::Breach(why, analysis) => {
                    let numbers = serde_json::to_value(&analysis).unwrap_or_default();
                    self.gate("analysis", "fail", why.clone(), numbers);
                    self.d.analysis = Some(analysis);
                    return Err(Interrupt::Stop(Stop::Rollback(why)));
                }
                Tick::Pass(analysis) => {
                    seen = true;
                    self.d.analysis = Some(analysis);
                }
                Tick::NoData(analysis) => self.d.analysis = Some(analysis),
            }
            // A hook running beside the analysis (post_switch) that failed rolls back.
            if let Some(hook) = side.as_mut().filter(|h| h.task.is_finished()) {
                let name = hook.name;
                match (&mut hook.task).await {
                    Ok(Ok(())) => self.emit(format!("hook {name} passed")),
                    Ok(Err(e)) => {
                        return Err(Interrupt::Stop(Stop::Rollback(format!(
                            "the {name} hook failed: {e}"
                        ))))
                    }
                    Err(e) => {
                        return Err(Interrupt::Stop(Stop::Rollback(format!(
                            "the {name} hook did not finish: {e}"
                        ))))
                    }
                }
                *side = None;
            }
            // Publish every tick; save to the store at most every few seconds.
            self.record.send_replace(self.d.clone());
            if last_saved.elapsed() >= Duration::from_secs(5) {
                last_saved = Instant::now();
                self.save().await;
            }
            if tokio::time::Instant::now() >= end {
                return Ok(seen);
            }
        }
    }

    /// The previous version's p99 since the candidate was provisioned.
    fn baseline(&self) -> Option<Duration> {
        let prev = self.d.previous?;
        let since = self.inner.baseline_mark(prev, &self.d.id)?;
        let window = self.inner.snapshot(prev).since(&since);
        (window.requests >= self.opts().bake.min_requests.max(1))
            .then(|| window.p99())
            .flatten()
    }

    async fn live_upstreams(&self) -> Option<(SlotName, Vec<String>)> {
        let state = self.inner.state.lock().await;
        let live = state.live?;
        Some((live, state.slot(live).upstreams.clone()))
    }

    /// The target slot may hold a previous standby (a decommission not done yet, or
    /// static upstreams): it is retired first.
    async fn clear_target(&mut self) -> Result<(), Stop> {
        let slot = self.d.slot;
        self.touched_target = true;
        let occupied = {
            let state = self.inner.state.lock().await;
            (!state.slot(slot).upstreams.is_empty()).then(|| {
                (
                    state.slot(slot).upstreams.clone(),
                    state.slot(slot).version.clone(),
                )
            })
        };
        if let Some((upstreams, old)) = occupied {
            // Static upstreams (no instances turnout started, no `down` to run) can be put
            // back as they were if this deployment ends before its switch.
            let runs_nothing = self
                .inner
                .slot_runtime_kind(slot)
                .await
                .is_none_or(|k| k == SlotKind::Static);
            if runs_nothing {
                self.displaced = Some((upstreams, old.clone()));
            }
            self.note(format!(
                "{slot} still holds {}; retiring it first",
                old.as_deref().unwrap_or("an unnamed version")
            ))
            .await;
            if let Err(e) = self.inner.retire(slot).await {
                return Err(Stop::Fail(format!(
                    "could not retire what {slot} held: {e}"
                )));
            }
        }
        Ok(())
    }

    /// Brings the candidate's upstreams into existence.
    async fn provision(&mut self) -> Result<Vec<String>, Stop> {
        let phase = Phase::BeforeSwitch;
        let slot = self.d.slot;
        if !self.given.is_empty() {
            let given = self.given.clone();
            self.inner
                .set_runtime(slot, Some(SlotRuntime::new(SlotKind::Static, &self.d)))
                .await;
            return Ok(given);
        }
        match self.opts().provision.clone() {
            Provisioner::Static => Err(Stop::Fail(
                "no upstreams given and no [provision] configured".into(),
            )),
            Provisioner::Command {
                command,
                instances,
                stop_timeout,
            } => {
                let spec = InstanceSpec {
                    command,
                    version: self.d.version.clone(),
                    slot,
                    deployment: self.d.id.clone(),
                    count: instances,
                    log_dir: self.opts().state_dir.join("logs"),
                    stop_timeout,
                    ports: Vec::new(),
                };
                let started = self.watch(phase, Instances::start(spec)).await?;
                let instances =
                    started.map_err(|e| Stop::Fail(format!("provision failed: {e}")))?;
                let addrs = instances.addrs();
                let mut rt = SlotRuntime::new(SlotKind::Command, &self.d);
                rt.instances = Some(instances);
                self.inner.set_runtime(slot, Some(rt)).await;
                Ok(addrs)
            }
            Provisioner::External { up, timeout, .. } => {
                // Recorded before `up` runs: whatever it managed to create before failing
                // or being stopped is taken down again by `down`.
                self.inner
                    .set_runtime(slot, Some(SlotRuntime::new(SlotKind::External, &self.d)))
                    .await;
                let log = self.log_path("provision-up");
                let run = commands::provision_up(&up, self.env(), timeout, Some(log));
                let addrs = self
                    .watch(phase, run)
                    .await?
                    .map_err(|e| Stop::Fail(format!("provision failed: {e}")))?;
                Ok(addrs)
            }
        }
    }

    async fn finish_promoted(&mut self) {
        let t = now();
        let reason = self.d.current_stage().and_then(|s| s.detail.clone());
        self.d
            .finish(Verdict::Promoted, reason, Outcome::Passed, &t);
        self.emit(format!("{} promoted", self.d.version));
        self.save().await;
    }

    /// Ends a deployment that never got traffic: the candidate is stopped and its slot
    /// emptied.
    async fn end_before_switch(&mut self, verdict: Verdict, why: String) {
        let outcome = if verdict == Verdict::Aborted {
            Outcome::Aborted
        } else {
            Outcome::Failed
        };
        if self
            .d
            .current_stage()
            .is_some_and(|s| s.outcome == Outcome::Running)
        {
            self.d.note(why.clone());
        }
        self.d.end_running(outcome, &now());
        // Only what this deployment put there is removed: a failure before it touched the
        // slot leaves the previous standby in place for a rollback.
        let ours = self.touched_target || self.inner.slot_owned_by(self.d.slot, &self.d.id).await;
        if !ours {
        } else if let Err(e) = self.inner.retire(self.d.slot).await {
            tracing::warn!(deployment = %self.d.id, error = %e, "could not retire the candidate: {e}");
        } else if let Some((upstreams, version)) = self.displaced.take() {
            // The standby it displaced goes back: users never saw this deployment, and a
            // rollback works as before it.
            let slot = self.d.slot;
            let why = Why::operator(
                crate::EventKind::Switch,
                format!("{slot}'s standby restored"),
            )
            .by_leader();
            let restored = self
                .inner
                .change(why, move |s: &RoutingState, _| {
                    let mut next = s.clone();
                    next.revision += 1;
                    next.set_static_upstreams(slot, upstreams, version);
                    Ok(next)
                })
                .await;
            match restored {
                Ok(_) => self
                    .d
                    .note(format!("{slot}'s previous standby was put back as it was")),
                Err(e) => {
                    tracing::warn!(deployment = %self.d.id, error = %e, "could not put {slot}'s standby back: {e}")
                }
            }
        }
        let t = now();
        self.d.finish(verdict, Some(why.clone()), outcome, &t);
        self.emit(format!("{} {verdict}: {why}", self.d.version));
        self.save().await;
    }

    /// Users saw the candidate: send them back to the previous slot, stop the candidate.
    async fn roll_back(&mut self, why: String) {
        if self
            .d
            .current_stage()
            .is_some_and(|s| s.outcome == Outcome::Running)
        {
            self.d.note(why.clone());
        }
        self.d.end_running(Outcome::Failed, &now());
        let slot = self.d.slot;
        let prev = self.d.previous;
        // Traffic first: the record is saved once users are back on the old version.
        self.d.begin(Stage::Rollback, &now());
        let back = match prev {
            Some(prev) => {
                let moved = self
                    .inner
                    .change(
                        self.why(crate::EventKind::Rollback, why.clone()),
                        move |s: &RoutingState, p| {
                            if s.live == Some(slot) {
                                s.switch(prev, p.healthy_count(prev), true)
                            } else {
                                // A canary: give its share back.
                                s.clear_slot(slot)
                            }
                        },
                    )
                    .await;
                match moved {
                    Ok(_) => Ok(prev),
                    Err(e) => Err(format!("the rollback to {prev} failed: {e}")),
                }
            }
            None => Err(format!(
                "there is no previous version to roll back to; traffic stays on {slot}"
            )),
        };
        self.emit("rollback started".into());
        self.save().await;
        let (verdict, reason) = match back {
            Ok(prev) => {
                self.note(format!(
                    "traffic is back on {prev} ({})",
                    self.d
                        .previous_version
                        .as_deref()
                        .unwrap_or("previous version")
                ))
                .await;
                if let Err(e) = self.inner.retire(slot).await {
                    tracing::warn!(deployment = %self.d.id, error = %e, "could not stop the rolled-back candidate: {e}");
                }
                // Only now, with users back on the previous slot and the candidate gone,
                // do its retries end (a request still in flight there is retried too).
                self.retry = None;
                (Verdict::RolledBack, why)
            }
            Err(e) => (Verdict::Failed, format!("{why}; {e}")),
        };
        if let Err(HookFailure::Failed(e) | HookFailure::Stopped(Stop::Fail(e))) =
            self.hook("on_rollback", Phase::Busy).await
        {
            self.note(format!("the on_rollback hook failed: {e}")).await;
        }
        let t = now();
        self.d
            .finish(verdict, Some(reason.clone()), Outcome::Passed, &t);
        self.emit(format!("{} {verdict}: {reason}", self.d.version));
        self.save().await;
    }

    /// Keeps the previous version for `delay`, then retires it.
    async fn decommission(&mut self) {
        let Some(prev) = self.d.previous else {
            return;
        };
        let has_standby = {
            let state = self.inner.state.lock().await;
            state.live == Some(self.d.slot) && !state.slot(prev).upstreams.is_empty()
        };
        if !has_standby {
            // Resumed after a restart that came after the standby was retired.
            if self
                .d
                .current_stage()
                .is_some_and(|s| s.stage == Stage::Decommission && s.outcome == Outcome::Running)
            {
                self.note(format!(
                    "{prev} was already retired before the router restarted"
                ))
                .await;
                let t = now();
                self.d.end_running(Outcome::Passed, &t);
                self.save().await;
            }
            return;
        }
        let delay = self.opts().decommission_delay;
        let started = self
            .d
            .stages
            .iter()
            .find(|s| s.stage == Stage::Decommission)
            .cloned();
        let wait = match &started {
            // Resumed after a restart: only what is left of the delay.
            Some(s) => delay.saturating_sub(elapsed_since(&s.started_at)),
            None => {
                self.begin(Stage::Decommission).await;
                self.note(format!(
                    "{prev} ({}) is kept as standby for {}s",
                    self.d
                        .previous_version
                        .as_deref()
                        .unwrap_or("previous version"),
                    delay.as_secs()
                ))
                .await;
                delay
            }
        };
        match self
            .guarded(Phase::Decommission, tokio::time::sleep(wait))
            .await
        {
            Ok(()) => {}
            Err(Interrupt::Stop(Stop::Rollback(why))) => {
                // The operator went back to the previous version during the delay.
                let slot = self.d.slot;
                let moved = self
                    .inner
                    .change(
                        self.why(crate::EventKind::Rollback, why.clone()),
                        move |s: &RoutingState, p| {
                            if s.live == Some(slot) {
                                s.switch(prev, p.healthy_count(prev), false)
                            } else {
                                Ok(s.clone())
                            }
                        },
                    )
                    .await;
                let t = now();
                match moved {
                    Ok(_) => {
                        self.d.finish(
                            Verdict::RolledBack,
                            Some(format!(
                                "{why}; traffic is back on {prev}, and {} stays as standby",
                                self.d.version
                            )),
                            Outcome::Aborted,
                            &t,
                        );
                    }
                    Err(e) => {
                        self.note(format!("the rollback during decommission failed: {e}"))
                            .await
                    }
                }
                self.emit(format!("{} {}", self.d.version, self.d.verdict));
                self.save().await;
                return;
            }
            Err(Interrupt::Stop(Stop::Abort(why))) => {
                let t = now();
                self.d.end_running(Outcome::Aborted, &t);
                self.note(why).await;
                return;
            }
            Err(_) => return,
        }
        // A raw switch during the delay may have made the old version live again.
        let still = {
            let state = self.inner.state.lock().await;
            state.live == Some(self.d.slot) && !state.slot(prev).upstreams.is_empty()
        };
        if !still {
            let t = now();
            self.d.end_running(Outcome::Skipped, &t);
            self.note(format!(
                "{prev} is no longer the standby of {} (routing changed during the delay); nothing retired",
                self.d.slot
            ))
            .await;
            return;
        }
        let hooks_ok = match self.hook("pre_decommission", Phase::Busy).await {
            Ok(()) => true,
            Err(e) => {
                let t = now();
                self.d.end_running(Outcome::Failed, &t);
                self.note(format!(
                    "pre_decommission failed, so {prev} is kept: {}",
                    e.message()
                ))
                .await;
                false
            }
        };
        if !hooks_ok {
            return;
        }
        if let Err(e) = self.inner.retire(prev).await {
            let t = now();
            self.d.end_running(Outcome::Failed, &t);
            self.note(format!("could not retire {prev}: {e}")).await;
            return;
        }
        if let Err(e) = self.hook("post_decommission", Phase::Busy).await {
            let t = now();
            self.d.end_running(Outcome::Failed, &t);
            self.note(format!(
                "{prev} retired, but post_decommission failed: {}",
                e.message()
            ))
            .await;
            return;
        }
        self.note(format!("{prev} retired")).await;
        let t = now();
        self.d.end_running(Outcome::Passed, &t);
        self.emit("decommission done".into());
        self.save().await;
    }
}

/// Every candidate upstream healthy within the timeout; an instance that exits fails
/// the gate at once.
pub(crate) async fn health_gate(
    inner: Arc<Inner>,
    slot: SlotName,
    timeout: Duration,
    logs: std::path::PathBuf,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(exit) = inner.instance_exit(slot).await {
            return Err(format!(
                "instance {} exited before it became healthy ({}); last lines of {}:\n{}",
                exit.addr,
                exit.status,
                exit.log.display(),
                exit.log_tail
            ));
        }
        let table = inner.proxy.table();
        let ups = &table.slot(slot).upstreams;
        let healthy = ups
            .iter()
            .filter(|u| u.is_checked() && u.is_healthy())
            .count();
        if !ups.is_empty() && healthy == ups.len() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let sick: Vec<&str> = ups
                .iter()
                .filter(|u| !(u.is_checked() && u.is_healthy()))
                .map(|u| u.addr.as_str())
                .collect();
            return Err(format!(
                "{healthy} of {} upstream(s) healthy after {}s (not healthy: {}); see the health check settings in [health] and the instance logs under {}",
                ups.len(),
                timeout.as_secs(),
                sick.join(", "),
                logs.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Run {
    /// However the run ends — done, cancelled by a stopping router, or a bug that
    /// panicked — the controller forgets it (so the next deployment is not refused) and
    /// the caller of an accepted signal gets its answer.
    fn drop(&mut self) {
        if std::thread::panicking() && !self.d.is_over() {
            let t = now();
            self.d.finish(
                Verdict::Failed,
                Some("internal error: the deployment's task panicked; see the router log".into()),
                Outcome::Failed,
                &t,
            );
            let store = self.inner.store.clone();
            let d = self.d.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = store.save_deployment(&d).await;
                });
            }
        }
        self.inner.run_ended(&self.d.id);
        self.reply_waiter();
    }
}

/// A hook running as a task of its own beside the bake; stopped (its process group
/// killed) when dropped unfinished.
struct SideHook {
    name: &'static str,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Drop for SideHook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A hook that did not pass.
enum HookFailure {
    Failed(String),
    Stopped(Stop),
}

impl HookFailure {
    /// Before the switch: the deployment fails (or stops as signalled).
    fn before(self) -> Stop {
        match self {
            HookFailure::Failed(e) => Stop::Fail(e),
            HookFailure::Stopped(stop) => stop,
        }
    }

    /// After the switch: a failed `post_*` hook rolls back.
    fn after(self, name: &str) -> Stop {
        match self {
            HookFailure::Failed(e) => Stop::Rollback(format!("the {name} hook failed: {e}")),
            HookFailure::Stopped(stop) => stop,
        }
    }

    fn message(&self) -> String {
        match self {
            HookFailure::Failed(e) => e.clone(),
            HookFailure::Stopped(_) => "stopped".into(),
        }
    }
}

/// Time since an RFC 3339 time, zero when it cannot be read or is in the future.
pub(crate) fn elapsed_since(rfc3339: &str) -> Duration {
    humantime::parse_rfc3339_weak(rfc3339)
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default()
}

/// Retry on standby (`[bake] retry_on_standby`) while it lives.
struct RetryOn(turnout_proxy::Proxy);

impl RetryOn {
    fn start(proxy: &turnout_proxy::Proxy, slot: SlotName, standby: SlotName) -> RetryOn {
        proxy.set_retry_on(Some((slot, standby)));
        RetryOn(proxy.clone())
    }
}

impl Drop for RetryOn {
    fn drop(&mut self) {
        self.0.set_retry_on(None);
    }
}
