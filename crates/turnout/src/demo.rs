//! `turnout demo`: the quick start. With no config file and without reading stdin, it
//! sets up a work directory, a router and steady load with `turnout_demo`, and releases
//! the demo service (`turnout-demo-app`) four times through the same API call and follower
//! as `turnout deploy` (`turnout_demo::RELEASES`). It prints each stage, each verdict with
//! what the load saw meanwhile, and where the config, logs and state are. The work
//! directory is kept; the router is always stopped (it stops the instances it started).
//! Exit 0 only when every verdict was the expected one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use hyper::Method;
use serde_json::json;
use turnout_core::{Deployment, Outcome, Stage, Verdict};
use turnout_demo::setup::{quote_arg, random_token, write_private};
use turnout_demo::{
    Load, PhaseLoad, Release, RouterProcess, APP, LOAD_CLIENTS, LOAD_PERIOD, RELEASES,
};

use crate::client::AdminClient;
use crate::error::UsageError;
use crate::out::out;

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

    let mut router = RouterProcess::start(exe, app, dir, &config).await?;
    out(&format!(
        "  router:   data plane http://{}, admin API http://{} (log: {})",
        router.data,
        router.admin,
        dir.join("turnout.log").display()
    ))?;
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
        stop(&mut router, &client).await?;
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
    stop(&mut router, &client).await?;

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

/// Stops the router through its admin API (which stops the instances it started too; a
/// SIGTERM would leave them running for the next router), and says how it went.
async fn stop(router: &mut RouterProcess, client: &AdminClient) -> anyhow::Result<()> {
    let ask = async {
        client
            .call(
                Method::POST,
                "/api/v1/stop",
                Some(json!({ "instances": true })),
            )
            .await
            .is_ok()
    };
    match router.stop(ask).await? {
        Some(line) => out(&line),
        None => out("router stopped"),
    }
}
