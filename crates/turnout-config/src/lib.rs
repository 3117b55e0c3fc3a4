//! `turnout.toml` text to a validated [`Config`].
//!
//! Every problem in a file is reported at once, each with its dotted key and line, as one
//! [`ConfigErrors`] value; no input makes this crate panic.
//!
//! How: the text is parsed into `toml`'s spanned document ([`toml::de::DeTable`]), which
//! keeps the byte span of every key and value. The schema in `schema.rs` then walks that
//! document table by table (`walk.rs`): each getter checks the type and form of one value
//! and, when it is wrong, records the problem with the line of that very value and goes on
//! with the default. Unknown keys are found per table against the list of keys it may hold,
//! with a "did you mean" suggestion. Cross-key rules (mutually exclusive keys, address
//! clashes) run after their section is read. A TOML syntax error is reported alone: the
//! document cannot be walked.
//!
//! This replaces serde derive + `deny_unknown_fields`: serde stops at the first problem and
//! loses the position of values once they are converted, while the walk keeps both.

pub mod diff;
mod error;
mod schema;
mod token;
mod values;
mod walk;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use turnout_core::SlotName;

pub use error::{ConfigError, ConfigErrors};
pub use token::TokenSource;

/// A validated `turnout.toml`. Every section has a default, so an empty file is valid.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// `[listen]`: the data plane.
    pub listen: Listen,
    /// `[runtime]`: the async runtime.
    pub runtime: Runtime,
    /// `[admin]`: the admin API.
    pub admin: Admin,
    /// `[state]`: where routing and deployment state is kept.
    pub state: State,
    /// `[slots.blue]`, `[slots.green]`: static upstreams.
    pub slots: Slots,
    /// `[upstream]`: connections to upstreams.
    pub upstream: UpstreamOptions,
    /// `[health]`: active health checks; `None` when the section is absent.
    pub health: Option<Health>,
    /// `[provision]`: turnout starts each version itself; `None` when absent.
    pub provision: Option<Provision>,
    /// `[verify]`: smoke checks against the candidate; `None` when absent.
    pub verify: Option<Verify>,
    /// `[shadow]`: the shadow stage before the switch; `None` when absent.
    pub shadow: Option<Shadow>,
    /// `[promote]`: how the candidate becomes live.
    pub promote: Promote,
    /// `[bake]`: watching the new live slot after the switch.
    pub bake: Bake,
    /// `[decommission]`: retiring the standby slot.
    pub decommission: Decommission,
    /// `[notify]`: webhooks for events; `None` when absent.
    pub notify: Option<Notify>,
    /// `[sessions]`: session stickiness through a cutover; `None` when absent.
    pub sessions: Option<Sessions>,
    /// `[hooks]`: commands at stage edges.
    pub hooks: Hooks,
    /// `[log]`: the access log.
    pub log: Log,
}

/// `[log]`: logs besides turnout's own (which go to stderr, `--log-format`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Log {
    /// `access`: one JSON line per request (`off`, the default; `stdout`; `stderr`; or a
    /// file path, appended to, relative to the config file's directory).
    pub access: AccessLog,
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum AccessLog {
    /// No access log.
    #[default]
    Off,
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A file, appended to.
    File(PathBuf),
}

impl AccessLog {
    /// `off`, `stdout`, `stderr`, or a path.
    pub fn parse(text: &str) -> Result<AccessLog, String> {
        Ok(match text {
            "off" => AccessLog::Off,
            "stdout" => AccessLog::Stdout,
            "stderr" => AccessLog::Stderr,
            "" => return Err("expected \"off\", \"stdout\", \"stderr\" or a file path".into()),
            path => AccessLog::File(PathBuf::from(path)),
        })
    }
}

/// `[listen]`: where the data plane accepts requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    /// `addr`, default `0.0.0.0:8080`: HTTP/1.1 and h2c.
    pub addr: SocketAddr,
    /// `header_timeout`, default 10s: an unfinished request head is cut off after this.
    pub header_timeout: Duration,
    /// `upgrade_drain`, default 30s: how long an upgraded (WebSocket) connection on a slot
    /// that stopped being live may keep running.
    pub upgrade_drain: Duration,
    /// `max_connections`, default 10000: open client connections at most; past it a new
    /// connection gets a `503` with `Connection: close` while the open ones are served.
    /// `0` means no limit.
    pub max_connections: usize,
    /// `max_body`, default none: a request body larger than this (a size such as
    /// `"10MB"`, or a number of bytes) is answered `413` and its connection closed; a
    /// body with a `Content-Length` over it reaches no upstream.
    pub max_body: Option<u64>,
    /// `[listen.tls]`: an HTTPS listener as well; `None` when absent.
    pub tls: Option<ListenTls>,
}

