//! The config schema: which tables and keys exist, their types, defaults and rules.
//!
//! One function per section reads its [`Table`]; values that are wrong are reported by the
//! getters and replaced by their default, so the walk always reaches the end of the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeTable;
use toml::Spanned;

use crate::values::{check_http_url, check_upstream, parse_socket_addr};
use crate::walk::{non_blank, Ctx, Number, Table, Zero};
use crate::*;

const TOP: &[&str] = &[
    "listen",
    "runtime",
    "admin",
    "state",
    "slots",
    "upstream",
    "health",
    "provision",
    "verify",
    "shadow",
    "promote",
    "bake",
    "decommission",
    "notify",
    "sessions",
    "hooks",
    "log",
];
const HOOKS: &[&str] = &[
    "pre_deploy",
    "post_provision",
    "pre_switch",
    "post_switch",
    "post_bake",
    "on_rollback",
    "pre_decommission",
    "post_decommission",
    "timeout",
];

/// Reads the whole document.
pub(crate) fn config<'a>(ctx: &mut Ctx, doc: &'a Spanned<DeTable<'a>>) -> Config {
    let root = Table::root(ctx, doc, TOP);
    let admin = admin(ctx, &root);
    let listen = listen(ctx, &root, &admin);
    let mut own = vec![(listen.addr, "[listen] addr"), (admin.addr, "[admin] addr")];
    if let Some(tls) = &listen.tls {
        own.push((tls.addr, "[listen.tls] addr"));
    }
    Config {
        slots: slots(ctx, &root, &own),
        listen,
        runtime: Runtime {
            worker_threads: root
                .table(ctx, "runtime", &["worker_threads"])
                .int(ctx, "worker_threads", 1, 4096)
                .map(|n| n as usize),
        },
        admin,
        state: state(ctx, &root),
        upstream: upstream(ctx, &root),
        health: health(ctx, &root),
        provision: provision(ctx, &root),
        verify: verify(ctx, &root),
        shadow: shadow(ctx, &root),
        promote: promote(ctx, &root),
        bake: bake(ctx, &root),
        decommission: Decommission {
            delay: root
                .table(ctx, "decommission", &["delay"])
                .duration(ctx, "delay", Zero::Allowed)
                .unwrap_or(Decommission::default().delay),
        },
        notify: notify(ctx, &root),
        sessions: sessions(ctx, &root),
        hooks: hooks(ctx, &root),
        log: Log {
            access: root
                .table(ctx, "log", &["access"])
                .parse(ctx, "access", AccessLog::parse)
                .unwrap_or_default(),
        },
    }
}

fn admin(ctx: &mut Ctx, root: &Table) -> Admin {
    let t = root.table(ctx, "admin", &["addr", "token", "hosts"]);
    let admin = Admin {
        addr: t
            .parse(ctx, "addr", parse_socket_addr)
            .unwrap_or(Admin::default().addr),
        token: t.parse(ctx, "token", TokenSource::parse),
        hosts: t.list(ctx, "hosts", host_name).unwrap_or_default(),
    };
    if !admin.addr.ip().is_loopback() && !t.has("token") {
        let message = format!(
            "the admin API on {} is reachable from other hosts without a token: set \
             admin.token = \"env:TURNOUT_ADMIN_TOKEN\" (or \"file:PATH\"), or bind it to \
             127.0.0.1",
            admin.addr
        );
        t.error(ctx, "addr", message);
    }
    admin
}

