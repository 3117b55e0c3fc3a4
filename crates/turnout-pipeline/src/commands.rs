//! Shell commands run by the pipeline: hooks (`[hooks] pre_deploy = "..."`), external
//! provisioning (`[provision] up` / `down`) and the verify command.
//!
//! Every command runs as `sh -c COMMAND` in a process group of its own, with standard
//! input closed and the environment turnout passes added to its own. Its output is
//! captured (the last [`CAPTURE_LIMIT`] bytes, never more) and, when asked, appended to a
//! log file as it comes. A command that outlives its timeout gets SIGTERM on its whole
//! group, and SIGKILL [`KILL_GRACE`] later, so that a script's children go too.
//!
//! A command that exits normally may leave background processes behind (an `up` script
//! that starts a daemon): turnout leaves them alone. Such a process should not keep the
//! command's output open; if it does, turnout stops reading [`OUTPUT_GRACE`] after the
//! command exited, and what it writes later is not captured.

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tracing::{debug, warn};

/// How much output is kept per command: the last 64 KiB of standard output, and the last
/// 64 KiB of standard output and error together.
pub const CAPTURE_LIMIT: usize = 64 * 1024;

/// How long a timed-out command has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// How long turnout keeps reading a command's output after the command exited (for
/// background processes that inherited it).
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// How many lines of output an error message quotes.
const TAIL_LINES: usize = 20;

/// One command to run.
#[derive(Debug, Clone)]
pub struct CommandSpec<'a> {
    /// What the command is, for messages and logs: `"hook pre_deploy"`, `"provision up"`.
    pub name: &'a str,
    /// The shell command, run with `sh -c`.
    pub command: &'a str,
    /// Variables added to turnout's own environment (`TURNOUT_SLOT`, ...).
    pub env: Vec<(String, String)>,
    /// How long the command may run before it is stopped.
    pub timeout: Duration,
    /// A file to append the command's output to, as well as capturing it. A file that
    /// cannot be opened is logged and skipped: the log is a copy, not a requirement.
    pub log: Option<PathBuf>,
}

/// What a command that succeeded printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Its standard output (the last [`CAPTURE_LIMIT`] bytes, invalid UTF-8 replaced).
    pub stdout: String,
    /// The last lines of standard output and error together, as they came.
    pub output_tail: String,
}

/// Why a command failed. Each message says what ran, how it ended, what it printed last,
/// and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// `sh` could not be started.
    #[error(
        "{name}: could not start `sh -c {command}`: {source}; check that `sh` is installed \
         and turnout's working directory exists"
    )]
    Spawn {
        /// What the command is (`"hook pre_deploy"`).
        name: String,
        /// The shell command.
        command: String,
        /// Why the start failed.
        source: io::Error,
    },
    /// The command ran and exited unsuccessfully.
    #[error(
        "{name} failed: `{command}` ended with {status}; its last output:\n{output_tail}\n\
         Fix what it reports (running it by hand shows all of it), then try again"
    )]
    Failed {
        /// What the command is.
        name: String,
        /// The shell command.
        command: String,
        /// How it ended: `exit code 1`, `signal SIGSEGV`.
        status: String,
        /// Its last lines of output.
        output_tail: String,
    },
    /// The command did not finish in time and was stopped.
    #[error(
        "{name} timed out: `{command}` was still running after {after:?}, so turnout stopped it \
         (SIGTERM, then SIGKILL); its last output:\n{output_tail}\n\
         Make it finish sooner, or raise its timeout"
    )]
    TimedOut {
        /// What the command is.
        name: String,
        /// The shell command.
        command: String,
        /// The timeout it exceeded.
        after: Duration,
        /// Its last lines of output.
        output_tail: String,
    },
    /// The command succeeded but did not print what turnout needs from it.
    #[error(
        "{name}: `{command}` succeeded but {problem}. It must print a line like \
         {{\"upstreams\": [\"10.0.0.5:8080\"]}} on standard output (the last line that is a \
         JSON object counts; progress lines before it are fine). It printed:\n{printed}"
    )]
    BadOutput {
        /// What the command is.
        name: String,
        /// The shell command.
        command: String,
        /// What is wrong with the output.
        problem: String,
        /// The last lines of its standard output.
        printed: String,
    },
}