impl Default for Listen {
    fn default() -> Listen {
        Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            header_timeout: Duration::from_secs(10),
            upgrade_drain: Duration::from_secs(30),
            max_connections: 10_000,
            max_body: None,
            tls: None,
        }
    }
}

/// `[listen.tls]`: an HTTPS listener (ALPN h2 and http/1.1).
#[derive(Debug, Clone, PartialEq)]
pub struct ListenTls {
    /// `addr`, default `0.0.0.0:8443`.
    pub addr: SocketAddr,
    /// `cert` (required): PEM certificate chain file.
    pub cert: PathBuf,
    /// `key` (required): PEM private key file.
    pub key: PathBuf,
}

/// `[runtime]`: the async runtime.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Runtime {
    /// `worker_threads` (at least 1); `None` means the number of cores.
    pub worker_threads: Option<usize>,
}

/// `[admin]`: the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// `addr`, default `127.0.0.1:9901`.
    pub addr: SocketAddr,
    /// `token`: where the bearer token is read from; required unless `addr` is loopback
    /// (there, without one, the router generates one into the state directory).
    pub token: Option<TokenSource>,
    /// `hosts`: the names the admin API may be reached by (the `Host` header), besides
    /// IP addresses and `localhost` — a defence against DNS rebinding. Default none.
    pub hosts: Vec<String>,
}

impl Default for Admin {
    fn default() -> Admin {
        Admin {
            addr: SocketAddr::from(([127, 0, 0, 1], 9901)),
            token: None,
            hosts: Vec::new(),
        }
    }
}

/// `[state]`: where routing and deployment state is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// `dir`, default `./turnout-state`: the embedded store's directory.
    pub dir: PathBuf,
    /// `backend`, default `embedded`.
    pub backend: StateBackend,
    /// `endpoints`: etcd endpoints; required (non-empty) with the etcd backend.
    pub endpoints: Vec<String>,
    /// `prefix`, default `/turnout`: the etcd key prefix.
    pub prefix: String,
    /// `advertise`: the URL other replicas send deployment calls to when this one leads
    /// (etcd backend); default `http://` + the admin address.
    pub advertise: Option<String>,
    /// `ca`: the PEM CA certificates etcd's server certificate is checked against;
    /// required with `https://` endpoints.
    pub ca: Option<PathBuf>,
    /// `cert` and `key`: a client certificate for etcd (`--client-cert-auth`).
    pub cert: Option<PathBuf>,
    /// See `cert`.
    pub key: Option<PathBuf>,
    /// `user`: the etcd user (etcd's authentication).
    pub user: Option<String>,
    /// `password`: its password, `env:NAME` or `file:PATH`.
    pub password: Option<TokenSource>,
    /// `lease`, default 5s (2s to 60s, whole seconds): the TTL of each replica's etcd
    /// lease — how long a dead leader is waited for before another replica takes over,
    /// and how long a leader cut off from etcd keeps leading before it steps down.
    pub lease: Duration,
}

impl Default for State {
    fn default() -> State {
        State {
            dir: PathBuf::from("./turnout-state"),
            backend: StateBackend::Embedded,
            endpoints: Vec::new(),
            prefix: "/turnout".to_string(),
            advertise: None,
            ca: None,
            cert: None,
            key: None,
            user: None,
            password: None,
            lease: Duration::from_secs(5),
        }
    }
}

/// `state.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateBackend {
    /// `"embedded"`: files under `state.dir`.
    #[default]
    Embedded,
    /// `"etcd"`: an etcd cluster at `state.endpoints`.
    Etcd,
}

/// `[slots]`: the two slots' static upstreams.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Slots {
    /// `[slots.blue]`.
    pub blue: SlotConfig,
    /// `[slots.green]`.
    pub green: SlotConfig,
}

impl Slots {
    /// The config of `slot`.
    pub fn get(&self, slot: SlotName) -> &SlotConfig {
        match slot {
            SlotName::Blue => &self.blue,
            SlotName::Green => &self.green,
        }
    }
}

