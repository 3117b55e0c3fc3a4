//! `deploy`, `promote`, `abort` and `history`: the release pipeline from the command line.
//! `deploy` follows its deployment until the verdict, printing each stage as it starts and
//! ends, and the candidate's numbers while traffic is on it: a progress line redrawn in
//! place (indicatif) when stdout is a terminal, plain lines otherwise.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::Method;
use serde_json::json;
use turnout_core::{Analysis, Deployment, Outcome, Stage, Verdict};

use crate::client::AdminClient;
use crate::out::out;

/// The exit code of a deployment's verdict (SPEC: 0 promoted, 3 rolled back, 4 failed or
/// aborted before the switch).
pub fn exit_code(verdict: Verdict) -> ExitCode {
    match verdict {
        Verdict::Promoted | Verdict::InProgress => ExitCode::SUCCESS,
        Verdict::RolledBack => ExitCode::from(3),
        Verdict::Aborted | Verdict::Failed => ExitCode::from(4),
    }
}

/// How long `deploy` keeps trying when the router stops answering (a restart).
const RECONNECT_FOR: Duration = Duration::from_secs(60);

pub async fn deploy(
    client: &AdminClient,
    version: &str,
    upstreams: &[String],
    manual: bool,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    let body = json!({ "version": version, "upstreams": upstreams, "manual": manual });
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
        match (&d.previous, &d.previous_version) {
            (Some(_), Some(prev)) => format!(" (live now: {prev})"),
            (Some(slot), None) => format!(" (live now: {slot}, a version without a name)"),
            (None, _) => " (first deployment: it becomes live without a standby)".into(),
        }
    ))?;
    if detach {
        out("follow it with `turnout status --watch`; `turnout history` shows the verdict")?;
        return Ok(ExitCode::SUCCESS);
    }
    let d = follow(client, &d.id).await?;
    Ok(exit_code(d.verdict))
}