/// Runs `spec.command` with `sh -c` and waits for it, at most `spec.timeout`.
///
/// Succeeds when the command exits with status 0. If the returned future is dropped before
/// the command exits, the command's process group is killed.
pub async fn run(spec: CommandSpec<'_>) -> Result<CommandOutput, CommandError> {
    let name = spec.name;
    let command = spec.command;
    let mut log = match &spec.log {
        Some(path) => open_log(path).await,
        None => None,
    };
    if let Some(file) = &mut log {
        let header = format!("==> turnout: {name}: sh -c {command}\n");
        if let Err(error) = write_flush(file, header.as_bytes()).await {
            warn!(%name, %error, "cannot write the command log");
        }
    }

    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in &spec.env {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
        name: name.to_owned(),
        command: command.to_owned(),
        source,
    })?;
    let guard = GroupGuard(child.id());
    debug!(%name, %command, pid = ?child.id(), "command started");

    let capture = Arc::new(Mutex::new(Capture::default()));
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        let file = clone_log(&log).await;
        pumps.push(tokio::spawn(pump(out, true, capture.clone(), file)));
    }
    if let Some(err) = child.stderr.take() {
        let file = clone_log(&log).await;
        pumps.push(tokio::spawn(pump(err, false, capture.clone(), file)));
    }

    let ended = match tokio::time::timeout(spec.timeout, child.wait()).await {
        Ok(Ok(status)) => Ended::Exited(status),
        Ok(Err(error)) => Ended::Unknown(format!(
            "an unknown status (waiting for it failed: {error})"
        )),
        Err(_) => {
            warn!(%name, %command, timeout = ?spec.timeout, "command timed out; stopping it");
            if let Some(pid) = child.id() {
                terminate_group(pid, &mut child, KILL_GRACE).await;
            }
            Ended::TimedOut
        }
    };
    guard.disarm();

    // Collect the rest of the output; a background process may hold the pipes open.
    let mut drained = true;
    for pump in &mut pumps {
        if tokio::time::timeout(OUTPUT_GRACE, pump).await.is_err() {
            drained = false;
        }
    }
    for pump in &pumps {
        pump.abort();
    }
    if !drained {
        debug!(%name, "a background process keeps the command's output open; not reading it further");
    }

    let (stdout, output_tail) = {
        let capture = capture.lock().unwrap_or_else(PoisonError::into_inner);
        (
            String::from_utf8_lossy(&capture.stdout.bytes).into_owned(),
            tail_lines(&capture.combined.bytes, TAIL_LINES),
        )
    };
    let outcome = match ended {
        Ended::Exited(status) if status.success() => Ok(CommandOutput {
            stdout,
            output_tail,
        }),
        Ended::Exited(status) => Err(CommandError::Failed {
            name: name.to_owned(),
            command: command.to_owned(),
            status: describe_status(status),
            output_tail,
        }),
        Ended::Unknown(unknown) => Err(CommandError::Failed {
            name: name.to_owned(),
            command: command.to_owned(),
            status: unknown,
            output_tail,
        }),
        Ended::TimedOut => Err(CommandError::TimedOut {
            name: name.to_owned(),
            command: command.to_owned(),
            after: spec.timeout,
            output_tail,
        }),
    };
    if let Some(file) = &mut log {
        let how = match &outcome {
            Ok(_) => "succeeded".to_owned(),
            Err(CommandError::Failed { status, .. }) => format!("failed with {status}"),
            Err(_) => format!("timed out after {:?}", spec.timeout),
        };
        let footer = format!("==> turnout: {name} {how}\n");
        if let Err(error) = write_flush(file, footer.as_bytes()).await {
            warn!(%name, %error, "cannot write the command log");
        }
    }
    outcome
}

/// How a command's run ended.
enum Ended {
    Exited(ExitStatus),
    Unknown(String),
    TimedOut,
}

