//! Several routers on one shared store (`[state] backend = "etcd"`): every replica
//! follows the routing changes the others make, one replica (the leader, elected on an
//! etcd lease) runs deployments, and the leader's bake sees the traffic of all of them.
//!
//! - **Following**: [`follow`] applies each routing state the store reports (newer
//!   revision only) to the data plane; after a reconnection the store reports the current
//!   state first, so a replica cut off from etcd catches up by itself. While cut off it
//!   keeps routing by the last state it knew (fail static).
//! - **Leading**: [`lead`] campaigns; once elected it settles the deployment left in the
//!   store (a bake goes on, one before its switch is aborted: `Inner::recover_deployments`)
//!   and from then on accepts deployments. When the lease is lost it stops its run where
//!   it is (the next leader continues from the last saved stage). Other replicas answer
//!   deployment calls with a redirect to the leader (`ControlError::NotLeader`).
//! - **Traffic**: every replica publishes its per-slot counters every
//!   [`PUBLISH_EVERY`] (on its lease); [`Peers`] turns the others' into running totals, so
//!   that `Inner::snapshot` = this router's own counts + the others' (at most one publish
//!   interval old). A replica that restarts is a new peer (its id is per process).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use turnout_core::{Deployment, RoutingState, SlotName};
use turnout_proxy::StatsSnapshot;
use turnout_store::{Change, ReplicaInfo, StoreError};

use crate::{events, Event, Inner};

/// How often a replica publishes its counters (and reads the others').
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// The fleet's view from this replica.
#[derive(Default)]
pub(crate) struct FleetState {
    /// This replica leads (runs deployments).
    pub(crate) leader: AtomicBool,
    /// The newest deployment record saved by the leader, as this replica saw it.
    pub(crate) remote: std::sync::Mutex<Option<Deployment>>,
    /// The other replicas' counters.
    pub(crate) peers: std::sync::Mutex<Peers>,
}

/// What one replica publishes.
#[derive(Serialize, Deserialize)]
struct Published {
    /// When it started (ms since the epoch).
    started_ms: u64,
    /// Blue, then green.
    slots: [PublishedSlot; 2],
}

#[derive(Serialize, Deserialize)]
struct PublishedSlot {
    requests: u64,
    errors: u64,
    buckets: Vec<(u16, u64)>,
}

/// The other replicas' counters as running totals.
#[derive(Default)]
pub(crate) struct Peers {
    by_id: HashMap<String, Peer>,
}

struct Peer {
    /// Counts it had when first seen, if it was running before this replica followed it
    /// (those are not this replica's to count).
    first: [StatsSnapshot; 2],
    last: [StatsSnapshot; 2],
}

impl Peers {
    fn update(&mut self, me: &str, published: Vec<(String, String)>) {
        for (id, text) in published {
            if id == me {
                continue;
            }
            let Ok(p) = serde_json::from_str::<Published>(&text) else {
                continue;
            };
            let now = p
                .slots
                .map(|s| StatsSnapshot::from_parts(s.requests, s.errors, &s.buckets));
            // Counted from when this replica first saw it (other hosts' clocks are not
            // compared; at most one publish interval of a new replica's traffic is missed).
            let peer = self.by_id.entry(id).or_insert_with(|| Peer {
                first: now.clone(),
                last: Default::default(),
            });
            peer.last = now;
        }
    }

