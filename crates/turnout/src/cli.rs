//! Command-line arguments (names fixed by SPEC.md) and the parsers of their values. A
//! leaf: it uses no other module of this crate.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use turnout_core::units::{parse_duration, parse_size_or_bytes};
use turnout_shadow::replay::Speed;

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
    /// Record live requests and their responses to a GoReplay-format file: the router
    /// streams them, and this command writes the file where it runs.
    Capture(CaptureArgs),
    /// Replay GoReplay-format files (turnout's or GoReplay's own) against a URL or a slot,
    /// and compare the responses with the recorded ones (or with another target's).
    Replay(ReplayArgs),
    /// Parse and validate the configuration; print every problem with its key and line.
    CheckConfig,
    /// Make the running router re-read its config file and apply it without dropping a
    /// connection (a new router process takes over); a config with errors changes
    /// nothing (exit 2). Prints what changed.
    Reload,
    /// Replace the running router process with a new one — by default the binary at the
    /// path the router was started from — without failing a request; returns once the
    /// new one serves.
    Upgrade {
        /// The new binary (default: the path the running router was started from).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
    /// Stop the router and the service's instances it started (a plain SIGTERM stops
    /// only the router: the next `turnout serve` takes the instances over).
    Stop {
        /// Leave the service's instances running (like SIGTERM).
        #[arg(long)]
        keep_instances: bool,
    },
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

/// `turnout capture ...`.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The file to write (gzip-compressed when the name ends in `.gz`). With
    /// `--rotate-size`, later files are named FILE_1, FILE_2... before the extension
    /// (`c.gor.gz`, `c_1.gor.gz`, `c_2.gor.gz`).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// How long to capture, e.g. `30s`, `5m`, `1m 30s` (default: until Ctrl-C).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Share of the requests to capture, more than 0 and at most 1 (by request id).
    #[arg(long, value_name = "F", default_value_t = 1.0, value_parser = parse_share)]
    pub sample: f64,
    /// Start a new file when the current one would grow over SIZE (e.g. `100MB`; as in
    /// the config, KB, MB, GB are powers of 1000 and KiB, MiB, GiB of 1024, and a bare
    /// number is bytes; counted before compression). A record is never split: one larger
    /// than SIZE gets a file of its own.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_or_bytes)]
    pub rotate_size: Option<u64>,
    /// Bytes of each request and response body kept (e.g. `64KiB`, at most 16MiB); longer
    /// bodies are recorded truncated (and replay does not send such requests).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size_or_bytes)]
    pub max_body: u64,
}

/// `turnout replay ...`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// GoReplay-format files (plain or gzip); their records are merged by time.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Where to send the requests: `http://host:port`, or `blue`/`green` (a healthy
    /// upstream of that slot, asked from the running router).
    #[arg(long, value_name = "URL|blue|green")]
    pub target: String,
    /// Replay speed: 2 halves the recorded gaps between requests; `0` or `max` sends
    /// without waiting.
    #[arg(long, value_name = "X", default_value = "1", value_parser = parse_speed)]
    pub speed: Speed,
    /// The longest wait between two requests, whatever the recording says.
    #[arg(long, value_name = "D", default_value = "1s", value_parser = parse_duration)]
    pub max_gap: Duration,
    /// Also send every request there and compare the target's responses with its
    /// responses instead of the recorded ones.
    #[arg(long, value_name = "URL|blue|green")]
    pub compare_with: Option<String>,
    /// Write the comparison report: HTML when the name ends in `.html`, else JSON.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write what was replayed, in GoReplay's format (gzip when the name ends in `.gz`):
    /// each request sent, as recorded but timed when it was sent (type 1), and the
    /// target's response to it (type 3).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Requests in flight at most.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Time allowed per request: connect, send, the whole response.
    #[arg(long, value_name = "D", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Bytes of each response body read and compared (longer ones compare as truncated).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size_or_bytes)]
    pub max_body: u64,
    /// Send `Host: host:port` of the target instead of the recorded `Host`.
    #[arg(long)]
    pub rewrite_host: bool,
    /// A response header not to compare (repeatable; `date` and the like never are).
    #[arg(long = "ignore-header", value_name = "NAME")]
    pub ignore_headers: Vec<String>,
    /// A JSON pointer into bodies not to compare, e.g. `/items/*/updated_at`
    /// (repeatable).
    #[arg(long = "ignore-json", value_name = "POINTER")]
    pub ignore_json: Vec<String>,
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