/// Runs an external provisioning `up` command and returns the upstreams it printed.
///
/// `up` must print `{"upstreams": ["host:port", ...]}` on standard output; the last
/// non-empty line that is a JSON object is taken, so a script may print progress first.
/// The list must not be empty and each entry must be `host:port` (see
/// [`parse_upstreams`]).
pub async fn provision_up(
    command: &str,
    env: Vec<(String, String)>,
    timeout: Duration,
    log: Option<PathBuf>,
) -> Result<Vec<String>, CommandError> {
    let name = "provision up";
    let output = run(CommandSpec {
        name,
        command,
        env,
        timeout,
        log,
    })
    .await?;
    parse_upstreams(&output.stdout).map_err(|problem| CommandError::BadOutput {
        name: name.to_owned(),
        command: command.to_owned(),
        problem,
        printed: tail_lines(output.stdout.as_bytes(), TAIL_LINES),
    })
}

/// Reads the upstream list from what a provisioning `up` command printed: the last
/// non-empty line that parses as a JSON object must be `{"upstreams": [...]}` with at
/// least one `host:port` entry (no scheme, port 1-65535, IPv6 hosts in brackets, no
/// duplicates). The error says what is wrong, to be completed by the caller.
pub fn parse_upstreams(stdout: &str) -> Result<Vec<String>, String> {
    let object = stdout
        .lines()
        .rev()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .find_map(|line| {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line).ok()
        })
        .ok_or_else(|| "printed no line that is a JSON object".to_owned())?;
    let list = match object.get("upstreams") {
        Some(serde_json::Value::Array(list)) => list,
        Some(other) => {
            return Err(format!(
                "its \"upstreams\" is not a list of strings but {other}"
            ))
        }
        None => return Err("its JSON object has no \"upstreams\" key".to_owned()),
    };
    if list.is_empty() {
        return Err("its \"upstreams\" list is empty".to_owned());
    }
    let mut upstreams: Vec<String> = Vec::with_capacity(list.len());
    for entry in list {
        let serde_json::Value::String(addr) = entry else {
            return Err(format!("the upstream {entry} is not a string"));
        };
        check_host_port(addr).map_err(|why| format!("the upstream {addr:?} {why}"))?;
        if upstreams.contains(addr) {
            return Err(format!("the upstream {addr:?} is listed twice"));
        }
        upstreams.push(addr.clone());
    }
    Ok(upstreams)
}

/// Checks that `addr` is `host:port`; the error completes "the upstream X ...".
fn check_host_port(addr: &str) -> Result<(), &'static str> {
    if addr.contains("://") {
        return Err("has a scheme; write host:port only");
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("has no port; write host:port");
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("does not end with a port number; write host:port");
    }
    match port.parse::<u16>() {
        Ok(1..=65535) => {}
        _ => return Err("has a port outside 1-65535"),
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.is_empty() {
        return Err("has no host; write host:port");
    }
    if bare.contains(':') && bare.len() == host.len() {
        return Err("has an IPv6 host without brackets; write [addr]:port");
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '@'))
    {
        return Err("is not a plain host:port");
    }
    Ok(())
}

/// Quotes `value` for `sh` when it holds anything but `[A-Za-z0-9._-]` (or is empty), so
/// that it stays one word.
pub fn shell_quote(value: &str) -> Cow<'_, str> {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(format!("'{}'", value.replace('\'', r"'\''")))
    }
}

/// `exit code 3`, `signal SIGKILL`.
pub(crate) fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(signal) = status.signal() {
        match Signal::try_from(signal) {
            Ok(signal) => format!("signal {}", signal.as_str()),
            Err(_) => format!("signal {signal}"),
        }
    } else {
        status.to_string()
    }
}

/// Sends `signal` to the process group `pgid`; false when there is no such group (or
/// `pgid` is one turnout must never signal: 0 or 1).
pub(crate) fn signal_group(pgid: u32, signal: Signal) -> bool {
    match group_pid(pgid) {
        Some(pid) => killpg(pid, signal).is_ok(),
        None => false,
    }
}

/// Whether a process group `pgid` still has members (zombies included).
pub(crate) fn group_exists(pgid: u32) -> bool {
    match group_pid(pgid) {
        Some(pid) => !matches!(killpg(pid, None), Err(nix::errno::Errno::ESRCH)),
        None => false,
    }
}

