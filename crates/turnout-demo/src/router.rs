//! The router of the demo: `turnout serve` as a child process on the generated config.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::setup::{config_text, free_ports};

/// How long the router may take to stop (it stops its instances first) before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the router may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `turnout serve` child. Stopped with its instances by [`RouterProcess::stop`] with
/// a stop request through the admin API (`POST /api/v1/stop`); if the demo ends some
/// other way (a panic), dropping it sends SIGTERM, blocking, which leaves the instances
/// running (their logs say where).
pub struct RouterProcess {
    child: Child,
    pid: Pid,
    /// The data plane's `host:port`.
    pub data: String,
    /// The admin API's `host:port`.
    pub admin: String,
    log: PathBuf,
    stopped: bool,
}

impl RouterProcess {
    /// Writes the config (`config_text` on fresh free ports) to `config` and starts
    /// `exe serve` on it, its log in `dir/turnout.log`; tries other ports if one was taken
    /// meanwhile. Returns once the router listens.
    pub async fn start(
        exe: &Path,
        app: &Path,
        dir: &Path,
        config: &Path,
    ) -> anyhow::Result<RouterProcess> {
        let log = dir.join("turnout.log");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (data, admin) = free_ports()?;
            std::fs::write(config, config_text(app, dir, data, admin))
                .with_context(|| format!("writing {}", config.display()))?;
            match RouterProcess::spawn(exe, config, &log).await {
                Ok(r) => return Ok(r),
                Err(e) if attempt < 3 && format!("{e:#}").contains("in use") => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn spawn(exe: &Path, config: &Path, log: &Path) -> anyhow::Result<RouterProcess> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            // The log is a file: plain text, no colours.
            .env("NO_COLOR", "1")
            // Ctrl-C at the terminal reaches the demo, which stops the router and its
            // instances (a SIGINT of its own would stop the router only).
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} serve", exe.display()))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw)
            .ok_or_else(|| anyhow!("the router exited at once"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut router = RouterProcess {
            child,
            pid,
            data: String::new(),
            admin: String::new(),
            log: log.to_owned(),
            stopped: false,
        };
        let mut lines = BufReader::new(stdout).lines();
        let read = async {
            let (mut data, mut admin) = (None, None);
            while let Some(line) = lines.next_line().await? {
                if let Some(a) = line.strip_prefix("turnout: data plane listening on http://") {
                    data = Some(a.to_owned());
                } else if let Some(a) = line.strip_prefix("turnout: admin API listening on http://")
                {
                    admin = Some(a.to_owned());
                }
                if let (Some(d), Some(a)) = (&data, &admin) {
                    return Ok((d.clone(), a.clone()));
                }
            }
            bail!("the router exited before listening")
        };
        let addrs = tokio::time::timeout(START_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| bail!("the router did not listen within {START_TIMEOUT:?}"));
        match addrs {
            Ok((data, admin)) => {
                router.data = data;
                router.admin = admin;
            }
            Err(e) => {
                let _ = router.stop(async { false }).await;
                return Err(e.context(format!("last lines of {}:\n{}", log.display(), tail(log))));
            }
        }
        // Keep draining stdout so that the router never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(router)
    }

    /// Stops the router: `ask` is awaited while it still runs — a stop request through
    /// the admin API, which stops the instances too, answering whether the router took
    /// it — else (or when it did not) SIGTERM; then waits, SIGKILL after 30 s. `None`
    /// when it stopped cleanly, else a warning for people. Stopping twice does nothing.
    pub async fn stop(
        &mut self,
        ask: impl std::future::Future<Output = bool>,
    ) -> anyhow::Result<Option<String>> {
        if self.stopped {
            return Ok(None);
        }
        self.stopped = true;
        if let Some(status) = self.child.try_wait()? {
            return Ok(Some(format!(
                "the router had already exited ({status}); see {}",
                self.log.display()
            )));
        }
        if !ask.await {
            let _ = kill(self.pid, Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(None),
            Ok(Ok(status)) => Ok(Some(format!(
                "the router stopped with {status}; see {}",
                self.log.display()
            ))),
            Ok(Err(e)) => Err(e).context("waiting for the router to stop"),
            Err(_) => {
                let _ = kill(self.pid, Signal::SIGKILL);
                let _ = self.child.wait().await;
                Ok(Some(format!(
                    "the router did not stop within {}s and was killed: instances it started may still run (their logs are in the state dir); see {}",
                    STOP_TIMEOUT.as_secs(),
                    self.log.display()
                )))
            }
        }
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        if self.stopped || !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = kill(self.pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = kill(self.pid, Signal::SIGKILL);
    }
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
