//! The demo service (`turnout-demo-app`) as a process of the test, and a look at which
//! processes run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `turnout-demo-app`, built by the workspace next to the `turnout` binary `turnout_bin`.
/// Panics with what to do when it is not there (`cargo test -p turnout` alone does not
/// build it).
pub fn demo_app_path(turnout_bin: &Path) -> PathBuf {
    let dir = turnout_bin.parent().unwrap_or(Path::new("."));
    let app = dir.join(format!("turnout-demo-app{}", std::env::consts::EXE_SUFFIX));
    assert!(
        app.is_file(),
        "the demo service {} is missing: build it with `cargo build -p turnout-demo-app` \
         (or run `cargo test --workspace`, which builds it)",
        app.display()
    );
    app
}

/// A `turnout-demo-app` process on a free loopback port; killed when dropped.
pub struct DemoApp {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Child,
}

impl DemoApp {
    /// Starts `app --port 0 ARGS...` and returns once it listens.
    pub async fn start(app: &Path, args: &[&str]) -> anyhow::Result<DemoApp> {
        let mut child = Command::new(app)
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", app.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some((_, addr)) = line.split_once(" listening on http://") {
                    return Ok(addr.to_owned());
                }
            }
            bail!("{} exited before listening", app.display())
        })
        .await
        .map_err(|_| anyhow!("{} did not listen within 30s", app.display()))??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(DemoApp { addr, child })
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Processes (other than this one) whose argument list contains every one of `args` as
/// a whole argument, with their argument lists.
pub fn processes_with_args(args: &[&str]) -> Vec<(u32, Vec<String>)> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.iter()
                .all(|want| argv.iter().any(|a| a == want))
                .then_some((pid, argv))
        })
        .collect()
}
