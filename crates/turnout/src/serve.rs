//! `turnout serve`: the config applied to an empty process — store, controller, data
//! plane, admin API — until SIGTERM or Ctrl-C (a second one stops at once), `turnout
//! stop`, or a handover to a new process (`lifecycle.rs`: SIGHUP reloads, SIGUSR2
//! upgrades). Listening sockets come from the previous router process, from systemd, or
//! are bound here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use turnout_config::{Config, StateBackend, TokenSource};
use turnout_core::{Role, SlotName, SlotState};
use turnout_pipeline::Controller;
use turnout_proxy::{HealthCheck, ProxyOptions};
use turnout_store::{EmbeddedStore, StateStore};

use crate::cli::LogFormat;
use crate::error::{describe, UsageError};

pub fn run(config: &Path, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    // Started by `turnout upgrade` or `reload`: the previous router process passes its
    // sockets and waits for this one's word, which every early failure must give it.
    let mut takeover = turnout_lifecycle::handover::take_over()
        .context("taking over from the previous router process")?;
    let mut fail = |e: anyhow::Error| {
        if let Some(t) = takeover.as_mut() {
            let text = match e.downcast_ref::<turnout_config::ConfigErrors>() {
                Some(errors) => format!(
                    "the configuration has {} problem(s):\n{errors}",
                    errors.errors.len()
                ),
                None => describe(&e),
            };
            let _ = t.failed(&text);
        }
        e
    };
    let mut cfg = Config::load(config).map_err(|e| fail(e.into()))?;
    let config_text = std::fs::read_to_string(config).unwrap_or_default();
    anchor_paths(&mut cfg, config);
    init_tracing(log_format);
    let threads = worker_threads(&cfg).map_err(&mut fail)?;
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
        .context("starting the async runtime")
        .map_err(&mut fail)?;
    let config_path = std::fs::canonicalize(config)
        .or_else(|_| std::path::absolute(config))
        .unwrap_or_else(|_| config.to_owned());
    // systemd's sockets, read (and the variables naming them removed) before the
    // runtime's threads exist.
    let activated = match takeover {
        Some(_) => None,
        None => turnout_lifecycle::systemd::activation()
            .context("reading the sockets systemd passed (LISTEN_FDS)")?,
    };
    let mut launch = Launch {
        config_path,
        config_text,
        log_format,
        takeover,
        activated,
    };
    let result = rt.block_on(serve(cfg, &mut launch));
    if let (Err(e), Some(t)) = (&result, launch.takeover.as_mut()) {
        let _ = t.failed(&describe(e));
    }
    // Nothing is left after a graceful stop; after a forced one, do not wait for it.
    rt.shutdown_background();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// How this `serve` was started.
struct Launch {
    /// The config file, absolute.
    config_path: PathBuf,
    /// Its text as read at start.
    config_text: String,
    log_format: LogFormat,
    /// The previous router process, when this one takes over from it; taken (and told)
    /// once this one serves.
    takeover: Option<turnout_lifecycle::handover::Takeover>,
    /// The sockets systemd passed (socket activation), if any.
    activated: Option<turnout_lifecycle::Inherited>,
}

/// Makes the relative paths of `cfg` (`[state] dir`, `file:` tokens, TLS files) relative
/// to the directory of the config file rather than to the working directory, so that a
/// router started from anywhere finds the same state and secrets.
pub(crate) fn anchor_paths(cfg: &mut Config, config: &Path) {
    // The file was just read, so it exists: canonical, so that logs show no `..`.
    let base = std::fs::canonicalize(config)
        .or_else(|_| std::path::absolute(config))
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_default();
    let anchor = |p: &mut PathBuf| {
        if p.is_relative() {
            let joined = base.join(&*p);
            *p = std::path::absolute(&joined).unwrap_or(joined);
        }
    };
    anchor(&mut cfg.state.dir);
    let secrets = [
        cfg.admin.token.as_mut(),
        cfg.sessions.as_mut().and_then(|s| s.secret.as_mut()),
        cfg.state.password.as_mut(),
    ];
    for secret in secrets.into_iter().flatten() {
        if let TokenSource::File(p) = secret {
            anchor(p);
        }
    }
    if let Some(tls) = &mut cfg.upstream.tls {
        anchor(&mut tls.ca);
    }
    if let Some(ca) = cfg.notify.as_mut().and_then(|n| n.ca.as_mut()) {
        anchor(ca);
    }
    for p in [&mut cfg.state.ca, &mut cfg.state.cert, &mut cfg.state.key]
        .into_iter()
        .flatten()
    {
        anchor(p);
    }

    if let Some(tls) = &mut cfg.listen.tls {
        anchor(&mut tls.cert);
        anchor(&mut tls.key);
    }
    if let turnout_config::AccessLog::File(p) = &mut cfg.log.access {
        anchor(p);
    }
}

/// Turns on the access log where `[log] access` says.
fn access_log(cfg: &Config, proxy: &turnout_proxy::Proxy) -> anyhow::Result<()> {
    use turnout_config::AccessLog;
    let to: Box<dyn std::io::Write + Send> = match &cfg.log.access {
        AccessLog::Off => return Ok(()),
        AccessLog::Stdout => Box::new(std::io::stdout()),
        AccessLog::Stderr => Box::new(std::io::stderr()),
        AccessLog::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("[log] access: cannot open {}", path.display()))?,
        ),
    };
    proxy.set_access_log(to);
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TURNOUT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a log file; NO_COLOR is honoured.
    use std::io::IsTerminal as _;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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
        // The same range as [runtime] worker_threads.
        return match v.trim().parse::<usize>() {
            Ok(n) if (1..=4096).contains(&n) => Ok(n),
            _ => Err(UsageError(format!(
                "TURNOUT_WORKER_THREADS={:?} is not a whole number from 1 to 4096 (it overrides [runtime] worker_threads)",
                v.chars().take(40).collect::<String>()
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
        max_connections: cfg.listen.max_connections,
        max_body: cfg.listen.max_body,
        failover: cfg.health.as_ref().is_some_and(|h| h.failover),
        // Read in `serve`, where a bad CA file stops the start.
        upstream_tls: None,
        // Made in `serve`: the key may be kept in the store.
        sessions: None,
    }
}

/// The etcd store of a fleet's replica (`[state] backend = "etcd"`).
#[cfg(feature = "etcd")]
async fn open_etcd(cfg: &Config, admin: SocketAddr) -> anyhow::Result<Arc<dyn StateStore>> {
    use std::hash::{BuildHasher, Hasher};
    let advertise = match &cfg.state.advertise {
        Some(url) => url.clone(),
        None if admin.ip().is_unspecified() => {
            return Err(UsageError(format!(
                "[admin] addr = {admin} listens on every interface, so other replicas cannot tell which address reaches this one: set [state] advertise = \"http://HOST:{}\"",
                admin.port()
            ))
            .into())
        }
        None => format!("http://{admin}"),
    };
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let replica = format!("{:012x}", h.finish() & 0xffff_ffff_ffff);
    let endpoints: Vec<String> = cfg
        .state
        .endpoints
        .iter()
        .map(|e| {
            if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            }
        })
        .collect();
    let read = |key: &str, path: &Path| {
        std::fs::read(path).map_err(|e| {
            UsageError(format!(
                "[state] {key}: cannot read {}: {e}",
                path.display()
            ))
        })
    };
    let tls = match (&cfg.state.ca, &cfg.state.cert, &cfg.state.key) {
        (Some(ca), cert, key) => Some(turnout_store::EtcdTls {
            ca: read("ca", ca)?,
            identity: match (cert, key) {
                (Some(c), Some(k)) => Some((read("cert", c)?, read("key", k)?)),
                _ => None,
            },
        }),
        _ => None,
    };
    let user = match (&cfg.state.user, &cfg.state.password) {
        (Some(u), Some(p)) => Some((
            u.clone(),
            p.resolve()
                .map_err(|e| UsageError(format!("[state] password: {e}")))?,
        )),
        _ => None,
    };
    let opts = turnout_store::EtcdOptions {
        tls,
        user,
        endpoints: endpoints.clone(),
        prefix: cfg.state.prefix.trim_end_matches('/').to_owned(),
        me: turnout_store::ReplicaInfo {
            replica,
            admin: advertise,
        },
        lease_ttl: cfg.state.lease,
        timeout: std::time::Duration::from_secs(2),
    };
    let store = turnout_store::EtcdStore::connect(opts.clone())
        .await
        .map_err(|e| match e {
            turnout_store::StoreError::Unavailable { source, .. } => anyhow::anyhow!(
                "cannot start: a fleet's router reads the shared routing state from etcd first, and etcd at {} did not answer ({source}); is it running, and are [state] endpoints right?",
                endpoints.join(", ")
            ),
            e => anyhow::anyhow!("cannot start: {e}"),
        })?;
    tracing::info!(replica = %opts.me.replica, advertise = %opts.me.admin, prefix = %opts.prefix, "state in etcd at {}, shared by the fleet", endpoints.join(", "));
    Ok(Arc::new(store))
}

/// Without the etcd feature: say how to get it.
#[cfg(not(feature = "etcd"))]
async fn open_etcd(_cfg: &Config, _admin: SocketAddr) -> anyhow::Result<Arc<dyn StateStore>> {
    Err(UsageError(
        "[state] backend = \"etcd\": this turnout was built without the etcd backend. Build it with `cargo build --release -p turnout --features etcd` (the etcd client needs protoc: `apt-get install protobuf-compiler`), or use the embedded store (remove `backend`)".into(),
    )
    .into())
}

/// The file, in the state directory, that holds the admin token turnout generated.
pub(crate) const ADMIN_TOKEN_FILE: &str = "admin-token";

/// The admin token of a router configured without one: made once and kept in the store
/// (first writer wins, so a fleet's replicas share it), and written to
/// `STATE_DIR/admin-token` with mode 0600, for the CLI on this machine.
async fn generated_admin_token(
    store: &dyn StateStore,
    state_dir: &Path,
) -> anyhow::Result<(String, PathBuf)> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let fresh = turnout_proxy::key_to_hex(&turnout_proxy::random_key()?);
    let token = store
        .create_value("admin/token", &fresh)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot keep the generated admin token in {}: {e}",
                store.describe()
            )
        })?;
    let path = state_dir.join(ADMIN_TOKEN_FILE);
    let current = std::fs::read_to_string(&path).ok();
    if current.as_deref().map(str::trim) != Some(token.as_str()) {
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            // An existing file keeps its mode on open: set it.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            writeln!(f, "{token}")
        };
        write().with_context(|| {
            format!(
                "cannot write the generated admin token to {}",
                path.display()
            )
        })?;
    } else {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private (mode 0600)", path.display()))?;
    }
    Ok((token, path))
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key}); is another process using it?"))
}

