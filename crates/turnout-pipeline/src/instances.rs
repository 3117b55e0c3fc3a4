//! The processes of one slot when turnout starts each version itself
//! (`[provision] command = "./shop --port {port} --version {version}"`, `instances = 2`).
//!
//! [`Instances::start`] runs the command once per instance as `sh -c COMMAND`, each in a
//! process group of its own so that signals reach the shell and everything it started,
//! on a port turnout chose. Output goes to `LOG_DIR/{deployment}-{slot}-{n}.log`. An
//! instance that exits is not restarted: it is a failed upstream, reported by
//! [`Instances::exited`] / [`Instances::wait_exit`] and logged. [`Instances::stop`] ends
//! them (SIGTERM, then SIGKILL after the stop timeout); dropping [`Instances`] without
//! stopping kills them at once, so a panicking task leaves no orphans.
//!
//! A router killed with SIGKILL cannot stop its instances; the pipeline saves
//! [`Instances::records`] and, at the next start, [`reap_orphans`] kills the ones still
//! running — checking the process start time, so a reused pid is never signalled.

use std::collections::HashSet;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::process::Command;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use turnout_core::SlotName;

use crate::commands::{
    describe_status, group_exists, shell_quote, signal_group, tail_lines, wait_group_gone,
};

/// How many lines of an exited instance's log [`InstanceExit`] quotes.
const LOG_TAIL_LINES: usize = 20;
/// How much of the end of a log is read to find those lines.
const LOG_TAIL_BYTES: u64 = 16 * 1024;
/// How long [`Instances::stop`] waits for processes to be reaped after SIGKILL.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// What to start for one slot.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// The command template; `{port}`, `{version}` and `{slot}` are substituted (see
    /// [`render_command`]).
    pub command: String,
    /// The version to run.
    pub version: String,
    /// The slot the instances serve.
    pub slot: SlotName,
    /// The deployment's id, for log file names and `TURNOUT_DEPLOYMENT`.
    pub deployment: String,
    /// How many instances to start (at least 1).
    pub count: usize,
    /// Where the instances' log files go (created if missing).
    pub log_dir: PathBuf,
    /// How long [`Instances::stop`] waits after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// Ports to use, by instance (on a restart, the ones used before). A port that is
    /// taken, or missing from the list, is replaced by a free one.
    pub ports: Vec<u16>,
}

/// One running instance, as saved so that a later router can find it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The pid of its `sh`, which is also its process group id.
    pub pid: u32,
    /// The process start time (field 22 of `/proc/PID/stat`, clock ticks since boot),
    /// which tells the process apart from a later one given the same pid.
    pub start_time: u64,
    /// Its log file.
    pub log: PathBuf,
}

/// An instance that exited on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceExit {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The pid of its `sh`.
    pub pid: u32,
    /// How it ended: `exit code 3`, `signal SIGSEGV`.
    pub status: String,
    /// Its log file.
    pub log: PathBuf,
    /// The last lines of its log.
    pub log_tail: String,
}

impl fmt::Display for InstanceExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the instance on {} (pid {}) exited with {}; last lines of {}:\n{}",
            self.addr,
            self.pid,
            self.status,
            self.log.display(),
            self.log_tail
        )
    }
}

/// Why instances could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// `instances` is 0.
    #[error("[provision] instances is 0: start at least one instance")]
    NoInstances,
    /// The version holds control characters, which no command line should carry.
    #[error(
        "version {version:?} contains control characters; use a version made of printable \
         characters (like 1.4.2 or a commit id)"
    )]
    BadVersion {
        /// The version, as given.
        version: String,
    },
    /// The log directory could not be created.
    #[error("cannot create the instance log directory {}: {source}", dir.display())]
    LogDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A log file could not be opened.
    #[error("cannot open the instance log {}: {source}", path.display())]
    LogFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No free port could be found.
    #[error("cannot find a free port on 127.0.0.1 for an instance: {0}")]
    Port(#[source] io::Error),
    /// `sh` could not be started.
    #[error(
        "cannot start instance {n} (`sh -c {command}`): {source}; check that `sh` is installed \
         and turnout's working directory exists"
    )]
    Spawn {
        /// Which instance (from 1).
        n: usize,
        /// The command, placeholders substituted.
        command: String,
        /// Why.
        source: io::Error,
    },
}

