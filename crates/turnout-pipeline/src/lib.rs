//! turnout's control plane. [`Controller`] owns the routing state: every change (switch,
//! rollback, and later the release pipeline's stages) is computed by `turnout-core`,
//! written durably through the [`StateStore`], and only then applied to the data plane —
//! so a change the API acknowledged survives any crash, and a crash before the write
//! leaves routing as it was.
//!
//! A change runs in a task of its own, from taking the state lock to applying the result:
//! a caller that stops waiting (an API client that hung up) cannot leave a change saved
//! but not applied. When a save fails, the store is read back and the data plane follows
//! what it holds, so that memory, data plane and store agree again.

mod analysis;
pub mod commands;
mod deploy;
mod events;
mod fleet;
pub mod instances;
pub mod notify;
mod options;
mod runtime;
mod shadow;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Mutex};
use turnout_core::{
    Deployment, Outcome, Role, RoutingState, SlotName, SlotState, Stage, SwitchError, Verdict,
    Weights,
};
use turnout_proxy::{Proxy, StatsSnapshot};
use turnout_store::StateStore;
pub use turnout_store::{BoxFuture, ReplicaInfo, StoreError};

pub use options::{
    BakeOptions, Hooks, PipelineOptions, PromoteMode, PromoteOptions, Provisioner, ShadowStage,
    VerifyOptions,
};
pub use runtime::{SavedSlot, SlotKind};
pub use shadow::ShadowReport;

use deploy::{Run, RunHandle, Signal, SignalKind};
use runtime::SlotRuntime;

/// Why a control-plane action failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The change is not allowed in the current state.
    #[error(transparent)]
    Refused(#[from] SwitchError),
    /// The state store could not be read or written at start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A change could not be saved. `now` says by which state the router routes
    /// afterwards: the store was read back, so that memory, data plane and store agree
    /// again whenever the store can be read.
    #[error("{source}; {now}")]
    NotSaved {
        /// Why the save failed.
        source: StoreError,
        /// The routing state after the failure.
        now: AfterFailure,
    },
    /// The request does not fit the current state (a deployment in progress, nothing to
    /// promote, ...); the message says what to do.
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong (a bad version or upstream address).
    #[error("{0}")]
    Invalid(String),
    /// No such deployment (or report).
    #[error("no {0}; `turnout history` lists the deployments")]
    NotFound(String),
    /// In a fleet, deployments run on the leader only; this replica is not it.
    #[error("{}", not_leader_message(leader.as_ref()))]
    NotLeader {
        /// The leader, when one is elected.
        leader: Option<ReplicaInfo>,
    },
    /// This router process is handing over to a new one (`turnout upgrade` or
    /// `reload`): changes wait until the new one serves, and are then made there.
    #[error("{0}")]
    HandingOver(String),
    /// The task making the change failed (a bug, or the process is stopping).
    #[error(
        "the routing change was interrupted ({0}); its outcome is unknown: check `turnout status`"
    )]
    Interrupted(String),
}

/// The routing state after a failed save, as the error reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// The store holds what this router had: nothing changed.
    Unchanged {
        /// The live slot.
        live: Option<SlotName>,
        /// The revision.
        revision: u64,
    },
    /// The store holds another state (another writer, or a write whose outcome the error
    /// hid); the router now routes by it.
    Reloaded {
        /// The live slot now.
        live: Option<SlotName>,
        /// The revision now.
        revision: u64,
    },
    /// The store is unreachable (a fleet's etcd): this router keeps routing by the last
    /// state it knew and follows the store again once it is back.
    Static {
        /// The live slot it routes to.
        live: Option<SlotName>,
        /// The revision it routes by.
        revision: u64,
    },
    /// The store could not be read back; the router routes as before, which may differ
    /// from what the store holds.
    Unknown {
        /// The live slot this router routes to.
        live: Option<SlotName>,
        /// The revision this router routes by.
        revision: u64,
        /// Why the store could not be read.
        reason: String,
    },
}

fn not_leader_message(leader: Option<&ReplicaInfo>) -> String {
    match leader {
        Some(l) => format!(
            "this router is not the fleet's leader; deployments run on the leader, replica {} at {} (the API redirects there with 307)",
            l.replica, l.admin
        ),
        None => "no router of the fleet is the leader right now (the last leader's lease has not run out yet, or etcd is unreachable); retry in a few seconds".into(),
    }
}

fn live_name(live: Option<SlotName>) -> &'static str {
    live.map_or("no slot", SlotName::as_str)
}

impl std::fmt::Display for AfterFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AfterFailure::Unchanged { live, revision } => write!(
                f,
                "routing is unchanged: {} is live (revision {revision})",
                live_name(*live)
            ),
            AfterFailure::Reloaded { live, revision } => write!(
                f,
                "the router reloaded the saved routing state and routes by it now: {} is live (revision {revision})",
                live_name(*live)
            ),
            AfterFailure::Static { live, revision } => write!(
                f,
                "the routers keep routing as before ({} is live, revision {revision}) and follow etcd again by themselves once it answers; retry then",
                live_name(*live)
            ),
            AfterFailure::Unknown {
                live,
                revision,
                reason,
            } => write!(
                f,
                "reading the saved state back failed too ({reason}); the router keeps routing as before ({} is live, revision {revision}), which may differ from the store: check `turnout status`, and restart the router once the store works",
                live_name(*live)
            ),
        }
    }
}

/// What `status` shows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Status {
    /// The live slot.
    pub live: Option<SlotName>,
    /// Revision of the routing state.
    pub revision: u64,
    /// Share of new requests per slot, in percent.
    pub weights: Weights,
    /// Both slots.
    pub slots: SlotsStatus,
    /// The deployment in progress (none until the release pipeline exists).
    pub deployment: Option<DeploymentStatus>,
    /// With `[state] backend = "etcd"`: this replica and the fleet's leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
    /// Why changes cannot be saved now (the state database was moved or deleted under
    /// the router); absent when they can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_problem: Option<String>,
}

/// A replica's view of its fleet.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct FleetStatus {
    /// This replica.
    pub replica: ReplicaInfo,
    /// Whether this replica is the leader (runs deployments).
    pub leader: bool,
    /// The leader, when one is elected and etcd answered.
    pub leader_replica: Option<ReplicaInfo>,
    /// Whether the last call to etcd got through.
    pub connected: bool,
}

/// Blue and green.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SlotsStatus {
    /// The blue slot.
    pub blue: SlotStatus,
    /// The green slot.
    pub green: SlotStatus,
}

/// One slot in `status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SlotStatus {
    /// Deployed version, when known.
    pub version: Option<String>,
    /// Its role.
    pub role: Role,
    /// Its upstreams and their health.
    pub upstreams: Vec<UpstreamStatus>,
}

/// One upstream in `status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct UpstreamStatus {
    /// `host:port`.
    pub addr: String,
    /// Whether it takes traffic now.
    pub healthy: bool,
}

/// The deployment in progress.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DeploymentStatus {
    /// Its id.
    pub id: String,
    /// The version being deployed.
    pub version: String,
    /// The stage it is in.
    pub stage: String,
}

/// The control plane of one router. Cheap to share: the parts live behind one `Arc`, so
/// that a change runs in a task of its own (see [`Controller::switch`]).
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    proxy: Proxy,
    store: Arc<dyn StateStore>,
    state: Mutex<RoutingState>,
    /// How long a switch waits for the target's first health checks.
    first_check_wait: Duration,
    /// How deployments run.
    pipeline: PipelineOptions,
    /// The deployment running now, if any (one at a time).
    run: std::sync::Mutex<Option<RunHandle>>,
    /// What each slot runs (instances turnout started, who brought upstreams up).
    slots: Mutex<[Option<SlotRuntime>; 2]>,
    /// The previous live slot's statistics when the running deployment started: its
    /// baseline for `max_p99_ratio` is measured from here to the switch.
    mark: std::sync::Mutex<Option<(String, SlotName, StatsSnapshot)>>,
    /// Deployment and routing events, for the event stream and webhooks.
    events: events::Bus,
    /// The task of the running deployment.
    task: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// The shadow comparison in progress, if any.
    shadow: std::sync::Mutex<Option<shadow::ShadowRun>>,
    /// Shadow outcomes of the runs that ended, and the counters of those that may still
    /// count (for [`Controller::shadow_counts`]).
    shadow_totals: std::sync::Mutex<(
        turnout_proxy::ShadowCounts,
        Vec<Arc<turnout_proxy::ShadowCounters>>,
    )>,
    /// Routing commits that changed the live slot.
    switches: std::sync::atomic::AtomicU64,
    /// With a shared store: the fleet as this replica sees it.
    fleet: fleet::FleetState,
    /// Set while this process hands over to a new one, and for good once it did: every
    /// change is refused (`ControlError::HandingOver`), so that two processes never
    /// change the routing or run a deployment at once.
    handing_over: std::sync::Mutex<Option<String>>,
    /// The addresses this router listens on (data plane, TLS, admin), which no upstream
    /// may name.
    own_addrs: std::sync::Mutex<Vec<std::net::SocketAddr>>,
}

