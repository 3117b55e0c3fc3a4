//! The commands that do not serve: they load the config or talk to a running router, and
//! print for people (or JSON for scripts).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use hyper::Method;
use serde_json::json;
use turnout_config::{Config, ConfigErrors};
use turnout_pipeline::Status;

use crate::cli::{Cli, Command};
use crate::client::AdminClient;
use crate::error::{describe, UsageError};
use crate::out::out;

/// How long `reload` and `upgrade` wait: a new router process may health-check the
/// instances it takes over.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(150);

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve => crate::serve::run(&cli.config, cli.log_format),
        Command::CheckConfig => check_config(&cli.config),
        Command::Demo { ref dir, ref app } => crate::demo::run(dir.as_deref(), app.as_deref()),
        Command::Status { json, watch } => with_client(&cli, |c| async move {
            status(&c, json, watch).await.map(|()| ExitCode::SUCCESS)
        }),
        Command::Deploy {
            ref version,
            ref upstreams,
            manual,
            detach,
        } => with_client(&cli, |c| async move {
            crate::follow::deploy(&c, version, upstreams, manual, detach).await
        }),
        Command::Promote => with_client(&cli, |c| async move { crate::follow::promote(&c).await }),
        Command::Abort => with_client(&cli, |c| async move { crate::follow::abort(&c).await }),
        Command::Shadow {
            command: crate::cli::ShadowCommand::Report { json, ref html },
        } => with_client(&cli, |c| async move {
            crate::follow::shadow_report(&c, json, html.as_deref()).await
        }),
        Command::History { json, limit } => with_client(&cli, |c| async move {
            crate::follow::history(&c, json, limit).await
        }),
        Command::Capture(ref args) => {
            with_client(&cli, |c| async move { crate::capture::run(&c, args).await })
        }
        // Needs the router only for a slot name as target: the client is made on demand.
        Command::Replay(ref args) => crate::replay::run(args, || admin_client(&cli)),
        Command::Switch { to, force } => with_client(&cli, |c| async move {
            let r = c
                .call(
                    Method::POST,
                    "/api/v1/switch",
                    Some(json!({ "to": to.as_str(), "force": force })),
                )
                .await?;
            let live = r["live"].as_str().unwrap_or("none");
            out(&if r["changed"] == false {
                format!(
                    "already live: {live} (revision {}); nothing changed",
                    r["revision"]
                )
            } else {
                format!("switched: {live} is live (revision {})", r["revision"])
            })
            .map(|()| ExitCode::SUCCESS)
        }),
        Command::Reload => with_client(&cli, |c| async move {
            let r = c
                .call_within(HANDOVER_TIMEOUT, Method::POST, "/api/v1/reload", None)
                .await?;
            let changed: Vec<&str> = r["changed"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            if changed.is_empty() {
                out("reloaded: nothing changed")?;
            } else {
                out(&format!(
                    "reloaded: {} change{}; the router is now pid {} (was {})",
                    changed.len(),
                    if changed.len() == 1 { "" } else { "s" },
                    r["new"]["pid"],
                    r["old"]["pid"]
                ))?;
                for line in changed {
                    out(&format!("  {line}"))?;
                }
            }
            for note in r["notes"].as_array().into_iter().flatten() {
                if let Some(n) = note.as_str() {
                    out(&format!("note: {n}"))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Upgrade { ref binary } => with_client(&cli, |c| async move {
            let body = binary
                .as_ref()
                .map(|b| {
                    let b = std::path::absolute(b).unwrap_or_else(|_| b.clone());
                    json!({ "binary": b.display().to_string() })
                })
                .unwrap_or_else(|| json!({}));
            let r = c
                .call_within(
                    HANDOVER_TIMEOUT,
                    Method::POST,
                    "/api/v1/upgrade",
                    Some(body),
                )
                .await?;
            out(&format!(
                "upgraded: pid {} (turnout {}) serves from {}; pid {} (turnout {}) finishes its requests in flight and exits",
                r["new"]["pid"],
                r["new"]["version"].as_str().unwrap_or("?"),
                r["binary"].as_str().unwrap_or("?"),
                r["old"]["pid"],
                r["old"]["version"].as_str().unwrap_or("?")
            ))
            .map(|()| ExitCode::SUCCESS)
        }),
        Command::Stop { keep_instances } => with_client(&cli, |c| async move {
            let r = c
                .call(
                    Method::POST,
                    "/api/v1/stop",
                    Some(json!({ "instances": !keep_instances })),
                )
                .await?;
            out(&format!(
                "stopping: the router (pid {}) finishes its requests in flight and exits{}",
                r["pid"],
                if keep_instances {
                    "; the service's instances keep running"
                } else {
                    ", then stops the service's instances"
                }
            ))
            .map(|()| ExitCode::SUCCESS)
        }),
        Command::Rollback => with_client(&cli, |c| async move {
            let r = c.call(Method::POST, "/api/v1/rollback", None).await?;
            out(&format!(
                "rolled back: {} is live (revision {})",
                r["live"].as_str().unwrap_or("none"),
                r["revision"]
            ))
            .map(|()| ExitCode::SUCCESS)
        }),
    }
}

/// Prints an error chain and picks the exit code: 2 for configuration and usage problems,
/// 1 for everything else.
pub fn report(e: &anyhow::Error) -> ExitCode {
    if let Some(errors) = e.downcast_ref::<ConfigErrors>() {
        eprintln!(
            "turnout: the configuration has {} problem(s):",
            errors.errors.len()
        );
        eprintln!("{errors}");
        return ExitCode::from(2);
    }
    if is_broken_pipe(e) {
        return ExitCode::SUCCESS;
    }
    eprintln!("turnout: {}", describe(e));
    let bad_request = e
        .downcast_ref::<crate::client::ApiFailure>()
        .is_some_and(|f| f.status == hyper::StatusCode::BAD_REQUEST);
    if e.downcast_ref::<UsageError>().is_some() || bad_request {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn check_config(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(path)?;
    let live = if !cfg.slots.blue.upstreams.is_empty() {
        "blue"
    } else if !cfg.slots.green.upstreams.is_empty() {
        "green"
    } else {
        "none until a deployment"
    };
    out(&format!(
        "{}: ok (listen {}, admin {}, live at first start: {live})",
        path.display(),
        cfg.listen.addr,
        cfg.admin.addr
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Finds the admin API (from `--admin`, else the config) and runs `f` on a small runtime.
fn with_client<F, Fut>(cli: &Cli, f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(AdminClient) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let client = admin_client(cli)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(f(client))
}

/// The admin API's client: `--admin` (token from env), else `[admin]` of the config.
pub(crate) fn admin_client(cli: &Cli) -> anyhow::Result<AdminClient> {
    let env_token = std::env::var("TURNOUT_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    // The config: where the router is (unless --admin says), and its token.
    let config = || -> anyhow::Result<Config> {
        let mut cfg = Config::load(&cli.config).map_err(|e| {
            if cli.config.exists() {
                anyhow::Error::new(e)
            } else {
                UsageError(format!(
                    "no config file at {} to find the router in; pass --config FILE or --admin URL",
                    cli.config.display()
                ))
                .into()
            }
        })?;
        crate::serve::anchor_paths(&mut cfg, &cli.config);
        Ok(cfg)
    };
    let token_of = |cfg: &Config| -> anyhow::Result<Option<String>> {
        Ok(match &cfg.admin.token {
            Some(src) => Some(
                src.resolve()
                    .map_err(|e| UsageError(format!("[admin] token: {e}")))?,
            ),
            // The token the router generated (it has none configured), readable by
            // whoever may read its state directory.
            None => std::fs::read_to_string(cfg.state.dir.join(crate::serve::ADMIN_TOKEN_FILE))
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
        })
    };
    let (url, token) = match &cli.admin {
        Some(url) => {
            let token = match env_token {
                Some(t) => Some(t),
                // With --admin, the config still gives the token when it can be read
                // (one with errors is no reason to refuse: the router may know better).
                None => match config() {
                    Ok(cfg) => token_of(&cfg)?,
                    Err(_) => None,
                },
            };
            (url.clone(), token)
        }
        None => {
            let cfg = config()?;
            let mut addr = cfg.admin.addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let token = match env_token {
                Some(t) => Some(t),
                None => token_of(&cfg)?,
            };
            (format!("http://{addr}"), token)
        }
    };
    Ok(AdminClient::new(&url, token).map_err(|e| UsageError(format!("{e:#}")))?)
}

async fn status(client: &AdminClient, json: bool, watch: bool) -> anyhow::Result<()> {
    let mut last = None;
    show_status(client, json, watch, &mut last).await?;
    if !watch {
        return Ok(());
    }
    // Re-read on every event of the router's event stream, and every 10 s anyway; when
    // the stream drops, reconnect with a growing pause (and re-read meanwhile).
    const EVERY: Duration = Duration::from_secs(10);
    let mut events: Option<crate::client::Streaming> = None;
    let mut pause = Duration::from_millis(500);
    loop {
        let Some(stream) = events.as_mut() else {
            match client.stream(Method::GET, "/api/v1/events", None).await {
                Ok(s) => {
                    events = Some(s);
                    pause = Duration::from_millis(500);
                }
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "the event stream is not available; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(EVERY);
                }
            }
            // Whatever happened while not connected.
            show_status(client, json, watch, &mut last).await?;
            continue;
        };
        match tokio::time::timeout(EVERY, stream.next()).await {
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(None) | Ok(Some(Err(_))) => events = None,
        }
        show_status(client, json, watch, &mut last).await?;
    }
}

/// Fetches the status and prints it when it differs from `last`.
async fn show_status(
    client: &AdminClient,
    json: bool,
    watch: bool,
    last: &mut Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let value = client.call(Method::GET, "/api/v1/status", None).await?;
    if last.as_ref() != Some(&value) {
        if json {
            out(&serde_json::to_string(&value)?)?;
        } else {
            let status: Status =
                serde_json::from_value(value.clone()).context("reading the router's status")?;
            if watch && last.is_some() {
                out("")?;
            }
            out(&render_status(&status))?;
        }
        *last = Some(value);
    }
    Ok(())
}

/// The status as a short table for people.
pub fn render_status(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let live = s.live.map_or("none", |l| l.as_str());
    let _ = writeln!(
        o,
        "live: {live}    traffic: blue {}% / green {}%    revision {}",
        s.weights.blue, s.weights.green, s.revision
    );
    match &s.deployment {
        Some(d) => {
            let _ = writeln!(
                o,
                "deployment: {} of {} at stage {}",
                d.id, d.version, d.stage
            );
        }
        None => {
            let _ = writeln!(o, "deployment: none");
        }
    }
    if let Some(problem) = &s.state_problem {
        let _ = writeln!(o, "STATE: {problem}");
    }
    if let Some(f) = &s.fleet {
        let leader = match (&f.leader_replica, f.leader) {
            (_, true) => "this replica leads (runs the deployments)".to_owned(),
            (Some(l), false) => format!("leader: replica {} at {}", l.replica, l.admin),
            (None, false) => "no leader elected right now".to_owned(),
        };
        let etcd = if f.connected {
            "etcd connected"
        } else {
            "etcd UNREACHABLE: serving with the last known routing"
        };
        let _ = writeln!(
            o,
            "fleet: replica {}    {leader}    {etcd}",
            f.replica.replica
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "{:<6} {:<9} {:<12} UPSTREAMS", "SLOT", "ROLE", "VERSION");
    for (name, slot) in [("blue", &s.slots.blue), ("green", &s.slots.green)] {
        let ups = if slot.upstreams.is_empty() {
            "-".to_owned()
        } else {
            slot.upstreams
                .iter()
                .map(|u| {
                    format!(
                        "{} {}",
                        u.addr,
                        if u.healthy { "healthy" } else { "UNHEALTHY" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            o,
            "{:<6} {:<9} {:<12} {ups}",
            name,
            slot.role.as_str(),
            slot.version.as_deref().unwrap_or("-")
        );
    }
    o.truncate(o.trim_end().len());
    o
}