/// The running processes of one slot. Stop them with [`Instances::stop`]; dropping this
/// kills them (SIGKILL) instead.
#[derive(Debug)]
pub struct Instances {
    procs: Vec<Proc>,
    shared: Arc<Shared>,
    stop_timeout: Duration,
    slot: SlotName,
    /// Set when [`Instances::stop`] finished: drop has nothing left to do.
    stopped: bool,
}

#[derive(Debug)]
struct Proc {
    record: InstanceRecord,
    /// Becomes true when the watcher has reaped the process.
    reaped: watch::Receiver<bool>,
    /// Started by a previous router process and taken over: dropping [`Instances`]
    /// leaves it alone (that process, or the next, may still serve with it); only an
    /// explicit stop or kill ends it.
    adopted: bool,
}

#[derive(Debug)]
struct Shared {
    /// Instances that exited on their own, in the order they did.
    exits: Mutex<Vec<InstanceExit>>,
    /// Counts exits, to wake [`Instances::wait_exit`].
    changed: watch::Sender<usize>,
    /// Set by stop and drop: exits are expected from then on.
    stopping: AtomicBool,
}

impl Instances {
    /// Starts `spec.count` instances and returns as soon as their processes run (whether
    /// they serve is for the health checks to find out). If one cannot be started, those
    /// already started are killed.
    ///
    /// Ports are chosen by binding `127.0.0.1:0` (or the preferred port) and releasing
    /// it just before the start: another process may take the port in between, a small
    /// race that shows up as an instance failing to bind, i.e. an unhealthy instance.
    pub async fn start(spec: InstanceSpec) -> Result<Instances, ProvisionError> {
        if spec.count == 0 {
            return Err(ProvisionError::NoInstances);
        }
        if spec.version.chars().any(char::is_control) {
            return Err(ProvisionError::BadVersion {
                version: spec.version.clone(),
            });
        }
        tokio::fs::create_dir_all(&spec.log_dir)
            .await
            .map_err(|source| ProvisionError::LogDir {
                dir: spec.log_dir.clone(),
                source,
            })?;
        let ports = choose_ports(spec.count, &spec.ports).map_err(ProvisionError::Port)?;

        let (changed, _) = watch::channel(0);
        let mut instances = Instances {
            procs: Vec::with_capacity(spec.count),
            shared: Arc::new(Shared {
                exits: Mutex::new(Vec::new()),
                changed,
                stopping: AtomicBool::new(false),
            }),
            stop_timeout: spec.stop_timeout,
            slot: spec.slot,
            stopped: false,
        };
        for (i, port) in ports.into_iter().enumerate() {
            // On error, `instances` is dropped, which kills those already started.
            let proc = instances.spawn_one(&spec, i + 1, port)?;
            instances.procs.push(proc);
        }
        Ok(instances)
    }

    fn spawn_one(&self, spec: &InstanceSpec, n: usize, port: u16) -> Result<Proc, ProvisionError> {
        let command = render_command(&spec.command, port, &spec.version, spec.slot)?;
        let addr = format!("127.0.0.1:{port}");
        let log = spec.log_dir.join(format!(
            "{}-{}-{n}.log",
            file_name_part(&spec.deployment),
            spec.slot
        ));
        let log_error = |source| ProvisionError::LogFile {
            path: log.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(log_error)?;
        writeln!(
            file,
            "==> turnout: deployment {} slot {} instance {n} on {addr}: sh -c {command}",
            spec.deployment, spec.slot
        )
        .map_err(log_error)?;
        let stderr = file.try_clone().map_err(log_error)?;

        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&command)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(stderr))
            .env("TURNOUT_SLOT", spec.slot.as_str())
            .env("TURNOUT_VERSION", &spec.version)
            .env("TURNOUT_DEPLOYMENT", &spec.deployment)
            .env("TURNOUT_PORT", port.to_string())
            // systemd's notification socket is the router's: a service that speaks
            // sd_notify itself must not report its readiness as turnout's.
            .env_remove("NOTIFY_SOCKET")
            // Marks the process as this state directory's, so that a router killed before
            // it could record the process still finds it at its next start
            // (`reap_state_dir`).
            .env(STATE_DIR_ENV, state_dir_of(&spec.log_dir));
        let mut child = cmd.spawn().map_err(|source| ProvisionError::Spawn {
            n,
            command: command.clone(),
            source,
        })?;
        let Some(pid) = child.id() else {
            // Only possible once the child was reaped, which nothing did yet.
            return Err(ProvisionError::Spawn {
                n,
                command,
                source: io::Error::other("the process vanished at start"),
            });
        };
        let start_time = proc_stat(pid).map_or(0, |stat| stat.start_time);
        info!(
            slot = %spec.slot, version = %spec.version, deployment = %spec.deployment,
            %addr, pid, log = %log.display(), "instance started"
        );

