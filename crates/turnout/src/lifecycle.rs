//! The router's own lifecycle, as `serve` wires it: reload (`turnout reload`, SIGHUP, `POST
//! /api/v1/reload`), upgrade (`turnout upgrade`, SIGUSR2, `POST /api/v1/upgrade`) and stop
//! (`turnout stop`, `POST /api/v1/stop`).
//!
//! Reload and upgrade are one mechanism, the one nginx uses for both: a new router
//! process is started with the config file (and, for an upgrade, a new binary), takes
//! the listening sockets, the state directory's lock, the running deployment and the
//! service's instances over from this one (`turnout_lifecycle::handover`), and serves;
//! only then does this process stop accepting, finish its requests in flight and exit.
//! If the new process fails, this one carries on as if nothing had happened. Every key
//! a new process reads is applied that way, the same way a start applies them; only
//! where the state lives cannot change (`turnout_config::diff::needs_restart`).

use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use turnout_admin::lifecycle::{
    Lifecycle, LifecycleError, ProcessInfo, ReloadReport, UpgradeReport,
};
use turnout_config::Config;
use turnout_lifecycle::handover::{self, Hello, Word};
use turnout_lifecycle::systemd;
use turnout_pipeline::Controller;
use turnout_store::BoxFuture;

use crate::cli::LogFormat;

/// turnout's version, as each process reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The binary this process runs, even after a new release replaced the file at its path.
const RUNNING_BINARY: &str = "/proc/self/exe";

/// Why `serve` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quit {
    /// A new process serves now: drain, leave the instances to it.
    HandedOver,
    /// `turnout stop`: drain, then stop the instances too when asked.
    Stop {
        /// Stop the service's instances.
        instances: bool,
    },
}

/// What a handover needs from the running router.
pub struct Process {
    /// The config file, absolute.
    pub config_path: PathBuf,
    /// The config text in force (what `reload` compares with).
    pub config_text: String,
    /// The binary the router was started from (the default of `upgrade`).
    pub binary: PathBuf,
    /// `serve`'s `--log-format`, passed on.
    pub log_format: LogFormat,
    /// The control plane.
    pub controller: Arc<Controller>,
    /// The listening sockets and the state lock, passed on (duplicates of the ones in
    /// use: the same sockets).
    pub fds: Vec<(String, OwnedFd)>,
    /// The TLS certificate in force, reloaded in place when the config did not change.
    pub tls: Option<turnout_proxy::TlsCert>,
    /// How long a new process may take to serve: it may health-check the instances it
    /// takes over after a crash.
    pub start_deadline: Duration,
    /// Tells `serve` to stop.
    pub quit: mpsc::Sender<Quit>,
    /// One handover at a time, and none while the router stops.
    pub busy: tokio::sync::Mutex<()>,
    /// Set once the router stops (a signal, `turnout stop`, a handover done): no new
    /// handover starts.
    pub quitting: std::sync::atomic::AtomicBool,
}

impl Process {
    fn me() -> ProcessInfo {
        ProcessInfo {
            pid: std::process::id(),
            version: VERSION.to_owned(),
        }
    }

    async fn reload_inner(&self) -> Result<ReloadReport, LifecycleError> {
        // systemd (`Type=notify-reload`) waits for RELOADING=1, then READY=1: from this
        // process when it goes on serving, from the new one (with MAINPID=) when a
        // handover happened.
        systemd::reloading();
        let result = self.reload_checked().await;
        if !result
            .as_ref()
            .is_ok_and(|r| r.new.pid != std::process::id())
        {
            systemd::ready("serving");
        }
        result
    }