/// `[slots.blue]` or `[slots.green]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SlotConfig {
    /// `upstreams`: each `host:port` (no scheme), without duplicates.
    pub upstreams: Vec<String>,
    /// `version`: the version these upstreams run, if known.
    pub version: Option<String>,
}

/// `[upstream]`: connections from turnout to upstreams.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamOptions {
    /// `connect_timeout`, default 2s.
    pub connect_timeout: Duration,
    /// `response_timeout`, default 60s: until the response head arrives.
    pub response_timeout: Duration,
    /// `idle_timeout`, default 60s: pooled idle connections are closed after this.
    pub idle_timeout: Duration,
    /// `max_idle`, default 128: pooled idle connections per upstream.
    pub max_idle: usize,
    /// `tls = true` (default false): every connection to an upstream is TLS; `None` when
    /// off.
    pub tls: Option<UpstreamTls>,
}

/// `[upstream] tls = true`: how upstreams' certificates are checked.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// `ca` (required with `tls = true`): the PEM file of the CA(s) trusted for the
    /// upstreams' certificates (relative to the config file's directory).
    pub ca: PathBuf,
    /// `server_name`: the name checked in the upstreams' certificates; default the host
    /// of each upstream's address.
    pub server_name: Option<String>,
}

impl Default for UpstreamOptions {
    fn default() -> UpstreamOptions {
        UpstreamOptions {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_idle: 128,
            tls: None,
        }
    }
}

/// `[health]`: active health checks of every upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// `path`, default `/healthz`; starts with `/`.
    pub path: String,
    /// `interval`, default 1s.
    pub interval: Duration,
    /// `timeout`, default 500ms.
    pub timeout: Duration,
    /// `healthy`, default 2: consecutive passes to become healthy.
    pub healthy: u32,
    /// `unhealthy`, default 2: consecutive failures to become unhealthy.
    pub unhealthy: u32,
    /// `failover`, default false: while every upstream of the live slot is unhealthy and
    /// the standby has a healthy one, requests go to the standby (a `failover` event
    /// says when this starts and ends). The live slot stays live: the saved routing
    /// state does not change.
    pub failover: bool,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            path: "/healthz".to_string(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy: 2,
            unhealthy: 2,
            failover: false,
        }
    }
}

/// `[provision]`: turnout starts each version itself (`command`) or asks external
/// infrastructure (`up` and `down`, with `TURNOUT_SLOT` / `TURNOUT_VERSION` set).
/// Exactly one of the two forms is given.
#[derive(Debug, Clone, PartialEq)]
pub struct Provision {
    /// `command`: started `instances` times, `{port}` and `{version}` substituted.
    pub command: Option<String>,
    /// `instances`, default 1.
    pub instances: usize,
    /// `up`: brings a slot up with a version.
    pub up: Option<String>,
    /// `down`: takes a slot down.
    pub down: Option<String>,
    /// `health_timeout`, default 60s: how long new instances may take to become healthy.
    pub health_timeout: Duration,
    /// `stop_timeout`, default 10s: instances get SIGTERM, then SIGKILL after this.
    pub stop_timeout: Duration,
    /// `timeout`, default 5m: for each `up` or `down` command.
    pub timeout: Duration,
}

/// `[verify]`: smoke checks against the candidate before it gets any traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Verify {
    /// `checks`: HTTP requests and their expected answers.
    pub checks: Vec<Check>,
    /// `command`: a script run with `TURNOUT_TARGET` set to the candidate's URL.
    pub command: Option<String>,
    /// `timeout`, default 30s: for the whole verify stage.
    pub timeout: Duration,
}

/// One entry of `verify.checks`.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// `path` (required): starts with `/`.
    pub path: String,
    /// `status`, default 200.
    pub status: u16,
    /// `body_contains`: text the response body must contain.
    pub body_contains: Option<String>,
}