fn listen(ctx: &mut Ctx, root: &Table, admin: &Admin) -> Listen {
    let d = Listen::default();
    let t = root.table(
        ctx,
        "listen",
        &[
            "addr",
            "header_timeout",
            "upgrade_drain",
            "max_connections",
            "max_body",
            "tls",
        ],
    );
    let tls = t.table(ctx, "tls", &["addr", "cert", "key"]);
    let listen = Listen {
        addr: t.parse(ctx, "addr", parse_socket_addr).unwrap_or(d.addr),
        header_timeout: t
            .duration(ctx, "header_timeout", Zero::Rejected)
            .unwrap_or(d.header_timeout),
        upgrade_drain: t
            .duration(ctx, "upgrade_drain", Zero::Allowed)
            .unwrap_or(d.upgrade_drain),
        max_connections: t
            .int(ctx, "max_connections", 0, 1 << 24)
            .map_or(d.max_connections, |n| n as usize),
        max_body: t.size(ctx, "max_body").or(d.max_body),
        tls: tls.is_present().then(|| ListenTls {
            addr: tls
                .parse(ctx, "addr", parse_socket_addr)
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8443))),
            cert: required(
                ctx,
                &tls,
                "cert",
                "the PEM certificate chain file",
                non_blank,
            )
            .into(),
            key: required(ctx, &tls, "key", "the PEM private key file", non_blank).into(),
        }),
    };
    // Two listeners of this process on one port; port 0 picks a free one each time.
    let clash = |a: SocketAddr, b: SocketAddr| {
        a.port() != 0
            && a.port() == b.port()
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    let same_port = |name: &str, addr: SocketAddr| {
        format!("{name} ({addr}) uses the same port: give each listener its own port")
    };
    if clash(listen.addr, admin.addr) {
        t.error(ctx, "addr", same_port("admin.addr", admin.addr));
    }
    if let Some(tls_config) = &listen.tls {
        for (name, other) in [("listen.addr", listen.addr), ("admin.addr", admin.addr)] {
            if clash(tls_config.addr, other) {
                tls.error(ctx, "addr", same_port(name, other));
            }
        }
    }
    listen
}

/// The `[state]` keys: `dir` and `backend`, then [`ETCD_KEYS`].
const STATE_KEYS: &[&str] = &[
    "dir",
    "backend",
    "endpoints",
    "prefix",
    "advertise",
    "ca",
    "cert",
    "key",
    "user",
    "password",
    "lease",
];

/// The `[state]` keys that apply only to the etcd backend.
const ETCD_KEYS: &[&str] = STATE_KEYS.split_at(2).1;

