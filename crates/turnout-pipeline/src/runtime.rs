//! What each slot runs, beyond its upstream addresses: who brought its upstreams up (and so
//! who takes them down), and the instance processes turnout started for it. Saved under
//! the store key `slots` so that a restarted router can stop, restart or adopt them.

use serde::{Deserialize, Serialize};
use turnout_core::Deployment;

use crate::instances::{InstanceRecord, Instances};

/// Who provided a slot's upstreams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotKind {
    /// Named by the operator (`deploy --upstream`): turnout neither starts nor stops them.
    Static,
    /// Started by turnout from `[provision] command`.
    Command,
    /// Brought up by `[provision] up`; `down` takes them away.
    External,
}

/// A slot's runtime.
pub struct SlotRuntime {
    /// Who provided the upstreams.
    pub kind: SlotKind,
    /// The version.
    pub version: String,
    /// The deployment that provided them.
    pub deployment: String,
    /// The processes, for [`SlotKind::Command`].
    pub instances: Option<Instances>,
}

impl SlotRuntime {
    /// A runtime for `d`'s candidate, without processes yet.
    pub fn new(kind: SlotKind, d: &Deployment) -> SlotRuntime {
        SlotRuntime {
            kind,
            version: d.version.clone(),
            deployment: d.id.clone(),
            instances: None,
        }
    }

    /// The saved form.
    pub fn saved(&self) -> SavedSlot {
        SavedSlot {
            kind: self.kind,
            version: self.version.clone(),
            deployment: self.deployment.clone(),
            instances: self
                .instances
                .as_ref()
                .map(Instances::records)
                .unwrap_or_default(),
        }
    }
}

/// A slot's runtime as saved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedSlot {
    /// Who provided the upstreams.
    pub kind: SlotKind,
    /// The version.
    pub version: String,
    /// The deployment that provided them.
    pub deployment: String,
    /// The processes turnout started.
    pub instances: Vec<InstanceRecord>,
}
