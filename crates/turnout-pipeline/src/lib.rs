//! turnout's control plane. [`Controller`] owns the routing state: every change (switch,
//! rollback, and later the release pipeline's stages) is computed by `turnout-core`,
//! written durably through the [`StateStore`], and only then applied to the data plane —
//! so a change the API acknowledged survives any crash, and a crash before the write
//! leaves routing as it was.
//!
//! A change runs in a task of its own, from taking the state lock to applying the result:
//! a caller that stops waiting (an API client that hung up) cannot leave a change saved
//! but not applied. When a save fails, the store is read back and the data plane follows
//! what it holds, so that memory, data plane and store agree again.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use turnout_core::{Role, RoutingState, SlotName, SlotState, SwitchError, Weights};
use turnout_proxy::Proxy;
use turnout_store::StateStore;
pub use turnout_store::StoreError;

/// Why a control-plane action failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The change is not allowed in the current state.
    #[error(transparent)]
    Refused(#[from] SwitchError),
    /// The state store could not be read or written at start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A change could not be saved. `now` says by which state the router routes
    /// afterwards: the store was read back, so that memory, data plane and store agree
    /// again whenever the store can be read.
    #[error("{source}; {now}")]
    NotSaved {
        /// Why the save failed.
        source: StoreError,
        /// The routing state after the failure.
        now: AfterFailure,
    },
    /// The task making the change failed (a bug, or the process is stopping).
    #[error(
        "the routing change was interrupted ({0}); its outcome is unknown: check `turnout status`"
    )]
    Interrupted(String),
}

/// The routing state after a failed save, as the error reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// The store holds what this router had: nothing changed.
    Unchanged {
        /// The live slot.
        live: Option<SlotName>,
        /// The revision.
        revision: u64,
    },
    /// The store holds another state (another writer, or a write whose outcome the error
    /// hid); the router now routes by it.
    Reloaded {
        /// The live slot now.
        live: Option<SlotName>,
        /// The revision now.
        revision: u64,
    },
    /// The store could not be read back; the router routes as before, which may differ
    /// from what the store holds.
    Unknown {
        /// The live slot this router routes to.
        live: Option<SlotName>,
        /// The revision this router routes by.
        revision: u64,
        /// Why the store could not be read.
        reason: String,
    },
}

fn live_name(live: Option<SlotName>) -> &'static str {
    live.map_or("no slot", SlotName::as_str)
}

impl std::fmt::Display for AfterFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AfterFailure::Unchanged { live, revision } => write!(
                f,
                "routing is unchanged: {} is live (revision {revision})",
                live_name(*live)
            ),
            AfterFailure::Reloaded { live, revision } => write!(
                f,
                "the router reloaded the saved routing state and routes by it now: {} is live (revision {revision})",
                live_name(*live)
            ),
            AfterFailure::Unknown {
                live,
                revision,
                reason,
            } => write!(
                f,
                "reading the saved state back failed too ({reason}); the router keeps routing as before ({} is live, revision {revision}), which may differ from the store: check `turnout status`, and restart the router once the store works",
                live_name(*live)
            ),
        }
    }
}

/// What `status` shows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// The live slot.
    pub live: Option<SlotName>,
    /// Revision of the routing state.
    pub revision: u64,
    /// Share of new requests per slot, in percent.
    pub weights: Weights,
    /// Both slots.
    pub slots: SlotsStatus,
    /// The deployment in progress (none until the release pipeline exists).
    pub deployment: Option<DeploymentStatus>,
}

/// Blue and green.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SlotsStatus {
    /// The blue slot.
    pub blue: SlotStatus,
    /// The green slot.
    pub green: SlotStatus,
}

/// One slot in `status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SlotStatus {
    /// Deployed version, when known.
    pub version: Option<String>,
    /// Its role.
    pub role: Role,
    /// Its upstreams and their health.
    pub upstreams: Vec<UpstreamStatus>,
}

/// One upstream in `status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UpstreamStatus {
    /// `host:port`.
    pub addr: String,
    /// Whether it takes traffic now.
    pub healthy: bool,
}

/// The deployment in progress.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeploymentStatus {
    /// Its id.
    pub id: String,
    /// The version being deployed.
    pub version: String,
    /// The stage it is in.
    pub stage: String,
}

