//! The state every part of the data plane shares: the routing table, the settings, the
//! statistics, the taps, the access log and the connection counts. [`crate::Proxy`] is a
//! handle on it; the drivers (`server`, `h1conn`, `h2`, `forward`) read it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, watch};
use turnout_core::SlotName;

use crate::health::HealthEvent;
use crate::mirror::{MirrorHost, MirrorRuntime};
use crate::options::ProxyOptions;
use crate::stats::{Counts, SlotStats};
use crate::table::Table;
use crate::tap::TapState;
use crate::{access, sessions};

/// Lets one warning a second through, counting the ones it holds back: an outage must
/// not turn into a log line per request.
pub(crate) struct LogLimiter {
    start: std::time::Instant,
    last: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
}

impl LogLimiter {
    pub(crate) fn new() -> LogLimiter {
        LogLimiter {
            start: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last one)` when this warning may be logged.
    pub(crate) fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.start.elapsed().as_secs() + 1;
        let last = self.last.load(Relaxed);
        if last != now
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.held.swap(0, Relaxed))
        } else {
            self.held.fetch_add(1, Relaxed);
            None
        }
    }
}

pub(crate) struct Inner {
    pub(crate) errors: LogLimiter,
    pub(crate) table: ArcSwap<Table>,
    pub(crate) opts: ProxyOptions,
    pub(crate) live_tx: watch::Sender<Option<SlotName>>,
    pub(crate) live_rx: watch::Receiver<Option<SlotName>>,
    pub(crate) health_tx: broadcast::Sender<HealthEvent>,
    /// Request statistics per slot (by `SlotName::index`); they outlive every table.
    pub(crate) stats: [SlotStats; 2],
    /// Retry on standby: 0 off, else `1 + 2 × from + to` (slot indexes). Read only when a
    /// request failed.
    pub(crate) retry_on: AtomicU8,
    /// Shadow and capture taps (see `mirror.rs`); one relaxed load per request when off.
    pub(crate) tap: TapState,
    /// The low-priority thread and runtime that mirror copies run on, started with the
    /// first shadow.
    pub(crate) mirror: std::sync::OnceLock<MirrorRuntime>,
    /// Per slot, where each version's counts begin (for metrics by version); touched
    /// only by [`Proxy::apply`] and [`Proxy::version_counts`], never by a request.
    pub(crate) epochs: std::sync::Mutex<[Epochs; 2]>,
    /// The access log, when one is on (set once, before serving).
    pub(crate) access: std::sync::OnceLock<access::AccessLog>,
    /// Set before a stop that hands over to a new router process: idle keep-alive
    /// connections are not closed when the stop begins (a close races the client's next
    /// request) but wait for that request, which is answered with `Connection: close`.
    pub(crate) keep_idle_on_stop: std::sync::atomic::AtomicBool,
    /// Connections refused because `max_connections` were open.
    pub(crate) refused: std::sync::atomic::AtomicU64,
    /// Logs the refusals, one line a second at most.
    pub(crate) refusals: LogLimiter,
    /// Open client connections, on every listener (see `limits.rs`).
    pub(crate) connections: std::sync::atomic::AtomicUsize,
    /// Refused connections being answered now.
    pub(crate) refusing: std::sync::atomic::AtomicUsize,
    /// `[sessions]`, made once from `opts.sessions`.
    pub(crate) sessions: Option<sessions::Sessions>,
}

/// How many earlier versions per slot keep their counts for [`Proxy::version_counts`].
pub(crate) const KEPT_VERSIONS: usize = 10;

/// One slot's versions: the current one and where its counts began, and the final counts
/// of the earlier ones (newest last, at most [`KEPT_VERSIONS`]).
#[derive(Default)]
pub(crate) struct Epochs {
    pub(crate) current: Option<Arc<str>>,
    pub(crate) start: Counts,
    pub(crate) past: std::collections::VecDeque<(Option<Arc<str>>, Counts)>,
}

impl Inner {
    /// The statistics of `slot`.
    pub(crate) fn stats(&self, slot: SlotName) -> &SlotStats {
        &self.stats[slot.index()]
    }

    /// The slot a failed request routed to `from` may be retried on, if any.
    pub(crate) fn retry_target(&self, from: SlotName) -> Option<SlotName> {
        match self.retry_on.load(Ordering::Relaxed) {
            0 => None,
            code => {
                let code = code - 1;
                let (f, t) = (usize::from(code / 2), usize::from(code % 2));
                (f == from.index()).then(|| SlotName::ALL[t])
            }
        }
    }
}

impl MirrorHost for Inner {
    fn taps(&self) -> &TapState {
        &self.tap
    }

    fn table(&self) -> arc_swap::Guard<Arc<Table>> {
        self.table.load()
    }

    fn connect_timeout(&self) -> std::time::Duration {
        self.opts.connect_timeout
    }

    fn runtime(&self) -> &MirrorRuntime {
        self.mirror.get_or_init(MirrorRuntime::start)
    }
}