fn group_pid(pgid: u32) -> Option<Pid> {
    // killpg(0) would signal turnout's own group, and 1 is init.
    match i32::try_from(pgid) {
        Ok(raw) if raw > 1 => Some(Pid::from_raw(raw)),
        _ => None,
    }
}

/// Waits until the process group `pgid` has no members left (its leader reaped by whoever
/// waits for it), polling; false if `deadline` came first.
pub(crate) async fn wait_group_gone(pgid: u32, deadline: tokio::time::Instant) -> bool {
    loop {
        if !group_exists(pgid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM to the group; SIGKILL to what is left of it after `grace`; waits (bounded)
/// for the leader to be reaped.
async fn terminate_group(pgid: u32, child: &mut tokio::process::Child, grace: Duration) {
    signal_group(pgid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    let _ = tokio::time::timeout_at(deadline, child.wait()).await;
    if !wait_group_gone(pgid, deadline).await {
        debug!(pgid, "still running after SIGTERM; sending SIGKILL");
        signal_group(pgid, Signal::SIGKILL);
    }
    let _ = tokio::time::timeout(grace, child.wait()).await;
}

/// Kills the command's process group when `run` is abandoned before the command exited
/// (its future dropped, or a panic): `kill_on_drop` alone would kill only `sh`.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            signal_group(pgid, Signal::SIGKILL);
        }
    }
}

impl GroupGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

/// Bounded copies of a command's output.
#[derive(Default)]
struct Capture {
    stdout: TailBuf,
    combined: TailBuf,
}

/// The last [`CAPTURE_LIMIT`] bytes written to it.
#[derive(Default)]
pub(crate) struct TailBuf {
    bytes: Vec<u8>,
}

impl TailBuf {
    fn push(&mut self, data: &[u8]) {
        if data.len() >= CAPTURE_LIMIT {
            self.bytes.clear();
            self.bytes
                .extend_from_slice(&data[data.len() - CAPTURE_LIMIT..]);
            return;
        }
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > CAPTURE_LIMIT {
            let excess = self.bytes.len() - CAPTURE_LIMIT;
            self.bytes.drain(..excess);
        }
    }
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    is_stdout: bool,
    capture: Arc<Mutex<Capture>>,
    mut log: Option<tokio::fs::File>,
) {
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = &buf[..n];
        {
            let mut capture = capture.lock().unwrap_or_else(PoisonError::into_inner);
            if is_stdout {
                capture.stdout.push(data);
            }
            capture.combined.push(data);
        }
        if let Some(file) = &mut log {
            if let Err(error) = file.write_all(data).await {
                warn!(%error, "cannot write the command log; output goes on being captured");
                log = None;
            }
        }
    }
    if let Some(file) = &mut log {
        let _ = file.flush().await;
    }
}

async fn open_log(path: &Path) -> Option<tokio::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(error) = tokio::fs::create_dir_all(dir).await {
            warn!(path = %path.display(), %error, "cannot create the command log's directory; not logging");
            return None;
        }
    }
    match tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
    {
        Ok(file) => Some(file),
        Err(error) => {
            warn!(path = %path.display(), %error, "cannot open the command log; not logging");
            None
        }
    }
}

async fn clone_log(log: &Option<tokio::fs::File>) -> Option<tokio::fs::File> {
    match log {
        Some(file) => file.try_clone().await.ok(),
        None => None,
    }
}

async fn write_flush(file: &mut tokio::fs::File, data: &[u8]) -> io::Result<()> {
    file.write_all(data).await?;
    file.flush().await
}

