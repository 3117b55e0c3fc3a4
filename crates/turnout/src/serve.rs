//! `turnout serve`: the config applied to an empty process — store, controller, data
//! plane, admin API — until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use turnout_config::{Config, StateBackend};
use turnout_core::{Role, SlotName, SlotState};
use turnout_pipeline::Controller;
use turnout_proxy::{HealthCheck, ProxyOptions};
use turnout_store::EmbeddedStore;

use crate::cli::LogFormat;
use crate::commands::UsageError;

pub fn run(config: &Path, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    init_tracing(log_format);
    let threads = worker_threads(&cfg)?;
    // One worker: a current-thread runtime, which skips the work-stealing machinery
    // (measured: less CPU per request than a one-worker multi-thread runtime).
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(cfg))?;
    Ok(ExitCode::SUCCESS)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TURNOUT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `TURNOUT_WORKER_THREADS` overrides `[runtime] worker_threads`, which defaults to the
/// number of cores.
fn worker_threads(cfg: &Config) -> anyhow::Result<usize> {
    if let Ok(v) = std::env::var("TURNOUT_WORKER_THREADS") {
        return match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(UsageError(format!(
                "TURNOUT_WORKER_THREADS={v:?} is not a whole number of at least 1"
            ))
            .into()),
        };
    }
    Ok(cfg
        .runtime
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())))
}

fn proxy_options(cfg: &Config) -> ProxyOptions {
    let health = match &cfg.health {
        Some(h) => HealthCheck {
            path: Some(h.path.clone()),
            interval: h.interval,
            timeout: h.timeout,
            healthy: h.healthy,
            unhealthy: h.unhealthy,
        },
        // No [health]: a TCP connect check, so that a dead upstream still leaves and
        // comes back.
        None => HealthCheck::default(),
    };
    ProxyOptions {
        header_timeout: cfg.listen.header_timeout,
        upgrade_drain: cfg.listen.upgrade_drain,
        connect_timeout: cfg.upstream.connect_timeout,
        response_timeout: cfg.upstream.response_timeout,
        idle_timeout: cfg.upstream.idle_timeout,
        max_idle: cfg.upstream.max_idle,
        health,
        shutdown_grace: ProxyOptions::default().shutdown_grace,
    }
}

/// Sections that this build parses but does not act on yet: say so rather than ignore
/// them silently.
fn warn_unimplemented(cfg: &Config) {
    let sections = [
        ("[listen.tls]", cfg.listen.tls.is_some()),
        ("[provision]", cfg.provision.is_some()),
        ("[verify]", cfg.verify.is_some()),
        ("[shadow]", cfg.shadow.is_some()),
        ("[notify]", cfg.notify.is_some()),
        ("[sessions]", cfg.sessions.is_some()),
    ];
    for (name, present) in sections {
        if present {
            tracing::warn!(
                section = name,
                "this section is not acted on by this version of turnout yet"
            );
        }
    }
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key}); is another process using it?"))
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    if cfg.state.backend == StateBackend::Etcd {
        return Err(UsageError(
            "[state] backend = \"etcd\" is not available in this build; use the embedded store (remove `backend`)".into(),
        )
        .into());
    }
    let token = match &cfg.admin.token {
        Some(src) => Some(Arc::<str>::from(
            src.resolve()
                .map_err(|e| UsageError(format!("[admin] token: {e}")))?,
        )),
        None => None,
    };
    if token.is_none() && !cfg.admin.addr.ip().is_loopback() {
        return Err(UsageError(format!(
            "[admin] addr = {} is not a loopback address, and there is no [admin] token; set token = \"env:TURNOUT_ADMIN_TOKEN\" (or \"file:PATH\") or bind the admin API to 127.0.0.1",
            cfg.admin.addr
        ))
        .into());
    }
    warn_unimplemented(&cfg);

    let store = Arc::new(EmbeddedStore::open(&cfg.state.dir)?);
    let static_slots = SlotName::ALL.map(|name| {
        let s = cfg.slots.get(name);
        SlotState {
            version: s.version.clone(),
            upstreams: s.upstreams.clone(),
            role: Role::Idle,
        }
    });
    let controller = Arc::new(Controller::start(proxy_options(&cfg), store, static_slots).await?);

    let data = bind(cfg.listen.addr, "[listen] addr").await?;
    let admin = bind(cfg.admin.addr, "[admin] addr").await?;
    let data_addr = data.local_addr()?;
    let admin_addr = admin.local_addr()?;
    // Scripts and tests read these two lines to find the ports (the config may say :0).
    println!("turnout: data plane listening on http://{data_addr}");
    println!("turnout: admin API listening on http://{admin_addr}");
    tracing::info!(data = %data_addr, admin = %admin_addr, "turnout serving");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let proxy = controller.proxy().clone();
    let data_task = tokio::spawn({
        let stop = stopped(stop_rx.clone());
        async move { proxy.serve(data, stop).await }
    });
    let router = turnout_admin::router(turnout_admin::AdminState {
        controller: controller.clone(),
        token,
    });
    let admin_task = tokio::spawn({
        let stop = stopped(stop_rx.clone());
        async move {
            axum::serve(admin, router)
                .with_graceful_shutdown(stop)
                .await
        }
    });

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = data_task.await;
    let _ = admin_task.await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