    /// The others' requests to `slot` since this replica started following them (a peer
    /// that went away keeps its last counts: totals never go down).
    pub(crate) fn total(&self, slot: SlotName) -> StatsSnapshot {
        let mut sum = StatsSnapshot::default();
        for p in self.by_id.values() {
            sum.add(&p.last[slot.index()].since(&p.first[slot.index()]));
        }
        sum
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the fleet's tasks for `inner` (whose store has a fleet).
pub(crate) fn start(inner: &Arc<Inner>) {
    tokio::spawn(follow(Arc::downgrade(inner)));
    tokio::spawn(publish(Arc::downgrade(inner)));
    tokio::spawn(lead(Arc::downgrade(inner)));
}

/// Applies the changes other replicas make.
async fn follow(weak: Weak<Inner>) {
    let mut rx = {
        let Some(inner) = weak.upgrade() else { return };
        let Some(fleet) = inner.store.fleet() else {
            return;
        };
        fleet.changes()
    };
    while let Some(change) = rx.recv().await {
        let Some(inner) = weak.upgrade() else { return };
        match change {
            Change::Routing(s) => {
                if inner.follow_routing(s).await {
                    inner.restore_routing().await;
                }
            }
            Change::Connected(s) => {
                if inner.follow_routing(s).await {
                    inner.restore_routing().await;
                }
                // The deployment may have moved on while this replica was cut off (or
                // starting): catch up on it too.
                if let Ok(latest) = inner.store.load_deployments(1).await {
                    for d in latest {
                        inner.follow_deployment(d);
                    }
                }
            }
            Change::Missing => {
                // The leader's record went with the data: no deployment to show.
                *inner.fleet.remote.lock().unwrap_or_else(|p| p.into_inner()) = None;
                inner.restore_routing().await;
            }
            Change::Deployment(d) => inner.follow_deployment(*d),
        }
    }
}

/// Publishes this replica's counters and reads the others', until the controller is gone.
async fn publish(weak: Weak<Inner>) {
    let started_ms = now_ms();
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        let Some(fleet) = inner.store.fleet() else {
            return;
        };
        let slots = SlotName::ALL.map(|s| {
            let snap = inner.proxy.stats(s).snapshot();
            PublishedSlot {
                requests: snap.requests,
                errors: snap.errors,
                buckets: snap.sparse_buckets(),
            }
        });
        let text = serde_json::to_string(&Published { started_ms, slots }).unwrap_or_default();
        if let Err(e) = fleet.publish_counters(text).await {
            tracing::debug!(error = %e, "counters not published: {e}");
        }
        match fleet.counters().await {
            Ok(all) => inner
                .fleet_state()
                .peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .update(&fleet.me().replica, all),
            Err(e) => tracing::debug!(error = %e, "the fleet's counters were not read: {e}"),
        }
    }
}

/// Campaigns for the leadership, leads while it lasts, and campaigns again.
async fn lead(weak: Weak<Inner>) {
    loop {
        let campaign = {
            let Some(inner) = weak.upgrade() else { return };
            async move {
                let fleet = inner.store.fleet()?;
                fleet.campaign().await.ok()
            }
        };
        let Some(mut leadership) = campaign.await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        // Deployments are accepted only once the one the previous leader left is settled
        // (until then `require_leader` refuses them); a failed attempt is retried while
        // the leadership lasts.
        let mut backoff = Duration::from_millis(200);
        loop {
            if *leadership.lost.borrow() {
                break;
            }
            let Some(inner) = weak.upgrade() else { return };
            match inner.take_over().await {
                Ok(()) => {
                    inner.fleet_state().leader.store(true, Ordering::SeqCst);
                    let me = inner.me().map(|m| m.replica.clone()).unwrap_or_default();
                    inner.events.publish(Event::new(crate::EventKind::Leader,
                        format!("this router (replica {me}) is the fleet's leader: it runs the deployments"),
                    ));
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "settling the deployment left by the previous leader failed; retrying: {e}");
                    drop(inner);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = leadership.lost.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        while !*leadership.lost.borrow_and_update() {
            if leadership.lost.changed().await.is_err() {
                break;
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        inner.step_down();
    }
}

impl Inner {
    pub(crate) fn fleet_state(&self) -> &FleetState {
        &self.fleet
    }

    /// This replica, when it is one of a fleet.
    pub(crate) fn me(&self) -> Option<&ReplicaInfo> {
        self.store.fleet().map(|f| f.me())
    }

    /// Whether deployments may run here: always for a router of its own, only on the
    /// leader in a fleet.
    pub(crate) fn may_run_deployments(&self) -> bool {
        self.store.fleet().is_none() || self.fleet.leader.load(Ordering::SeqCst)
    }

    /// The slot's counts: this router's own, plus the other replicas' in a fleet.
    pub(crate) fn snapshot(&self, slot: SlotName) -> StatsSnapshot {
        let mut s = self.proxy.stats(slot).snapshot();
        if self.store.fleet().is_some() {
            let peers = self.fleet.peers.lock().unwrap_or_else(|p| p.into_inner());
            s.add(&peers.total(slot));
        }
        s
    }

    /// Routes by a state another replica saved, if it is newer than ours.
    /// Applies a newer routing state from the store. Returns whether the store's is
    /// *older* than this replica's: the store went back (etcd lost data, or a router
    /// started from its config on an emptied etcd), and this replica's state should be
    /// written back ([`Inner::restore_routing`]).
    pub(crate) async fn follow_routing(&self, next: RoutingState) -> bool {
        let mut state = self.state.lock().await;
        if next.revision <= state.revision {
            return next.revision < state.revision;
        }
        self.proxy.apply(&next);
        if next.live != state.live {
            self.switches.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(live = ?next.live, from = ?state.live, revision = next.revision, "routing changed by another router of the fleet");
        let why = events::Why::operator(
            crate::EventKind::Switch,
            "made on another router of the fleet",
        );
        if let Some(mut event) = why.event(&state, &next) {
            event.echo = true;
            self.events.publish(event);
        }
        *state = next;
        false
    }

    /// Writes the routing state this replica last knew back to a store that lost it
    /// (holds none, or an older revision: [`Change::Missing`], or older than this
    /// replica's). The highest revision wins: a replica whose state is newer than the
    /// stored one writes it over it, one whose state is older follows the stored one.
    pub(crate) async fn restore_routing(&self) {
        let state = self.state.lock().await;
        for _ in 0..5 {
            let stored = match self.store.load_routing().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the routing state to write it back ({e}); tried again when this router reconnects");
                    return;
                }
            };
            if stored
                .as_ref()
                .is_some_and(|s| s.revision >= state.revision)
            {
                // Another replica wrote back the same or a newer state; the watch brings it.
                return;
            }
            let found = stored.as_ref().map(|s| s.revision);
            match self.store.save_routing(&state, found).await {
                Ok(()) => {
                    tracing::warn!(
                        live = ?state.live,
                        revision = state.revision,
                        "{} held {} (etcd lost its data, or the state was deleted); this router wrote back the state it last knew: {} live, revision {}",
                        self.store.describe(),
                        found.map_or("no routing state".to_string(), |r| format!("an older routing state (revision {r})")),
                        state.live.map_or("no slot".to_string(), |s| s.to_string()),
                        state.revision
                    );
                    return;
                }
                // Changed meanwhile: read it again.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "could not write the routing state back ({e}); tried again when this router reconnects");
                    return;
                }
            }
        }
    }

    /// Keeps the leader's newest deployment record, for `status` and the deployment
    /// routes on this replica.
    pub(crate) fn follow_deployment(&self, d: Deployment) {
        if self.fleet.leader.load(Ordering::SeqCst) {
            return;
        }
        let mut remote = self.fleet.remote.lock().unwrap_or_else(|p| p.into_inner());
        // The leader saves the running deployment; a record of another one that is over
        // (an old one closed while settling) does not hide it.
        if remote
            .as_ref()
            .is_some_and(|r| r.id != d.id && !r.is_over() && d.is_over())
        {
            return;
        }
        let changed = remote.as_ref() != Some(&d);
        if changed {
            let stage = d.current_stage().map_or("start", |s| s.stage.as_str());
            let mut event = Event::new(
                crate::EventKind::Deployment,
                format!(
                    "deployment {} of {} (on the leader): {stage}, {}",
                    d.id, d.version, d.verdict
                ),
            );
            event.deployment = Some(d.id.clone());
            event.version = Some(d.version.clone());
            event.slot = Some(d.slot);
            event.verdict = Some(d.verdict);
            event.echo = true;
            self.events.publish(event);
        }
        *remote = Some(d);
    }

    /// The leader's running deployment, as this (non-leading) replica last saw it.
    pub(crate) fn remote_current(&self) -> Option<Deployment> {
        if self.store.fleet().is_none() || self.fleet.leader.load(Ordering::SeqCst) {
            return None;
        }
        self.fleet
            .remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|d| !d.is_over())
    }

    /// Just elected: read the routing again, then settle the deployment the previous
    /// leader left (see the module doc).
    async fn take_over(self: &Arc<Inner>) -> Result<(), crate::ControlError> {
        if let Some(saved) = self.store.load_routing().await? {
            self.follow_routing(saved).await;
        }
        self.fleet
            .remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.load_slots().await?;
        let deployments = self.store.load_deployments(20).await?;
        self.recover_deployments(deployments).await
    }

    /// Lost the leadership: the running deployment stops where it is; the next leader
    /// continues it from its last saved stage.
    fn step_down(&self) {
        self.fleet.leader.store(false, Ordering::SeqCst);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            task.abort();
        }
        self.run.lock().unwrap_or_else(|p| p.into_inner()).take();
        // What the aborted run had switched on in this data plane (its guards may not
        // have run: the task stopped mid-await).
        self.proxy.set_retry_on(None);
        self.proxy.stop_shadow();
        let me = self.me().map(|m| m.replica.clone()).unwrap_or_default();
        tracing::warn!("this router (replica {me}) is no longer the fleet's leader");
        self.events.publish(Event::new(crate::EventKind::Leader,
            format!("this router (replica {me}) is no longer the fleet's leader; a deployment it ran goes on on the next leader"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(started_ms: u64, requests: u64, errors: u64) -> String {
        let snap = |r: u64, e: u64| PublishedSlot {
            requests: r,
            errors: e,
            buckets: vec![(3, r)],
        };
        serde_json::to_string(&Published {
            started_ms,
            slots: [snap(requests, errors), snap(0, 0)],
        })
        .unwrap()
    }

    #[test]
    fn peers_count_from_first_sight_and_never_go_down() {
        let mut peers = Peers::default();
        // Counted from first sight: neither the 50 of "old" nor the 7 of "new" are ours.
        peers.update(
            "me",
            vec![
                ("old".into(), published(10, 50, 5)),
                ("new".into(), published(2000, 7, 1)),
                ("me".into(), published(10, 999, 999)),
                ("junk".into(), "not json".into()),
            ],
        );
        let t = peers.total(SlotName::Blue);
        assert_eq!((t.requests, t.errors), (0, 0));
        peers.update(
            "me",
            vec![
                ("old".into(), published(10, 80, 6)),
                ("new".into(), published(2000, 10, 1)),
            ],
        );
        let t = peers.total(SlotName::Blue);
        assert_eq!((t.requests, t.errors), (33, 1));
        assert_eq!(t.sparse_buckets(), vec![(3, 33)]);
        // "new" went away: its counts stay.
        peers.update("me", vec![("old".into(), published(10, 90, 6))]);
        let t = peers.total(SlotName::Blue);
        assert_eq!((t.requests, t.errors), (43, 1));
        assert_eq!(peers.total(SlotName::Green).requests, 0);
    }
}
