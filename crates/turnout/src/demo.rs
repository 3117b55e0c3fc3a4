//! `turnout demo`: the quick start. With no config file and without reading stdin, it
//! writes a config into a work directory, starts a router (`turnout serve`, a child
//! process) and steady load on free loopback ports, and releases the demo service
//! (`turnout-demo-app`) four times through the same API call and follower as `turnout
//! deploy`: v1 (the first version), v2 (shadowed, promoted after its bake), v3-price (a
//! changed JSON field: the shadow gate stops it before the switch) and v4-bad (goes bad
//! after its shadow test: the bake rolls it back). It prints each stage, each verdict with
//! what the load saw meanwhile, and where the config, logs and state are. The work
//! directory is kept; the router is always stopped (it stops the instances it started).
//! Exit 0 only when every verdict was the expected one.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use turnout_core::{Deployment, Outcome, Stage, Verdict};
use turnout_pipeline::commands::shell_quote;

use crate::client::AdminClient;
use crate::error::UsageError;
use crate::out::out;

/// The demo service's binary name, looked for next to the turnout binary.
const APP: &str = "turnout-demo-app";
/// Load clients, each sending one request per [`LOAD_PERIOD`]: about 100 requests/s.
const LOAD_CLIENTS: usize = 4;
const LOAD_PERIOD: Duration = Duration::from_millis(40);
/// A load request with no answer within this counts as failed.
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the router may take to stop (it stops its instances first) before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the router may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One release of the demo.
struct Release {
    version: &'static str,
    about: &'static str,
    expected: Verdict,
}

const RELEASES: [Release; 4] = [
    Release {
        version: "v1",
        about: "first version: becomes live without a standby",
        expected: Verdict::Promoted,
    },
    Release {
        version: "v2",
        about: "a good version: shadowed with live traffic, switched to, baked, then v1 is retired",
        expected: Verdict::Promoted,
    },
    Release {
        version: "v3-price",
        about:
            "sends prices as strings: the shadow comparison should stop it before any user sees it",
        expected: Verdict::Failed,
    },
    Release {
        version: "v4-bad",
        about: "goes bad 10s after it starts (30% of its API answers fail): it passes the shadow test, and the bake should roll it back",
        expected: Verdict::RolledBack,
    },
];

/// Runs the demo.
pub fn run(dir: Option<&Path>, app: Option<&Path>) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("finding the turnout binary")?;
    let app = find_app(&exe, app)?;
    let dir = work_dir(dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(demo(&exe, &app, &dir))
}

/// The demo service binary: `--app`, else next to the turnout binary.
fn find_app(exe: &Path, app: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match app {
        Some(p) => p.to_owned(),
        None => exe
            .parent()
            .map(|d| d.join(APP))
            .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?,
    };
    if !path.is_file() {
        return Err(UsageError(format!(
            "the demo service {} is missing: build it next to turnout with `cargo build --release -p turnout -p turnout-demo-app` (then run target/release/turnout demo), or pass --app PATH",
            path.display()
        ))
        .into());
    }
    std::path::absolute(&path).with_context(|| format!("resolving {}", path.display()))
}

/// Creates the work directory: `--dir` (which must be empty if it exists), else a new
/// one under the temporary directory. Returns it absolute.
fn work_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            let used = std::fs::read_dir(d)
                .with_context(|| format!("reading {}", d.display()))?
                .next()
                .is_some();
            if used {
                return Err(UsageError(format!(
                    "{} is not empty: the demo starts from a fresh state; pass a new or empty --dir",
                    d.display()
                ))
                .into());
            }
            d.to_owned()
        }
        None => {
            let base = std::env::temp_dir().join(format!("turnout-demo-{}", std::process::id()));
            let mut n = 0;
            loop {
                let d = if n == 0 {
                    base.clone()
                } else {
                    PathBuf::from(format!("{}-{n}", base.display()))
                };
                match std::fs::create_dir(&d) {
                    Ok(()) => break d,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                    Err(e) => return Err(e).with_context(|| format!("creating {}", d.display())),
                }
            }
        }
    };
    std::fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display()))
}

