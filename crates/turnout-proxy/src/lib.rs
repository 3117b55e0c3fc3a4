//! turnout's data plane: the listener, the routing table swapped atomically at each switch,
//! upstream connection pools, active and passive health, and upgraded-connection drain.
//!
//! The request path is described phase by phase in `forward.rs`, and the modules' layers
//! in ARCHITECTURE.md (no module imports one above it, none imports this root). The
//! control plane talks to the data plane only through [`Proxy::apply`] (a new routing
//! state) and the read-only views ([`Proxy::table`], [`Proxy::health_events`]), and the
//! taps on live traffic ([`Proxy::start_shadow`], [`Proxy::start_capture`]; see `tap.rs`
//! and `mirror.rs`), which cost a request one relaxed atomic load while none runs.

mod access;
mod bufpool;
mod client;
mod error;
mod forward;
mod h1conn;
mod h2;
mod head;
mod health;
pub mod http1;
mod ids;
mod io;
mod limits;
mod mirror;
#[cfg(test)]
mod mirror_tests;
mod options;
#[cfg(test)]
mod proxy_tests;
mod request_body;
mod response_body;
mod server;
mod sessions;
mod shared;
mod stats;
mod table;
mod tap;
mod tls;
mod tunnel;
mod upstream;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, watch};
use turnout_core::{RoutingState, SlotName};

use shared::{Inner, LogLimiter, KEPT_VERSIONS};

pub use error::ProxyError;
pub use health::{HealthCheck, HealthEvent};
pub use mirror::lower_thread_priority;
pub use options::ProxyOptions;
pub use request_body::RequestBody;
pub use response_body::{BodyError, ProxyBody};
pub use sessions::{derive_key, key_from_hex, key_to_hex, random_key, SessionOptions, PIN_COOKIE};
pub use stats::{Counts, SlotStats, StatsSnapshot, STATUS_CLASSES};
pub use table::{SlotPool, Table};
pub use tap::{
    request_id, CaptureHandle, DelayHistogram, ShadowCounters, ShadowCounts, ShadowHandle,
    ShadowOptions, SHADOW_HEADER,
};
pub use tls::{TlsCert, TlsClient, TlsError, UpstreamTls};
pub use upstream::{Upstream, UpstreamRef};