/// Something that happened: a stage started or ended, a switch, a rollback, a health
/// change, a gate's verdict.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Event {
    /// Increases by one per event of this router process (the SSE `id:`); 0 before the
    /// event is published.
    #[serde(default)]
    pub id: u64,
    /// RFC 3339 time.
    pub at: String,
    /// What kind of thing happened (the SSE `event:` name).
    pub kind: EventKind,
    /// The deployment's id.
    pub deployment: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// Its slot.
    pub slot: Option<SlotName>,
    /// The stage it is in.
    pub stage: Option<Stage>,
    /// That stage's outcome so far.
    pub outcome: Option<Outcome>,
    /// The deployment's verdict so far.
    pub verdict: Option<Verdict>,
    /// What happened, in a sentence.
    pub message: String,
    /// Why it happened ("operator switch", the breached rule, the failed check, ...).
    #[serde(default)]
    pub reason: Option<String>,
    /// The numbers behind it: the slots and weights of a switch, the analysis of a bake,
    /// the counts of a shadow gate, the address of an upstream.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    /// In a fleet: this replica only relays a change another replica made (a switch it
    /// followed, the leader's deployment record). Webhooks skip these, so that a change
    /// is announced once, by the replica that made it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub echo: bool,
}

/// The kinds of [`Event`], as the API and the SSE stream name them.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A deployment's stage started or ended, or its verdict.
    Deployment,
    /// The live slot or the weights changed.
    Switch,
    /// The same, going back.
    Rollback,
    /// An upstream's health changed.
    Health,
    /// A shadow gate's or a bake's verdict.
    Gate,
    /// Requests started or stopped going to the standby (`[health] failover`).
    Failover,
    /// A fleet replica became or stopped being the leader.
    Leader,
}

impl EventKind {
    /// The name, as in JSON and the SSE `event:` line.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Deployment => "deployment",
            EventKind::Switch => "switch",
            EventKind::Rollback => "rollback",
            EventKind::Health => "health",
            EventKind::Gate => "gate",
            EventKind::Failover => "failover",
            EventKind::Leader => "leader",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Event {
    /// An event of `kind` happening now, with only its message set.
    pub fn new(kind: EventKind, message: String) -> Event {
        Event {
            id: 0,
            at: deploy::now(),
            kind,
            deployment: None,
            version: None,
            slot: None,
            stage: None,
            outcome: None,
            verdict: None,
            message,
            reason: None,
            data: None,
            echo: false,
        }
    }

    /// One line for people (a chat message): `turnout: <message>`.
    pub fn summary(&self) -> String {
        let mut line = format!("turnout: {}", self.message);
        if let Some(d) = &self.deployment {
            let version = self.version.as_deref().unwrap_or("?");
            line.push_str(&format!(" [deployment {d} of {version}]"));
        }
        line
    }
}

/// `POST /api/v1/deployments`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DeployRequest {
    /// The version to deploy.
    pub version: String,
    /// Already-running upstreams for it; empty: `[provision]` brings them up.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// Stop at a manual gate before the switch.
    #[serde(default)]
    pub manual: bool,
}

impl Controller {
    /// Starts from the saved state (or the initial one when nothing was saved), with the
    /// slots' static upstreams from the configuration applied on top; the result is saved
    /// before the data plane starts routing by it. A slot the configuration gives no
    /// upstreams keeps its saved ones (a deployment may have put them there).
    pub async fn start(
        proxy_opts: turnout_proxy::ProxyOptions,
        store: Arc<dyn StateStore>,
        static_slots: [SlotState; 2],
        pipeline: PipelineOptions,
    ) -> Result<Controller, ControlError> {
        let saved = store.load_routing().await?;
        let expected = saved.as_ref().map(|s| s.revision);
        let mut added: Vec<String> = Vec::new();
        let static_slots_again = static_slots.clone();
        let [blue, green] = static_slots;
        let state = match saved {
            None => {
                tracing::info!(
                    store = %store.describe(),
                    "no saved state in {}; starting from the configuration",
                    store.describe()
                );
                RoutingState::initial(blue, green)
            }
            Some(mut s) => {
                tracing::info!(
                    store = %store.describe(),
                    revision = s.revision,
                    live = ?s.live,
                    "loaded the saved routing state from {}",
                    store.describe()
                );
                let before = s.clone();
                for (name, cfg) in SlotName::ALL.into_iter().zip([blue, green]) {
                    // Upstreams the configuration adds to what was served until now.
                    added.extend(
                        cfg.upstreams
                            .iter()
                            .filter(|a| !s.slot(name).upstreams.contains(a))
                            .cloned(),
                    );
                    if !cfg.upstreams.is_empty() {
                        s.set_static_upstreams(name, cfg.upstreams, cfg.version);
                    } else if !s.slot(name).upstreams.is_empty() {
                        let saved = &s.slot(name).upstreams;
                        tracing::warn!(
                            slot = %name,
                            saved = ?saved,
                            "slots.{name} has no upstreams in the config; keeping the saved ones: {saved:?}"
                        );
                    }
                }
                if s != before {
                    s.revision += 1;
                }
                s
            }
        };
        if expected != Some(state.revision) {
            match store.save_routing(&state, expected).await {
                // Another replica of the fleet saved first: start from what it saved.
                Err(StoreError::Conflict { .. }) if store.fleet().is_some() => {
                    return Box::pin(Controller::start(
                        proxy_opts,
                        store,
                        static_slots_again,
                        pipeline,
                    ))
                    .await;
                }
                r => r?,
            }
        }
        tracing::info!(live = ?state.live, revision = state.revision, store = %store.describe(), "routing state ready");
        // A check takes at most its timeout; the first one starts at once.
        let first_check_wait = proxy_opts.health.timeout + Duration::from_secs(1);
        let proxy = Proxy::new(proxy_opts, &state);
        if !added.is_empty() {
            tracing::info!(upstreams = ?added, "new static upstreams take traffic once their health check passes");
            proxy.hold_until_checked(&added);
        }
        let controller = Controller {
            inner: Arc::new(Inner {
                proxy,
                store,
                state: Mutex::new(state),
                first_check_wait,
                pipeline,
                run: std::sync::Mutex::new(None),
                slots: Mutex::new([None, None]),
                mark: std::sync::Mutex::new(None),
                events: events::Bus::new(),
                task: std::sync::Mutex::new(None),
                shadow: std::sync::Mutex::new(None),
                shadow_totals: Default::default(),
                switches: std::sync::atomic::AtomicU64::new(0),
                fleet: Default::default(),
                handing_over: std::sync::Mutex::new(None),
                own_addrs: std::sync::Mutex::new(Vec::new()),
            }),
        };
        if controller.inner.store.fleet().is_some() {
            // Deployments are settled by whichever replica is elected.
            fleet::start(&controller.inner);
        } else {
            controller.inner.recover().await?;
        }
        controller.forward_health();
        Ok(controller)
    }