/// The last `n` lines of `bytes` (invalid UTF-8 replaced), or `(no output)`.
pub(crate) fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches(['\n', '\r']);
    if text.trim().is_empty() {
        return "(no output)".to_owned();
    }
    let start = text
        .rmatch_indices('\n')
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    text[start..].to_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Instant;

    fn spec<'a>(command: &'a str, timeout: Duration) -> CommandSpec<'a> {
        CommandSpec {
            name: "hook test",
            command,
            env: Vec::new(),
            timeout,
            log: None,
        }
    }

    /// Whether `pid` is gone (or a zombie waiting for its parent).
    pub(crate) fn process_gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    #[tokio::test]
    async fn success_sees_env_and_captures_both_streams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("logs/hook.log");
        let mut s = spec(
            r#"echo "slot=$TURNOUT_SLOT"; echo warning >&2; printf 'last'"#,
            Duration::from_secs(10),
        );
        s.env = vec![("TURNOUT_SLOT".into(), "green".into())];
        s.log = Some(log.clone());
        let out = run(s).await.expect("command succeeds");
        assert_eq!(out.stdout, "slot=green\nlast");
        assert!(
            out.output_tail.contains("slot=green"),
            "{}",
            out.output_tail
        );
        assert!(out.output_tail.contains("warning"), "{}", out.output_tail);
        let logged = std::fs::read_to_string(&log).expect("log written");
        assert!(
            logged.contains("slot=green") && logged.contains("warning"),
            "{logged}"
        );
        assert!(logged.contains("hook test succeeded"), "{logged}");
    }

    #[tokio::test]
    async fn failure_reports_status_and_output_tail() {
        let err = run(spec(
            "echo migrating; echo 'column exists' >&2; exit 1",
            Duration::from_secs(10),
        ))
        .await
        .expect_err("exit 1 fails");
        let CommandError::Failed {
            status,
            output_tail,
            ..
        } = &err
        else {
            panic!("expected Failed, got {err:?}");
        };
        assert_eq!(status, "exit code 1");
        assert_eq!(output_tail, "migrating\ncolumn exists");
        let message = err.to_string();
        assert!(
            message.starts_with("hook test failed: `echo migrating;"),
            "{message}"
        );
        assert!(
            message.contains("exit code 1") && message.contains("column exists"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let started = Instant::now();
        let err = run(spec("sleep 30 & echo $!; wait", Duration::from_millis(300)))
            .await
            .expect_err("times out");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let CommandError::TimedOut {
            after, output_tail, ..
        } = &err
        else {
            panic!("expected TimedOut, got {err:?}");
        };
        assert_eq!(*after, Duration::from_millis(300));
        let child: u32 = output_tail
            .trim()
            .parse()
            .expect("the child's pid was printed");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !process_gone(child) {
            assert!(
                Instant::now() < deadline,
                "sleep {child} survived the timeout"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(err.to_string().contains("timed out"), "{err}");
    }

    #[tokio::test]
    async fn timeout_kills_children_that_ignore_sigterm() {
        let started = Instant::now();
        let err = run(spec(
            "trap '' TERM; sleep 30 & echo $!; wait",
            Duration::from_millis(200),
        ))
        .await
        .expect_err("times out");
        let took = started.elapsed();
        assert!(
            took >= KILL_GRACE,
            "SIGKILL came before the grace: {took:?}"
        );
        assert!(took < KILL_GRACE + Duration::from_secs(5), "{took:?}");
        let CommandError::TimedOut { output_tail, .. } = &err else {
            panic!("expected TimedOut, got {err:?}");
        };
        let child: u32 = output_tail
            .trim()
            .parse()
            .expect("the child's pid was printed");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !process_gone(child) {
            assert!(Instant::now() < deadline, "sleep {child} survived SIGKILL");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn captured_output_is_bounded() {
        let out = run(spec(
            "head -c 300000 /dev/zero | tr '\\0' a; echo; echo end",
            Duration::from_secs(10),
        ))
        .await
        .expect("succeeds");
        assert!(out.stdout.len() <= CAPTURE_LIMIT, "{}", out.stdout.len());
        assert!(out.stdout.ends_with("\nend\n"));
        assert!(out.output_tail.ends_with("\nend"));
    }

    #[tokio::test]
    async fn unknown_program_fails_with_127() {
        let err = run(spec("no-such-command-xyz", Duration::from_secs(10)))
            .await
            .expect_err("fails");
        assert!(err.to_string().contains("exit code 127"), "{err}");
    }

    #[tokio::test]
    async fn provision_up_takes_the_last_json_line() {
        let upstreams = provision_up(
            r#"echo "starting $TURNOUT_VERSION"; echo '{"upstreams": ["10.0.0.5:8080", "[::1]:81"]}'; echo"#,
            vec![("TURNOUT_VERSION".into(), "v2".into())],
            Duration::from_secs(10),
            None,
        )
        .await
        .expect("parses");
        assert_eq!(upstreams, ["10.0.0.5:8080", "[::1]:81"]);

        let err = provision_up(
            "echo booting; echo done",
            Vec::new(),
            Duration::from_secs(10),
            None,
        )
        .await
        .expect_err("no JSON");
        let message = err.to_string();
        assert!(
            message.contains("printed no line that is a JSON object"),
            "{message}"
        );
        assert!(message.contains("booting\ndone"), "{message}");
    }

    #[test]
    fn parse_upstreams_table() {
        let cases: &[(&str, Result<&[&str], &str>)] = &[
            (r#"{"upstreams": ["127.0.0.1:7001"]}"#, Ok(&["127.0.0.1:7001"])),
            (
                "creating vm\n{\"progress\": 1}\n{\"upstreams\": [\"a.internal:80\", \"b:81\"]}\n\n",
                Ok(&["a.internal:80", "b:81"]),
            ),
            // The last JSON object counts, even after the upstream line.
            ("{\"upstreams\": [\"a:1\"]}\n{\"done\": true}", Err("no \"upstreams\" key")),
            ("{\"upstreams\": [\"a:1\"]}\nnot json at all", Ok(&["a:1"])),
            ("{\"upstreams\": [\"a:1\"", Err("printed no line that is a JSON object")),
            ("", Err("printed no line that is a JSON object")),
            ("[\"a:1\"]", Err("printed no line that is a JSON object")),
            (r#"{"upstreams": []}"#, Err("list is empty")),
            (r#"{"upstreams": "a:1"}"#, Err("not a list of strings")),
            (r#"{"upstreams": [80]}"#, Err("the upstream 80 is not a string")),
            (r#"{"upstreams": ["http://a:80"]}"#, Err("has a scheme")),
            (r#"{"upstreams": ["a"]}"#, Err("has no port")),
            (r#"{"upstreams": ["a:"]}"#, Err("does not end with a port")),
            (r#"{"upstreams": ["a:+80"]}"#, Err("does not end with a port")),
            (r#"{"upstreams": ["a:0"]}"#, Err("outside 1-65535")),
            (r#"{"upstreams": ["a:65536"]}"#, Err("outside 1-65535")),
            (r#"{"upstreams": [":80"]}"#, Err("has no host")),
            (r#"{"upstreams": ["::1:80"]}"#, Err("without brackets")),
            (r#"{"upstreams": ["a/b:80"]}"#, Err("not a plain host:port")),
            (r#"{"upstreams": ["a:80", "a:80"]}"#, Err("listed twice")),
        ];
        for (input, expected) in cases {
            let got = parse_upstreams(input);
            match (expected, &got) {
                (Ok(want), Ok(got)) => assert_eq!(got, want, "input {input:?}"),
                (Err(want), Err(got)) => assert!(got.contains(want), "input {input:?}: {got}"),
                _ => panic!("input {input:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn shell_quote_table() {
        for (input, want) in [
            ("1.2.3", "1.2.3"),
            ("v2_rc-1", "v2_rc-1"),
            ("", "''"),
            ("a b", "'a b'"),
            ("it's", r"'it'\''s'"),
            ("$(rm -rf /)", "'$(rm -rf /)'"),
        ] {
            assert_eq!(shell_quote(input), want, "input {input:?}");
        }
    }

    #[test]
    fn tail_lines_table() {
        for (input, n, want) in [
            ("", 3, "(no output)"),
            ("\n\n", 3, "(no output)"),
            ("a\nb\nc\n", 2, "b\nc"),
            ("a\nb\nc", 5, "a\nb\nc"),
            ("a\r\n", 1, "a"),
        ] {
            assert_eq!(tail_lines(input.as_bytes(), n), want, "input {input:?}");
        }
    }
}
