//! The event bus: every event gets the next id, goes to the subscribers (the event
//! stream, webhooks) and into a small ring of recent events, so that a client that
//! reconnects with the last id it saw (`Last-Event-ID`) misses nothing that is still
//! in the ring.

use std::collections::VecDeque;

use serde_json::json;
use tokio::sync::broadcast;
use turnout_core::{RoutingState, SlotName};

use crate::Event;

/// How many recent events are kept for a client that resumes.
pub const RECENT: usize = 1000;

/// Publishes events in id order.
pub(crate) struct Bus {
    tx: broadcast::Sender<Event>,
    ring: std::sync::Mutex<Ring>,
}

struct Ring {
    last_id: u64,
    recent: VecDeque<Event>,
}

impl Bus {
    pub(crate) fn new() -> Bus {
        Bus {
            tx: broadcast::channel(1024).0,
            ring: std::sync::Mutex::new(Ring {
                last_id: 0,
                recent: VecDeque::new(),
            }),
        }
    }

    /// Gives `event` the next id and sends it. Ids and the order subscribers see agree:
    /// both happen under one lock.
    pub(crate) fn publish(&self, mut event: Event) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.last_id += 1;
        event.id = ring.last_id;
        if ring.recent.len() == RECENT {
            ring.recent.pop_front();
        }
        ring.recent.push_back(event.clone());
        let _ = self.tx.send(event);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// The kept events after `last_id`, and a receiver for the ones after those: nothing
    /// is missed or seen twice between the two.
    pub(crate) fn since(&self, last_id: u64) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let missed = ring
            .recent
            .iter()
            .filter(|e| e.id > last_id)
            .cloned()
            .collect();
        (missed, rx)
    }
}

/// Why a routing change is made: it becomes the `switch` (or `rollback`) event's reason.
#[derive(Clone, Debug)]
pub(crate) struct Why {
    /// `switch` or `rollback`.
    pub(crate) kind: crate::EventKind,
    /// In words: "operator switch", "deployment d-1 canary step 25%", ...
    pub(crate) reason: String,
    /// The deployment making the change: its id and version.
    pub(crate) deployment: Option<(String, String)>,
    /// Made by the fleet's leader as the leader (a deployment, retiring a slot): in a
    /// fleet, saved only while this replica still leads.
    pub(crate) leader_only: bool,
}

impl Why {
    /// A change an operator asked for directly.
    pub(crate) fn operator(kind: crate::EventKind, reason: impl Into<String>) -> Why {
        Why {
            kind,
            reason: reason.into(),
            deployment: None,
            leader_only: false,
        }
    }

    /// The change is the leader's (see [`Why::leader_only`]).
    pub(crate) fn by_leader(mut self) -> Why {
        self.leader_only = true;
        self
    }

    /// A change made by deployment `id` of `version`.
    pub(crate) fn deployment(
        kind: crate::EventKind,
        id: &str,
        version: &str,
        reason: impl Into<String>,
    ) -> Why {
        Why {
            kind,
            reason: reason.into(),
            deployment: Some((id.to_owned(), version.to_owned())),
            leader_only: true,
        }
    }

    /// The event for a committed change from `before` to `after`; `None` when neither the
    /// live slot nor the weights changed (nothing a client routes by moved).
    pub(crate) fn event(&self, before: &RoutingState, after: &RoutingState) -> Option<Event> {
        if before.live == after.live && before.weights == after.weights {
            return None;
        }
        let name = |s: Option<SlotName>| s.map_or("none", SlotName::as_str);
        let mut event = Event::new(
            self.kind,
            format!(
                "{} from {} to {} (revision {}): {}",
                if self.kind == crate::EventKind::Rollback {
                    "rolled back"
                } else {
                    "switched"
                },
                name(before.live),
                name(after.live),
                after.revision,
                self.reason
            ),
        );
        event.slot = after.live;
        event.reason = Some(self.reason.clone());
        if let Some((id, version)) = &self.deployment {
            event.deployment = Some(id.clone());
            event.version = Some(version.clone());
        }
        event.data = Some(json!({
            "from": before.live,
            "to": after.live,
            "revision": after.revision,
            "weights_before": before.weights,
            "weights": after.weights,
        }));
        Some(event)
    }
}

/// The event for an upstream's health change.
pub(crate) fn health_event(h: &turnout_proxy::HealthEvent) -> Event {
    let mut event = Event::new(
        crate::EventKind::Health,
        format!(
            "{} upstream {} is {}: {}",
            h.slot,
            h.addr,
            if h.healthy { "healthy" } else { "unhealthy" },
            h.reason
        ),
    );
    event.slot = Some(h.slot);
    event.reason = Some(h.reason.clone());
    event.data = Some(json!({ "addr": h.addr, "healthy": h.healthy }));
    event
}

/// The event for failover starting (`now` is the standby requests go to) or ending.
pub(crate) fn failover_event(
    live: Option<SlotName>,
    before: Option<SlotName>,
    now: Option<SlotName>,
) -> Event {
    let live_name = live.map_or_else(|| "-".to_string(), |s| s.to_string());
    let (message, to) = match now {
        Some(to) => (
            format!(
                "failover: the live slot {live_name} has no healthy upstream; requests go to the standby {to} (the live slot stays live)"
            ),
            Some(to),
        ),
        None => (
            format!(
                "failover over: requests go to the live slot {live_name} again (or nowhere healthier)"
            ),
            before,
        ),
    };
    let mut event = Event::new(crate::EventKind::Failover, message);
    event.slot = live;
    event.reason = Some(
        if now.is_some() {
            "live slot has no healthy upstream"
        } else {
            "failover ended"
        }
        .to_string(),
    );
    event.data = Some(json!({
        "active": now.is_some(),
        "to": to.map(|s| s.to_string()),
    }));
    event
}