/// The control plane of one router. Cheap to share: the parts live behind one `Arc`, so
/// that a change runs in a task of its own (see [`Controller::switch`]).
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    proxy: Proxy,
    store: Arc<dyn StateStore>,
    state: Mutex<RoutingState>,
    /// How long a switch waits for the target's first health checks.
    first_check_wait: Duration,
}

impl Controller {
    /// Starts from the saved state (or the initial one when nothing was saved), with the
    /// slots' static upstreams from the configuration applied on top; the result is saved
    /// before the data plane starts routing by it. A slot the configuration gives no
    /// upstreams keeps its saved ones (a deployment may have put them there).
    pub async fn start(
        proxy_opts: turnout_proxy::ProxyOptions,
        store: Arc<dyn StateStore>,
        static_slots: [SlotState; 2],
    ) -> Result<Controller, ControlError> {
        let saved = store.load_routing().await?;
        let expected = saved.as_ref().map(|s| s.revision);
        let [blue, green] = static_slots;
        let state = match saved {
            None => {
                tracing::info!(
                    store = %store.describe(),
                    "no saved state in {}; starting from the configuration",
                    store.describe()
                );
                RoutingState::initial(blue, green)
            }
            Some(mut s) => {
                tracing::info!(
                    store = %store.describe(),
                    revision = s.revision,
                    live = ?s.live,
                    "loaded the saved routing state from {}",
                    store.describe()
                );
                let before = s.clone();
                for (name, cfg) in SlotName::ALL.into_iter().zip([blue, green]) {
                    if !cfg.upstreams.is_empty() {
                        s.set_static_upstreams(name, cfg.upstreams, cfg.version);
                    } else if !s.slot(name).upstreams.is_empty() {
                        let saved = &s.slot(name).upstreams;
                        tracing::warn!(
                            slot = %name,
                            saved = ?saved,
                            "slots.{name} has no upstreams in the config; keeping the saved ones: {saved:?}"
                        );
                    }
                }
                if s != before {
                    s.revision += 1;
                }
                s
            }
        };
        if expected != Some(state.revision) {
            store.save_routing(&state, expected).await?;
        }
        tracing::info!(live = ?state.live, revision = state.revision, store = %store.describe(), "routing state ready");
        // A check takes at most its timeout; the first one starts at once.
        let first_check_wait = proxy_opts.health.timeout + Duration::from_secs(1);
        let proxy = Proxy::new(proxy_opts, &state);
        Ok(Controller {
            inner: Arc::new(Inner {
                proxy,
                store,
                state: Mutex::new(state),
                first_check_wait,
            }),
        })
    }

    /// The data plane this controller drives.
    pub fn proxy(&self) -> &Proxy {
        &self.inner.proxy
    }

    /// Moves all traffic to `to`. Durable before it returns; requests that start after it
    /// returns go to `to`.
    ///
    /// Unless `force`, it first waits (boundedly) for the first health check of the
    /// target's upstreams, which count as healthy until then.
    ///
    /// The change runs in a task of its own: dropping the returned future (an API client
    /// that hung up) does not stop a change half-way, between the store and the data
    /// plane.
    pub async fn switch(&self, to: SlotName, force: bool) -> Result<RoutingState, ControlError> {
        if !force {
            self.inner.await_first_checks(to).await;
        }
        let inner = self.inner.clone();
        detached(async move {
            let mut state = inner.state.lock().await;
            let next = state.switch(to, inner.proxy.healthy_count(to), force)?;
            inner.commit(&mut state, next).await
        })
        .await
    }

    /// Sends traffic back to the standby slot (after its first health checks, as
    /// [`Controller::switch`]); runs in a task of its own like a switch.
    pub async fn rollback(&self) -> Result<RoutingState, ControlError> {
        let standby = self.inner.state.lock().await.standby();
        if let Some(slot) = standby {
            self.inner.await_first_checks(slot).await;
        }
        let inner = self.inner.clone();
        detached(async move {
            let mut state = inner.state.lock().await;
            let healthy = state.standby().map_or(0, |s| inner.proxy.healthy_count(s));
            let next = state.rollback(healthy)?;
            inner.commit(&mut state, next).await
        })
        .await
    }