fn state(ctx: &mut Ctx, root: &Table) -> State {
    let t = root.table(ctx, "state", STATE_KEYS);
    let d = State::default();
    let backend = t.parse(ctx, "backend", |s| match s {
        "embedded" => Ok(StateBackend::Embedded),
        "etcd" => Ok(StateBackend::Etcd),
        _ => Err(format!(
            "unknown backend {s:?}: use \"embedded\" or \"etcd\""
        )),
    });
    let endpoints = t.list(ctx, "endpoints", |s| {
        let checked = if s.contains("://") {
            check_http_url(s)
        } else {
            check_upstream(s)
        };
        checked.map(|()| s.to_string())
    });
    let backend = backend.unwrap_or(d.backend);
    match backend {
        StateBackend::Etcd if endpoints.as_ref().is_none_or(Vec::is_empty) => t.error(
            ctx,
            "endpoints",
            "the etcd backend needs endpoints, e.g. endpoints = [\"http://127.0.0.1:2379\"]"
                .to_string(),
        ),
        StateBackend::Embedded => {
            if let Some(&key) = ETCD_KEYS.iter().find(|k| t.has(k)) {
                let message = format!(
                    "{key} applies only to the etcd backend: set backend = \"etcd\" or remove {key}"
                );
                t.error(ctx, key, message);
            }
        }
        _ => {}
    }
    let https = endpoints
        .as_ref()
        .is_some_and(|e| e.iter().any(|e| e.starts_with("https://")));
    let mixed = https
        && endpoints
            .as_ref()
            .is_some_and(|e| e.iter().any(|e| !e.starts_with("https://")));
    if backend == StateBackend::Etcd {
        if mixed {
            t.error(
                ctx,
                "endpoints",
                "endpoints mix https:// with plain ones: use https:// for every member (TLS is for the whole cluster)".to_string(),
            );
        }
        if t.has("user") && !t.has("password") {
            t.error(
                ctx,
                "user",
                "user needs password (\"env:NAME\" or \"file:PATH\"); with client certificates alone, leave user out".to_string(),
            );
        }
        if t.has("cert") != t.has("key") {
            let (has, missing) = if t.has("cert") {
                ("cert", "key")
            } else {
                ("key", "cert")
            };
            t.error(
                ctx,
                has,
                format!("{has} needs {missing}: a client certificate for etcd is a PEM certificate and its private key"),
            );
        }
        if t.has("password") && !t.has("user") {
            t.error(
                ctx,
                "password",
                "password needs user: the etcd user it belongs to".to_string(),
            );
        }
        if https && !t.has("ca") {
            t.error(
                ctx,
                "endpoints",
                "https:// endpoints need ca: the PEM certificate of the CA that signed etcd's server certificate".to_string(),
            );
        }
        if (t.has("ca") || t.has("cert")) && !https {
            let key = if t.has("ca") { "ca" } else { "cert" };
            t.error(
                ctx,
                key,
                format!("{key} is for TLS to etcd: give the endpoints as https://HOST:PORT"),
            );
        }
    }
    State {
        dir: t.non_empty(ctx, "dir").map_or(d.dir, PathBuf::from),
        backend,
        endpoints: endpoints.unwrap_or_default(),
        prefix: t
            .parse(ctx, "prefix", absolute("prefix", "/turnout/shop"))
            .unwrap_or(d.prefix),
        advertise: t.parse(ctx, "advertise", |s| {
            check_http_url(s).map(|()| s.trim_end_matches('/').to_string())
        }),
        ca: t.non_empty(ctx, "ca").map(PathBuf::from),
        cert: t.non_empty(ctx, "cert").map(PathBuf::from),
        key: t.non_empty(ctx, "key").map(PathBuf::from),
        user: t.non_empty(ctx, "user"),
        password: t.parse(ctx, "password", TokenSource::parse),
        lease: (backend == StateBackend::Etcd)
            .then(|| lease(ctx, &t))
            .flatten()
            .unwrap_or(d.lease),
    }
}

/// `state.lease`: whole seconds, 2s to 60s (etcd grants leases in seconds; below 2s a
/// leader would step down at every hiccup, above a minute a dead one blocks too long).
fn lease(ctx: &mut Ctx, t: &Table) -> Option<Duration> {
    let d = t.duration(ctx, "lease", Zero::Rejected)?;
    let problem = if d.subsec_nanos() != 0 {
        Some("is not whole seconds: etcd grants leases in seconds, e.g. \"5s\"")
    } else if d < Duration::from_secs(2) {
        Some("is too short: a leader would step down at every hiccup of etcd; use 2s or more")
    } else if d > Duration::from_secs(60) {
        Some("is too long: a dead leader would hold deployments up that long; use 60s or less")
    } else {
        None
    };
    match problem {
        Some(p) => {
            t.error(ctx, "lease", format!("lease {p}"));
            None
        }
        None => Some(d),
    }
}

fn slots(ctx: &mut Ctx, root: &Table, own: &[(std::net::SocketAddr, &str)]) -> Slots {
    let t = root.table(ctx, "slots", &["blue", "green"]);
    let mut slot = |name: &str| {
        let s = t.table(ctx, name, &["upstreams", "version"]);
        let mut seen = Vec::new();
        let upstreams = s.list(ctx, "upstreams", |addr| {
            check_upstream(addr)?;
            if let Some((listen, key)) = own
                .iter()
                .find(|(a, _)| turnout_core::names_listen_addr(addr, *a))
            {
                return Err(format!(
                    "upstream {addr:?} is this router's own {key} ({listen}): requests would loop through turnout until the machine runs out of memory; point it at the service"
                ));
            }
            if seen.iter().any(|s| s == addr) {
                return Err(format!("upstream {addr:?} is listed twice: remove one"));
            }
            seen.push(addr.to_string());
            Ok(addr.to_string())
        });
        SlotConfig {
            upstreams: upstreams.unwrap_or_default(),
            version: s.non_empty(ctx, "version"),
        }
    };
    Slots {
        blue: slot("blue"),
        green: slot("green"),
    }
}