/// The listening socket for `key`: the one inherited (from the previous router process,
/// or from systemd) when there is one for `addr`, else a new one. A duplicate of it goes
/// to `pass_on`, for the next handover.
async fn listen(
    inherited: &mut turnout_lifecycle::Inherited,
    pass_on: &mut Vec<(String, std::os::fd::OwnedFd)>,
    name: &str,
    addr: SocketAddr,
    key: &str,
) -> anyhow::Result<TcpListener> {
    let listener = match inherited
        .take_listener(name, addr)
        .map_err(|e| UsageError(format!("{key}: {e}")))?
    {
        Some(std) => {
            tracing::info!(addr = %std.local_addr()?, "{key}: listening on the socket passed by {}", inherited.from());
            TcpListener::from_std(std)?
        }
        None => bind(addr, key).await?,
    };
    use std::os::fd::AsFd as _;
    pass_on.push((name.to_owned(), listener.as_fd().try_clone_to_owned()?));
    Ok(listener)
}

/// Raises this process's soft limit on open files to the hard limit (as nginx's
/// `worker_rlimit_nofile` would): every client connection is a file, and the usual soft
/// limit of 1024 would cap an edge router far below what the machine allows.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(
            from = ?limit.current,
            to = ?limit.maximum,
            "open files limit raised to the hard limit"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open files limit; connections past it are refused by the system")
        }
    }
}