    /// The current status: routing state plus live upstream health.
    pub async fn status(&self) -> Status {
        let state = self.inner.state.lock().await.clone();
        let table = self.inner.proxy.table();
        let slot = |name: SlotName| {
            let s = state.slot(name);
            SlotStatus {
                version: s.version.clone(),
                role: s.role,
                upstreams: table
                    .slot(name)
                    .upstreams
                    .iter()
                    .map(|u| UpstreamStatus {
                        addr: u.addr.clone(),
                        healthy: u.is_healthy(),
                    })
                    .collect(),
            }
        };
        Status {
            live: state.live,
            revision: state.revision,
            weights: state.weights,
            slots: SlotsStatus {
                blue: slot(SlotName::Blue),
                green: slot(SlotName::Green),
            },
            deployment: None,
        }
    }
}

/// Runs a change to its end even when the caller stops waiting.
async fn detached<T: Send + 'static>(
    change: impl std::future::Future<Output = Result<T, ControlError>> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::spawn(change)
        .await
        .unwrap_or_else(|e| Err(ControlError::Interrupted(e.to_string())))
}

impl Inner {
    /// Saves `next` over `state`, then routes by it. When the save fails, the outcome is
    /// not always known (a conflict means another writer; a failed commit may have landed):
    /// the store is read back and the data plane follows what it holds.
    async fn commit(
        &self,
        state: &mut RoutingState,
        next: RoutingState,
    ) -> Result<RoutingState, ControlError> {
        if let Err(source) = self.store.save_routing(&next, Some(state.revision)).await {
            let now = self.reload(state).await;
            tracing::warn!(error = %source, now = %now, "routing change not saved");
            return Err(ControlError::NotSaved { source, now });
        }
        self.proxy.apply(&next);
        tracing::info!(live = ?next.live, from = ?state.live, revision = next.revision, "switched");
        *state = next.clone();
        Ok(next)
    }

    /// Makes memory and the data plane agree with the store again, when it can be read.
    async fn reload(&self, state: &mut RoutingState) -> AfterFailure {
        match self.store.load_routing().await {
            Ok(Some(saved)) if saved == *state => AfterFailure::Unchanged {
                live: state.live,
                revision: state.revision,
            },
            Ok(Some(saved)) => {
                self.proxy.apply(&saved);
                tracing::warn!(live = ?saved.live, revision = saved.revision, "routing state reloaded from the store");
                *state = saved;
                AfterFailure::Reloaded {
                    live: state.live,
                    revision: state.revision,
                }
            }
            Ok(None) => AfterFailure::Unknown {
                live: state.live,
                revision: state.revision,
                reason: format!("{} holds no routing state", self.store.describe()),
            },
            Err(e) => AfterFailure::Unknown {
                live: state.live,
                revision: state.revision,
                reason: e.to_string(),
            },
        }
    }

