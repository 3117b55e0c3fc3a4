//! Test support for turnout: real backends on `127.0.0.1:0`, a real `turnout serve`
//! process, the demo service as a process, simple keep-alive HTTP clients, steady load
//! ([`Load`]), and [`eventually`] for waiting on a condition with a deadline instead of
//! sleeping.
//!
//! Everything here talks to loopback only, and every handle stops what it started when
//! dropped.

#![allow(missing_docs)]

mod backend;
mod client;
mod demo;
pub mod etcd;
mod load;
mod pki;
pub mod router;
mod shop;
mod webhook;

use std::future::Future;
use std::time::{Duration, Instant};

pub use backend::Backend;
pub use client::{HttpClient, Reply};
pub use demo::{demo_app_path, processes_with_args, DemoApp};
pub use etcd::{Etcd, EtcdTlsFiles};
pub use load::{describe_failures, Load, Sample};
pub use pki::{make_pki, Pki};
pub use router::{Router, RouterOptions, TOKEN};
pub use shop::{sh_quote, toml_str, Shop};
pub use webhook::webhook_receiver;

/// The admin token test routers use.
pub fn router_token() -> &'static str {
    TOKEN
}

/// Polls `check` until it returns `Some`, at most until `deadline` has passed; panics with
/// `what` when it never does. Polls every 10 ms.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
