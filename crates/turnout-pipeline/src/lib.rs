//! turnout's control plane. [`Controller`] owns the routing state: every change (switch,
//! rollback, and later the release pipeline's stages) is computed by `turnout-core`,
//! written durably through the [`StateStore`], and only then applied to the data plane —
//! so a change the API acknowledged survives any crash, and a crash before the write
//! leaves routing as it was.

use std::sync::Arc;

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
    /// The state could not be written; routing is unchanged.
    #[error("routing unchanged: {0}")]
    Store(#[from] StoreError),
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

/// The control plane of one router.
pub struct Controller {
    proxy: Proxy,
    store: Arc<dyn StateStore>,
    state: Mutex<RoutingState>,
}

impl Controller {
    /// Starts from the saved state (or the initial one when nothing was saved), with the
    /// slots' static upstreams from the configuration applied on top; the result is saved
    /// before the data plane starts routing by it.
    pub async fn start(
        proxy_opts: turnout_proxy::ProxyOptions,
        store: Arc<dyn StateStore>,
        static_slots: [SlotState; 2],
    ) -> Result<Controller, ControlError> {
        let saved = store.load_routing().await?;
        let expected = saved.as_ref().map(|s| s.revision);
        let [blue, green] = static_slots;
        let state = match saved {
            None => RoutingState::initial(blue, green),
            Some(mut s) => {
                let before = s.clone();
                for (name, cfg) in SlotName::ALL.into_iter().zip([blue, green]) {
                    if !cfg.upstreams.is_empty() {
                        s.set_static_upstreams(name, cfg.upstreams, cfg.version);
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
        tracing::info!(live = ?state.live, revision = state.revision, store = %store.describe(), "routing state loaded");
        let proxy = Proxy::new(proxy_opts, &state);
        Ok(Controller {
            proxy,
            store,
            state: Mutex::new(state),
        })
    }

    /// The data plane this controller drives.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Moves all traffic to `to`. Durable before it returns; requests that start after it
    /// returns go to `to`.
    pub async fn switch(&self, to: SlotName, force: bool) -> Result<RoutingState, ControlError> {
        let mut state = self.state.lock().await;
        let next = state.switch(to, self.proxy.healthy_count(to), force)?;
        self.commit(&mut state, next).await
    }

    /// Sends traffic back to the standby slot.
    pub async fn rollback(&self) -> Result<RoutingState, ControlError> {
        let mut state = self.state.lock().await;
        let healthy = state.standby().map_or(0, |s| self.proxy.healthy_count(s));
        let next = state.rollback(healthy)?;
        self.commit(&mut state, next).await
    }

    async fn commit(
        &self,
        state: &mut RoutingState,
        next: RoutingState,
    ) -> Result<RoutingState, ControlError> {
        self.store.save_routing(&next, Some(state.revision)).await?;
        self.proxy.apply(&next);
        tracing::info!(live = ?next.live, from = ?state.live, revision = next.revision, "switched");
        *state = next.clone();
        Ok(next)
    }

    /// The current status: routing state plus live upstream health.
    pub async fn status(&self) -> Status {
        let state = self.state.lock().await.clone();
        let table = self.proxy.table();
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
