//! Command-line arguments (names fixed by SPEC.md).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// turnout: a blue-green release router.
#[derive(Debug, Parser)]
#[command(name = "turnout", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        default_value = "turnout.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    /// The admin API of a running router (default: `[admin] addr` of the config); the
    /// token is read from env TURNOUT_ADMIN_TOKEN, else from `[admin] token`.
    #[arg(long, global = true, value_name = "URL")]
    pub admin: Option<String>,
    /// Log format of `serve`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How `serve` writes its logs (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A slot, as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlotArg {
    /// The blue slot.
    Blue,
    /// The green slot.
    Green,
}

impl SlotArg {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotArg::Blue => "blue",
            SlotArg::Green => "green",
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router: data plane and admin API.
    Serve,
    /// Show the live slot, both slots with their upstreams' health, and the traffic split.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep showing the status as it changes (Ctrl-C to stop).
        #[arg(long)]
        watch: bool,
    },
    /// Move all traffic to a slot at once.
    Switch {
        /// The slot to make live.
        #[arg(long, value_enum)]
        to: SlotArg,
        /// Switch even when the slot has no healthy upstream.
        #[arg(long)]
        force: bool,
    },
    /// Send traffic back to the standby slot at once; during a deployment, also end it as
    /// rolled back.
    Rollback,
    /// Deploy a version into the idle slot and follow it to its verdict (exit 0 promoted,
    /// 3 rolled back, 4 failed or aborted before the switch).
    Deploy {
        /// The version to deploy (passed to `[provision]` as `{version}`).
        #[arg(id = "deploy_version", value_name = "VERSION")]
        version: String,
        /// An already-running upstream of this version (repeatable); without it,
        /// `[provision]` starts the instances.
        #[arg(long = "upstream", value_name = "HOST:PORT")]
        upstreams: Vec<String>,
        /// Stop at a manual gate before the switch; `turnout promote` passes it.
        #[arg(long)]
        manual: bool,
        /// Start the deployment and return at once, without following it.
        #[arg(long)]
        detach: bool,
    },
    /// Pass a deployment paused at its manual gate, or move a canary to its next step.
    Promote,
    /// End the running deployment before its switch; users never see it.
    Abort,
    /// Traffic shadowing: the comparison of the candidate against live.
    Shadow {
        /// What to show.
        #[command(subcommand)]
        command: ShadowCommand,
    },
    /// Past deployments: version, times of each stage, verdict, why.
    History {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// How many deployments to show, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Parse and validate the configuration; print every problem with its key and line.
    CheckConfig,
    /// The quick start, with no config file: a router, steady load and three releases of
    /// the demo service (v1, v2 promoted, v3-bad rolled back), each stage and verdict
    /// printed (exit 0 only if every verdict is the expected one).
    Demo {
        /// Where the generated config, state and logs go; kept afterwards (default: a new
        /// directory under the system's temporary directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The demo service binary (default: `turnout-demo-app` next to this binary).
        #[arg(long, value_name = "PATH")]
        app: Option<PathBuf>,
    },
}

/// `turnout shadow ...`.
#[derive(Debug, Subcommand)]
pub enum ShadowCommand {
    /// The comparison of the current (numbers so far) or last deployment's candidate
    /// against live: totals, worst endpoints and fields, an example of each.
    Report {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also write it as one self-contained HTML page (charts, side-by-side diffs).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    #[test]
    fn arguments_are_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