/// A share: more than 0, at most 1.
pub(crate) fn parse_share(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number; expected a share like 0.1"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!(
            "{text} is not a share: it must be more than 0 and at most 1 (1 is every request)"
        ))
    }
}

/// `--speed`: a positive number, or `0` / `max` for no waits.
pub(crate) fn parse_speed(text: &str) -> Result<Speed, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("max") {
        return Ok(Speed::Max);
    }
    match t.trim_end_matches(['x', 'X']).parse::<f64>() {
        Ok(0.0) => Ok(Speed::Max),
        // From a thousandth of the recorded pace to a million times it: beyond, the
        // waits would overflow a clock or round to nothing.
        Ok(v) if v.is_finite() && (0.001..=1_000_000.0).contains(&v) => Ok(Speed::Times(v)),
        _ => Err(format!(
            "invalid speed {:?}: a number from 0.001 to 1000000 (2 = twice as fast), or 0 / max to send without waiting",
            text.chars().take(40).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_and_shares() {
        // Sizes as in the config (`turnout_core::units`): KB and MB are powers of 1000
        // (they were powers of 1024 here before), KiB, MiB, GiB powers of 1024, and only
        // the config's unit names; a bare number is bytes.
        for (text, want) in [
            ("500", Some(500)),
            ("1KB", Some(1000)),
            ("64KiB", Some(65536)),
            ("100MB", Some(100_000_000)),
            ("1 GiB", Some(1 << 30)),
            ("64k", None),
            ("1.5MB", None),
            ("MB", None),
            ("10TB", None),
            ("", None),
        ] {
            assert_eq!(parse_size_or_bytes(text).ok(), want, "{text:?}");
        }
        for (text, ok) in [
            ("1", true),
            ("0.25", true),
            ("0", false),
            ("1.1", false),
            ("x", false),
            ("NaN", false),
        ] {
            assert_eq!(parse_share(text).is_ok(), ok, "{text:?}");
        }
    }

    /// A size or a duration means the same on the command line as in the config, and
    /// both refuse the same texts.
    #[test]
    fn sizes_and_durations_mean_on_the_command_line_what_they_mean_in_the_config() {
        let capture = |size: &str, duration: &str| {
            let cli = Cli::try_parse_from([
                "turnout",
                "capture",
                "--out",
                "c.gor",
                "--max-body",
                size,
                "--duration",
                duration,
            ])
            .map_err(|e| e.to_string())?;
            match cli.command {
                Command::Capture(a) => Ok((a.max_body, a.duration)),
                other => Err(format!("parsed as {other:?}")),
            }
        };
        let config = |size: &str, duration: &str| {
            let text =
                format!("[listen]\nmax_body = \"{size}\"\n[bake]\nduration = \"{duration}\"\n");
            turnout_config::Config::from_toml(&text, "test.toml")
                .map(|c| (c.listen.max_body, Some(c.bake.duration)))
                .map_err(|e| e.to_string())
        };
        for (size, duration) in [
            ("1MB", "30s"),
            ("10 MB", "1m 30s"),
            ("1MiB", "500ms"),
            ("512KiB", "2h"),
            ("16MB", "87600h"),
        ] {
            let (cli_size, cli_duration) = capture(size, duration).unwrap();
            let (config_size, config_duration) = config(size, duration).unwrap();
            assert_eq!(Some(cli_size), config_size, "{size}");
            assert_eq!(cli_duration, config_duration, "{duration}");
        }
        assert_eq!(capture("1MB", "1s").unwrap().0, 1_000_000);
        for (size, duration) in [
            ("1.5MB", "1s"),
            ("64k", "1s"),
            ("0KB", "1s"),
            ("1MB", "1 0s"),
            ("1MB", "5min"),
            ("1MB", "87601h"),
        ] {
            let cli = capture(size, duration).unwrap_err();
            let config = config(size, duration).unwrap_err();
            // The same message from the same parser (clap and the config each add where).
            let why = |e: &str| {
                e.contains("invalid size")
                    || e.contains("invalid duration")
                    || e.contains("is zero")
                    || e.contains("longer than")
            };
            assert!(
                why(&cli) && why(&config),
                "{size} {duration}:\n{cli}\n{config}"
            );
        }
    }
}