const UPSTREAM: &[&str] = &[
    "tls",
    "ca",
    "server_name",
    "connect_timeout",
    "response_timeout",
    "idle_timeout",
    "max_idle",
];

fn upstream(ctx: &mut Ctx, root: &Table) -> UpstreamOptions {
    let t = root.table(ctx, "upstream", UPSTREAM);
    let d = UpstreamOptions::default();
    UpstreamOptions {
        connect_timeout: t
            .duration(ctx, "connect_timeout", Zero::Rejected)
            .unwrap_or(d.connect_timeout),
        response_timeout: t
            .duration(ctx, "response_timeout", Zero::Rejected)
            .unwrap_or(d.response_timeout),
        idle_timeout: t
            .duration(ctx, "idle_timeout", Zero::Rejected)
            .unwrap_or(d.idle_timeout),
        max_idle: t
            .int(ctx, "max_idle", 0, 1 << 20)
            .map_or(d.max_idle, |n| n as usize),
        tls: upstream_tls(ctx, &t),
    }
}

fn upstream_tls(ctx: &mut Ctx, t: &Table) -> Option<UpstreamTls> {
    if t.bool(ctx, "tls") != Some(true) {
        for key in ["ca", "server_name"] {
            if t.has(key) {
                t.error(
                    ctx,
                    key,
                    format!("{key} applies only with tls = true: set tls = true or remove {key}"),
                );
            }
        }
        return None;
    }
    let ca = required(
        ctx,
        t,
        "ca",
        "the PEM file of the CA that signed the upstreams' certificates",
        non_blank,
    );
    let server_name = t.parse(ctx, "server_name", non_blank);
    Some(UpstreamTls {
        ca: ca.into(),
        server_name,
    })
}

const HEALTH: &[&str] = &[
    "path",
    "interval",
    "timeout",
    "healthy",
    "unhealthy",
    "failover",
];

fn health(ctx: &mut Ctx, root: &Table) -> Option<Health> {
    let t = root.table(ctx, "health", HEALTH).present()?;
    let d = Health::default();
    Some(Health {
        path: t
            .parse(ctx, "path", absolute("path", "/healthz"))
            .unwrap_or(d.path),
        interval: t
            .duration(ctx, "interval", Zero::Rejected)
            .unwrap_or(d.interval),
        timeout: t
            .duration(ctx, "timeout", Zero::Rejected)
            .unwrap_or(d.timeout),
        healthy: t
            .int(ctx, "healthy", 1, 1000)
            .map_or(d.healthy, |n| n as u32),
        unhealthy: t
            .int(ctx, "unhealthy", 1, 1000)
            .map_or(d.unhealthy, |n| n as u32),
        failover: t.bool(ctx, "failover").unwrap_or(d.failover),
    })
}

const PROVISION: &[&str] = &[
    "command",
    "instances",
    "up",
    "down",
    "health_timeout",
    "stop_timeout",
    "timeout",
];