    /// How many routing changes moved the live slot (switches, rollbacks, promotions)
    /// since this router started.
    pub fn switches(&self) -> u64 {
        self.inner
            .switches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Shadow outcomes (mirrored, dropped, skipped, failed) summed over every shadow run
    /// since this router started, the running one included.
    pub fn shadow_counts(&self) -> turnout_proxy::ShadowCounts {
        let mut totals = self
            .inner
            .shadow_totals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (done, runs) = &mut *totals;
        // A run's counters held only here: it ended, its counts are final.
        runs.retain(|c| {
            if Arc::strong_count(c) > 1 {
                return true;
            }
            let s = c.snapshot();
            done.eligible += s.eligible;
            done.mirrored += s.mirrored;
            done.dropped += s.dropped;
            done.skipped += s.skipped;
            done.failed += s.failed;
            done.samples_dropped += s.samples_dropped;
            false
        });
        let mut sum = *done;
        for s in runs.iter().map(|c| c.snapshot()) {
            sum.eligible += s.eligible;
            sum.mirrored += s.mirrored;
            sum.dropped += s.dropped;
            sum.skipped += s.skipped;
            sum.failed += s.failed;
            sum.samples_dropped += s.samples_dropped;
        }
        sum
    }

    /// The data plane this controller drives.
    pub fn proxy(&self) -> &Proxy {
        &self.inner.proxy
    }

    /// Moves all traffic to `to`. Durable before it returns; requests that start after it
    /// returns go to `to`.
    ///
    /// Unless `force`, it first waits (boundedly) for the first health check of the
    /// target's upstreams, which count as healthy until then.
    ///
    /// The change runs in a task of its own: dropping the returned future (an API client
    /// that hung up) does not stop a change half-way, between the store and the data
    /// plane.
    pub async fn switch(&self, to: SlotName, force: bool) -> Result<RoutingState, ControlError> {
        self.switch_reporting(to, force)
            .await
            .map(|(state, _)| state)
    }

    /// [`Controller::switch`], also saying whether it changed the routing (`false`: `to`
    /// was live with all traffic already, and the store agreed).
    pub async fn switch_reporting(
        &self,
        to: SlotName,
        force: bool,
    ) -> Result<(RoutingState, bool), ControlError> {
        self.inner.not_handing_over()?;
        if let Some(d) = self.current().filter(|d| !d.is_over()) {
            let stage = d.current_stage().map_or("start", |s| s.stage.as_str());
            return Err(ControlError::Conflict(format!(
                "deployment {} of {} is in progress (stage: {stage}) and owns the routing until it ends; use `turnout rollback` to send traffic back (it also ends the deployment) or `turnout abort` before its switch",
                d.id, d.version
            )));
        }
        if !force {
            self.inner.await_first_checks(to).await;
        }
        let inner = self.inner.clone();
        detached(async move {
            let mut state = inner.state.lock().await;
            // Already where it is asked to go: nothing to change, no new revision — as long
            // as the store agrees (another writer may have moved on; then the switch goes
            // through the store and finds out).
            if state.live == Some(to) && state.weights.of(to) == 100 {
                let stored = inner.store.load_routing().await;
                if matches!(&stored, Ok(Some(s)) if s.revision == state.revision) {
                    return Ok((state.clone(), false));
                }
            }
            let next = state.switch(to, inner.proxy.healthy_count(to), force)?;
            let why = events::Why::operator(
                crate::EventKind::Switch,
                if force {
                    "operator switch (forced)"
                } else {
                    "operator switch"
                },
            );
            inner.commit(&mut state, next, why).await.map(|s| (s, true))
        })
        .await
    }

    /// Sends traffic back to the standby slot (after its first health checks, as
    /// [`Controller::switch`]); runs in a task of its own like a switch.
    pub async fn rollback(&self) -> Result<RoutingState, ControlError> {
        self.inner.not_handing_over()?;
        // A deployment owns the routing: on a fleet, its rollback is the leader's to do.
        if self.inner.remote_current().is_some() {
            self.require_leader().await?;
        }
        if let Some(d) = self.signal(SignalKind::Rollback).await? {
            tracing::info!(deployment = %d.id, verdict = %d.verdict, "rollback ended the deployment");
            return Ok(self.inner.state.lock().await.clone());
        }
        // No deployment took it (none runs, or it ended meanwhile): a plain rollback.
        let standby = self.inner.state.lock().await.standby();
        if let Some(slot) = standby {
            self.inner.await_first_checks(slot).await;
        }
        let inner = self.inner.clone();
        detached(async move {
            let mut state = inner.state.lock().await;
            let healthy = state.standby().map_or(0, |s| inner.proxy.healthy_count(s));
            let next = state.rollback(healthy)?;
            let why = events::Why::operator(crate::EventKind::Rollback, "operator rollback");
            inner.commit(&mut state, next, why).await
        })
        .await
    }

    /// The current status: routing state plus live upstream health.
    pub async fn status(&self) -> Status {
        let state = self.inner.state.lock().await.clone();
        let table = self.inner.proxy.table();
        let slot = |name: SlotName| {
            let s = state.slot(name);
            SlotStatus {
                version: s.version.clone(),
                role: s.role,
                upstreams: table
                    .slot(name)
                    .upstreams
                    .iter()
                    .map(|u| UpstreamStatus {
                        addr: u.addr.clone(),
                        healthy: u.is_healthy(),
                    })
                    .collect(),
            }
        };
        Status {
            live: state.live,
            revision: state.revision,
            weights: state.weights,
            slots: SlotsStatus {
                blue: slot(SlotName::Blue),
                green: slot(SlotName::Green),
            },
            deployment: self.current().map(|d| DeploymentStatus {
                stage: d
                    .current_stage()
                    .map_or("start", |s| s.stage.as_str())
                    .to_owned(),
                id: d.id,
                version: d.version,
            }),
            fleet: self.fleet_status().await,
            state_problem: self.inner.store.problem(),
        }
    }

    async fn fleet_status(&self) -> Option<FleetStatus> {
        let fleet = self.inner.store.fleet()?;
        let leader_replica = tokio::time::timeout(Duration::from_secs(2), fleet.leader())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        Some(FleetStatus {
            replica: fleet.me().clone(),
            leader: self.inner.may_run_deployments(),
            leader_replica,
            connected: fleet.connected(),
        })
    }

    /// In a fleet: whether this replica leads, and whether its last call to etcd got
    /// through (no call to etcd made here). `None` for a router of its own.
    pub fn fleet_flags(&self) -> Option<(bool, bool)> {
        let fleet = self.inner.store.fleet()?;
        Some((self.inner.may_run_deployments(), fleet.connected()))
    }

    /// In a fleet, refuses a deployment call on a replica that is not the leader.
    async fn require_leader(&self) -> Result<(), ControlError> {
        if self.inner.may_run_deployments() {
            return Ok(());
        }
        let leader = match self.inner.store.fleet() {
            // Elected a moment ago and still settling the previous leader's deployment:
            // not a redirect to itself, a "retry in a moment".
            Some(f) => f.leader().await?.filter(|l| l != f.me()),
            None => None,
        };
        Err(ControlError::NotLeader { leader })
    }

    /// The running deployment's record, if one runs.
    pub fn current(&self) -> Option<Deployment> {
        let run = self.inner.run.lock().unwrap_or_else(|p| p.into_inner());
        run.as_ref()
            .map(|h| h.record.borrow().clone())
            .or_else(|| self.inner.remote_current())
    }

    /// Starts a deployment of `req.version` into the idle slot (blue for the first one)
    /// and returns its record; the pipeline runs in a task of its own.
    pub async fn deploy(&self, req: DeployRequest) -> Result<Deployment, ControlError> {
        self.inner.not_handing_over()?;
        self.require_leader().await?;
        if self.inner.store.fleet().is_some() {
            // A fleet's leader that cannot reach etcd must not start what it cannot save.
            self.inner.store.load_routing().await?;
        }
        validate_version(&req.version)?;
        for addr in &req.upstreams {
            validate_upstream(addr)?;
            let own = self
                .inner
                .own_addrs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(listen) = own
                .iter()
                .find(|a| turnout_core::names_listen_addr(addr, **a))
            {
                return Err(ControlError::Invalid(format!(
                    "upstream {addr:?} is this router's own address ({listen}): requests would loop through turnout; give the address of an instance of the service"
                )));
            }
        }
        if req.upstreams.is_empty() && self.inner.pipeline.provision == Provisioner::Static {
            return Err(ControlError::Invalid(
                "no upstreams given and no [provision] section configured: name the running instances of this version with --upstream HOST:PORT (repeatable), or configure [provision] so that turnout starts them".into(),
            ));
        }
        // A promoted deployment still waiting to retire its standby gives way.
        let waiting = {
            let run = self.inner.run.lock().unwrap_or_else(|p| p.into_inner());
            run.as_ref().is_some_and(|h| h.record.borrow().is_over())
        };
        if waiting {
            let _ = self.signal(SignalKind::Supersede).await;
        }
        let state = self.inner.state.lock().await.clone();
        let (d, runner) = {
            let mut run = self.inner.run.lock().unwrap_or_else(|p| p.into_inner());
            // Under the lock `begin_handover` takes to stop the running deployment.
            self.inner.not_handing_over()?;
            if let Some(h) = run.as_ref() {
                let d = h.record.borrow();
                let stage = d.current_stage().map_or("start", |s| s.stage.as_str());
                return Err(ControlError::Conflict(format!(
                    "deployment {} of {} is in progress (stage: {stage}); wait for it, or end it with `turnout abort` (before its switch) or `turnout rollback`",
                    d.id, d.version
                )));
            }
            let slot = match state.live {
                None => SlotName::Blue,
                Some(live) => live.other(),
            };
            let previous = state.live;
            let d = Deployment {
                id: deploy::new_id(),
                version: req.version.clone(),
                slot,
                verdict: Verdict::InProgress,
                reason: None,
                started_at: deploy::now(),
                ended_at: None,
                stages: Vec::new(),
                previous,
                previous_version: previous.and_then(|p| state.slot(p).version.clone()),
                upstreams: Vec::new(),
                manual: req.manual,
                analysis: None,
            };
            if let Some(prev) = previous {
                *self.inner.mark.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((d.id.clone(), prev, self.inner.snapshot(prev)));
            }
            let (runner, handle) = Run::new(
                self.inner.clone(),
                Arc::new(self.inner.pipeline.clone()),
                d.clone(),
                req.upstreams,
            );
            *run = Some(handle);
            (d, runner)
        };
        // The run's task saves the record first, and the answer waits for that save:
        // whoever asks for the deployment next — on any replica of a fleet, where `deploy`
        // is followed after a redirect — finds it. The task is spawned before any await,
        // so a caller that goes away cannot leave a deployment that never runs.
        let store = self.inner.store.clone();
        let first = d.clone();
        let settings = serde_json::to_string(&options::RunSettings::of(&self.inner.pipeline));
        let (saved_tx, saved_rx) = tokio::sync::oneshot::channel::<Result<(), StoreError>>();
        let inner = self.inner.clone();
        self.inner.spawn_run(async move {
            if let Ok(settings) = settings {
                if let Err(e) = store.save_value(&settings_key(&first.id), &settings).await {
                    tracing::warn!(deployment = %first.id, error = %e, "the deployment's settings were not saved (a reload during it would change them): {e}");
                }
            }
            // A deployment whose record cannot be saved does not start: nothing of it
            // would survive a restart, and the store's problem is the operator's first.
            if let Err(e) = store.save_deployment(&first).await {
                tracing::error!(deployment = %first.id, error = %e, "the deployment record was not saved; the deployment does not start: {e}");
                inner.run_ended(&first.id);
                let _ = saved_tx.send(Err(e));
                return;
            }
            let _ = saved_tx.send(Ok(()));
            runner.drive().await
        });
        match saved_rx.await {
            Ok(Err(e)) => Err(ControlError::Store(e)),
            _ => Ok(d),
        }
    }

    /// Passes the manual gate, or moves a canary on to its next step.
    pub async fn promote(&self) -> Result<Deployment, ControlError> {
        self.inner.not_handing_over()?;
        self.require_leader().await?;
        match self.signal(SignalKind::Promote).await? {
            Some(d) => Ok(d),
            None => Err(ControlError::Conflict(
                "no deployment is in progress; there is nothing to promote".into(),
            )),
        }
    }

    /// Ends the running deployment before its switch; returns its final record.
    pub async fn abort(&self) -> Result<Deployment, ControlError> {
        self.inner.not_handing_over()?;
        self.require_leader().await?;
        match self.signal(SignalKind::Abort).await? {
            Some(d) => Ok(d),
            None => Err(ControlError::Conflict(
                "no deployment is in progress; there is nothing to abort".into(),
            )),
        }
    }

    /// Sends `kind` to the running deployment. `Ok(None)`: none runs. For abort and
    /// rollback, waits (bounded) until the run has ended and returns its last record; for
    /// promote, returns the record once the signal was taken.
    async fn signal(&self, kind: SignalKind) -> Result<Option<Deployment>, ControlError> {
        let (tx, record) = {
            let run = self.inner.run.lock().unwrap_or_else(|p| p.into_inner());
            match run.as_ref() {
                Some(h) => (h.tx.clone(), h.record.clone()),
                None => return Ok(None),
            }
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if tx.send(Signal { kind, reply }).await.is_err() {
            return Ok(None);
        }
        // Promote is answered when taken; abort and rollback when the run has ended, with
        // what actually happened.
        match tokio::time::timeout(Duration::from_secs(600), answer).await {
            Ok(Ok(Ok(()))) => {
                let last = record.borrow().clone();
                Ok(Some(last))
            }
            Ok(Ok(Err(e))) => Err(e),
            // The run ended without taking the signal.
            Ok(Err(_)) => Ok(None),
            Err(_) => Err(ControlError::Conflict(
                "the deployment did not finish within 600s of the request; check `turnout status`"
                    .into(),
            )),
        }
    }

    /// Recent deployments, newest first (the running one as it is now).
    pub async fn deployments(&self, limit: usize) -> Result<Vec<Deployment>, ControlError> {
        let mut list = self.inner.store.load_deployments(limit).await?;
        if let Some(current) = self.current() {
            match list.iter_mut().find(|d| d.id == current.id) {
                Some(d) => *d = current,
                None => list.insert(0, current),
            }
        }
        Ok(list)
    }

    /// One deployment.
    pub async fn deployment(&self, id: &str) -> Result<Deployment, ControlError> {
        if let Some(current) = self.current().filter(|d| d.id == id) {
            return Ok(current);
        }
        // The store keeps a few hundred; an id is looked up among them.
        let list = self.inner.store.load_deployments(1000).await?;
        list.into_iter()
            .find(|d| d.id == id)
            .ok_or_else(|| ControlError::NotFound(format!("deployment {id}")))
    }

    /// The shadow comparison of the running deployment (the numbers so far), or else the
    /// last one.
    pub async fn shadow_report(&self) -> Result<ShadowReport, ControlError> {
        {
            let run = self.inner.shadow.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(run) = run.as_ref() {
                return Ok(run.report(true));
            }
        }
        match self.inner.store.load_value(shadow::LAST_KEY).await? {
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                ControlError::Store(StoreError::Corrupt {
                    location: self.inner.store.describe(),
                    source: e,
                })
            }),
            None => Err(ControlError::NotFound(
                "shadow report: no deployment has run a shadow stage yet ([shadow] in the config turns it on)".into(),
            )),
        }
    }