/// After many client connections have closed, gives the memory they used back to the
/// system (`turnout_lifecycle::memory`), on a blocking thread: checked every few seconds
/// against the most connections seen open since the last release.
fn release_memory_after_closes(proxy: turnout_proxy::Proxy) {
    /// Closed connections (from the peak) worth a release.
    const CLOSED: usize = 1000;
    tokio::spawn(async move {
        let mut peak = 0usize;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let open = proxy.open_connections();
            peak = peak.max(open);
            if peak >= open + CLOSED {
                peak = open;
                let _ = tokio::task::spawn_blocking(turnout_lifecycle::memory::release_free_memory)
                    .await;
            }
        }
    });
}

async fn serve(cfg: Config, launch: &mut Launch) -> anyhow::Result<()> {
    use turnout_lifecycle::names;
    raise_open_files_limit();
    // Sockets from the previous router process (a handover) or from systemd (socket
    // activation); whatever they do not cover is bound here.
    let mut inherited = match launch.takeover.as_mut() {
        Some(t) => std::mem::take(&mut t.fds),
        None => launch.activated.take().unwrap_or_default(),
    };
    let mut pass_on: Vec<(String, std::os::fd::OwnedFd)> = Vec::new();
    if cfg.state.backend == StateBackend::Etcd
        && cfg.provision.as_ref().is_some_and(|p| p.command.is_some())
    {
        return Err(UsageError(
            "[provision] command cannot be used with [state] backend = \"etcd\": instances it starts live and die with one router, and a fleet's next leader could neither reach nor stop them. Use [provision] up/down (instances every replica can reach and that outlive a router) or `turnout deploy VERSION --upstream HOST:PORT`".into(),
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
    // The names the admin API answers to besides IP addresses and localhost.
    let mut hosts = cfg.admin.hosts.clone();
    if let Some(name) = cfg
        .state
        .advertise
        .as_deref()
        .and_then(|u| u.split_once("://"))
        .and_then(|(_, rest)| rest.split(['/', ':']).next())
        .filter(|n| !n.is_empty())
    {
        hosts.push(name.to_ascii_lowercase());
    }
    // Read now, so that a bad certificate or key stops the start with a clear message.
    let tls = match &cfg.listen.tls {
        Some(t) => Some(
            turnout_proxy::TlsCert::load(&t.cert, &t.key)
                .map_err(|e| UsageError(format!("[listen.tls]: {e}")))?,
        ),
        None => None,
    };
    let upstream_tls = match &cfg.upstream.tls {
        Some(t) => Some(
            turnout_proxy::UpstreamTls::load(&t.ca, t.server_name.as_deref())
                .map_err(|e| UsageError(format!("[upstream]: {e}")))?,
        ),
        None => None,
    };
    // For https:// webhooks: `[notify] ca`, else the system's CA bundle. A bad `ca` stops
    // the start; no bundle at all only leaves those webhooks undelivered (said at start).
    let webhook_tls = match &cfg.notify {
        Some(n) if n.webhooks.iter().any(|w| w.starts_with("https://")) => match &n.ca {
            Some(ca) => Some(
                turnout_proxy::TlsClient::load(ca, "[notify] ca")
                    .map_err(|e| UsageError(format!("[notify] ca: {e}")))?,
            ),
            None => match turnout_proxy::TlsClient::system_bundle() {
                Some(bundle) => match turnout_proxy::TlsClient::load_system(&bundle) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "https:// webhooks will not be delivered: the system's CA bundle is unusable ({e}); set [notify] ca");
                        None
                    }
                },
                None => {
                    tracing::warn!("https:// webhooks will not be delivered: no system CA bundle found (install ca-certificates, or set [notify] ca or SSL_CERT_FILE)");
                    None
                }
            },
        },
        _ => None,
    };
    // Before anything is started: a signal from here on stops the router in order.
    let mut signals = Signals::new()?;

    // Bound before the store is opened: a fleet's replica advertises its address.
    let admin = listen(
        &mut inherited,
        &mut pass_on,
        names::ADMIN,
        cfg.admin.addr,
        "[admin] addr",
    )
    .await?;
    let admin_addr = admin.local_addr()?;
    let store: Arc<dyn StateStore> = match cfg.state.backend {
        StateBackend::Embedded => {
            // A state directory that cannot be used is a configuration problem (exit 2);
            // one in use by another router is a runtime one (exit 1).
            let store = match inherited.take(names::STATE_LOCK) {
                Some(lock) => EmbeddedStore::open_locked(&cfg.state.dir, std::fs::File::from(lock)),
                None => EmbeddedStore::open(&cfg.state.dir),
            }
            .map_err(|e| match e {
                turnout_store::StoreError::InUse { .. } => anyhow::Error::new(e),
                e => UsageError(format!("[state] dir: {e}")).into(),
            })?;
            tracing::info!(dir = %store.dir().display(), "state directory {}", store.dir().display());
            pass_on.push((
                names::STATE_LOCK.to_owned(),
                std::os::fd::OwnedFd::from(store.lock_file().try_clone()?),
            ));
            Arc::new(store)
        }
        StateBackend::Etcd => {
            std::fs::create_dir_all(&cfg.state.dir).with_context(|| {
                format!(
                    "cannot create [state] dir {} (logs of hooks and provisioning go there)",
                    cfg.state.dir.display()
                )
            })?;
            open_etcd(&cfg, admin_addr).await?
        }
    };
    let static_slots = SlotName::ALL.map(|name| {
        let s = cfg.slots.get(name);
        SlotState {
            version: s.version.clone(),
            upstreams: s.upstreams.clone(),
            role: Role::Idle,
        }
    });
    // Without [admin] token, the API still needs one: made once, kept in the store (a
    // fleet's replicas share it) and in a file only this machine's CLI can read.
    let token = match token {
        Some(t) => t,
        None => {
            let (t, path) = generated_admin_token(&*store, &cfg.state.dir).await?;
            tracing::info!(file = %path.display(), "no [admin] token configured: the admin API takes the token generated into {} (mode 0600); the CLI on this machine reads it there, the dashboard asks for it", path.display());
            Arc::from(t)
        }
    };
    let controller = Arc::new(
        Controller::start(
            ProxyOptions {
                upstream_tls,
                sessions: crate::sessions::session_options(&cfg, &*store).await?,
                ..proxy_options(&cfg)
            },
            store.clone(),
            static_slots,
            turnout_pipeline::PipelineOptions {
                taken_over: launch.takeover.is_some(),
                ..pipeline_options(&cfg, &cfg.state.dir)
            },
        )
        .await?,
    );
    if let Some(n) = &cfg.notify {
        turnout_pipeline::notify::spawn(
            controller.events(),
            turnout_pipeline::notify::NotifyOptions {
                webhooks: n.webhooks.clone(),
                timeout: n.timeout,
                tls: webhook_tls,
            },
        );
    }

    access_log(&cfg, controller.proxy())?;
    let data = listen(
        &mut inherited,
        &mut pass_on,
        names::DATA,
        cfg.listen.addr,
        "[listen] addr",
    )
    .await?;
    let tls_data = match (&cfg.listen.tls, &tls) {
        (Some(t), Some(cert)) => Some((
            listen(
                &mut inherited,
                &mut pass_on,
                names::TLS,
                t.addr,
                "[listen.tls] addr",
            )
            .await?,
            cert.clone(),
        )),
        _ => None,
    };
    {
        let mut own = vec![data.local_addr()?, admin_addr];
        if let Some((l, _)) = &tls_data {
            own.push(l.local_addr()?);
        }
        controller.set_own_addrs(own);
    }
    if !inherited.is_empty() {
        tracing::warn!(sockets = ?inherited.leftover(), "{} passed sockets this config has no use for; they are closed", inherited.from());
    }
    drop(inherited);
    let data_addr = data.local_addr()?;
    // Scripts and tests read these lines to find the ports (the config may say :0); the
    // admin line comes last.
    println!("turnout: data plane listening on http://{data_addr}");
    if let Some((listener, _)) = &tls_data {
        println!(
            "turnout: TLS data plane listening on https://{}",
            listener.local_addr()?
        );
    }
    println!("turnout: admin API listening on http://{admin_addr}");
    tracing::info!(data = %data_addr, admin = %admin_addr, "turnout serving");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    release_memory_after_closes(controller.proxy().clone());
    let proxy = controller.proxy().clone();
    let data_task = tokio::spawn({
        let stop = stopped(stop_rx.clone());
        async move { proxy.serve(data, stop).await }
    });
    let tls_task = tls_data.map(|(listener, cert)| {
        let proxy = controller.proxy().clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { proxy.serve_tls(listener, cert, stop).await })
    });
    let (quit_tx, mut quit_rx) = tokio::sync::mpsc::channel(4);
    let process = Arc::new(crate::lifecycle::Process {
        config_path: launch.config_path.clone(),
        config_text: launch.config_text.clone(),
        binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("turnout")),
        log_format: launch.log_format,
        controller: controller.clone(),
        fds: pass_on,
        tls,
        start_deadline: cfg
            .provision
            .as_ref()
            .map_or(std::time::Duration::from_secs(60), |p| p.health_timeout)
            + std::time::Duration::from_secs(30),
        quit: quit_tx,
        busy: tokio::sync::Mutex::new(()),
        quitting: std::sync::atomic::AtomicBool::new(false),
    });
    crate::lifecycle::on_signals(process.clone())?;
    let router = turnout_admin::router(turnout_admin::AdminState {
        controller: controller.clone(),
        token: Some(token),
        shutdown: Some(stop_rx.clone()),
        hosts: Some(Arc::new(hosts)),
        lifecycle: Some(Arc::new(crate::lifecycle::ApiLifecycle(process.clone()))),
    });
    let admin_task = tokio::spawn({
        let stop = stopped(stop_rx.clone());
        async move {
            axum::serve(admin, router)
                .with_graceful_shutdown(stop)
                .await
        }
    });
    // Serving: the previous router process (after an upgrade or a reload) may stop
    // accepting now, and systemd may count the service as started.
    if let Some(mut t) = launch.takeover.take() {
        tracing::info!(
            previous = t.hello.pid,
            "took over from the previous router process (pid {}, {})",
            t.hello.pid,
            t.hello.reason
        );
        if let Err(e) = t.ready(std::process::id(), crate::lifecycle::VERSION) {
            tracing::warn!(error = %e, "could not tell the previous router process that this one serves: {e}");
        }
    }
    turnout_lifecycle::systemd::ready("serving");

    use crate::lifecycle::Quit;
    let quitting = process;
    let quit = tokio::select! {
        signal = signals.next() => {
            tracing::info!(
                signal,
                "shutting down; requests in flight may finish (a second signal stops at once); the service's instances keep running for the next start (`turnout stop` stops them too)"
            );
            None
        }
        Some(q) = quit_rx.recv() => Some(q),
    };
    // No reload or upgrade from here on (a SIGHUP during the stop).
    quitting
        .quitting
        .store(true, std::sync::atomic::Ordering::SeqCst);
    match quit {
        // The instances are the new process's now: let go of them before anything else,
        // so that nothing here can stop them.
        Some(Quit::HandedOver) => controller.shutdown(false).await,
        Some(Quit::Stop { instances }) => {
            tracing::info!(
                instances,
                "stopping on request; requests in flight may finish"
            );
            turnout_lifecycle::systemd::stopping();
        }
        None => turnout_lifecycle::systemd::stopping(),
    }
    let _ = stop_tx.send(true);
    let drained = async {
        let _ = data_task.await;
        if let Some(t) = tls_task {
            let _ = t.await;
        }
        let _ = admin_task.await;
    };
    let result = tokio::select! {
        () = drained => Ok(()),
        second = signals.next() => {
            tracing::warn!(signal = second, "second signal: stopping at once");
            Err(anyhow::anyhow!(
                "stopped at once by a second {second}: requests still in flight were cut off"
            ))
        }
    };
    match quit {
        Some(Quit::HandedOver) => {}
        // `turnout stop`: the service goes down on purpose — SIGTERM to the instances,
        // then SIGKILL after [provision] stop_timeout (at once after a signal).
        Some(Quit::Stop { instances: true }) => {
            tokio::select! {
                () = controller.shutdown(true) => {}
                _ = signals.next() => controller.kill_all().await,
            }
        }
        // A plain stop (SIGTERM, Ctrl-C): the router goes, the service stays; the next
        // `turnout serve` on this state takes the instances over.
        Some(Quit::Stop { instances: false }) | None => controller.shutdown(false).await,
    }
    result
}

