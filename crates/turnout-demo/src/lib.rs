//! `turnout demo`, the quick start, as a library: the pieces the command line puts
//! together and prints. With no config file, it writes a config into a work directory
//! ([`setup`]), starts a router (`turnout serve`, a child process: [`RouterProcess`]) and
//! steady load ([`Load`]) on free loopback ports, and releases the demo service
//! (`turnout-demo-app`) as the [`RELEASES`] say: v1 (the first version), v2 (shadowed,
//! promoted after its bake), v3-price (a changed JSON field: the shadow gate stops it
//! before the switch) and v4-bad (goes bad after its shadow test: the bake rolls it back).
//!
//! Deploying, following a deployment and printing are the command line's (`turnout`'s
//! `demo.rs`, through the same API calls and follower as `turnout deploy`); nothing here
//! prints. Errors are `anyhow` chains: their only reader is that command line.

mod load;
mod router;
pub mod setup;

use turnout_core::Verdict;

pub use load::{Load, PhaseLoad, LOAD_CLIENTS, LOAD_PERIOD};
pub use router::RouterProcess;

/// The demo service's binary name, looked for next to the turnout binary.
pub const APP: &str = "turnout-demo-app";

/// One release of the demo.
pub struct Release {
    /// The version deployed (`{version}` of the `[provision]` command).
    pub version: &'static str,
    /// What it is, for people.
    pub about: &'static str,
    /// The verdict the pipeline should reach.
    pub expected: Verdict,
}

/// The releases, in order.
pub const RELEASES: [Release; 4] = [
    Release {
        version: "v1",
        about: "first version: becomes live without a standby",
        expected: Verdict::Promoted,
    },
    Release {
        version: "v2",
        about: "a good version: shadowed with live traffic, switched to, baked, then v1 is retired",
        expected: Verdict::Promoted,
    },
    Release {
        version: "v3-price",
        about:
            "sends prices as strings: the shadow comparison should stop it before any user sees it",
        expected: Verdict::Failed,
    },
    Release {
        version: "v4-bad",
        about: "goes bad 10s after it starts (30% of its API answers fail): it passes the shadow test, and the bake should roll it back",
        expected: Verdict::RolledBack,
    },
];
