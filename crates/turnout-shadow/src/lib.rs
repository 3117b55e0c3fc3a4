//! Shadow traffic analysis, with no IO of its own: the data plane (`turnout-proxy`) copies
//! live exchanges and mirrors them to the candidate; this crate compares what came back,
//! tells regressions from noise, and writes and reads GoReplay's capture format.

mod types;

pub use types::{Exchange, RequestCopy, ResponseCopy, Sample};