async fn demo(exe: &Path, app: &Path, dir: &Path) -> anyhow::Result<ExitCode> {
    let config = dir.join("turnout.toml");
    let token = random_token();
    write_private(&dir.join("admin-token"), &format!("{token}\n"))?;
    out(&format!(
        "turnout demo: four releases of the demo service behind a router, under steady load\n  work dir: {}",
        dir.display()
    ))?;

    let mut router = Router::start(exe, app, dir, &config).await?;
    out(&format!(
        "  router:   data plane http://{}, admin API http://{} (log: {})",
        router.data,
        router.admin,
        dir.join("turnout.log").display()
    ))?;
    router.token = Some(token.clone());
    let client = AdminClient::new(&format!("http://{}", router.admin), Some(token))?;
    let load = Load::start(&router.data);
    out(&format!(
        "  load:     {LOAD_CLIENTS} keep-alive clients, GET /api/items, about {} requests/s",
        LOAD_CLIENTS as u64 * 1000 / LOAD_PERIOD.as_millis().max(1) as u64
    ))?;

    let scenario = releases(&client, &load);
    let results = tokio::select! {
        r = scenario => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    load.stop();
    let Some(results) = results else {
        out("\ninterrupted: stopping the router (it stops the instances it started)")?;
        router.stop().await?;
        out(&format!("the work dir is kept: {}", dir.display()))?;
        return Ok(ExitCode::from(130));
    };

    out("\n== summary")?;
    out(&format!("  {:<8} {:<12} GOT", "VERSION", "EXPECTED"))?;
    let mut all_ok = true;
    for (r, got) in RELEASES
        .iter()
        .zip(results.iter().map(Some).chain(std::iter::repeat(None)))
    {
        let got = got.copied().flatten();
        let ok = got == Some(r.expected);
        all_ok &= ok;
        out(&format!(
            "  {:<8} {:<12} {:<12} {}",
            r.version,
            r.expected.as_str(),
            got.map_or("-", Verdict::as_str),
            if ok { "ok" } else { "UNEXPECTED" }
        ))?;
    }
    out("\nhistory, as `turnout history` shows it:")?;
    if let Err(e) = crate::follow::history(&client, false, 10).await {
        out(&format!("  (could not read the history: {e:#})"))?;
    }

    out("\nstopping the router (it stops the instances it started)")?;
    router.stop().await?;

    let q = |p: &Path| quote_arg(&p.display().to_string());
    let me = std::env::args().next().unwrap_or_else(|| "turnout".into());
    out(&format!("\nkept in {}:", dir.display()))?;
    out(&format!("  config         {}", config.display()))?;
    out(&format!(
        "  router log     {}",
        dir.join("turnout.log").display()
    ))?;
    out(&format!(
        "  instance logs  {}{}",
        dir.join("state").join("logs").display(),
        std::path::MAIN_SEPARATOR
    ))?;
    out(&format!(
        "  state          {}{} (SQLite: routing and deployment history)",
        dir.join("state").display(),
        std::path::MAIN_SEPARATOR
    ))?;
    out(&format!(
        "to look again: `{me} serve --config {c}` (brings v2 back up), then in another terminal `{me} history --config {c}`",
        me = quote_arg(&me),
        c = q(&config)
    ))?;
    if all_ok {
        out("demo passed: every verdict was the expected one")?;
        Ok(ExitCode::SUCCESS)
    } else {
        out("demo FAILED: not every verdict was the expected one (see above and the logs)")?;
        Ok(ExitCode::from(1))
    }
}

/// Deploys the releases in turn; returns the verdicts reached (fewer than all when
/// one could not be run).
async fn releases(client: &AdminClient, load: &Load) -> Vec<Option<Verdict>> {
    let mut verdicts = Vec::new();
    for (i, r) in RELEASES.iter().enumerate() {
        let shown = async {
            out("")?;
            out(&format!(
                "== {}/{} deploy {} ({})",
                i + 1,
                RELEASES.len(),
                r.version,
                r.about
            ))
        };
        if shown.await.is_err() {
            break;
        }
        load.next_phase();
        let got = release(client, r.version).await;
        let seen = load.phase();
        let printed = match &got {
            Ok(d) => report(r, d, &seen),
            Err(e) => out(&format!("turnout: {e:#}")),
        };
        verdicts.push(got.as_ref().ok().map(|d| d.verdict));
        if got.is_err() || printed.is_err() {
            break;
        }
    }
    verdicts
}

/// Starts one deployment as `turnout deploy` does and follows it to its verdict, then
/// (when promoted over a previous version) through the retirement of that version.
async fn release(client: &AdminClient, version: &str) -> anyhow::Result<Deployment> {
    let body = json!({ "version": version, "upstreams": [], "manual": false });
    let started = client
        .call(Method::POST, "/api/v1/deployments", Some(body))
        .await?;
    let d: Deployment =
        serde_json::from_value(started).context("reading the router's answer to deploy")?;
    out(&format!(
        "deployment {} started: {} into {}{}",
        d.id,
        d.version,
        d.slot,
        d.previous_version
            .as_deref()
            .map(|p| format!(" (live now: {p})"))
            .unwrap_or_default()
    ))?;
    let d = crate::follow::follow(client, &d.id).await?;
    if d.verdict == Verdict::Promoted && d.previous_version.is_some() {
        return decommission(client, d).await;
    }
    Ok(d)
}

/// Follows the decommission stage that comes after a promotion (the previous version
/// kept as standby for `[decommission] delay`, then stopped), so that the next release
/// starts from a clean slate. Bounded: a slow one is reported, not waited for forever.
async fn decommission(client: &AdminClient, mut d: Deployment) -> anyhow::Result<Deployment> {
    let path = format!("/api/v1/deployments/{}", d.id);
    let deadline = Instant::now() + Duration::from_secs(60);
    // `follow` printed every stage of the record it returned, as it was then.
    let stage = |d: &Deployment| {
        d.stages
            .iter()
            .find(|s| s.stage == Stage::Decommission)
            .cloned()
    };
    let mut shown = stage(&d).map(|s| (s.outcome, s.detail));
    loop {
        if let Some(s) = stage(&d) {
            let now = (s.outcome, s.detail.clone());
            if shown.as_ref() != Some(&now) {
                let word = match s.outcome {
                    Outcome::Running => "...",
                    Outcome::Passed => "passed",
                    Outcome::Failed => "FAILED",
                    Outcome::Skipped => "skipped",
                    Outcome::Aborted => "aborted",
                };
                let detail = s.detail.as_deref().map(|t| format!(": {t}"));
                let took = s
                    .ended_at
                    .as_deref()
                    .and_then(|end| {
                        let a = humantime::parse_rfc3339_weak(&s.started_at).ok()?;
                        humantime::parse_rfc3339_weak(end)
                            .ok()?
                            .duration_since(a)
                            .ok()
                    })
                    .map(|t| format!(" ({:.1}s)", t.as_secs_f64()));
                out(&format!(
                    "  {:<13} {word}{}{}",
                    s.stage.as_str(),
                    took.unwrap_or_default(),
                    detail.unwrap_or_default()
                ))?;
                shown = Some(now);
            }
            if s.outcome != Outcome::Running {
                return Ok(d);
            }
        }
        if Instant::now() > deadline {
            out("  decommission is taking long; going on without waiting for it")?;
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let v = client.call(Method::GET, &path, None).await?;
        d = serde_json::from_value(v).context("reading the deployment")?;
    }
}

/// Prints the verdict's check and what the load saw during the release.
fn report(r: &Release, d: &Deployment, seen: &PhaseLoad) -> anyhow::Result<()> {
    out(&seen.describe())?;
    if d.verdict == Verdict::RolledBack {
        match (seen.first_error, seen.last_error) {
            (Some(first), Some(last)) => out(&format!(
                "users saw errors: {} request(s) failed over {:.1}s (first to last error seen by the load), until the rollback",
                seen.failed,
                last.duration_since(first).as_secs_f64()
            ))?,
            _ => out("users saw no errors: the rollback came before any failed request")?,
        }
    }
    if d.verdict == r.expected {
        out(&format!("as expected: {}", r.expected.as_str()))
    } else {
        out(&format!(
            "NOT as expected: got {}, expected {}",
            d.verdict.as_str(),
            r.expected.as_str()
        ))
    }
}

/// The generated config: free loopback ports, the token in a file beside it, and the demo
/// service started by `[provision]` (a version whose name ends in `-bad` fails 30% of
/// its API requests).
fn config_text(app: &Path, dir: &Path, data: u16, admin: u16) -> String {
    let app = shell_quote(&app.display().to_string()).into_owned();
    let db = shell_quote(&dir.join("shop.db").display().to_string()).into_owned();
    let command = format!(
        "case {{version}} in *-bad) x='--fail-rate 0.3 --fail-after 10s';; *-price) x='--price-as-string';; *) x='';; esac; exec {app} --port {{port}} --version {{version}} --db {db} $x"
    );
    format!(
        r#"# Written by `turnout demo`. Run this router again with:
#   turnout serve --config turnout.toml     (relative paths are relative to this file)

[listen]
addr = "127.0.0.1:{data}"

[admin]
addr = "127.0.0.1:{admin}"
token = "file:admin-token"

[state]
dir = "state"

[provision]
# Two instances of the demo service per version; one named *-bad starts failing 30% of
# its API requests 10s after it started (after its shadow test: a version that goes bad
# under load), one named *-price sends prices as strings ("2.50" instead of 2.5).
command = {command}
instances = 2
health_timeout = "30s"

[health]
path = "/healthz"
interval = "500ms"
timeout = "500ms"
healthy = 2
unhealthy = 2

[verify]
checks = [{{ path = "/healthz", status = 200 }}, {{ path = "/", status = 200, body_contains = "turnout-demo-app" }}]

[shadow]
# Live GET requests are mirrored to the candidate for 5s and the answers compared; the
# version number in every answer is expected to differ. Each request also goes a second
# time to live, to learn what differs anyway (noise) and to time live's answers to the
# same copies: 5s give about 500 pairs, so the p99s compared are not one slow answer.
duration = "5s"
ignore_json = ["/version"]
noise_sample = 1.0
max_mismatch_rate = 0.01
# Copies and live answers share this machine's cores: p99s of a few milliseconds move
# with scheduling, so the latency rule is loose here.
max_latency_ratio_p99 = 3.0
min_requests = 20

[bake]
duration = "15s"
interval = "1s"
window = "5s"
max_error_rate = 0.02
max_p99 = "500ms"
min_requests = 10

[decommission]
delay = "3s"
"#,
        command = toml_string(&command),
    )
}

/// `value` as one word for `sh`, quoted only when it needs to be (paths print plainly).
fn quote_arg(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:+=,@".contains(&b));
    if plain {
        value.to_owned()
    } else {
        shell_quote(value).into_owned()
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if c.is_control() => o.push_str(&format!("\\u{:04X}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// 128 random bits as hex, from the kernel (or, failing that, std's randomly keyed hash).
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    let from_kernel = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !from_kernel {
        use std::hash::{BuildHasher as _, Hasher as _};
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Two free loopback ports (free now; the router binds them a moment later).
fn free_ports() -> anyhow::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// The `turnout serve` child. Stopped with its instances by [`Router::stop`] (`POST
/// /api/v1/stop`); if the demo ends some other way (a panic), dropping it sends SIGTERM,
/// blocking, which leaves the instances running (their logs say where).
struct Router {
    child: Child,
    pid: Pid,
    data: String,
    admin: String,
    log: PathBuf,
    stopped: bool,
    /// The admin token, for `POST /api/v1/stop` (which stops the instances too; SIGTERM
    /// would leave them running for the next router).
    token: Option<String>,
}

impl Router {
    /// Writes the config (on fresh free ports) and starts the router; tries other ports
    /// if one was taken meanwhile.
    async fn start(exe: &Path, app: &Path, dir: &Path, config: &Path) -> anyhow::Result<Router> {
        let log = dir.join("turnout.log");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (data, admin) = free_ports()?;
            std::fs::write(config, config_text(app, dir, data, admin))
                .with_context(|| format!("writing {}", config.display()))?;
            match Router::spawn(exe, config, &log).await {
                Ok(r) => return Ok(r),
                Err(e) if attempt < 3 && format!("{e:#}").contains("in use") => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn spawn(exe: &Path, config: &Path, log: &Path) -> anyhow::Result<Router> {
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
        let mut router = Router {
            child,
            pid,
            data: String::new(),
            admin: String::new(),
            log: log.to_owned(),
            stopped: false,
            token: None,
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
                let _ = router.stop_quietly().await;
                return Err(e.context(format!("last lines of {}:\n{}", log.display(), tail(log))));
            }
        }
        // Keep draining stdout so that the router never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(router)
    }

    /// SIGTERM, and wait (SIGKILL after [`STOP_TIMEOUT`]); says how it went.
    async fn stop(&mut self) -> anyhow::Result<()> {
        match self.stop_quietly().await? {
            Some(line) => out(&line),
            None => out("router stopped"),
        }
    }

    /// Stops the router; `Some(warning)` when it did not stop cleanly.
    async fn stop_quietly(&mut self) -> anyhow::Result<Option<String>> {
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
        let asked = match &self.token {
            Some(token) => {
                match AdminClient::new(&format!("http://{}", self.admin), Some(token.clone())) {
                    Ok(c) => c
                        .call(
                            hyper::Method::POST,
                            "/api/v1/stop",
                            Some(serde_json::json!({"instances": true})),
                        )
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            }
            None => false,
        };
        if !asked {
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

impl Drop for Router {
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

/// What the load saw during one release.
#[derive(Debug, Clone, Default)]
struct PhaseLoad {
    requests: u64,
    ok: u64,
    /// Failed after some version had answered (errors users of a live service see).
    failed: u64,
    /// Failed while no version was live yet (the router answers 503: nothing to route to).
    before_live: u64,
    /// Failures by kind (`500`, `connection error`, ...).
    kinds: BTreeMap<String, u64>,
    /// Which versions answered, in order of first answer.
    versions: Vec<(String, u64)>,
    first_error: Option<Instant>,
    last_error: Option<Instant>,
}

impl PhaseLoad {
    fn describe(&self) -> String {
        let mut s = format!("load: {} requests, {} failed", self.requests, self.failed);
        if self.failed > 0 {
            let kinds: Vec<String> = self
                .kinds
                .iter()
                .map(|(k, n)| format!("{n}× {k}"))
                .collect();
            s.push_str(&format!(" ({})", kinds.join(", ")));
        }
        if self.before_live > 0 {
            s.push_str(&format!(
                ", {} turned away before any version was live (503: nothing to route to yet)",
                self.before_live
            ));
        }
        let by: Vec<String> = self
            .versions
            .iter()
            .map(|(v, n)| format!("{v} ({n})"))
            .collect();
        if by.is_empty() {
            s.push_str("; no version answered");
        } else {
            s.push_str(&format!("; answered by {}", by.join(", ")));
        }
        s
    }
}

#[derive(Default)]
struct LoadState {
    phases: Vec<PhaseLoad>,
    /// Some version has answered.
    served: bool,
    /// A release has started ([`Load::next_phase`]).
    counting: bool,
}

/// Steady load on the data plane: keep-alive clients sending `GET /api/items` at a fixed
/// pace, counted per release.
struct Load {
    state: Arc<Mutex<LoadState>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: &str) -> Load {
        let state = Arc::new(Mutex::new(LoadState {
            phases: vec![PhaseLoad::default()],
            ..LoadState::default()
        }));
        let tasks = (0..LOAD_CLIENTS)
            .map(|i| {
                let state = state.clone();
                let addr = addr.to_owned();
                tokio::spawn(async move {
                    // Spread the clients over the period.
                    let offset = LOAD_PERIOD * i as u32 / LOAD_CLIENTS as u32;
                    tokio::time::sleep(offset).await;
                    let mut tick = tokio::time::interval(LOAD_PERIOD);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut conn = None;
                    loop {
                        tick.tick().await;
                        let result = tokio::time::timeout(LOAD_TIMEOUT, get(&mut conn, &addr))
                            .await
                            .unwrap_or_else(|_| Err("timeout".into()));
                        if result.is_err() {
                            conn = None;
                        }
                        record(&state, result);
                    }
                })
            })
            .collect();
        Load { state, tasks }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LoadState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts counting a new release. The first release also counts the few requests
    /// sent before it started.
    fn next_phase(&self) {
        let mut s = self.lock();
        if s.counting {
            s.phases.push(PhaseLoad::default());
        }
        s.counting = true;
    }

    /// What the current release saw so far.
    fn phase(&self) -> PhaseLoad {
        self.lock().phases.last().cloned().unwrap_or_default()
    }

    fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

fn record(state: &Mutex<LoadState>, result: Result<(u16, Option<String>), String>) {
    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
    let served = s.served;
    let Some(p) = s.phases.last_mut() else {
        return;
    };
    p.requests += 1;
    let failure = match result {
        Ok((status, version)) if (200..300).contains(&status) => {
            p.ok += 1;
            let version = version.unwrap_or_else(|| "an unknown version".into());
            match p.versions.iter_mut().find(|(v, _)| *v == version) {
                Some((_, n)) => *n += 1,
                None => p.versions.push((version, 1)),
            }
            s.served = true;
            return;
        }
        Ok((status, _)) => status.to_string(),
        Err(e) => e,
    };
    if !served {
        p.before_live += 1;
        return;
    }
    let now = Instant::now();
    p.failed += 1;
    *p.kinds.entry(failure).or_default() += 1;
    p.first_error.get_or_insert(now);
    p.last_error = Some(now);
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One `GET /api/items` on the kept connection (a new one if there is none): the status
/// and, for a success, the version that answered.
async fn get(conn: &mut Option<Sender>, addr: &str) -> Result<(u16, Option<String>), String> {
    if conn.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|_| "connection error".to_owned())?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| "connection error".to_owned())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *conn = Some(sender);
    }
    let Some(sender) = conn.as_mut() else {
        return Err("connection error".into());
    };
    let broken = |_| "connection error".to_owned();
    sender.ready().await.map_err(broken)?;
    let req = Request::get("/api/items")
        .header("host", addr)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(broken)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|_| "connection error".to_owned())?
        .to_bytes();
    let version = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("version")?.as_str().map(str::to_owned));
    Ok((status, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_config_is_valid_and_quotes_paths() {
        let dir = Path::new("/tmp/a dir/with 'quotes\"");
        let app = Path::new("/opt/my app/turnout-demo-app");
        let text = config_text(app, dir, 18080, 19901);
        let cfg = turnout_config::Config::from_toml(&text, "demo")
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let command = cfg.provision.and_then(|p| p.command).unwrap_or_default();
        assert!(
            command.contains(r#"exec '/opt/my app/turnout-demo-app' --port {port}"#),
            "{command}"
        );
        assert!(
            command.contains(r#"--db '/tmp/a dir/with '\''quotes"/shop.db' $x"#),
            "{command}"
        );
        assert_eq!(cfg.listen.addr.port(), 18080);
        assert_eq!(cfg.admin.addr.port(), 19901);
    }

    #[test]
    fn the_provision_command_fails_only_bad_versions() {
        // Run the shell part with `echo` in place of the app.
        let cases = [("v1", ""), ("v3-bad", "--fail-rate 0.3"), ("bad", "")];
        for (version, knob) in cases {
            let command =
                format!("case {version} in *-bad) x='--fail-rate 0.3';; *) x='';; esac; echo $x");
            let o = std::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), knob, "{version}");
        }
    }

    #[test]
    fn load_failures_before_anything_was_live_are_counted_apart() {
        let state = Mutex::new(LoadState {
            phases: vec![PhaseLoad::default()],
            ..LoadState::default()
        });
        record(&state, Ok((503, None)));
        record(&state, Ok((200, Some("v1".into()))));
        record(&state, Ok((500, None)));
        record(&state, Err("connection error".into()));
        record(&state, Ok((200, Some("v2".into()))));
        let s = state.lock().unwrap();
        let p = &s.phases[0];
        assert_eq!((p.requests, p.ok, p.failed, p.before_live), (5, 2, 2, 1));
        assert_eq!(
            p.describe(),
            "load: 5 requests, 2 failed (1× 500, 1× connection error), 1 turned away before any version was live (503: nothing to route to yet); answered by v1 (1), v2 (1)"
        );
    }
}
