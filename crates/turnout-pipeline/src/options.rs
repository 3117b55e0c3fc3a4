//! What the release pipeline is told by the configuration. The binary maps `Config` onto
//! these, so that this crate does not depend on the config format.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::verify::Check;

/// How the release pipeline runs.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// The state directory: instance and hook logs go to `logs/` in it.
    pub state_dir: PathBuf,
    /// How a version's instances come to exist.
    pub provision: Provisioner,
    /// How long new upstreams may take to become healthy.
    pub health_timeout: Duration,
    /// Smoke checks, if configured.
    pub verify: Option<VerifyOptions>,
    /// The shadow stage, if configured.
    pub shadow: Option<ShadowStage>,
    /// How the candidate becomes live.
    pub promote: PromoteOptions,
    /// The bake analysis.
    pub bake: BakeOptions,
    /// How long the previous version is kept after a good bake.
    pub decommission_delay: Duration,
    /// Commands at stage edges.
    pub hooks: Hooks,
    /// `[sessions] drain`: after a switch, sessions pinned to the previous live slot stay
    /// there this long (`RoutingState::drain`); `None` without `[sessions]`.
    pub session_drain: Option<Duration>,
    /// This process took over from a running router (an upgrade or a reload): the
    /// instances it adopts served until now, so they are not health-gated again before
    /// the data plane starts.
    pub taken_over: bool,
}

impl Default for PipelineOptions {
    fn default() -> PipelineOptions {
        PipelineOptions {
            state_dir: PathBuf::from("."),
            provision: Provisioner::Static,
            health_timeout: Duration::from_secs(60),
            verify: None,
            shadow: None,
            promote: PromoteOptions::default(),
            bake: BakeOptions::default(),
            decommission_delay: Duration::from_secs(60),
            hooks: Hooks::default(),
            session_drain: None,
            taken_over: false,
        }
    }
}

/// `[provision]`.
#[derive(Clone, Debug, PartialEq)]
pub enum Provisioner {
    /// None configured: every deployment names its upstreams (`deploy --upstream`).
    Static,
    /// turnout starts the instances itself.
    Command {
        /// With `{port}`, `{version}`, `{slot}`.
        command: String,
        /// Instances per version.
        instances: usize,
        /// SIGTERM, then SIGKILL after this.
        stop_timeout: Duration,
    },
    /// External infrastructure: `up` prints the upstreams, `down` removes them.
    External {
        /// Brings a slot up.
        up: String,
        /// Takes a slot down.
        down: Option<String>,
        /// Per command.
        timeout: Duration,
    },
}

/// `[verify]`.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyOptions {
    /// HTTP checks.
    pub checks: Vec<Check>,
    /// A script, with `TURNOUT_TARGET` set.
    pub command: Option<String>,
    /// For the whole stage.
    pub timeout: Duration,
}

/// `[shadow]`: mirror live traffic to the candidate and compare, before the switch.
#[derive(Clone, Debug)]
pub struct ShadowStage {
    /// What the data plane mirrors (its `target` is set to the candidate's slot).
    pub mirror: turnout_proxy::ShadowOptions,
    /// What the comparison ignores.
    pub compare: turnout_shadow::CompareOptions,
    /// Noise cancellation margins.
    pub noise: turnout_shadow::NoiseOptions,
    /// How long the stage mirrors.
    pub duration: Duration,
    /// Compared requests needed for a verdict.
    pub min_requests: u64,
    /// Share of compared requests allowed to differ.
    pub max_mismatch_rate: f64,
    /// Candidate p99 over live p99 allowed.
    pub max_latency_ratio_p99: f64,
}

/// `[promote]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromoteOptions {
    /// auto, manual or canary.
    pub mode: PromoteMode,
    /// Canary steps in percent, ending at 100.
    pub steps: Vec<u8>,
    /// How long each canary step is analysed before the next.
    pub step_duration: Duration,
}

impl Default for PromoteOptions {
    fn default() -> PromoteOptions {
        PromoteOptions {
            mode: PromoteMode::Auto,
            steps: Vec::new(),
            step_duration: Duration::from_secs(60),
        }
    }
}

/// `promote.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromoteMode {
    /// Switch as soon as the gates pass.
    Auto,
    /// Wait for `turnout promote`.
    Manual,
    /// Move traffic in steps.
    Canary,
}

/// `[bake]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BakeOptions {
    /// How long the new live slot is watched.
    pub duration: Duration,
    /// How often the rules are evaluated.
    pub interval: Duration,
    /// The sliding window the rules look at.
    pub window: Duration,
    /// Share of failed requests allowed.
    pub max_error_rate: f64,
    /// p99 allowed.
    pub max_p99: Option<Duration>,
    /// p99 allowed relative to the previous version's.
    pub max_p99_ratio: Option<f64>,
    /// Requests a window needs before it counts.
    pub min_requests: u64,
    /// Fail a bake that saw no window with enough requests.
    pub require_traffic: bool,
    /// Retry failed idempotent requests on the standby during the bake.
    pub retry_on_standby: bool,
}

impl Default for BakeOptions {
    fn default() -> BakeOptions {
        BakeOptions {
            duration: Duration::from_secs(300),
            interval: Duration::from_secs(1),
            window: Duration::from_secs(10),
            max_error_rate: 0.01,
            max_p99: None,
            max_p99_ratio: None,
            min_requests: 20,
            require_traffic: false,
            retry_on_standby: false,
        }
    }
}

/// `[hooks]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Hooks {
    /// Before anything else (the expand migration).
    pub pre_deploy: Option<String>,
    /// After the candidate is up.
    pub post_provision: Option<String>,
    /// Just before traffic moves.
    pub pre_switch: Option<String>,
    /// Just after traffic moved.
    pub post_switch: Option<String>,
    /// After a good bake.
    pub post_bake: Option<String>,
    /// After a rollback.
    pub on_rollback: Option<String>,
    /// Before the previous version is stopped.
    pub pre_decommission: Option<String>,
    /// After it is stopped (the contract migration).
    pub post_decommission: Option<String>,
    /// Per hook.
    pub timeout: Duration,
}

/// The settings a deployment runs with from its start to its end, saved with it: a
/// reload (or an upgrade) during a deployment does not change them, the next deployment
/// takes the new ones. Only what a resumed deployment (after its switch) uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// `[promote]`.
    pub promote: PromoteOptions,
    /// `[bake]`.
    pub bake: BakeOptions,
    /// `[hooks]`.
    pub hooks: Hooks,
    /// `[decommission] delay`.
    pub decommission_delay: Duration,
}

impl RunSettings {
    /// The settings of `opts`.
    pub fn of(opts: &PipelineOptions) -> RunSettings {
        RunSettings {
            promote: opts.promote.clone(),
            bake: opts.bake.clone(),
            hooks: opts.hooks.clone(),
            decommission_delay: opts.decommission_delay,
        }
    }

    /// `opts` with these settings in place of its own.
    pub fn apply(self, opts: &PipelineOptions) -> PipelineOptions {
        PipelineOptions {
            promote: self.promote,
            bake: self.bake,
            hooks: self.hooks,
            decommission_delay: self.decommission_delay,
            ..opts.clone()
        }
    }
}
