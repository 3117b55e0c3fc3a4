//! turnout's state: the [`StateStore`] trait that the control plane writes through, and its
//! embedded backend, [`EmbeddedStore`], a SQLite database under `[state] dir`.
//!
//! Only this crate writes state. A write returns only once it is durable (SQLite in WAL mode
//! with `synchronous = FULL`: the commit is fsynced), so a router killed at any instant comes
//! back with the last state it acknowledged, or the one being written when it died — never a
//! half-written one.

mod embedded;
#[cfg(feature = "etcd")]
mod etcd;
mod fleet;

use std::future::Future;
use std::pin::Pin;

pub use embedded::EmbeddedStore;
#[cfg(feature = "etcd")]
pub use etcd::{EtcdOptions, EtcdStore, EtcdTls};
pub use fleet::{Change, Fleet, Leadership, ReplicaInfo};
use turnout_core::{Deployment, RoutingState};

/// A boxed future, so that [`StateStore`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What went wrong with the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened or written.
    #[error("state store at {location}: {source}")]
    Backend {
        /// Where the store is (a path or endpoints).
        location: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Another process holds the state directory's lock: two routers must never route
    /// from one state independently.
    #[error("state directory {} is in use by another turnout process (lock file {}); stop it or use another [state] dir", dir.display(), lock.display())]
    InUse {
        /// The state directory.
        dir: std::path::PathBuf,
        /// The lock file in it.
        lock: std::path::PathBuf,
    },
    /// The saved state could not be read back.
    #[error("state store at {location} holds an unreadable routing state ({source}); move the state directory aside to start from the configuration")]
    Corrupt {
        /// Where the store is.
        location: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The store cannot be reached (etcd down or partitioned away): nothing was written.
    #[error("the state store at {location} is unreachable ({source}); changes are refused until it answers again")]
    Unavailable {
        /// Where the store is.
        location: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// This replica lost its leadership while writing as the leader (its lease expired):
    /// nothing was written, and another replica takes over the deployment.
    #[error("this router is no longer the fleet's leader (its lease at {location} expired); another replica takes the deployment over")]
    NotLeader {
        /// Where the store is.
        location: String,
    },
    /// Another writer changed the state since it was read.
    #[error("the routing state changed while this change was being made (expected revision {expected}, found {found}); read the status again and retry")]
    Conflict {
        /// The revision the writer based its change on.
        expected: u64,
        /// The revision found in the store.
        found: u64,
    },
}

/// Where turnout keeps its state. Implementations are durable: a future that resolved `Ok`
/// means the write survives a crash of the process at any later instant.
pub trait StateStore: Send + Sync + 'static {
    /// The saved routing state, or `None` when nothing was ever saved.
    fn load_routing(&self) -> BoxFuture<'_, Result<Option<RoutingState>, StoreError>>;

    /// Saves `state` if the stored revision is still `expected` (`None`: nothing stored
    /// yet); otherwise fails with [`StoreError::Conflict`] and changes nothing.
    fn save_routing<'a>(
        &'a self,
        state: &'a RoutingState,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Saves a deployment record (insert or replace by id). Durable like a routing save.
    fn save_deployment<'a>(&'a self, d: &'a Deployment) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The `limit` most recent deployments, newest first.
    fn load_deployments(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Deployment>, StoreError>>;

    /// A small named value the control plane keeps (JSON text), or `None`.
    fn load_value<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>>;

    /// Saves a named value (`"routing"` is reserved). Durable like a routing save.
    fn save_value<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Stores `value` under `key` unless a value is there already, and returns the value
    /// stored (the new one or the one that was there): the first writer wins, also among
    /// several routers on one store.
    fn create_value<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<String, StoreError>>;

    /// A short description for logs and errors (a path or endpoints).
    fn describe(&self) -> String;

    /// Why changes cannot be saved now, when the store knows without trying (the
    /// embedded database file was moved or deleted under the router); `status` shows it.
    fn problem(&self) -> Option<String> {
        None
    }

    /// The fleet this store is shared by, when several routers share it (etcd): their
    /// changes, leader election and traffic counters. `None` for a store of one router.
    fn fleet(&self) -> Option<&dyn Fleet> {
        None
    }
}