fn provision(ctx: &mut Ctx, root: &Table) -> Option<Provision> {
    let t = root.table(ctx, "provision", PROVISION).present()?;
    let p = Provision {
        command: t.non_empty(ctx, "command"),
        instances: t.int(ctx, "instances", 1, 1000).map_or(1, |n| n as usize),
        up: t.non_empty(ctx, "up"),
        down: t.non_empty(ctx, "down"),
        health_timeout: t
            .duration(ctx, "health_timeout", Zero::Rejected)
            .unwrap_or(Duration::from_secs(60)),
        stop_timeout: t
            .duration(ctx, "stop_timeout", Zero::Rejected)
            .unwrap_or(Duration::from_secs(10)),
        timeout: t
            .duration(ctx, "timeout", Zero::Rejected)
            .unwrap_or(Duration::from_secs(300)),
    };
    let (command, up, down) = (t.has("command"), t.has("up"), t.has("down"));
    if command && (up || down) {
        let key = if up { "up" } else { "down" };
        let message =
            "command and up/down are two ways to provision: keep command (turnout starts the \
                       processes) or up and down (external infrastructure), not both";
        t.error(ctx, key, message.to_string());
    } else if up != down {
        let (given, missing) = if up { ("up", "down") } else { ("down", "up") };
        t.error(
            ctx,
            given,
            format!("{given} needs {missing} as well: add {missing} = \"...\""),
        );
    } else if !command && !up {
        let message = "nothing to provision with: set command = \"./app --port {port} --version {version}\", \
                       or up and down for external infrastructure";
        t.error_here(ctx, message.to_string());
    }
    Some(p)
}

fn verify(ctx: &mut Ctx, root: &Table) -> Option<Verify> {
    let t = root
        .table(ctx, "verify", &["checks", "command", "timeout"])
        .present()?;
    let checks = t.tables(ctx, "checks", &["path", "status", "body_contains"]);
    Some(Verify {
        checks: checks
            .iter()
            .map(|c| Check {
                path: required(
                    ctx,
                    c,
                    "path",
                    "the request path, e.g. \"/\"",
                    absolute("path", "/"),
                ),
                status: c.int(ctx, "status", 100, 599).map_or(200, |n| n as u16),
                body_contains: c.string(ctx, "body_contains"),
            })
            .collect(),
        command: t.non_empty(ctx, "command"),
        timeout: t
            .duration(ctx, "timeout", Zero::Rejected)
            .unwrap_or(Duration::from_secs(30)),
    })
}

const SHADOW: &[&str] = &[
    "duration",
    "sample",
    "methods",
    "ignore_headers",
    "ignore_json",
    "max_mismatch_rate",
    "max_latency_ratio_p99",
    "min_requests",
    "max_body",
    "noise_sample",
    "mirror_unsafe",
    "paths",
    "skip_paths",
    "timeout",
    "queue",
    "noise_relative_margin",
    "noise_absolute_margin",
];

fn shadow(ctx: &mut Ctx, root: &Table) -> Option<Shadow> {
    let t = root.table(ctx, "shadow", SHADOW).present()?;
    let d = Shadow::default();
    let mirror_unsafe = t.bool(ctx, "mirror_unsafe").unwrap_or(d.mirror_unsafe);
    let methods = t.list(ctx, "methods", |m| {
        if m.is_empty() || !m.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "invalid method {m:?}: write HTTP methods in upper case, e.g. \"GET\""
            ));
        }
        if !mirror_unsafe && !matches!(m, "GET" | "HEAD" | "OPTIONS" | "TRACE") {
            return Err(format!(
                "{m} requests change state and the candidate may share it with live: remove {m}, \
                 or set mirror_unsafe = true if the candidate is isolated"
            ));
        }
        Ok(m.to_string())
    });
    let header = |h: &str| {
        let token = |c: char| c.is_ascii_alphanumeric() || "-_!#$%&'*+.^`|~".contains(c);
        if !h.is_empty() && h.chars().all(token) {
            Ok(h.to_ascii_lowercase())
        } else {
            Err(format!("invalid header name {h:?}, e.g. \"x-request-id\""))
        }
    };
    Some(Shadow {
        duration: t
            .duration(ctx, "duration", Zero::Rejected)
            .unwrap_or(d.duration),
        sample: t.float(ctx, "sample", Number::Fraction).unwrap_or(d.sample),
        methods: methods.unwrap_or(d.methods),
        ignore_headers: t.list(ctx, "ignore_headers", header).unwrap_or_default(),
        ignore_json: t
            .list(
                ctx,
                "ignore_json",
                absolute("ignore_json", "/meta/generated_at"),
            )
            .unwrap_or_default(),
        max_mismatch_rate: t
            .float(ctx, "max_mismatch_rate", Number::Fraction)
            .unwrap_or(d.max_mismatch_rate),
        max_latency_ratio_p99: t
            .float(ctx, "max_latency_ratio_p99", Number::Positive)
            .unwrap_or(d.max_latency_ratio_p99),
        min_requests: t
            .int(ctx, "min_requests", 0, i64::MAX)
            .map_or(d.min_requests, |n| n as u64),
        max_body: t
            .int(ctx, "max_body", 0, i64::MAX)
            .map_or(d.max_body, |n| n as u64),
        noise_sample: t
            .float(ctx, "noise_sample", Number::Fraction)
            .unwrap_or(d.noise_sample),
        mirror_unsafe,
        paths: t
            .list(ctx, "paths", absolute("paths", "/api/"))
            .unwrap_or_default(),
        skip_paths: t
            .list(ctx, "skip_paths", absolute("skip_paths", "/admin/"))
            .unwrap_or_default(),
        timeout: t
            .duration(ctx, "timeout", Zero::Rejected)
            .unwrap_or(d.timeout),
        queue: t
            .int(ctx, "queue", 1, 1_000_000)
            .map_or(d.queue, |n| n as usize),
        noise_relative_margin: t
            .float(ctx, "noise_relative_margin", Number::Positive)
            .unwrap_or(d.noise_relative_margin),
        noise_absolute_margin: t
            .float(ctx, "noise_absolute_margin", Number::Fraction)
            .unwrap_or(d.noise_absolute_margin),
    })
}