        let record = InstanceRecord {
            addr,
            pid,
            start_time,
            log,
        };
        let (reaped_tx, reaped) = watch::channel(false);
        let shared = self.shared.clone();
        let watched = record.clone();
        let slot = spec.slot;
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => describe_status(status),
                Err(error) => format!("an unknown status (waiting for it failed: {error})"),
            };
            let _ = reaped_tx.send(true);
            if shared.stopping.load(Ordering::SeqCst) {
                debug!(%slot, addr = %watched.addr, pid = watched.pid, %status, "instance stopped");
                return;
            }
            report_exit(&shared, slot, watched, status).await;
        });
        Ok(Proc {
            record,
            reaped,
            adopted: false,
        })
    }

    /// The instances a previous router process started for this slot, taken over: each
    /// record whose process still runs (same pid, same start time, still leading its
    /// group) is adopted as it is; the others are started again on their ports. Returns
    /// the instances and how many were adopted.
    ///
    /// An adopted process is not this process's child: its exit is noticed by watching
    /// `/proc` (its status is not known), and stopping it signals its group as usual.
    pub async fn adopt(
        spec: InstanceSpec,
        records: &[InstanceRecord],
    ) -> Result<(Instances, usize), ProvisionError> {
        tokio::fs::create_dir_all(&spec.log_dir)
            .await
            .map_err(|source| ProvisionError::LogDir {
                dir: spec.log_dir.clone(),
                source,
            })?;
        let (changed, _) = watch::channel(0);
        let mut instances = Instances {
            procs: Vec::with_capacity(records.len()),
            shared: Arc::new(Shared {
                exits: Mutex::new(Vec::new()),
                changed,
                stopping: AtomicBool::new(false),
            }),
            stop_timeout: spec.stop_timeout,
            slot: spec.slot,
            stopped: false,
        };
        let mut adopted = 0;
        for (i, record) in records.iter().enumerate() {
            if is_running(record) {
                info!(slot = %spec.slot, version = %spec.version, addr = %record.addr, pid = record.pid, "instance adopted: it kept running while the router was replaced");
                instances
                    .procs
                    .push(instances.watch_adopted(record.clone()));
                adopted += 1;
                continue;
            }
            let port = record
                .addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok());
            let port = choose_ports(1, &port.into_iter().collect::<Vec<_>>())
                .map_err(ProvisionError::Port)?[0];
            // On error, `instances` is dropped, which kills those started here and
            // leaves the adopted ones to whoever runs them.
            let proc = instances.spawn_one(&spec, i + 1, port)?;
            instances.procs.push(proc);
        }
        Ok((instances, adopted))
    }

    /// Watches an adopted process (not a child: no `wait`), polling `/proc`.
    fn watch_adopted(&self, record: InstanceRecord) -> Proc {
        let (reaped_tx, reaped) = watch::channel(false);
        let shared = self.shared.clone();
        let slot = self.slot;
        let watched = record.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ADOPTED_POLL).await;
                if !is_running(&watched) {
                    break;
                }
                if reaped_tx.is_closed() {
                    // Released to another router process: no longer ours to watch.
                    return;
                }
            }
            let _ = reaped_tx.send(true);
            if shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            let status = "an unknown status (it was started by a previous router process)";
            report_exit(&shared, slot, watched, status.into()).await;
        });
        Proc {
            record,
            reaped,
            adopted: true,
        }
    }

    /// Lets go of the instances without stopping them: they keep running for the router
    /// process that takes over (an upgrade, a reload, a router stopped on purpose
    /// without its service). Their exits are no longer reported here.
    pub fn release(mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.stopped = true;
        info!(slot = %self.slot, count = self.procs.len(), "instances left running for the next router process");
    }

    /// Kills every instance at once (SIGKILL to each group), adopted ones included: a
    /// router stopping the service at once.
    pub fn kill_now(mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for proc in &self.procs {
            signal_if_ours(&proc.record, Signal::SIGKILL);
        }
        self.stopped = true;
    }

    /// The instances' pids (of their `sh`), in instance order.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.record.pid).collect()
    }

    /// The instances' addresses, `127.0.0.1:PORT`, in instance order.
    pub fn addrs(&self) -> Vec<String> {
        self.procs.iter().map(|p| p.record.addr.clone()).collect()
    }

    /// What to save so that [`reap_orphans`] can find these processes after a crash.
    pub fn records(&self) -> Vec<InstanceRecord> {
        self.procs.iter().map(|p| p.record.clone()).collect()
    }

    /// The first instance that exited on its own, if any did.
    pub fn exited(&self) -> Option<InstanceExit> {
        self.shared
            .exits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first()
            .cloned()
    }

    /// Resolves when an instance exits on its own (at once if one already did), with the
    /// first one that did.
    pub async fn wait_exit(&self) -> InstanceExit {
        let mut changed = self.shared.changed.subscribe();
        loop {
            if let Some(exit) = self.exited() {
                return exit;
            }
            // The sender lives in `self.shared`: `changed` cannot close while we hold it.
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops every instance: SIGTERM to each process group, SIGKILL to what is left of
    /// them after the stop timeout, and waits until the processes are reaped.
    ///
    /// A process that left its group (`setsid`) is out of turnout's reach.
    pub async fn stop(mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for proc in &self.procs {
            signal_if_ours(&proc.record, Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + self.stop_timeout;
        for proc in &self.procs {
            if !wait_group_gone(proc.record.pid, deadline).await {
                warn!(
                    slot = %self.slot, addr = %proc.record.addr, pid = proc.record.pid,
                    timeout = ?self.stop_timeout, "instance still running after SIGTERM; sending SIGKILL"
                );
                signal_if_ours(&proc.record, Signal::SIGKILL);
            }
        }
        let deadline = tokio::time::Instant::now() + REAP_TIMEOUT;
        for proc in &self.procs {
            let mut reaped = proc.reaped.clone();
            let done = tokio::time::timeout_at(deadline, reaped.wait_for(|r| *r)).await;
            if !matches!(done, Ok(Ok(_))) {
                warn!(slot = %self.slot, pid = proc.record.pid, "instance not reaped after SIGKILL");
            }
        }
        info!(slot = %self.slot, count = self.procs.len(), "instances stopped");
        self.stopped = true;
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        for proc in self.procs.iter().filter(|p| !p.adopted) {
            if signal_if_ours(&proc.record, Signal::SIGKILL) {
                warn!(slot = %self.slot, addr = %proc.record.addr, pid = proc.record.pid,
                    "instances dropped without stop; killed");
            }
        }
    }
}

/// Kills (SIGKILL to the process group) the instances a previous router recorded and
/// left running — it was killed before it could stop them. A record is acted on only
/// while `/proc/PID/stat` shows the same start time and the process still leads its
/// group, so a pid the system gave to another process is left alone. Returns how many
/// groups were killed.
pub fn reap_orphans(records: &[InstanceRecord]) -> usize {
    let mut killed = 0;
    for record in records {
        if signal_if_ours(record, Signal::SIGKILL) {
            warn!(pid = record.pid, addr = %record.addr, "killed an instance left by a previous router");
            killed += 1;
        }
    }
    killed
}

/// Records an instance that exited on its own (not stopped by turnout): logged, with
/// the end of its log kept for the health gate's message, and [`Instances::wait_exit`]
/// woken.
async fn report_exit(shared: &Shared, slot: SlotName, watched: InstanceRecord, status: String) {
    let log_tail = read_log_tail(&watched.log).await;
    warn!(
        %slot, addr = %watched.addr, pid = watched.pid, %status,
        log = %watched.log.display(), "instance exited; it is not restarted"
    );
    shared
        .exits
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(InstanceExit {
            addr: watched.addr,
            pid: watched.pid,
            status,
            log: watched.log,
            log_tail,
        });
    shared.changed.send_modify(|n| *n += 1);
}

/// How often an adopted instance (not a child of this process) is looked at.
const ADOPTED_POLL: Duration = Duration::from_millis(250);

/// Whether the recorded instance still runs: same pid, same start time, still leading
/// its process group, and not a zombie.
pub fn is_running(record: &InstanceRecord) -> bool {
    proc_stat(record.pid).is_some_and(|stat| {
        stat.start_time == record.start_time && stat.pgrp == record.pid && stat.state != 'Z'
    })
}

/// The environment variable that marks an instance with its router's state directory.
pub const STATE_DIR_ENV: &str = "TURNOUT_STATE_DIR";

/// The state directory of a log directory (`STATE/logs`), absolute.
fn state_dir_of(log_dir: &Path) -> PathBuf {
    let dir = log_dir.parent().unwrap_or(log_dir);
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

/// Kills (SIGKILL to their process groups) every process marked with `state_dir` in its
/// environment (`TURNOUT_STATE_DIR`, set on every instance turnout starts). Called at
/// start, when the state directory's lock guarantees that no other router uses it: such
/// processes are left over from a router that was killed — including ones it started but
/// had not recorded yet. The caller's own process group is never signalled, nor the
/// groups in `keep` (instances adopted). Returns how many groups were killed.
pub fn reap_state_dir(state_dir: &Path, keep: &HashSet<u32>) -> usize {
    let dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_owned());
    let mut marker = format!("{STATE_DIR_ENV}=").into_bytes();
    marker.extend_from_slice(dir.as_os_str().as_encoded_bytes());
    let own_group = proc_stat(std::process::id()).map(|s| s.pgrp);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut groups: HashSet<u32> = HashSet::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == marker.as_slice())
        {
            if let Some(stat) = proc_stat(pid) {
                if Some(stat.pgrp) != own_group && stat.pgrp > 1 && !keep.contains(&stat.pgrp) {
                    groups.insert(stat.pgrp);
                }
            }
        }
    }
    let mut killed = 0;
    for pgrp in groups {
        if signal_group(pgrp, Signal::SIGKILL) {
            warn!(
                pgrp,
                "killed a process group left by a previous router on this state directory"
            );
            killed += 1;
        }
    }
    killed
}

/// Sends `signal` to the recorded instance's process group, if that group is still the
/// recorded one; true if it was sent.
fn signal_if_ours(record: &InstanceRecord, signal: Signal) -> bool {
    let ours = match proc_stat(record.pid) {
        Some(stat) => {
            let ours = stat.start_time == record.start_time && stat.pgrp == record.pid;
            if !ours {
                debug!(pid = record.pid, addr = %record.addr, "pid now belongs to another process; left alone");
            }
            ours
        }
        // The leader is gone, but its group may live on (children of the shell). Linux
        // does not hand out a pid while a group of that id exists, so such a group is the
        // recorded one.
        None => group_exists(record.pid),
    };
    ours && signal_group(record.pid, signal)
}

/// Substitutes `{port}`, `{version}` and `{slot}` in a `[provision] command` in one pass
/// (a version holding `{port}` stays as it is). The version is shell-quoted when it holds
/// anything but `[A-Za-z0-9._-]`, so placeholders must not sit inside quotes in the
/// template. Other `{...}` are left alone.
pub fn render_command(
    template: &str,
    port: u16,
    version: &str,
    slot: SlotName,
) -> Result<String, ProvisionError> {
    if version.chars().any(char::is_control) {
        return Err(ProvisionError::BadVersion {
            version: version.to_owned(),
        });
    }
    let mut out = String::with_capacity(template.len() + version.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let at = &rest[i..];
        rest = if let Some(after) = at.strip_prefix("{port}") {
            out.push_str(&port.to_string());
            after
        } else if let Some(after) = at.strip_prefix("{version}") {
            out.push_str(&shell_quote(version));
            after
        } else if let Some(after) = at.strip_prefix("{slot}") {
            out.push_str(slot.as_str());
            after
        } else {
            out.push('{');
            &at[1..]
        };
    }
    out.push_str(rest);
    Ok(out)
}

/// Picks one port per instance: the preferred one when it can be bound, a free one
/// otherwise. The listeners are held until all are chosen, so no port is picked twice.
fn choose_ports(count: usize, preferred: &[u16]) -> io::Result<Vec<u16>> {
    let mut held = Vec::with_capacity(count);
    let mut ports = Vec::with_capacity(count);
    let mut seen = HashSet::new();
    for i in 0..count {
        let wanted = preferred.get(i).copied().filter(|p| *p != 0);
        let listener = match wanted.filter(|p| !seen.contains(p)) {
            Some(port) => match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                Ok(listener) => Some(listener),
                Err(error) => {
                    info!(port, %error, "preferred instance port is taken; using another");
                    None
                }
            },
            None => None,
        };
        let listener = match listener {
            Some(listener) => listener,
            None => TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?,
        };
        let port = listener.local_addr()?.port();
        seen.insert(port);
        ports.push(port);
        held.push(listener);
    }
    Ok(ports)
}