/// The data plane. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl Proxy {
    /// A data plane routing as `state` says. Must be called within a Tokio runtime: it
    /// starts the health checks.
    pub fn new(opts: ProxyOptions, state: &RoutingState) -> Proxy {
        let empty = |name| Arc::new(SlotPool::new(name, None, Vec::new()));
        let table = Table::new(
            0,
            None,
            turnout_core::Weights::all_to(None),
            [empty(SlotName::Blue), empty(SlotName::Green)],
        );
        let (live_tx, live_rx) = watch::channel(None);
        let (health_tx, _) = broadcast::channel(256);
        let sessions = opts.sessions.as_ref().map(sessions::Sessions::new);
        let proxy = Proxy {
            inner: Arc::new(Inner {
                errors: LogLimiter::new(),
                table: ArcSwap::from_pointee(table),
                opts,
                live_tx,
                live_rx,
                health_tx,
                stats: [SlotStats::new(), SlotStats::new()],
                retry_on: AtomicU8::new(0),
                tap: tap::TapState::new(),
                mirror: std::sync::OnceLock::new(),
                epochs: std::sync::Mutex::new(Default::default()),
                access: std::sync::OnceLock::new(),
                keep_idle_on_stop: std::sync::atomic::AtomicBool::new(false),
                refused: std::sync::atomic::AtomicU64::new(0),
                refusals: LogLimiter::new(),
                connections: std::sync::atomic::AtomicUsize::new(0),
                refusing: std::sync::atomic::AtomicUsize::new(0),
                sessions,
            }),
        };
        proxy.apply(state);
        proxy
    }

    /// Routes as `state` says from the next request on: one atomic store. Upstreams that
    /// stay keep their pools and health; new ones start healthy and get a health check at
    /// once; removed ones are dropped when their last request ends.
    pub fn apply(&self, state: &RoutingState) {
        let current = self.inner.table.load();
        let slots = SlotName::ALL.map(|name| {
            let want = state.slot(name);
            let old = current.slot(name);
            let upstreams = want
                .upstreams
                .iter()
                .map(|addr| {
                    old.upstreams
                        .iter()
                        .find(|u| &u.addr == addr)
                        .cloned()
                        .unwrap_or_else(|| {
                            let up = Arc::new(
                                Upstream::new(name, addr.clone(), self.inner.opts.max_idle)
                                    .with_tls(self.inner.opts.upstream_tls.clone()),
                            );
                            health::spawn(
                                &up,
                                self.inner.opts.health.clone(),
                                self.inner.opts.idle_timeout,
                                self.inner.health_tx.clone(),
                            );
                            up
                        })
                })
                .collect();
            Arc::new(SlotPool::new(
                name,
                want.version.as_deref().map(Arc::from),
                upstreams,
            ))
        });
        self.mark_versions(&slots);
        let mut table = Table::new(state.revision, state.live, state.weights, slots);
        table.failover = self.inner.opts.failover;
        table.drain = state.drain.clone();
        if let Some(sessions) = &self.inner.sessions {
            sessions.set_versions(SlotName::ALL.map(|n| table.slot(n).version.as_deref()));
        }
        self.inner.table.store(Arc::new(table));
        self.inner.live_tx.send_replace(state.live);
    }

    /// Takes the upstreams at `addrs` out of rotation until a health check passes: for
    /// upstreams a reload added to a slot, which users must not reach before they were
    /// checked (at a first start, upstreams count as healthy until a check says otherwise,
    /// so that a router starting in front of a running service serves at once).
    pub fn hold_until_checked(&self, addrs: &[String]) {
        let table = self.inner.table.load();
        for name in SlotName::ALL {
            for up in &table.slot(name).upstreams {
                if addrs.contains(&up.addr) {
                    up.hold_until_checked();
                }
            }
        }
    }

    /// When a slot's version changes, the counts so far stay the old version's.
    fn mark_versions(&self, slots: &[Arc<SlotPool>; 2]) {
        let mut epochs = self.inner.epochs.lock().unwrap_or_else(|e| e.into_inner());
        for (pool, e) in slots.iter().zip(epochs.iter_mut()) {
            if pool.version == e.current {
                continue;
            }
            let now = self.inner.stats(pool.name).counts();
            let done = now.since(&e.start);
            let old = std::mem::replace(&mut e.current, pool.version.clone());
            // A version that got no request leaves nothing behind.
            if done != Counts::default() {
                match e.past.iter_mut().find(|(v, _)| *v == old) {
                    Some((_, c)) => c.add(&done),
                    None => {
                        if e.past.len() == KEPT_VERSIONS {
                            e.past.pop_front();
                        }
                        e.past.push_back((old, done));
                    }
                }
            }
            e.start = now;
        }
    }

    /// The request counts of `slot` by version, for metrics: the current version's since
    /// it was placed there, and each of up to ten earlier versions' final counts (a
    /// version placed twice is one entry). Every request routed to the slot is in exactly
    /// one entry (a request still in flight when its slot's version changed counts for
    /// the new version). `None` is a slot with no version.
    pub fn version_counts(&self, slot: SlotName) -> Vec<(Option<Arc<str>>, Counts)> {
        let epochs = self.inner.epochs.lock().unwrap_or_else(|e| e.into_inner());
        let e = &epochs[slot.index()];
        let now = self.inner.stats(slot).counts().since(&e.start);
        let mut out: Vec<(Option<Arc<str>>, Counts)> = e.past.iter().cloned().collect();
        match out.iter_mut().find(|(v, _)| *v == e.current) {
            Some((_, c)) => c.add(&now),
            None => out.push((e.current.clone(), now)),
        }
        out
    }

    /// Turns the access log on (once; later calls do nothing): a JSON line per request
    /// (time, method, path, status, slot, version, upstream, duration_ms, bytes,
    /// request_id), written to `to` by a thread of its own. Lines go through a bounded
    /// queue; when it is full a line is dropped and counted
    /// ([`Proxy::access_log_dropped`]), so a slow log never slows a request.
    pub fn set_access_log(&self, to: Box<dyn std::io::Write + Send>) {
        let _ = self.inner.access.set(access::AccessLog::start(to));
    }

    /// Access log lines dropped because the queue was full.
    pub fn access_log_dropped(&self) -> u64 {
        self.inner.access.get().map_or(0, |a| a.dropped())
    }

    /// The routing table in force now.
    pub fn table(&self) -> Arc<Table> {
        self.inner.table.load_full()
    }

    /// Client connections open now, on every listener.
    pub fn open_connections(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Connections refused since start because `max_connections` were open.
    pub fn refused_connections(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// The slot requests fail over to now (see [`ProxyOptions::failover`]): the standby,
    /// while failover is on, all traffic goes to the live slot, none of its upstreams is
    /// healthy and the standby has a healthy one. `None` otherwise.
    pub fn failover_target(&self) -> Option<SlotName> {
        self.inner.table.load().failover_target()
    }

    /// How many upstreams of `slot` are healthy now.
    pub fn healthy_count(&self, slot: SlotName) -> usize {
        self.inner.table.load().slot(slot).healthy_count()
    }

    /// Request statistics of `slot` since the router started: every proxied request
    /// routed to it (turnout's own 502/503/504 included; requests refused for bad input
    /// before routing, and requests while no slot is live, are not). Take two
    /// [`SlotStats::snapshot`]s and [`StatsSnapshot::since`] for a window. They survive
    /// switches and [`Proxy::apply`].
    pub fn stats(&self, slot: SlotName) -> &SlotStats {
        self.inner.stats(slot)
    }

    /// Retry on standby (`[bake] retry_on_standby`): with `Some((from, to))`, a body-less
    /// idempotent request (GET, HEAD, OPTIONS, PUT, DELETE, TRACE; not an upgrade) routed
    /// to `from` that fails there — no response, or a 5xx response head — before
    /// anything reached the client is sent once to `to`. The failed attempt counts in
    /// `from`'s statistics, the retry in `to`'s. `None` (the default), or `from == to`,
    /// turns it off. Kept across [`Proxy::apply`].
    pub fn set_retry_on(&self, retry: Option<(SlotName, SlotName)>) {
        let code = match retry {
            Some((from, to)) if from != to => 1 + 2 * from.index() as u8 + to.index() as u8,
            _ => 0,
        };
        self.inner.retry_on.store(code, Ordering::Relaxed);
    }

    /// Starts mirroring live requests to `opts.target` (traffic shadowing), replacing any
    /// shadow running. Must be called within a Tokio runtime (it spawns the mirror
    /// dispatcher). Each request that passes the filter is copied (head as forwarded,
    /// body up to `max_body`) while it is relayed; once its live response has ended, a
    /// copy is queued (`try_send`, dropped and counted when the queue is full) and sent to
    /// the target with `X-Turnout-Shadow: 1`; a [`turnout_shadow::Sample`] comes out of
    /// the handle when the copies are done. The live response is never delayed or changed.
    /// Dropping the handle's receiver stops the shadow.
    pub fn start_shadow(&self, opts: ShadowOptions) -> ShadowHandle {
        mirror::start_shadow(&self.inner, opts)
    }

    /// Stops the running shadow, if any: no new copies; those queued are still sent, and
    /// then its samples channel ends.
    pub fn stop_shadow(&self) {
        mirror::stop_shadow(&*self.inner)
    }

    /// Starts a capture of live exchanges: a `sample` share of the requests (by the same
    /// request-id hash as the shadow), with bodies up to `max_body`, each sent on a
    /// channel of `queue` exchanges once its response has ended (dropped and counted when
    /// full). Several captures may run; dropping the handle stops this one. Upgrades and
    /// exchanges that failed (turnout's own error answers, broken-off bodies) are not
    /// captured.
    pub fn start_capture(&self, sample: f64, max_body: usize, queue: usize) -> CaptureHandle {
        mirror::start_capture(&*self.inner, sample, max_body, queue)
    }

    /// Upstream health changes, as they happen.
    pub fn health_events(&self) -> broadcast::Receiver<HealthEvent> {
        self.inner.health_tx.subscribe()
    }

    /// Makes the next stop of [`Proxy::serve`] a handover's: idle HTTP/1.1 keep-alive
    /// connections stay open until their next request, which gets `Connection: close`
    /// (or until they are idle too long, or the grace period ends), instead of being
    /// closed at once while the client may be sending on them.
    pub fn keep_idle_connections_on_stop(&self) {
        self.inner
            .keep_idle_on_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Serves the data plane on `listener` until `shutdown` resolves; then stops accepting
    /// and returns once the requests in flight have finished (at most `shutdown_grace`).
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        server::serve(self.inner.clone(), listener, None, shutdown).await
    }

    /// [`Proxy::serve`] for HTTPS: a TLS handshake with `tls` (ALPN `h2`, `http/1.1`)
    /// first. `tls` can be reloaded ([`TlsCert::reload`]) while this runs.
    pub async fn serve_tls(
        &self,
        listener: tokio::net::TcpListener,
        tls: TlsCert,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        server::serve(self.inner.clone(), listener, Some(tls), shutdown).await
    }
}