/// `[shadow]`: mirror live requests to the candidate and compare before the switch.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    /// `duration`, default 2m.
    pub duration: Duration,
    /// `sample`, default 1.0: share of eligible requests mirrored, 0 to 1.
    pub sample: f64,
    /// `methods`, default `["GET", "HEAD", "OPTIONS"]`: methods that are mirrored.
    pub methods: Vec<String>,
    /// `ignore_headers`, default none: response headers left out of the comparison
    /// (lower case).
    pub ignore_headers: Vec<String>,
    /// `ignore_json`, default none: JSON pointers left out of body comparison.
    pub ignore_json: Vec<String>,
    /// `max_mismatch_rate`, default 0.01: share of compared requests allowed to differ.
    pub max_mismatch_rate: f64,
    /// `max_latency_ratio_p99`, default 1.5: candidate p99 over live p99.
    pub max_latency_ratio_p99: f64,
    /// `min_requests`, default 20: compared requests needed for a verdict.
    pub min_requests: u64,
    /// `max_body`, default 1 MiB: larger bodies are not mirrored (counted as dropped).
    pub max_body: u64,
    /// `noise_sample`, default 0.1: share of requests also sent twice to live to learn
    /// which differences are noise.
    pub noise_sample: f64,
    /// `mirror_unsafe`, default false: allow methods other than GET, HEAD, OPTIONS and
    /// TRACE in `methods`.
    pub mirror_unsafe: bool,
    /// `paths`, default all: only requests whose path starts with one of these are
    /// mirrored.
    pub paths: Vec<String>,
    /// `skip_paths`, default none: requests whose path starts with one of these are not.
    pub skip_paths: Vec<String>,
    /// `timeout`, default 10s: a copy with no full response in this time counts as failed.
    pub timeout: Duration,
    /// `queue`, default 256: copies waiting to be sent; when full, new ones are dropped
    /// (and counted) so that live requests never wait. Memory is bounded by about
    /// `queue` × 3 × `max_body`.
    pub queue: usize,
    /// `noise_relative_margin`, default 0.2: a field's candidate difference rate must
    /// exceed its live-vs-live rate by this share...
    pub noise_relative_margin: f64,
    /// `noise_absolute_margin`, default 0.0003: ...and by this share of the endpoint's
    /// requests, to count against the candidate.
    pub noise_absolute_margin: f64,
}

impl Default for Shadow {
    fn default() -> Shadow {
        Shadow {
            duration: Duration::from_secs(120),
            sample: 1.0,
            methods: ["GET", "HEAD", "OPTIONS"].map(String::from).to_vec(),
            ignore_headers: Vec::new(),
            ignore_json: Vec::new(),
            max_mismatch_rate: 0.01,
            max_latency_ratio_p99: 1.5,
            min_requests: 20,
            max_body: 1024 * 1024,
            noise_sample: 0.1,
            mirror_unsafe: false,
            paths: Vec::new(),
            skip_paths: Vec::new(),
            timeout: Duration::from_secs(10),
            queue: 256,
            noise_relative_margin: 0.2,
            noise_absolute_margin: 0.0003,
        }
    }
}

/// `[promote]`: how the candidate becomes live.
#[derive(Debug, Clone, PartialEq)]
pub struct Promote {
    /// `mode`, default `auto`.
    pub mode: PromoteMode,
    /// `steps`: canary weights in percent, strictly increasing, ending at 100; empty unless
    /// `mode = "canary"` (default `[5, 25, 50, 100]` then).
    pub steps: Vec<u8>,
    /// `step_duration`, default 1m: how long each canary step is analysed before the
    /// next (`turnout promote` moves on early).
    pub step_duration: Duration,
}

impl Default for Promote {
    fn default() -> Promote {
        Promote {
            mode: PromoteMode::Auto,
            steps: Vec::new(),
            step_duration: Duration::from_secs(60),
        }
    }
}

/// `promote.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromoteMode {
    /// `"auto"`: switch as soon as the gates pass.
    #[default]
    Auto,
    /// `"manual"`: wait for `turnout promote` before the switch.
    Manual,
    /// `"canary"`: move traffic in `steps`, baking at each.
    Canary,
}

/// `[bake]`: watching the new live slot after the switch; a failed bake rolls back.
#[derive(Debug, Clone, PartialEq)]
pub struct Bake {
    /// `duration`, default 5m.
    pub duration: Duration,
    /// `interval`, default 1s: how often the rules are evaluated.
    pub interval: Duration,
    /// `window`, default 10s: the sliding window each evaluation looks at.
    pub window: Duration,
    /// `max_error_rate`, default 0.01: share of 5xx responses allowed, 0 to 1.
    pub max_error_rate: f64,
    /// `max_p99`: p99 latency allowed, if any.
    pub max_p99: Option<Duration>,
    /// `max_p99_ratio`: p99 allowed relative to the previous version's, if any.
    pub max_p99_ratio: Option<f64>,
    /// `min_requests`, default 20: requests needed before the error rate counts.
    pub min_requests: u64,
    /// `require_traffic`, default false: fail the bake when fewer than `min_requests` came.
    pub require_traffic: bool,
    /// `retry_on_standby`, default false: retry failed idempotent requests on the standby.
    pub retry_on_standby: bool,
}