    /// Events as they happen.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// The recent events after id `last_id` (at most the last 1000 are kept), and a
    /// receiver for the ones after those: a client resuming from `last_id` misses none
    /// that is still kept, and sees none twice.
    pub fn events_since(&self, last_id: u64) -> (Vec<Event>, broadcast::Receiver<Event>) {
        self.inner.events.since(last_id)
    }

    /// Publishes an event (it gets the next id).
    pub fn publish(&self, event: Event) {
        self.inner.events.publish(event);
    }

    /// Turns the data plane's health changes into `health` events, until the controller
    /// is gone; and after each, raises a `failover` event when requests start or stop
    /// going to the standby because the live slot has no healthy upstream (`[health]
    /// failover`).
    fn forward_health(&self) {
        let mut rx = self.inner.proxy.health_events();
        let inner = Arc::downgrade(&self.inner);
        let mut failover = self.inner.proxy.failover_target();
        tokio::spawn(async move {
            loop {
                let h = match rx.recv().await {
                    Ok(h) => h,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "{n} health changes were not turned into events (too many at once)"
                        );
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(inner) = inner.upgrade() else { return };
                inner.events.publish(events::health_event(&h));
                let now = inner.proxy.failover_target();
                if now != failover {
                    let live = inner.proxy.table().live;
                    inner
                        .events
                        .publish(events::failover_event(live, failover, now));
                    failover = now;
                }
            }
        });
    }

    /// Stops the control plane of a router that is stopping: the running deployment stops
    /// where it is (the next router process resumes or settles it), a fleet's leader
    /// resigns. With `stop_instances`, every instance turnout started is stopped too
    /// (SIGTERM, then SIGKILL after the stop timeout) — the service goes down on purpose;
    /// without, they keep running and the next `turnout serve` on this state adopts them.
    /// Their records stay saved either way.
    pub async fn shutdown(&self, stop_instances: bool) {
        // The deployment stops where it is (the next start resumes or settles it), so
        // that it cannot start instances after these were stopped.
        self.inner.stop_task();
        // A fleet's leader hands over at once rather than after its lease runs out.
        if let Some(fleet) = self.inner.store.fleet() {
            let _ = tokio::time::timeout(Duration::from_secs(2), fleet.resign()).await;
        }
        let taken: Vec<_> = {
            let mut slots = self.inner.slots.lock().await;
            slots
                .iter_mut()
                .filter_map(|s| s.as_mut().and_then(|rt| rt.instances.take()))
                .collect()
        };
        let n = taken.len();
        if !stop_instances {
            for instances in taken {
                instances.release();
            }
            return;
        }
        futures_join_all(taken.into_iter().map(|i| i.stop())).await;
        if n > 0 {
            tracing::info!(slots = n, "stopped the instances turnout started");
        }
    }