/// Polls the deployment until its verdict, printing as it goes. Returns the final record.
pub async fn follow(client: &AdminClient, id: &str) -> anyhow::Result<Deployment> {
    let tty = std::io::stdout().is_terminal();
    let bar = tty.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(spinner_style());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let mut bar_mode = false;
    let path = format!("/api/v1/deployments/{id}");
    let mut printed: Vec<(Stage, Outcome, Option<String>)> = Vec::new();
    let mut last_numbers = Instant::now();
    let mut unreachable_since: Option<Instant> = None;
    let start = Instant::now();
    loop {
        let d: Deployment = match client.call(Method::GET, &path, None).await {
            Ok(v) => {
                unreachable_since = None;
                serde_json::from_value(v).context("reading the deployment")?
            }
            Err(e) if e.downcast_ref::<crate::client::ApiFailure>().is_none() => {
                // The router is restarting, or the network hiccuped: keep trying a while.
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RECONNECT_FOR {
                    return Err(e.context(format!(
                        "lost the router for {}s while following deployment {id}; it goes on without this command: check `turnout status`",
                        RECONNECT_FOR.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        for (i, s) in d.stages.iter().enumerate() {
            // Detail changes of a running stage are news only where the operator waits
            // on them: canary steps, the manual gate, the standby's retirement.
            let chatty = matches!(s.stage, Stage::Switch | Stage::Gate | Stage::Decommission);
            let detail = (s.outcome != Outcome::Running || chatty)
                .then(|| s.detail.clone())
                .flatten();
            let now = (s.stage, s.outcome, detail);
            if printed.get(i) == Some(&now) {
                continue;
            }
            let line = stage_line(s, &d);
            match &bar {
                Some(bar) => bar.println(line),
                None => out(&line)?,
            }
            if i < printed.len() {
                printed[i] = now;
            } else {
                printed.push(now);
            }
        }
        let stage = d.current_stage().map_or("start", |s| s.stage.as_str());
        let numbers = d
            .analysis
            .as_ref()
            .filter(|_| matches!(stage, "switch" | "bake"))
            .map(numbers_line);
        match &bar {
            Some(bar) => {
                // A bar while a bake or canary step runs (its length is known), a
                // spinner otherwise.
                let progress = d
                    .analysis
                    .as_ref()
                    .filter(|a| numbers.is_some() && a.duration_ms > 0);
                match progress {
                    Some(a) => {
                        if !bar_mode {
                            bar.set_style(bar_style());
                            bar_mode = true;
                        }
                        bar.set_length(a.duration_ms / 1000);
                        bar.set_position(a.elapsed_ms / 1000);
                    }
                    None if bar_mode => {
                        bar.set_style(spinner_style());
                        bar_mode = false;
                    }
                    None => {}
                }
                bar.set_message(format!(
                    "{stage} · {}s{}",
                    start.elapsed().as_secs(),
                    numbers
                        .as_ref()
                        .map(|n| format!(" · {n}"))
                        .unwrap_or_default()
                ))
            }
            None => {
                if let Some(n) = numbers {
                    if last_numbers.elapsed() >= Duration::from_secs(5) {
                        last_numbers = Instant::now();
                        out(&format!("  {stage} {}s: {n}", start.elapsed().as_secs()))?;
                    }
                }
            }
        }
        if d.is_over() {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            out(&verdict_line(&d))?;
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn spinner_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{spinner} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

fn bar_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{spinner} [{bar:24}] {pos}/{len}s {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

fn numbers_line(a: &Analysis) -> String {
    format!(
        "{}% of traffic, {} requests in window, error rate {}, p99 {}",
        a.weight,
        a.requests,
        a.error_rate
            .map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
        a.p99_ms.map_or("-".into(), turnout_core::format_ms)
    )
}

fn stage_line(s: &turnout_core::StageRecord, d: &Deployment) -> String {
    let took = match (&s.ended_at, s.outcome) {
        (Some(end), _) => duration_between(&s.started_at, end)
            .map(|t| format!(" ({:.1}s)", t.as_secs_f64()))
            .unwrap_or_default(),
        _ => String::new(),
    };
    let detail = s
        .detail
        .as_deref()
        .map(|t| format!(": {t}"))
        .unwrap_or_default();
    let _ = d;
    format!(
        "  {:<13} {}{took}{detail}",
        s.stage.as_str(),
        outcome_word(s.outcome)
    )
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Running => "...",
        Outcome::Passed => "passed",
        Outcome::Failed => "FAILED",
        Outcome::Skipped => "skipped",
        Outcome::Aborted => "aborted",
    }
}

fn verdict_line(d: &Deployment) -> String {
    let why = d
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    let word = match d.verdict {
        Verdict::Promoted => "PROMOTED",
        Verdict::RolledBack => "ROLLED BACK",
        Verdict::Aborted => "ABORTED",
        Verdict::Failed => "FAILED",
        Verdict::InProgress => "IN PROGRESS",
    };
    format!("verdict: {word} {} in {}{why}", d.version, d.slot)
}

fn duration_between(a: &str, b: &str) -> Option<Duration> {
    let a = humantime::parse_rfc3339_weak(a).ok()?;
    let b = humantime::parse_rfc3339_weak(b).ok()?;
    b.duration_since(a).ok()
}

pub async fn promote(client: &AdminClient) -> anyhow::Result<ExitCode> {
    let v = client.call(Method::POST, "/api/v1/promote", None).await?;
    let d: Deployment = serde_json::from_value(v).context("reading the router's answer")?;
    out(&format!(
        "promote sent to deployment {} of {}",
        d.id, d.version
    ))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn abort(client: &AdminClient) -> anyhow::Result<ExitCode> {
    let v = client.call(Method::POST, "/api/v1/abort", None).await?;
    let d: Deployment = serde_json::from_value(v).context("reading the router's answer")?;
    out(&verdict_line(&d))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn history(client: &AdminClient, json: bool, limit: usize) -> anyhow::Result<ExitCode> {
    let v = client
        .call(
            Method::GET,
            &format!("/api/v1/deployments?limit={limit}"),
            None,
        )
        .await?;
    if json {
        out(&serde_json::to_string_pretty(&v)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let list: Vec<Deployment> = serde_json::from_value(v).context("reading the history")?;
    if list.is_empty() {
        out("no deployments yet; start one with `turnout deploy VERSION`")?;
        return Ok(ExitCode::SUCCESS);
    }
    out(&format!(
        "{:<21} {:<12} {:<6} {:<12} {:<20} {:>8}  REASON",
        "ID", "VERSION", "SLOT", "VERDICT", "STARTED", "TOOK"
    ))?;
    for d in &list {
        let took = d
            .ended_at
            .as_deref()
            .and_then(|e| duration_between(&d.started_at, e))
            .map_or("-".into(), |t| format!("{}s", t.as_secs()));
        let started: String = d.started_at.chars().take(19).collect();
        out(&format!(
            "{:<21} {:<12} {:<6} {:<12} {:<20} {:>8}  {}",
            d.id,
            d.version,
            d.slot.as_str(),
            d.verdict.as_str(),
            started.replace('T', " "),
            took,
            d.reason.as_deref().unwrap_or("")
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn shadow_report(
    client: &AdminClient,
    json: bool,
    html: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let v = client
        .call(Method::GET, "/api/v1/shadow/report", None)
        .await?;
    let r: turnout_pipeline::ShadowReport =
        serde_json::from_value(v.clone()).context("reading the shadow report")?;
    if let Some(path) = html {
        let title = format!(
            "turnout shadow report: {} against {} (deployment {})",
            r.version,
            r.live_version.as_deref().unwrap_or("live"),
            r.deployment
        );
        std::fs::write(path, r.report.render_html(&title))
            .with_context(|| format!("writing the HTML report to {}", path.display()))?;
    }
    if json {
        out(&serde_json::to_string_pretty(&v)?)?;
    } else {
        out(&format!(
            "shadow comparison of {} against {} (deployment {}{})",
            r.version,
            r.live_version.as_deref().unwrap_or("live"),
            r.deployment,
            if r.running {
                ", still running: the numbers so far"
            } else {
                ""
            }
        ))?;
        out(r.report.render_text().trim_end())?;
        if let Some(path) = html {
            out(&format!("HTML report written to {}", path.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