    async fn reload_checked(&self) -> Result<ReloadReport, LifecycleError> {
        let text = std::fs::read_to_string(&self.config_path).map_err(|e| {
            LifecycleError::InvalidConfig(vec![format!(
                "{}: cannot read it: {e}",
                self.config_path.display()
            )])
        })?;
        let origin = self.config_path.display().to_string();
        if let Err(errors) = Config::from_toml(&text, &origin) {
            return Err(LifecycleError::InvalidConfig(
                errors.errors.iter().map(ToString::to_string).collect(),
            ));
        }
        let changes = turnout_config::diff::diff(&self.config_text, &text);
        let fixed = turnout_config::diff::needs_restart(&changes);
        if !fixed.is_empty() {
            return Err(LifecycleError::Immutable(fixed));
        }
        if changes.is_empty() {
            // The config is the same; its certificate files may not be.
            let mut notes = vec!["the config file has not changed; nothing to do".to_owned()];
            if let Some(tls) = &self.tls {
                match tls.reload() {
                    Ok(()) => notes = vec!["the config file has not changed; TLS certificate reloaded from its files (new connections use it)".to_owned()],
                    Err(e) => return Err(LifecycleError::Failed(format!("the TLS certificate could not be read again; the one in use stays: {e}"))),
                }
            }
            return Ok(ReloadReport {
                changed: Vec::new(),
                old: Process::me(),
                new: Process::me(),
                notes,
            });
        }
        let mut notes = Vec::new();
        if let Some(d) = self.controller.current().filter(|d| !d.is_over()) {
            notes.push(format!(
                "deployment {} of {} goes on in the new process with the settings it started with; the next deployment uses the new ones",
                d.id, d.version
            ));
        }
        // The running binary, not the one at its path: a reload is not an upgrade.
        let binary = PathBuf::from(RUNNING_BINARY);
        let new = self.hand_over("reload", &binary).await?;
        Ok(ReloadReport {
            changed: changes.iter().map(ToString::to_string).collect(),
            old: Process::me(),
            new,
            notes,
        })
    }

    async fn upgrade_inner(&self, binary: Option<String>) -> Result<UpgradeReport, LifecycleError> {
        let binary = binary.map_or_else(|| self.binary.clone(), PathBuf::from);
        if !binary.is_file() {
            return Err(LifecycleError::Failed(format!(
                "{} is not a file; install the new turnout there, or say where it is with --binary PATH",
                binary.display()
            )));
        }
        let new = self.hand_over("upgrade", &binary).await?;
        Ok(UpgradeReport {
            old: Process::me(),
            new,
            binary: binary.display().to_string(),
        })
    }

    /// Starts the new process from `binary` and hands over to it; on success tells
    /// `serve` to drain and returns the new process's pid and version.
    async fn hand_over(&self, reason: &str, binary: &Path) -> Result<ProcessInfo, LifecycleError> {
        let Ok(_one) = self.busy.try_lock() else {
            return Err(LifecycleError::Conflict(
                "another reload or upgrade is under way; try again once it ended".into(),
            ));
        };
        if self.quitting.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(LifecycleError::Conflict(
                "the router is stopping; start it again to apply a new config or binary".into(),
            ));
        }
        self.controller
            .begin_handover(reason)
            .await
            .map_err(|e| LifecycleError::Conflict(e.to_string()))?;
        tracing::info!(binary = %binary.display(), "{reason}: starting a new router process to take over");
        let fds: Vec<(String, OwnedFd)> = match self
            .fds
            .iter()
            .map(|(n, fd)| fd.try_clone().map(|fd| (n.clone(), fd)))
            .collect()
        {
            Ok(fds) => fds,
            Err(e) => {
                self.controller.cancel_handover().await;
                return Err(LifecycleError::Failed(format!(
                    "cannot pass the listening sockets on: {e}"
                )));
            }
        };
        let (binary, config, log_format, reason_owned, deadline) = (
            binary.to_owned(),
            self.config_path.clone(),
            self.log_format,
            reason.to_owned(),
            self.start_deadline,
        );
        let outcome = tokio::task::spawn_blocking(move || {
            start_successor(&binary, &config, log_format, &reason_owned, &fds, deadline)
        })
        .await
        .unwrap_or_else(|e| Err(format!("the handover task failed: {e}")));
        match outcome {
            Ok(new) => {
                tracing::info!(pid = new.pid, version = %new.version, "{reason}: the new router process (pid {}) serves; this one stops accepting and finishes its requests in flight", new.pid);
                systemd::main_pid(new.pid);
                self.quitting
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                self.controller.proxy().keep_idle_connections_on_stop();
                let _ = self.quit.send(Quit::HandedOver).await;
                Ok(new)
            }
            Err(e) => {
                tracing::error!("{reason} failed, this router process goes on serving: {e}");
                self.controller.cancel_handover().await;
                Err(LifecycleError::Failed(format!(
                    "{e}; the running router (pid {}) goes on serving as before",
                    std::process::id()
                )))
            }
        }
    }
}