    /// Prepares a handover to a new router process: from now on every change is refused
    /// with `reason` (`ControlError::HandingOver`), and the running deployment's task stops
    /// where it is, so that the new process can resume it from the store. Refused while a
    /// deployment is before its switch: a new process cannot resume those stages (it
    /// would abort the deployment), so the operator promotes, aborts or waits first.
    pub async fn begin_handover(&self, reason: &str) -> Result<(), ControlError> {
        // The deployment this process runs (a fleet's follower runs none).
        let local = {
            let run = self.inner.run.lock().unwrap_or_else(|p| p.into_inner());
            run.as_ref().map(|h| h.record.borrow().clone())
        };
        if let Some(d) = local.filter(|d| !d.is_over()) {
            // A new process resumes a bake (or a rollback); before it, it could only
            // abort the deployment or roll it back (a canary step, the pre_switch hook).
            if !d.reached(Stage::Bake) && !d.reached(Stage::Rollback) {
                let stage = d.current_stage().map_or("start", |s| s.stage.as_str());
                return Err(ControlError::Conflict(format!(
                    "deployment {} of {} is at its {stage} stage, before its bake, and a new router process could only abort it or roll it back; promote or abort it (or wait until it bakes), then try again",
                    d.id, d.version
                )));
            }
        }
        {
            let flag = self
                .inner
                .handing_over
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(already) = flag.as_ref() {
                return Err(ControlError::HandingOver(already.clone()));
            }
        }
        // The deployment's task stops where it is first (the new process resumes it from
        // the store), so that none of its steps is refused half-way; then every change
        // is refused, and the changes in flight finish (they hold the state lock).
        if self.inner.stop_task() {
            *self.inner.run.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        *self
            .inner
            .handing_over
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
        drop(self.inner.state.lock().await);
        Ok(())
    }

    /// A handover that did not happen (the new process failed): changes are accepted
    /// again and the deployment that was stopped is resumed here.
    pub async fn cancel_handover(&self) {
        *self
            .inner
            .handing_over
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        // The new process may have saved a routing change before it failed (static
        // upstreams of a new config): route by what the store holds.
        {
            let mut state = self.inner.state.lock().await;
            let now = self.inner.reload(&mut state).await;
            tracing::info!(now = %now, "routing state read again after the failed handover");
        }
        if self.inner.store.fleet().is_some() && !self.inner.may_run_deployments() {
            // A follower runs no deployment: nothing to resume.
            return;
        }
        match self.inner.store.load_deployments(20).await {
            Ok(deployments) => {
                if let Err(e) = self.inner.recover_deployments(deployments).await {
                    tracing::error!(error = %e, "could not resume the deployment after a failed handover: {e}");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "could not resume the deployment after a failed handover: {e}")
            }
        }
    }

    /// The addresses this router listens on: `deploy --upstream` refuses them (a loop).
    pub fn set_own_addrs(&self, addrs: Vec<std::net::SocketAddr>) {
        *self
            .inner
            .own_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = addrs;
    }
}

impl Controller {
    /// Kills every instance turnout started at once (SIGKILL), for a router stopped by a
    /// second signal.
    pub async fn kill_all(&self) {
        self.inner.stop_task();
        let mut slots = self.inner.slots.lock().await;
        for rt in slots.iter_mut().flatten() {
            if let Some(instances) = rt.instances.take() {
                instances.kill_now();
            }
        }
    }
}

/// Runs futures to completion concurrently.
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    for h in handles {
        let _ = h.await;
    }
}

fn validate_version(version: &str) -> Result<(), ControlError> {
    // It reaches commands (`[provision] command`'s `{version}`, hooks' env): one that
    // starts with `-` would be read as an option there (`--help`).
    let ok = !version.is_empty()
        && version.len() <= 128
        && version.starts_with(|c: char| c.is_ascii_alphanumeric())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+:/@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "version {} is not usable: use 1 to 128 characters of letters, digits and . _ - + : / @, starting with a letter or a digit (for example v2.1.0 or 2026-11-26.3)",
            quote_short(version)
        )))
    }
}

/// `s` quoted for a message, at most 40 characters of it (with its length when cut): an
/// error never repeats a whole input back.
fn quote_short(s: &str) -> String {
    const SHOWN: usize = 40;
    if s.chars().count() <= SHOWN {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(SHOWN).collect();
    format!("{head:?}… ({} bytes)", s.len())
}

fn validate_upstream(addr: &str) -> Result<(), ControlError> {
    let bad = |why: &str| {
        Err(ControlError::Invalid(format!(
            "upstream {addr:?} {why}: give HOST:PORT without a scheme, like 127.0.0.1:7001"
        )))
    };
    if addr.contains("://") {
        return bad("has a scheme");
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad("has no port");
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return bad("has no usable host");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => bad("has no usable port (1-65535)"),
    }
}

/// The store key of the settings deployment `id` runs with (`options::RunSettings`).
fn settings_key(id: &str) -> String {
    format!("deployment-settings/{id}")
}

/// The store key of the slots' runtime ([`SavedSlot`] per slot).
const SLOTS_KEY: &str = "slots";

/// Runs a change to its end even when the caller stops waiting.
async fn detached<T: Send + 'static>(
    change: impl std::future::Future<Output = Result<T, ControlError>> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::spawn(change)
        .await
        .unwrap_or_else(|e| Err(ControlError::Interrupted(e.to_string())))
}