fn promote(ctx: &mut Ctx, root: &Table) -> Promote {
    let t = root.table(ctx, "promote", &["mode", "steps", "step_duration"]);
    let step_duration = t
        .duration(ctx, "step_duration", Zero::Rejected)
        .unwrap_or(Duration::from_secs(60));
    let mode = t
        .parse(ctx, "mode", |s| match s {
            "auto" => Ok(PromoteMode::Auto),
            "manual" => Ok(PromoteMode::Manual),
            "canary" => Ok(PromoteMode::Canary),
            _ => Err(format!(
                "unknown mode {s:?}: use \"auto\", \"manual\" or \"canary\""
            )),
        })
        .unwrap_or_default();
    let steps: Option<Vec<u8>> = t
        .int_list(ctx, "steps", 1, 100)
        .map(|steps| steps.into_iter().map(|n| n as u8).collect());
    match (mode, steps) {
        (PromoteMode::Canary, None) => Promote {
            mode,
            steps: vec![5, 25, 50, 100],
            step_duration,
        },
        (PromoteMode::Canary, Some(steps)) => {
            let increasing = steps.windows(2).all(|w| w[0] < w[1]);
            if !increasing || steps.last() != Some(&100) {
                let message =
                    "canary steps must be strictly increasing percentages ending at 100, \
                               e.g. [5, 25, 50, 100]";
                t.error(ctx, "steps", message.to_string());
            }
            Promote {
                mode,
                steps,
                step_duration,
            }
        }
        (_, steps) => {
            if steps.is_some() {
                let message =
                    "steps apply only to canary releases: set mode = \"canary\" or remove steps";
                t.error(ctx, "steps", message.to_string());
            }
            Promote {
                mode,
                steps: Vec::new(),
                step_duration,
            }
        }
    }
}

const BAKE: &[&str] = &[
    "duration",
    "interval",
    "window",
    "max_error_rate",
    "max_p99",
    "max_p99_ratio",
    "min_requests",
    "require_traffic",
    "retry_on_standby",
];

