//! The data plane's settings.

use std::time::Duration;

use crate::health::HealthCheck;
use crate::sessions::SessionOptions;
use crate::tls::UpstreamTls;

/// Data-plane settings (from `[listen]`, `[upstream]` and `[health]`).
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// An unfinished request head is cut off after this.
    pub header_timeout: Duration,
    /// How long an upgraded connection may go on once its slot is no longer live.
    pub upgrade_drain: Duration,
    /// Time to open a TCP connection to an upstream.
    pub connect_timeout: Duration,
    /// Time from sending a request to its response head.
    pub response_timeout: Duration,
    /// Idle pooled connections are closed after this.
    pub idle_timeout: Duration,
    /// Idle pooled connections kept per upstream.
    pub max_idle: usize,
    /// Active health checks.
    pub health: HealthCheck,
    /// On shutdown, how long requests in flight may take to finish.
    pub shutdown_grace: Duration,
    /// Open client connections at most (`0`: no limit). Past it a new connection is
    /// answered `503` with `Connection: close` and closed; open ones are served on.
    pub max_connections: usize,
    /// A request body larger than this is answered `413` and its connection closed
    /// (`None`: no limit). See `limits.rs`.
    pub max_body: Option<u64>,
    /// Failover (`[health] failover`): while every upstream of the live slot is
    /// unhealthy and the standby has a healthy one, requests go to the standby. The
    /// routing state is not changed.
    pub failover: bool,
    /// TLS to every upstream (`[upstream] tls`); `None`: plain TCP.
    pub upstream_tls: Option<UpstreamTls>,
    /// Session affinity through a cutover (`[sessions]`, see `sessions.rs`); `None`:
    /// off, and a request pays one `Option` check for it.
    pub sessions: Option<SessionOptions>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            header_timeout: Duration::from_secs(10),
            upgrade_drain: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_idle: 128,
            health: HealthCheck::default(),
            shutdown_grace: Duration::from_secs(30),
            max_connections: 0,
            max_body: None,
            failover: false,
            upstream_tls: None,
            sessions: None,
        }
    }
}