/// Starts `binary serve --config CONFIG` with the handover socket in its environment,
/// passes it `fds`, and waits for its word (blocking).
fn start_successor(
    binary: &Path,
    config: &Path,
    log_format: LogFormat,
    reason: &str,
    fds: &[(String, OwnedFd)],
    deadline: Duration,
) -> Result<ProcessInfo, String> {
    let offer =
        handover::Offer::new().map_err(|e| format!("cannot open the handover socket: {e}"))?;
    let format = match log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    use std::os::unix::process::CommandExt as _;
    // `ps` shows the name the router was started with, not /proc/self/exe.
    let arg0 = if binary == Path::new(RUNNING_BINARY) {
        std::env::args_os()
            .next()
            .unwrap_or_else(|| "turnout".into())
    } else {
        binary.as_os_str().to_owned()
    };
    let mut child = std::process::Command::new(binary)
        .arg0(arg0)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--log-format")
        .arg(format)
        .env(handover::ENV, offer.name())
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let hello = Hello {
        pid: std::process::id(),
        version: VERSION.to_owned(),
        reason: reason.to_owned(),
        names: Vec::new(),
    };
    let borrowed: Vec<(String, std::os::fd::BorrowedFd<'_>)> =
        fds.iter().map(|(n, fd)| (n.clone(), fd.as_fd())).collect();
    let connect_by = Instant::now() + Duration::from_secs(30);
    let mut successor = offer
        .hand_over(&mut child, hello, &borrowed, connect_by)
        .map_err(|e| e.to_string())?;
    match successor.wait(&mut child, Instant::now() + deadline) {
        Ok(Word::Ready { pid, version }) => Ok(ProcessInfo { pid, version }),
        Ok(Word::Failed { error }) => {
            // It exits on its own; do not leave a zombie behind.
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("the new router process could not start: {error}"))
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e.to_string())
        }
    }
}

/// The [`Lifecycle`] the admin API calls.
pub struct ApiLifecycle(pub Arc<Process>);

impl Lifecycle for ApiLifecycle {
    fn reload(&self) -> BoxFuture<'_, Result<ReloadReport, LifecycleError>> {
        Box::pin(self.0.reload_inner())
    }

    fn upgrade(
        &self,
        binary: Option<String>,
    ) -> BoxFuture<'_, Result<UpgradeReport, LifecycleError>> {
        Box::pin(self.0.upgrade_inner(binary))
    }

    fn stop(&self, instances: bool) -> Result<(), LifecycleError> {
        // Not in the middle of a handover: the instances may be the new process's already.
        let Ok(_one) = self.0.busy.try_lock() else {
            return Err(LifecycleError::Conflict(
                "a reload or upgrade is under way; stop the router once it ended".into(),
            ));
        };
        self.0
            .quitting
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let quit = self.0.quit.clone();
        tokio::spawn(async move {
            let _ = quit.send(Quit::Stop { instances }).await;
        });
        Ok(())
    }
}

/// SIGHUP reloads, SIGUSR2 upgrades; each outcome is logged.
pub fn on_signals(process: Arc<Process>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = hup.recv() => match process.reload_inner().await {
                    Ok(r) if r.changed.is_empty() => tracing::info!("SIGHUP: {}", r.notes.join("; ")),
                    Ok(r) => tracing::info!(new_pid = r.new.pid, "SIGHUP: reloaded ({}); the new router process is pid {}", r.changed.join("; "), r.new.pid),
                    Err(e) => tracing::error!("SIGHUP: not reloaded: {}", describe(&e)),
                },
                Some(()) = usr2.recv() => match process.upgrade_inner(None).await {
                    Ok(r) => tracing::info!(new_pid = r.new.pid, "SIGUSR2: upgraded to {} (pid {})", r.new.version, r.new.pid),
                    Err(e) => tracing::error!("SIGUSR2: not upgraded: {}", describe(&e)),
                },
                else => return,
            }
        }
    });
    Ok(())
}

fn describe(e: &LifecycleError) -> String {
    match e {
        LifecycleError::InvalidConfig(errors) => format!(
            "the config has errors, nothing was changed:\n{}",
            errors.join("\n")
        ),
        LifecycleError::Immutable(keys) => format!(
            "{} cannot change in a running router (restart turnout to apply)",
            keys.join(", ")
        ),
        LifecycleError::Conflict(m) | LifecycleError::Failed(m) => m.clone(),
    }
}