    /// Waits until the health of `slot` can decide a switch: one of its upstreams passed
    /// a check, or all have been checked. Upstreams count as healthy before their first
    /// check (so that a router starting in front of a running service serves at once);
    /// without this wait a switch right after start would pass the health refusal for a
    /// slot that is down. Bounded by [`Inner::first_check_wait`].
    async fn await_first_checks(&self, slot: SlotName) {
        let deadline = tokio::time::Instant::now() + self.first_check_wait;
        loop {
            let table = self.proxy.table();
            let upstreams = &table.slot(slot).upstreams;
            let decided = upstreams.iter().any(|u| u.is_checked() && u.is_healthy())
                || upstreams.iter().all(|u| u.is_checked());
            if decided {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    slot = %slot,
                    waited_ms = self.first_check_wait.as_millis() as u64,
                    "the slot's upstreams have not been health-checked yet; deciding with what is known"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as SyncMutex;

    use tokio::sync::Notify;
    use turnout_proxy::ProxyOptions;
    use turnout_store::BoxFuture;

    use super::*;

    /// What a save does.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Save {
        Works,
        /// Fails and writes nothing.
        FailsBefore,
        /// Writes, then reports a failure (a commit whose answer got lost).
        FailsAfter,
    }

    /// An in-memory store with the compare-and-swap contract, and knobs for failures.
    struct MemStore {
        saved: SyncMutex<Option<RoutingState>>,
        save: SyncMutex<Save>,
        load_fails: SyncMutex<bool>,
        /// Once: after the next save is durable, signal the first and wait for the second.
        hold: SyncMutex<Option<(Arc<Notify>, Arc<Notify>)>>,
    }

    impl MemStore {
        fn new() -> Arc<MemStore> {
            Arc::new(MemStore {
                saved: SyncMutex::new(None),
                save: SyncMutex::new(Save::Works),
                load_fails: SyncMutex::new(false),
                hold: SyncMutex::new(None),
            })
        }

        fn get(&self) -> RoutingState {
            self.saved.lock().unwrap().clone().expect("a saved state")
        }

        fn put(&self, s: RoutingState) {
            *self.saved.lock().unwrap() = Some(s);
        }
    }

    fn backend(what: &str) -> StoreError {
        StoreError::Backend {
            location: "memory".into(),
            source: what.into(),
        }
    }

    impl StateStore for MemStore {
        fn load_routing(&self) -> BoxFuture<'_, Result<Option<RoutingState>, StoreError>> {
            let r = if *self.load_fails.lock().unwrap() {
                Err(backend("disk gone"))
            } else {
                Ok(self.saved.lock().unwrap().clone())
            };
            Box::pin(async move { r })
        }

        fn save_routing<'a>(
            &'a self,
            state: &'a RoutingState,
            expected: Option<u64>,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                let mode = *self.save.lock().unwrap();
                if mode == Save::FailsBefore {
                    return Err(backend("disk full"));
                }
                {
                    let mut saved = self.saved.lock().unwrap();
                    let found = saved.as_ref().map(|s| s.revision);
                    if found != expected {
                        return Err(StoreError::Conflict {
                            expected: expected.unwrap_or(0),
                            found: found.unwrap_or(0),
                        });
                    }
                    *saved = Some(state.clone());
                }
                let hold = self.hold.lock().unwrap().take();
                if let Some((saved, release)) = hold {
                    saved.notify_one();
                    release.notified().await;
                }
                match mode {
                    Save::FailsAfter => Err(backend("commit answer lost")),
                    _ => Ok(()),
                }
            })
        }

        fn describe(&self) -> String {
            "memory".into()
        }
    }

    fn slot(addr: &str) -> SlotState {
        SlotState {
            version: None,
            upstreams: vec![addr.into()],
            role: Role::Idle,
        }
    }

    /// A controller with blue live and green standby; port 9 on loopback refuses, so a
    /// slot there fails its checks.
    async fn controller(store: Arc<MemStore>, blue: &str, green: &str) -> Controller {
        Controller::start(ProxyOptions::default(), store, [slot(blue), slot(green)])
            .await
            .unwrap()
    }

    const DOWN: &str = "127.0.0.1:9";

    /// Memory, data plane and store say the same.
    async fn assert_agree(c: &Controller, store: &MemStore) -> RoutingState {
        let stored = store.get();
        let status = c.status().await;
        assert_eq!(
            (status.live, status.revision),
            (stored.live, stored.revision)
        );
        let table = c.proxy().table();
        assert_eq!((table.live, table.revision), (stored.live, stored.revision));
        stored
    }

    #[tokio::test]
    async fn a_switch_whose_caller_hangs_up_mid_save_is_still_applied() {
        let store = MemStore::new();
        let c = controller(store.clone(), DOWN, DOWN).await;
        let (saved, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        *store.hold.lock().unwrap() = Some((saved.clone(), release.clone()));
        // The caller (an API client that hung up) goes away once the new state is
        // durable, before the data plane has been told.
        tokio::select! {
            r = c.switch(SlotName::Green, true) => panic!("the switch ended while held: {r:?}"),
            () = saved.notified() => {}
        }
        release.notify_one();
        // status() waits for the state lock, which the change holds to its end.
        let now = assert_agree(&c, &store).await;
        assert_eq!((now.live, now.revision), (Some(SlotName::Green), 1));
        // And the next change is not refused as a conflict.
        let next = c.switch(SlotName::Blue, true).await.unwrap();
        assert_eq!(next.revision, 2);
        assert_agree(&c, &store).await;
    }

    #[tokio::test]
    async fn a_failed_save_leaves_memory_data_plane_and_store_agreeing() {
        // (what the save does, whether reading back fails, the live slot after, the
        // revision after, whether the outcome is known)
        let cases: &[(Save, bool, Option<SlotName>, u64, &str)] = &[
            (
                Save::FailsBefore,
                false,
                Some(SlotName::Blue),
                0,
                "routing is unchanged: blue is live (revision 0)",
            ),
            (
                Save::FailsAfter,
                false,
                Some(SlotName::Green),
                1,
                "routes by it now: green is live (revision 1)",
            ),
            (
                Save::FailsBefore,
                true,
                Some(SlotName::Blue),
                0,
                "keeps routing as before (blue is live, revision 0)",
            ),
        ];
        for &(save, load_fails, live, revision, message) in cases {
            let store = MemStore::new();
            let c = controller(store.clone(), DOWN, DOWN).await;
            *store.save.lock().unwrap() = save;
            *store.load_fails.lock().unwrap() = load_fails;
            let err = c.switch(SlotName::Green, true).await.unwrap_err();
            assert!(
                matches!(err, ControlError::NotSaved { .. }),
                "{save:?}: {err}"
            );
            assert!(err.to_string().contains(message), "{save:?}: {err}");
            let status = c.status().await;
            assert_eq!((status.live, status.revision), (live, revision), "{save:?}");
            let table = c.proxy().table();
            assert_eq!((table.live, table.revision), (live, revision), "{save:?}");
            if !load_fails {
                assert_agree(&c, &store).await;
            }
        }
    }

    #[tokio::test]
    async fn a_conflict_reloads_what_the_other_writer_saved() {
        let store = MemStore::new();
        let c = controller(store.clone(), DOWN, DOWN).await;
        // Another writer moved the state on behind this router's back.
        store.put(store.get().switch(SlotName::Green, 0, true).unwrap());
        let err = c.switch(SlotName::Blue, true).await.unwrap_err();
        assert!(
            matches!(
                err,
                ControlError::NotSaved {
                    source: StoreError::Conflict { .. },
                    now: AfterFailure::Reloaded {
                        live: Some(SlotName::Green),
                        revision: 1
                    }
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("green is live (revision 1)"),
            "{err}"
        );
        assert_agree(&c, &store).await;
        // A retry works.
        assert_eq!(c.switch(SlotName::Blue, true).await.unwrap().revision, 2);
        assert_agree(&c, &store).await;
    }

    #[tokio::test]
    async fn a_switch_right_after_start_waits_for_the_first_health_check() {
        // Green is down but counts as healthy until checked; the health tasks have not run
        // yet when start returns (one-thread runtime).
        let store = MemStore::new();
        let c = controller(store.clone(), DOWN, DOWN).await;
        let err = c.switch(SlotName::Green, false).await.unwrap_err();
        assert!(
            matches!(err, ControlError::Refused(SwitchError::Unhealthy { .. })),
            "{err}"
        );
        let err = c.rollback().await.unwrap_err();
        assert!(
            matches!(err, ControlError::Refused(SwitchError::Unhealthy { .. })),
            "{err}"
        );
        assert_agree(&c, &store).await;

        // A slot that is up passes after its first check.
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let store = MemStore::new();
        let c = controller(store.clone(), DOWN, &up.local_addr().unwrap().to_string()).await;
        let next = c.switch(SlotName::Green, false).await.unwrap();
        assert_eq!(next.live, Some(SlotName::Green));
        assert_agree(&c, &store).await;
    }

    #[tokio::test]
    async fn saved_upstreams_stay_when_the_config_has_none_for_the_slot() {
        let store = MemStore::new();
        drop(controller(store.clone(), DOWN, "127.0.0.1:8").await);
        let c = Controller::start(
            ProxyOptions::default(),
            store.clone(),
            [slot(DOWN), SlotState::idle()],
        )
        .await
        .unwrap();
        let status = c.status().await;
        assert_eq!(status.slots.green.upstreams[0].addr, "127.0.0.1:8");
        assert_eq!(status.slots.green.role, Role::Standby);
    }
}