/// `[provision]`, `[verify]`, `[promote]`, `[bake]`, `[decommission]`, `[hooks]` for the
/// release pipeline.
fn pipeline_options(cfg: &Config, state_dir: &Path) -> turnout_pipeline::PipelineOptions {
    use turnout_pipeline as p;
    let provision = match &cfg.provision {
        None => p::Provisioner::Static,
        Some(pr) => match (&pr.command, &pr.up) {
            (Some(command), _) => p::Provisioner::Command {
                command: command.clone(),
                instances: pr.instances,
                stop_timeout: pr.stop_timeout,
            },
            (None, Some(up)) => p::Provisioner::External {
                up: up.clone(),
                down: pr.down.clone(),
                timeout: pr.timeout,
            },
            (None, None) => p::Provisioner::Static,
        },
    };
    let health_timeout = cfg
        .provision
        .as_ref()
        .map_or(std::time::Duration::from_secs(60), |p| p.health_timeout);
    let verify = cfg.verify.as_ref().map(|v| p::VerifyOptions {
        checks: v
            .checks
            .iter()
            .map(|c| p::verify::Check {
                path: c.path.clone(),
                status: c.status,
                body_contains: c.body_contains.clone(),
            })
            .collect(),
        command: v.command.clone(),
        timeout: v.timeout,
    });
    let shadow = cfg.shadow.as_ref().map(|sh| {
        let mut mirror = turnout_proxy::ShadowOptions::new(turnout_core::SlotName::Green);
        mirror.methods = sh.methods.clone();
        mirror.paths = sh.paths.clone();
        mirror.skip_paths = sh.skip_paths.clone();
        mirror.sample = sh.sample;
        mirror.noise_sample = sh.noise_sample;
        mirror.max_body = usize::try_from(sh.max_body).unwrap_or(usize::MAX);
        mirror.timeout = sh.timeout;
        mirror.queue = sh.queue;
        p::ShadowStage {
            mirror,
            compare: turnout_shadow::CompareOptions {
                ignore_headers: sh.ignore_headers.clone(),
                ignore_json: sh.ignore_json.clone(),
            },
            noise: turnout_shadow::NoiseOptions {
                relative_margin: sh.noise_relative_margin,
                absolute_margin: sh.noise_absolute_margin,
            },
            duration: sh.duration,
            min_requests: sh.min_requests,
            max_mismatch_rate: sh.max_mismatch_rate,
            max_latency_ratio_p99: sh.max_latency_ratio_p99,
        }
    });
    let b = &cfg.bake;
    let h = &cfg.hooks;
    p::PipelineOptions {
        state_dir: state_dir.to_owned(),
        provision,
        health_timeout,
        verify,
        shadow,
        promote: p::PromoteOptions {
            mode: match cfg.promote.mode {
                turnout_config::PromoteMode::Auto => p::PromoteMode::Auto,
                turnout_config::PromoteMode::Manual => p::PromoteMode::Manual,
                turnout_config::PromoteMode::Canary => p::PromoteMode::Canary,
            },
            steps: cfg.promote.steps.clone(),
            step_duration: cfg.promote.step_duration,
        },
        bake: p::BakeOptions {
            duration: b.duration,
            interval: b.interval,
            window: b.window.max(b.interval),
            max_error_rate: b.max_error_rate,
            max_p99: b.max_p99,
            max_p99_ratio: b.max_p99_ratio,
            min_requests: b.min_requests,
            require_traffic: b.require_traffic,
            retry_on_standby: b.retry_on_standby,
        },
        decommission_delay: cfg.decommission.delay,
        hooks: p::Hooks {
            pre_deploy: h.pre_deploy.clone(),
            post_provision: h.post_provision.clone(),
            pre_switch: h.pre_switch.clone(),
            post_switch: h.post_switch.clone(),
            post_bake: h.post_bake.clone(),
            on_rollback: h.on_rollback.clone(),
            pre_decommission: h.pre_decommission.clone(),
            post_decommission: h.post_decommission.clone(),
            timeout: h.timeout,
        },
        session_drain: cfg.sessions.as_ref().map(|s| s.drain),
        taken_over: false,
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, listened for from startup on, so that a second one is
/// seen as well as the first. (SIGHUP and SIGUSR2 are `lifecycle::on_signals`'.)
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        async fn recv(s: &mut tokio::signal::unix::Signal) {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        tokio::select! {
            () = recv(&mut self.int) => "SIGINT",
            () = recv(&mut self.term) => "SIGTERM",
        }
    }
}