/// Keeps a deployment id safe as part of a file name.
fn file_name_part(id: &str) -> String {
    let part: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match part.trim_start_matches('.') {
        "" => "deployment".to_owned(),
        trimmed => trimmed.to_owned(),
    }
}

/// The fields of `/proc/PID/stat` turnout uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    /// Field 3: the state (`Z` for a zombie: exited, not yet reaped).
    state: char,
    /// Field 5: the process group id.
    pgrp: u32,
    /// Field 22: the start time, in clock ticks since boot.
    start_time: u64,
}

/// Reads `/proc/PID/stat`; `None` when there is no such process (or no procfs).
fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) is in parentheses and may hold spaces and ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state).
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The last lines of a log file, reading only its end.
async fn read_log_tail(path: &Path) -> String {
    async fn read_end(path: &Path) -> io::Result<Vec<u8>> {
        let mut file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        let from = len.saturating_sub(LOG_TAIL_BYTES);
        file.seek(io::SeekFrom::Start(from)).await?;
        let mut bytes = Vec::new();
        file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes).await?;
        Ok(bytes)
    }
    match read_end(path).await {
        Ok(bytes) => tail_lines(&bytes, LOG_TAIL_LINES),
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use crate::commands::tests::process_gone;

    fn spec(command: &str, count: usize, dir: &Path) -> InstanceSpec {
        InstanceSpec {
            command: command.to_owned(),
            version: "v1".to_owned(),
            slot: SlotName::Green,
            deployment: "d-42".to_owned(),
            count,
            log_dir: dir.join("logs"),
            stop_timeout: Duration::from_millis(300),
            ports: Vec::new(),
        }
    }

    /// Polls `condition` every 20 ms until it holds; panics with `what` after 10 s.
    async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_of(record: &InstanceRecord) -> String {
        std::fs::read_to_string(&record.log).unwrap_or_default()
    }

    /// The pid a test command printed as `child=PID`.
    fn child_pid(log: &str) -> Option<u32> {
        log.lines()
            .find_map(|l| l.strip_prefix("child="))
            .and_then(|p| p.trim().parse().ok())
    }

    #[tokio::test]
    async fn starts_instances_with_logs_env_and_ports_then_stops_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let instances = Instances::start(spec(
            "echo started {version} {port} $TURNOUT_SLOT $TURNOUT_PORT $TURNOUT_DEPLOYMENT; \
             sleep 30 & echo child=$!; wait",
            2,
            dir.path(),
        ))
        .await
        .expect("starts");
        let records = instances.records();
        assert_eq!(records.len(), 2);
        assert_eq!(
            instances.addrs(),
            [records[0].addr.clone(), records[1].addr.clone()]
        );
        assert_ne!(records[0].addr, records[1].addr);
        for (n, record) in records.iter().enumerate() {
            assert_eq!(
                record.log,
                dir.path().join(format!("logs/d-42-green-{}.log", n + 1))
            );
            let port = record
                .addr
                .strip_prefix("127.0.0.1:")
                .expect("loopback addr");
            let want = format!("started v1 {port} green {port} d-42");
            eventually("the instance's output in its log", || {
                let log = log_of(record);
                log.contains(&want) && child_pid(&log).is_some()
            })
            .await;
            let stat = proc_stat(record.pid).expect("running");
            assert_eq!(stat.start_time, record.start_time);
            assert_eq!(stat.pgrp, record.pid, "each instance leads its own group");
        }
        assert_eq!(instances.exited(), None);
        let children: Vec<u32> = records
            .iter()
            .filter_map(|r| child_pid(&log_of(r)))
            .collect();

        let started = Instant::now();
        instances.stop().await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        for pid in records.iter().map(|r| r.pid).chain(children) {
            eventually("the process to be gone", || process_gone(pid)).await;
        }
    }

    #[tokio::test]
    async fn term_ignored_is_killed_after_the_stop_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let instances = Instances::start(spec(
            "trap '' TERM; sleep 30 & echo child=$!; wait",
            1,
            dir.path(),
        ))
        .await
        .expect("starts");
        let record = instances.records().remove(0);
        eventually("the trap is set", || child_pid(&log_of(&record)).is_some()).await;
        let child = child_pid(&log_of(&record)).expect("printed");

        let started = Instant::now();
        instances.stop().await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300),
            "SIGKILL came early: {took:?}"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(process_gone(record.pid));
        eventually("the child to be killed", || process_gone(child)).await;
    }

    #[tokio::test]
    async fn exited_reports_a_crash_with_its_log_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let instances = Instances::start(spec(
            "echo loading {version}; echo 'bind: address in use' >&2; exit 3",
            1,
            dir.path(),
        ))
        .await
        .expect("starts");
        let exit = tokio::time::timeout(Duration::from_secs(10), instances.wait_exit())
            .await
            .expect("the instance exits");
        assert_eq!(exit.addr, instances.addrs()[0]);
        assert_eq!(exit.status, "exit code 3");
        assert!(
            exit.log_tail.ends_with("loading v1\nbind: address in use"),
            "{}",
            exit.log_tail
        );
        assert_eq!(instances.exited(), Some(exit.clone()));
        let message = exit.to_string();
        assert!(message.contains("exited with exit code 3"), "{message}");
        instances.stop().await;
    }

    #[tokio::test]
    async fn preferred_ports_are_reused_when_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let free_port = free.local_addr().expect("addr").port();
        drop(free);
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let taken_port = taken.local_addr().expect("addr").port();

        let mut s = spec("exec sleep 30", 3, dir.path());
        s.ports = vec![free_port, taken_port];
        let instances = Instances::start(s).await.expect("starts");
        let addrs = instances.addrs();
        assert_eq!(addrs[0], format!("127.0.0.1:{free_port}"));
        assert_ne!(addrs[1], format!("127.0.0.1:{taken_port}"));
        assert_ne!(addrs[1], addrs[2]);
        assert_ne!(addrs[0], addrs[2]);
        instances.stop().await;
    }

    #[tokio::test]
    async fn drop_without_stop_kills_the_groups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let instances = Instances::start(spec("sleep 30 & echo child=$!; wait", 1, dir.path()))
            .await
            .expect("starts");
        let record = instances.records().remove(0);
        eventually("the child started", || {
            child_pid(&log_of(&record)).is_some()
        })
        .await;
        let child = child_pid(&log_of(&record)).expect("printed");
        drop(instances);
        eventually("the shell to be gone", || process_gone(record.pid)).await;
        eventually("the child to be gone", || process_gone(child)).await;
    }

    #[tokio::test]
    async fn start_refuses_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Instances::start(spec("true", 0, dir.path()))
            .await
            .expect_err("no instances");
        assert!(matches!(err, ProvisionError::NoInstances), "{err:?}");
        let mut s = spec("true", 1, dir.path());
        s.version = "v1\nrm -rf /".to_owned();
        let err = Instances::start(s).await.expect_err("control character");
        assert!(err.to_string().contains("control characters"), "{err}");
    }

    #[test]
    fn reap_orphans_kills_recorded_groups_only_when_start_time_matches() {
        use std::os::unix::process::CommandExt;
        let spawn = || {
            std::process::Command::new("sh")
                .args(["-c", "sleep 30 & wait"])
                .process_group(0)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sh")
        };
        let mut orphan = spawn();
        let mut stranger = spawn();
        let record = |child: &std::process::Child, skew: u64| InstanceRecord {
            addr: "127.0.0.1:1".to_owned(),
            pid: child.id(),
            start_time: proc_stat(child.id()).expect("running").start_time + skew,
            log: PathBuf::from("/dev/null"),
        };
        let records = [record(&orphan, 0), record(&stranger, 1)];
        assert_eq!(reap_orphans(&records), 1);
        let status = orphan.wait().expect("reaped");
        assert_eq!(describe_status(status), "signal SIGKILL");
        assert!(
            stranger.try_wait().expect("try_wait").is_none(),
            "a pid with another start time was killed"
        );
        assert!(signal_group(stranger.id(), Signal::SIGKILL));
        let _ = stranger.wait();
        // A record whose process (and group) is gone is skipped.
        let mut gone = std::process::Command::new("true")
            .process_group(0)
            .spawn()
            .expect("spawn true");
        let gone_record = InstanceRecord {
            pid: gone.id(),
            ..records[0].clone()
        };
        let _ = gone.wait();
        assert_eq!(reap_orphans(&[gone_record]), 0);
    }

    #[test]
    fn render_command_table() {
        let cases: &[(&str, &str, Result<&str, &str>)] = &[
            (
                "./shop --port {port} --version {version}",
                "1.4.2",
                Ok("./shop --port 7001 --version 1.4.2"),
            ),
            ("run {slot} {version}", "v2 rc", Ok("run blue 'v2 rc'")),
            ("run {version}", "it's", Ok(r"run 'it'\''s'")),
            ("run {version}", "", Ok("run ''")),
            ("run {version} {port}", "{port}", Ok("run '{port}' 7001")),
            ("awk '{print}' {nope} {", "1", Ok("awk '{print}' {nope} {")),
            ("{port}{port}", "1", Ok("70017001")),
            ("run {version}", "v1\u{1b}[2J", Err("control characters")),
        ];
        for (template, version, expected) in cases {
            let got = render_command(template, 7001, version, SlotName::Blue);
            match (expected, &got) {
                (Ok(want), Ok(got)) => assert_eq!(got, want, "template {template:?}"),
                (Err(want), Err(got)) => assert!(got.to_string().contains(want), "{got}"),
                _ => panic!("template {template:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn parse_stat_handles_odd_command_names() {
        let mut fields = vec!["S".to_owned()];
        fields.extend((4..=52).map(|n| n.to_string()));
        let line = format!("1234 (a) b (c)) {}", fields.join(" "));
        assert_eq!(
            parse_stat(&line),
            Some(ProcStat {
                state: 'S',
                pgrp: 5,
                start_time: 22
            })
        );
        assert_eq!(parse_stat("1234 (sh) S 1"), None);
    }

    #[test]
    fn file_name_part_table() {
        for (id, want) in [
            ("d-42", "d-42"),
            ("a/b c", "a_b_c"),
            ("..", "deployment"),
            ("", "deployment"),
        ] {
            assert_eq!(file_name_part(id), want);
        }
    }
}