impl Inner {
    /// `Err(HandingOver)` while this process hands over to a new one.
    fn not_handing_over(&self) -> Result<(), ControlError> {
        match self
            .handing_over
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(reason) => Err(ControlError::HandingOver(format!(
                "this router process is handing over to a new one ({reason}); changes are made there once it serves: try again in a moment"
            ))),
            None => Ok(()),
        }
    }

    /// Computes a change from the current state and commits it, in a task of its own
    /// (see [`Controller::switch`]).
    async fn change(
        self: &Arc<Inner>,
        why: events::Why,
        f: impl FnOnce(&RoutingState, &Proxy) -> Result<RoutingState, SwitchError> + Send + 'static,
    ) -> Result<RoutingState, ControlError> {
        let inner = self.clone();
        detached(async move {
            let mut state = inner.state.lock().await;
            let next = f(&state, &inner.proxy)?;
            if next == *state {
                return Ok(next);
            }
            inner.commit(&mut state, next, why).await
        })
        .await
    }

    /// Records what `slot` runs, and saves it.
    async fn set_runtime(&self, slot: SlotName, rt: Option<SlotRuntime>) {
        let mut slots = self.slots.lock().await;
        slots[slot.index()] = rt;
        self.save_slots(&slots).await;
    }

    async fn save_slots(&self, slots: &[Option<SlotRuntime>; 2]) {
        let saved: [Option<SavedSlot>; 2] = [
            slots[0].as_ref().map(SlotRuntime::saved),
            slots[1].as_ref().map(SlotRuntime::saved),
        ];
        let text = match serde_json::to_string(&saved) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode the slots' runtime");
                return;
            }
        };
        if let Err(e) = self.store.save_value(SLOTS_KEY, &text).await {
            tracing::warn!(error = %e, "the slots' runtime was not saved: {e}");
        }
    }

    /// Stops the running deployment's task where it is (the next router process, or this
    /// one after a failed handover, resumes it from the store); true if there was one.
    fn stop_task(&self) -> bool {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        match task {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// Spawns a deployment's task, keeping a handle so that a stopping router can end
    /// it before it stops the instances (it is resumed at the next start).
    fn spawn_run(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let task = tokio::spawn(fut);
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
    }

    /// Who provided `slot`'s upstreams, when turnout knows (`None`: the configuration's
    /// static upstreams, or nothing).
    async fn slot_runtime_kind(&self, slot: SlotName) -> Option<SlotKind> {
        let slots = self.slots.lock().await;
        slots[slot.index()].as_ref().map(|rt| rt.kind)
    }

    /// Whether `slot`'s upstreams were provided by deployment `id`.
    async fn slot_owned_by(&self, slot: SlotName, id: &str) -> bool {
        let slots = self.slots.lock().await;
        slots[slot.index()]
            .as_ref()
            .is_some_and(|rt| rt.deployment == id)
    }

    /// The first of `slot`'s instances that exited, if any.
    async fn instance_exit(&self, slot: SlotName) -> Option<instances::InstanceExit> {
        let slots = self.slots.lock().await;
        slots[slot.index()]
            .as_ref()
            .and_then(|rt| rt.instances.as_ref())
            .and_then(|i| i.exited())
    }

    /// The statistics of the previous live slot when deployment `id` started.
    fn baseline_mark(&self, slot: SlotName, id: &str) -> Option<StatsSnapshot> {
        let mark = self.mark.lock().unwrap_or_else(|p| p.into_inner());
        mark.as_ref()
            .filter(|(mid, mslot, _)| mid == id && *mslot == slot)
            .map(|(_, _, snap)| snap.clone())
    }

    /// Forgets the running deployment `id` (its task has ended).
    fn run_ended(&self, id: &str) {
        let mut run = self.run.lock().unwrap_or_else(|p| p.into_inner());
        if run.as_ref().is_some_and(|h| h.id == id) {
            *run = None;
        }
    }

    /// Empties `slot`: routing first (so no new request goes there), then its processes
    /// are stopped or `[provision] down` is run.
    async fn retire(self: &Arc<Inner>, slot: SlotName) -> Result<(), ControlError> {
        let has = !self.state.lock().await.slot(slot).upstreams.is_empty();
        if has {
            let why = events::Why::operator(crate::EventKind::Switch, format!("{slot} retired"))
                .by_leader();
            self.change(why, move |s: &RoutingState, _| s.clear_slot(slot))
                .await?;
        }
        let rt = {
            let mut slots = self.slots.lock().await;
            let rt = slots[slot.index()].take();
            self.save_slots(&slots).await;
            rt
        };
        let Some(mut rt) = rt else {
            return Ok(());
        };
        if let Some(instances) = rt.instances.take() {
            instances.stop().await;
            tracing::info!(slot = %slot, version = %rt.version, "stopped the instances of {}", rt.version);
        }
        if rt.kind == SlotKind::External {
            if let Provisioner::External {
                down: Some(down),
                timeout,
                ..
            } = &self.pipeline.provision
            {
                let env = vec![
                    ("TURNOUT_SLOT".to_owned(), slot.to_string()),
                    ("TURNOUT_VERSION".to_owned(), rt.version.clone()),
                    ("TURNOUT_DEPLOYMENT".to_owned(), rt.deployment.clone()),
                ];
                let log = self
                    .pipeline
                    .state_dir
                    .join("logs")
                    .join(format!("{}-provision-down.log", rt.deployment));
                commands::run(commands::CommandSpec {
                    name: "provision down",
                    command: down,
                    env,
                    timeout: *timeout,
                    log: Some(log),
                })
                .await
                .map_err(|e| ControlError::Conflict(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// At start: takes over the slots' instances that a previous router process left
    /// running (an upgrade, a reload, a router stopped or killed) and starts again the
    /// ones that are gone, stops what no slot claims, and settles a deployment that was in
    /// progress: one that was baking goes on baking, one that had not switched is
    /// aborted, a canary half-way is rolled back.
    async fn recover(self: &Arc<Inner>) -> Result<(), ControlError> {
        let saved: [Option<SavedSlot>; 2] = match self.store.load_value(SLOTS_KEY).await? {
            None => [None, None],
            Some(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the saved slots' runtime is unreadable; ignoring it");
                [None, None]
            }),
        };
        let deployments = self.store.load_deployments(20).await?;
        // Only the latest deployment can be in progress; an older unfinished one is a
        // record whose last save failed, closed below.
        let unfinished = deployments.first().filter(|d| !d.is_over()).cloned();
        let mut kept = std::collections::HashSet::new();
        let mut reaped = 0;
        let mut to_check = Vec::new();
        for (slot, saved) in SlotName::ALL.into_iter().zip(saved) {
            let Some(saved) = saved else { continue };
            let upstreams = self.state.lock().await.slot(slot).upstreams.clone();
            // A candidate that never got traffic is not taken over: it is aborted below.
            let aborted = unfinished.as_ref().is_some_and(|d| {
                d.slot == slot && d.id == saved.deployment && !d.reached(Stage::Switch)
            });
            if upstreams.is_empty() || aborted {
                reaped += instances::reap_orphans(&saved.instances);
                if upstreams.is_empty() {
                    continue;
                }
            }
            let mut rt = SlotRuntime {
                kind: saved.kind,
                version: saved.version.clone(),
                deployment: saved.deployment.clone(),
                instances: None,
            };
            if saved.kind == SlotKind::Command && !aborted {
                let Provisioner::Command {
                    command,
                    instances: count,
                    stop_timeout,
                } = self.pipeline.provision.clone()
                else {
                    kept.extend(saved.instances.iter().map(|r| r.pid));
                    tracing::warn!(slot = %slot, "slot {slot} ran instances started by turnout, but [provision] command is no longer configured; they are left alone");
                    self.set_runtime(slot, Some(rt)).await;
                    continue;
                };
                let ports = upstreams
                    .iter()
                    .filter_map(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
                    .collect();
                let spec = instances::InstanceSpec {
                    command,
                    version: saved.version.clone(),
                    slot,
                    deployment: saved.deployment.clone(),
                    count,
                    log_dir: self.pipeline.state_dir.join("logs"),
                    stop_timeout,
                    ports,
                };
                // Records from before instances were recorded: start them all again.
                let records = if saved.instances.is_empty() {
                    upstreams
                        .iter()
                        .map(|addr| instances::InstanceRecord {
                            addr: addr.clone(),
                            pid: 0,
                            start_time: 0,
                            log: PathBuf::new(),
                        })
                        .collect()
                } else {
                    saved.instances.clone()
                };
                match instances::Instances::adopt(spec, &records).await {
                    Ok((taken, adopted)) => {
                        let addrs = taken.addrs();
                        kept.extend(taken.pids());
                        let restarted = records.len() - adopted;
                        tracing::info!(slot = %slot, version = %saved.version, adopted, restarted, addrs = ?addrs, "took over the instances of {}: {adopted} still running, {restarted} started again", saved.version);
                        // Instances that served the previous process up to now need no
                        // new gate; after a crash, or with some started again, they do.
                        if restarted > 0 || !self.pipeline.taken_over {
                            to_check.push(slot);
                        }
                        rt.instances = Some(taken);
                        if addrs != upstreams {
                            let why = events::Why::operator(
                                crate::EventKind::Switch,
                                format!("{slot}'s instances restarted"),
                            );
                            self.change(why, move |s: &RoutingState, _| {
                                let mut next = s.clone();
                                next.revision += 1;
                                next.slot_mut(slot).upstreams = addrs;
                                Ok(next)
                            })
                            .await?;
                        }
                    }
                    Err(e) => {
                        // Left alone: a process handing over to this one still serves
                        // with them.
                        kept.extend(saved.instances.iter().map(|r| r.pid));
                        tracing::error!(slot = %slot, error = %e, "could not take over the instances of {}: {e}", saved.version)
                    }
                }
            }
            self.set_runtime(slot, Some(rt)).await;
        }
        // Processes of this state directory that no slot claims: started by a router
        // killed before it recorded them.
        reaped += instances::reap_state_dir(&self.pipeline.state_dir, &kept);
        if reaped > 0 {
            tracing::warn!(
                reaped,
                "stopped instances left running by a router that did not stop cleanly, which no slot uses"
            );
        }
        // The data plane starts once the instances serve: before, every request to them
        // would fail (and a resumed bake would blame the version for it).
        for slot in to_check {
            let logs = self.pipeline.state_dir.join("logs");
            let timeout = self.pipeline.health_timeout;
            if let Err(e) = deploy::health_gate(self.clone(), slot, timeout, logs).await {
                tracing::warn!(slot = %slot, error = %e, "the instances of {slot} are not healthy: {e}");
            }
        }
        self.recover_deployments(deployments).await
    }

    /// Loads what the slots run (a leader taking over from another replica).
    async fn load_slots(&self) -> Result<(), ControlError> {
        let saved: [Option<SavedSlot>; 2] = match self.store.load_value(SLOTS_KEY).await? {
            None => [None, None],
            Some(text) => serde_json::from_str(&text).unwrap_or([None, None]),
        };
        let mut slots = self.slots.lock().await;
        for (slot, saved) in slots.iter_mut().zip(saved) {
            *slot = saved.map(|s| SlotRuntime {
                kind: s.kind,
                version: s.version,
                deployment: s.deployment,
                instances: None,
            });
        }
        Ok(())
    }

    /// Settles the deployments a previous process left unfinished (`deployments`: the
    /// newest first): see [`Inner::recover`].
    async fn recover_deployments(
        self: &Arc<Inner>,
        deployments: Vec<Deployment>,
    ) -> Result<(), ControlError> {
        let unfinished = deployments.first().filter(|d| !d.is_over()).cloned();
        // The latest deployment only: older unfinished ones (from a crash long ago) are
        // closed as aborted.
        for d in deployments.into_iter().filter(|d| !d.is_over()) {
            if unfinished.as_ref().is_some_and(|u| u.id == d.id) {
                self.resume(d).await;
            } else {
                let mut d = d;
                d.finish(
                    Verdict::Aborted,
                    Some("left unfinished by a router that stopped; superseded".into()),
                    Outcome::Aborted,
                    &deploy::now(),
                );
                self.store.save_deployment(&d).await?;
            }
        }
        // A promoted deployment whose decommission was pending.
        let latest = self.store.load_deployments(1).await?;
        let idle = self.run.lock().unwrap_or_else(|p| p.into_inner()).is_none();
        if let Some(d) = latest.into_iter().next().filter(|d| {
            idle && d.verdict == Verdict::Promoted
                && d.current_stage().is_some_and(|s| {
                    s.stage == Stage::Decommission && s.outcome == Outcome::Running
                })
        }) {
            let opts = self.settings_of(&d.id).await;
            let (run, handle) = Run::new(self.clone(), opts, d, Vec::new());
            *self.run.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
            self.spawn_run(run.resume_decommission());
        }
        Ok(())
    }

    /// The settings deployment `id` started with (saved at its start), or the current
    /// ones for a deployment saved before settings were.
    async fn settings_of(&self, id: &str) -> Arc<PipelineOptions> {
        let saved = match self.store.load_value(&settings_key(id)).await {
            Ok(Some(text)) => serde_json::from_str::<options::RunSettings>(&text).ok(),
            _ => None,
        };
        match saved {
            Some(settings) => {
                if settings != options::RunSettings::of(&self.pipeline) {
                    tracing::info!(deployment = %id, "deployment {id} goes on with the settings it started with ([promote], [bake], [hooks], [decommission]); the configuration's new ones apply to the next deployment");
                }
                Arc::new(settings.apply(&self.pipeline))
            }
            None => Arc::new(self.pipeline.clone()),
        }
    }

    /// Settles deployment `d` that a previous process left in progress.
    async fn resume(self: &Arc<Inner>, d: Deployment) {
        // Settling twice (a retried take-over) must not start a second run.
        if self.run.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return;
        }
        let state = self.state.lock().await.clone();
        let baking = state.live == Some(d.slot) && d.reached(Stage::Switch);
        let share = state.weights.of(d.slot);
        let opts = self.settings_of(&d.id).await;
        let (run, handle) = Run::new(self.clone(), opts.clone(), d.clone(), Vec::new());
        *self.run.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        if d.reached(Stage::Rollback) {
            self.spawn_run(
                run.resume_rollback(
                    "the router restarted during the rollback; it was finished after the restart"
                        .into(),
                ),
            );
        } else if baking {
            let bake = &opts.bake;
            let remaining =
                d.stages
                    .iter()
                    .find(|s| s.stage == Stage::Bake)
                    .map_or(bake.duration, |s| {
                        bake.duration
                            .saturating_sub(deploy::elapsed_since(&s.started_at))
                    });
            let baseline = d
                .analysis
                .as_ref()
                .and_then(|a| a.baseline_p99_ms)
                .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok());
            self.spawn_run(run.resume_bake(baseline, remaining));
        } else if share > 0 && state.live != Some(d.slot) {
            self.spawn_run(run.resume_rollback(
                "the router restarted during a canary step; traffic went back to the previous version".into(),
            ));
        } else {
            self.spawn_run(run.resume_abort(
                "the router restarted before the switch; users never saw this version, and its instances were stopped".into(),
            ));
        }
    }

    /// Counts a shadow run's counters in [`Controller::shadow_counts`].
    pub(crate) fn track_shadow(&self, counters: &Arc<turnout_proxy::ShadowCounters>) {
        self.shadow_totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .push(counters.clone());
    }

    /// Saves `next` over `state`, then routes by it. When the save fails, the outcome is
    /// not always known (a conflict means another writer; a failed commit may have landed):
    /// the store is read back and the data plane follows what it holds.
    ///
    /// With `[sessions]`, a switch of the live slot starts a session drain for the slot
    /// left (`RoutingState::drain`), and a rollback ends any drain: the slot rolled away
    /// from was bad, so every session goes to the restored slot at once.
    async fn commit(
        &self,
        state: &mut RoutingState,
        mut next: RoutingState,
        why: events::Why,
    ) -> Result<RoutingState, ControlError> {
        // Checked again under the state lock: a handover may have begun while this change
        // waited (a switch's wait for health checks, a deployment's step).
        self.not_handing_over()?;
        if let Some(drain) = self.pipeline.session_drain {
            if why.kind == EventKind::Rollback {
                next.drain = None;
            } else if let (Some(from), Some(to)) = (state.live, next.live) {
                if from != to {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    next.drain = Some(turnout_core::Drain {
                        slot: from,
                        until_unix_ms: u64::try_from(now.saturating_add(drain).as_millis())
                            .unwrap_or(u64::MAX),
                    });
                }
            }
        }
        let saved = match self.store.fleet() {
            // A deposed leader's change in flight must not land over the new leader's.
            Some(fleet) if why.leader_only => {
                fleet
                    .save_routing_as_leader(&next, Some(state.revision))
                    .await
            }
            _ => self.store.save_routing(&next, Some(state.revision)).await,
        };
        if let Err(source) = saved {
            let now = self.reload(state).await;
            tracing::warn!(error = %source, now = %now, "routing change not saved");
            return Err(ControlError::NotSaved { source, now });
        }
        self.proxy.apply(&next);
        if next.live != state.live {
            self.switches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::info!(live = ?next.live, from = ?state.live, revision = next.revision, "switched");
        if let Some(event) = why.event(state, &next) {
            self.events.publish(event);
        }
        *state = next.clone();
        Ok(next)
    }

    /// Makes memory and the data plane agree with the store again, when it can be read.
    async fn reload(&self, state: &mut RoutingState) -> AfterFailure {
        match self.store.load_routing().await {
            Ok(Some(saved)) if saved == *state => AfterFailure::Unchanged {
                live: state.live,
                revision: state.revision,
            },
            Ok(Some(saved)) => {
                self.proxy.apply(&saved);
                tracing::warn!(live = ?saved.live, revision = saved.revision, "routing state reloaded from the store");
                *state = saved;
                AfterFailure::Reloaded {
                    live: state.live,
                    revision: state.revision,
                }
            }
            Ok(None) => AfterFailure::Unknown {
                live: state.live,
                revision: state.revision,
                reason: format!("{} holds no routing state", self.store.describe()),
            },
            // A fleet's replica follows the store again by itself once it is back.
            Err(StoreError::Unavailable { .. }) if self.store.fleet().is_some() => {
                AfterFailure::Static {
                    live: state.live,
                    revision: state.revision,
                }
            }
            Err(e) => AfterFailure::Unknown {
                live: state.live,
                revision: state.revision,
                reason: e.to_string(),
            },
        }
    }

    /// Waits until the health of `slot` can decide a switch: one of its upstreams passed
    /// a check, or all have been checked. Upstreams count as healthy before their first
    /// check (so that a router starting in front of a running service serves at once);
    /// without this wait a switch right after start would pass the health refusal for a
    /// slot that is down. Bounded by [`Inner::first_check_wait`].
    async fn await_first_checks(&self, slot: SlotName) {
        let deadline = tokio::time::Instant::now() + self.first_check_wait;
        loop {
            let table = self.proxy.table();
            let upstreams = &table.slot(slot).upstreams;
            let decided = upstreams.iter().any(|u| u.is_checked() && u.is_healthy())
                || upstreams.iter().all(|u| u.is_checked());
            if decided {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    slot = %slot,
                    waited_ms = self.first_check_wait.as_millis() as u64,
                    "the slot's upstreams have not been health-checked yet; deciding with what is known"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as SyncMutex;

    use tokio::sync::Notify;
    use turnout_proxy::ProxyOptions;
    use turnout_store::BoxFuture;

    use super::*;

    /// What a save does.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Save {
        Works,
        /// Fails and writes nothing.
        FailsBefore,
        /// Writes, then reports a failure (a commit whose answer got lost).
        FailsAfter,
    }

    /// An in-memory store with the compare-and-swap contract, and knobs for failures.
    struct MemStore {
        saved: SyncMutex<Option<RoutingState>>,
        save: SyncMutex<Save>,
        load_fails: SyncMutex<bool>,
        /// Once: after the next save is durable, signal the first and wait for the second.
        hold: SyncMutex<Option<(Arc<Notify>, Arc<Notify>)>>,
    }

    impl MemStore {
        fn new() -> Arc<MemStore> {
            Arc::new(MemStore {
                saved: SyncMutex::new(None),
                save: SyncMutex::new(Save::Works),
                load_fails: SyncMutex::new(false),
                hold: SyncMutex::new(None),
            })
        }

        fn get(&self) -> RoutingState {
            self.saved.lock().unwrap().clone().expect("a saved state")
        }

        fn put(&self, s: RoutingState) {
            *self.saved.lock().unwrap() = Some(s);
        }
    }

    fn backend(what: &str) -> StoreError {
        StoreError::Backend {
            location: "memory".into(),
            source: what.into(),
        }
    }

    impl StateStore for MemStore {
        fn load_routing(&self) -> BoxFuture<'_, Result<Option<RoutingState>, StoreError>> {
            let r = if *self.load_fails.lock().unwrap() {
                Err(backend("disk gone"))
            } else {
                Ok(self.saved.lock().unwrap().clone())
            };
            Box::pin(async move { r })
        }

        fn save_routing<'a>(
            &'a self,
            state: &'a RoutingState,
            expected: Option<u64>,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                let mode = *self.save.lock().unwrap();
                if mode == Save::FailsBefore {
                    return Err(backend("disk full"));
                }
                {
                    let mut saved = self.saved.lock().unwrap();
                    let found = saved.as_ref().map(|s| s.revision);
                    if found != expected {
                        return Err(StoreError::Conflict {
                            expected: expected.unwrap_or(0),
                            found: found.unwrap_or(0),
                        });
                    }
                    *saved = Some(state.clone());
                }
                let hold = self.hold.lock().unwrap().take();
                if let Some((saved, release)) = hold {
                    saved.notify_one();
                    release.notified().await;
                }
                match mode {
                    Save::FailsAfter => Err(backend("commit answer lost")),
                    _ => Ok(()),
                }
            })
        }

        fn save_deployment<'a>(
            &'a self,
            _d: &'a turnout_core::Deployment,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async { Ok(()) })
        }

        fn load_deployments(
            &self,
            _limit: usize,
        ) -> BoxFuture<'_, Result<Vec<turnout_core::Deployment>, StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn load_value<'a>(
            &'a self,
            _key: &'a str,
        ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
            Box::pin(async { Ok(None) })
        }

        fn save_value<'a>(
            &'a self,
            _key: &'a str,
            _value: &'a str,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async { Ok(()) })
        }

        fn create_value<'a>(
            &'a self,
            _key: &'a str,
            value: &'a str,
        ) -> BoxFuture<'a, Result<String, StoreError>> {
            Box::pin(async move { Ok(value.to_owned()) })
        }

        fn describe(&self) -> String {
            "memory".into()
        }
    }

    fn slot(addr: &str) -> SlotState {
        SlotState {
            version: None,
            upstreams: vec![addr.into()],
            role: Role::Idle,
        }
    }

    /// A controller with blue live and green standby; port 9 on loopback refuses, so a
    /// slot there fails its checks.
    async fn controller(store: Arc<MemStore>, blue: &str, green: &str) -> Controller {
        Controller::start(
            ProxyOptions::default(),
            store,
            [slot(blue), slot(green)],
            PipelineOptions::default(),
        )
        .await
        .unwrap()
    }

    const DOWN: &str = "127.0.0.1:9";

    /// Memory, data plane and store say the same.
    async fn assert_agree(c: &Controller, store: &MemStore) -> RoutingState {
        let stored = store.get();
        let status = c.status().await;
        assert_eq!(
            (status.live, status.revision),
            (stored.live, stored.revision)
        );
        let table = c.proxy().table();
        assert_eq!((table.live, table.revision), (stored.live, stored.revision));
        stored
    }

    #[tokio::test]
    async fn a_switch_whose_caller_hangs_up_mid_save_is_still_applied() {
        let store = MemStore::new();
        let c = controller(store.clone(), DOWN, DOWN).await;
        let (saved, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        *store.hold.lock().unwrap() = Some((saved.clone(), release.clone()));
        // The caller (an API client that hung up) goes away once the new state is
        // durable, before the data plane has been told.
        tokio::select! {
            r = c.switch(SlotName::Green, true) => panic!("the switch ended while held: {r:?}"),
            () = saved.notified() => {}
        }
        release.notify_one();
        // status() waits for the state lock, which the change holds to its end.
        let now = assert_agree(&c, &store).await;
        assert_eq!((now.live, now.revision), (Some(SlotName::Green), 1));
        // And the next change is not refused as a conflict.
        let next = c.switch(SlotName::Blue, true).await.unwrap();
        assert_eq!(next.revision, 2);
        assert_agree(&c, &store).await;
    }

    #[tokio::test]
    async fn a_failed_save_leaves_memory_data_plane_and_store_agreeing() {
        // (what the save does, whether reading back fails, the live slot after, the
        // revision after, whether the outcome is known)
        let cases: &[(Save, bool, Option<SlotName>, u64, &str)] = &[
            (
                Save::FailsBefore,
                false,
                Some(SlotName::Blue),
                0,
                "routing is unchanged: blue is live (revision 0)",
            ),
            (
                Save::FailsAfter,
                false,
                Some(SlotName::Green),
                1,
                "routes by it now: green is live (revision 1)",
            ),
            (
                Save::FailsBefore,
                true,
                Some(SlotName::Blue),
                0,
                "keeps routing as before (blue is live, revision 0)",
            ),
        ];
        for &(save, load_fails, live, revision, message) in cases {
            let store = MemStore::new();
            let c = controller(store.clone(), DOWN, DOWN).await;
            *store.save.lock().unwrap() = save;
            *store.load_fails.lock().unwrap() = load_fails;
            let err = c.switch(SlotName::Green, true).await.unwrap_err();
            assert!(
                matches!(err, ControlError::NotSaved { .. }),
                "{save:?}: {err}"
            );
            assert!(err.to_string().contains(message), "{save:?}: {err}");
            let status = c.status().await;
            assert_eq!((status.live, status.revision), (live, revision), "{save:?}");
            let table = c.proxy().table();
            assert_eq!((table.live, table.revision), (live, revision), "{save:?}");
            if !load_fails {
                assert_agree(&c, &store).await;
            }
        }
    }

    #[tokio::test]
    async fn a_conflict_reloads_what_the_other_writer_saved() {
        let store = MemStore::new();
        let c = controller(store.clone(), DOWN, DOWN).await;
        // Another writer moved the state on behind this router's back.
        store.put(store.get().switch(SlotName::Green, 0, true).unwrap());
        let err = c.switch(SlotName::Blue, true).await.unwrap_err();
        assert!(
            matches!(
                err,
                ControlError::NotSaved {
                    source: StoreError::Conflict { .. },
                    now: AfterFailure::Reloaded {
                        live: Some(SlotName::Green),
                        revision: 1
                    }
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("green is live (revision 1)"),
            "{err}"
        );
        assert_agree(&c, &store).await;
        // A retry works.
        assert_eq!(c.switch(SlotName::Blue, true).await.unwrap().revision, 2);
        assert_agree(&c, &store).await;
    }

    #[tokio::test]
    async fn a_switch_right_after_start_waits_for_the_first_health_check() {
        // Green is down but counts as healthy until checked; the health tasks have not run
        // yet when start returns (one-thread runtime).
        let store = MemStore::new();
        let c = controller(store.clone(), DOWN, DOWN).await;
        let err = c.switch(SlotName::Green, false).await.unwrap_err();
        assert!(
            matches!(err, ControlError::Refused(SwitchError::Unhealthy { .. })),
            "{err}"
        );
        let err = c.rollback().await.unwrap_err();
        assert!(
            matches!(err, ControlError::Refused(SwitchError::Unhealthy { .. })),
            "{err}"
        );
        assert_agree(&c, &store).await;

        // A slot that is up passes after its first check.
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let store = MemStore::new();
        let c = controller(store.clone(), DOWN, &up.local_addr().unwrap().to_string()).await;
        let next = c.switch(SlotName::Green, false).await.unwrap();
        assert_eq!(next.live, Some(SlotName::Green));
        assert_agree(&c, &store).await;
    }

    #[tokio::test]
    async fn saved_upstreams_stay_when_the_config_has_none_for_the_slot() {
        let store = MemStore::new();
        drop(controller(store.clone(), DOWN, "127.0.0.1:8").await);
        let c = Controller::start(
            ProxyOptions::default(),
            store.clone(),
            [slot(DOWN), SlotState::idle()],
            PipelineOptions::default(),
        )
        .await
        .unwrap();
        let status = c.status().await;
        assert_eq!(status.slots.green.upstreams[0].addr, "127.0.0.1:8");
        assert_eq!(status.slots.green.role, Role::Standby);
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn versions_that_commands_could_misread_are_refused() {
        for ok in [
            "v2",
            "2026-11-26.3",
            "1.4.2+build.7",
            "main@abc123",
            "Release_2",
        ] {
            assert!(validate_version(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "--help", "-v", ".hidden", "_x", "a b", "a;b", "$(id)", "é",
        ] {
            let err = validate_version(bad).expect_err(bad).to_string();
            assert!(
                err.contains("starting with a letter or a digit"),
                "{bad}: {err}"
            );
        }
        let long = "v".repeat(10_000);
        let err = validate_version(&long).expect_err("too long").to_string();
        assert!(
            err.len() < 300,
            "the error quotes a prefix only: {} bytes",
            err.len()
        );
        assert!(err.contains("(10000 bytes)"), "{err}");
    }
}