impl Default for Bake {
    fn default() -> Bake {
        Bake {
            duration: Duration::from_secs(300),
            interval: Duration::from_secs(1),
            window: Duration::from_secs(10),
            max_error_rate: 0.01,
            max_p99: None,
            max_p99_ratio: None,
            min_requests: 20,
            require_traffic: false,
            retry_on_standby: false,
        }
    }
}

/// `[decommission]`: retiring the previous live slot after a good bake.
#[derive(Debug, Clone, PartialEq)]
pub struct Decommission {
    /// `delay`, default 1m: the standby is kept this long, then stopped.
    pub delay: Duration,
}

impl Default for Decommission {
    fn default() -> Decommission {
        Decommission {
            delay: Duration::from_secs(60),
        }
    }
}

/// `[notify]`: every event POSTed as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Notify {
    /// `webhooks`: `http://` or `https://` URLs.
    pub webhooks: Vec<String>,
    /// `timeout`, default 5s: per POST.
    pub timeout: Duration,
    /// `ca`: the PEM CA certificates `https://` webhooks are checked against (default:
    /// the system's bundle).
    pub ca: Option<PathBuf>,
}

/// `[sessions]`: keep existing sessions on the old slot through a cutover.
#[derive(Debug, Clone, PartialEq)]
pub struct Sessions {
    /// `cookie` (required): the name of the application's session cookie.
    pub cookie: String,
    /// `drain`, default 10m: how long old sessions stay on the old slot.
    pub drain: Duration,
    /// `secret`: key for signing turnout's own slot cookie, if any.
    pub secret: Option<TokenSource>,
}

/// `[hooks]`: commands run at stage edges, with the slot and version in the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Hooks {
    /// `pre_deploy`: before anything else.
    pub pre_deploy: Option<String>,
    /// `post_provision`: after the candidate is up and healthy.
    pub post_provision: Option<String>,
    /// `pre_switch`: just before traffic moves.
    pub pre_switch: Option<String>,
    /// `post_switch`: just after traffic moved.
    pub post_switch: Option<String>,
    /// `post_bake`: after a good bake.
    pub post_bake: Option<String>,
    /// `on_rollback`: after a rollback.
    pub on_rollback: Option<String>,
    /// `pre_decommission`: before the standby is stopped.
    pub pre_decommission: Option<String>,
    /// `post_decommission`: after the standby is stopped.
    pub post_decommission: Option<String>,
    /// `timeout`, default 5m: per hook.
    pub timeout: Duration,
}

impl Default for Hooks {
    fn default() -> Hooks {
        Hooks {
            pre_deploy: None,
            post_provision: None,
            pre_switch: None,
            post_switch: None,
            post_bake: None,
            on_rollback: None,
            pre_decommission: None,
            post_decommission: None,
            timeout: Duration::from_secs(300),
        }
    }
}

impl Config {
    /// Parses and validates config text. `origin` names the file in messages.
    ///
    /// Returns every problem found: all of them on a valid TOML document, or the one syntax
    /// error of an invalid one.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
        let doc = match toml::de::DeTable::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                let error = ConfigError {
                    key: String::new(),
                    line: e.span().map(|span| walk::line_of(text, span.start)),
                    message: format!("invalid TOML: {}", e.message()),
                };
                return Err(ConfigErrors::new(origin, vec![error]));
            }
        };
        let mut ctx = walk::Ctx::new(text);
        let config = schema::config(&mut ctx, &doc);
        if ctx.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors::new(origin, ctx.errors))
        }
    }

    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml(&text, &origin),
            Err(e) => {
                let error = ConfigError {
                    key: String::new(),
                    line: None,
                    message: format!("cannot read config file {origin}: {e}"),
                };
                Err(ConfigErrors::new(&origin, vec![error]))
            }
        }
    }
}

#[cfg(test)]
mod tests;