fn bake(ctx: &mut Ctx, root: &Table) -> Bake {
    let t = root.table(ctx, "bake", BAKE);
    let d = Bake::default();
    Bake {
        duration: t
            .duration(ctx, "duration", Zero::Allowed)
            .unwrap_or(d.duration),
        interval: t
            .duration(ctx, "interval", Zero::Rejected)
            .unwrap_or(d.interval),
        window: t
            .duration(ctx, "window", Zero::Rejected)
            .unwrap_or(d.window),
        max_error_rate: t
            .float(ctx, "max_error_rate", Number::Fraction)
            .unwrap_or(d.max_error_rate),
        max_p99: t.duration(ctx, "max_p99", Zero::Rejected),
        max_p99_ratio: t.float(ctx, "max_p99_ratio", Number::Positive),
        min_requests: t
            .int(ctx, "min_requests", 0, i64::MAX)
            .map_or(d.min_requests, |n| n as u64),
        require_traffic: t.bool(ctx, "require_traffic").unwrap_or(d.require_traffic),
        retry_on_standby: t
            .bool(ctx, "retry_on_standby")
            .unwrap_or(d.retry_on_standby),
    }
}

fn notify(ctx: &mut Ctx, root: &Table) -> Option<Notify> {
    let t = root
        .table(ctx, "notify", &["webhooks", "timeout", "ca"])
        .present()?;
    Some(Notify {
        webhooks: t.list(ctx, "webhooks", url).unwrap_or_default(),
        timeout: t
            .duration(ctx, "timeout", Zero::Rejected)
            .unwrap_or(Duration::from_secs(5)),
        ca: t.non_empty(ctx, "ca").map(PathBuf::from),
    })
}

fn sessions(ctx: &mut Ctx, root: &Table) -> Option<Sessions> {
    let t = root
        .table(ctx, "sessions", &["cookie", "drain", "secret"])
        .present()?;
    Some(Sessions {
        cookie: required(
            ctx,
            &t,
            "cookie",
            "the application's session cookie name, e.g. \"sid\"",
            non_blank,
        ),
        drain: t
            .duration(ctx, "drain", Zero::Rejected)
            .unwrap_or(Duration::from_secs(600)),
        secret: t.parse(ctx, "secret", TokenSource::parse),
    })
}

fn hooks(ctx: &mut Ctx, root: &Table) -> Hooks {
    let t = root.table(ctx, "hooks", HOOKS);
    let mut hook = |name| t.non_empty(ctx, name);
    Hooks {
        pre_deploy: hook("pre_deploy"),
        post_provision: hook("post_provision"),
        pre_switch: hook("pre_switch"),
        post_switch: hook("post_switch"),
        post_bake: hook("post_bake"),
        on_rollback: hook("on_rollback"),
        pre_decommission: hook("pre_decommission"),
        post_decommission: hook("post_decommission"),
        timeout: t
            .duration(ctx, "timeout", Zero::Rejected)
            .unwrap_or(Hooks::default().timeout),
    }
}

/// A string `key` that must be written, converted by `parse`; reported at the table when
/// it is missing.
fn required<T: Default>(
    ctx: &mut Ctx,
    t: &Table,
    key: &str,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> T {
    if !t.has(key) {
        t.error_here(ctx, format!("missing key {key}: set it to {what}"));
    }
    t.parse(ctx, key, parse).unwrap_or_default()
}

/// A parser for strings that must start with `/` (paths, prefixes, JSON pointers).
fn absolute(what: &'static str, example: &'static str) -> impl Fn(&str) -> Result<String, String> {
    move |s| {
        if s.starts_with('/') {
            Ok(s.to_string())
        } else {
            Err(format!(
                "{what} {s:?} must start with '/', e.g. \"{example}\""
            ))
        }
    }
}

/// A host name for `[admin] hosts`: letters, digits, `-` and `.`, without a port or a
/// scheme (it is compared with the `Host` header's name).
fn host_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "{:?} is not a host name: give the name alone, without a scheme or a port, e.g. \"turnout.internal\"",
            s.chars().take(60).collect::<String>()
        ))
    }
}

fn url(s: &str) -> Result<String, String> {
    check_http_url(s).map(|()| s.to_string())
}
