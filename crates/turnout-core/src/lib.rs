//! turnout's domain: the two slots, their roles, the routing state that says which one is
//! live, and the transitions between states (switch, rollback). Also [`units`]: the one
//! parser of durations and sizes, for the config, the command line and the demo service.
//!
//! This crate does no IO: every function here is a pure computation on values, so that the
//! rules can be tested exhaustively and shared by the admin API, the pipeline and the
//! store backends.

mod addr;
mod deployment;
mod routing;
mod slot;
pub mod units;

pub use addr::names_listen_addr;
pub use deployment::{format_ms, Analysis, Deployment, Outcome, Stage, StageRecord, Verdict};
pub use routing::{Drain, RoutingState, SlotState, SwitchError, Weights};
pub use slot::{ParseSlotError, Role, SlotName};
