//! What a store shared by several routers (a fleet) offers beyond [`crate::StateStore`]:
//! the changes other replicas make, the election of the one replica that runs
//! deployments, and each replica's traffic counters for the leader's bake analysis.

use serde::{Deserialize, Serialize};
use turnout_core::{Deployment, RoutingState};

use crate::{BoxFuture, StoreError};

/// A change to the shared state, as the store applied it.
#[derive(Clone, Debug)]
pub enum Change {
    /// The routing state, after any replica changed it.
    Routing(RoutingState),
    /// The routing state as stored when the connection to the store was made (at start
    /// and after each reconnection), so that a replica that missed changes while cut off
    /// catches up.
    Connected(RoutingState),
    /// On connecting, the store held no routing state although the fleet had one: etcd
    /// lost its data (a member rebuilt without its data dir, a restore from an empty
    /// snapshot) or the prefix was deleted. The replica writes back the state it last knew.
    Missing,
    /// A deployment record the leader saved.
    Deployment(Box<Deployment>),
}

/// Who a replica is: what the leader key and `turnout status` show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaInfo {
    /// The replica's id (random per process).
    pub replica: String,
    /// Its admin API's base URL (`[state] advertise`, or the admin address).
    pub admin: String,
}

/// This replica leads the fleet until `lost` turns `true` (its lease expired or a write
/// found the leader key gone).
#[derive(Debug)]
pub struct Leadership {
    /// Turns `true` once, when the leadership is lost.
    pub lost: tokio::sync::watch::Receiver<bool>,
}

/// The fleet side of a shared store.
pub trait Fleet: Send + Sync {
    /// This replica.
    fn me(&self) -> &ReplicaInfo;

    /// Changes to the routing state and deployment records, in the store's order; after
    /// each (re)connection the current routing state first. Ends when the receiver is
    /// dropped.
    fn changes(&self) -> tokio::sync::mpsc::Receiver<Change>;

    /// [`crate::StateStore::save_routing`] for a change only the leader may make (a
    /// deployment's): refused with [`StoreError::NotLeader`] unless this replica still
    /// leads when the write lands.
    fn save_routing_as_leader<'a>(
        &'a self,
        state: &'a RoutingState,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Resolves when this replica has become the leader (it retries while another replica
    /// leads or the store is unreachable).
    fn campaign(&self) -> BoxFuture<'_, Result<Leadership, StoreError>>;

    /// The current leader, if one is elected.
    fn leader(&self) -> BoxFuture<'_, Result<Option<ReplicaInfo>, StoreError>>;

    /// Publishes this replica's traffic counters (JSON); they vanish with the replica.
    fn publish_counters(&self, value: String) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Every live replica's published counters: `(replica id, JSON)`.
    fn counters(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>>;

    /// Whether the last call to the store got through.
    fn connected(&self) -> bool;

    /// Ends this replica's lease (a router that stops): its leadership, if it led, passes
    /// to another replica at once, and its counters go.
    fn resign(&self) -> BoxFuture<'_, ()>;
}
