//! `turnout-demo-app`: a tiny shop, the service turnout's demo and tests release.
//!
//! ```text
//! turnout-demo-app --port 7001 --version v1 [--db shop.db] [--fail-rate 0.3]
//!                  [--extra-latency 200ms] [--price-as-string] [--noisy]
//!                  [--not-found-status 410] [--feature NAME]
//! ```
//!
//! Routes: `GET /healthz`; `GET /` (which version answers); `GET /api/items`,
//! `GET /api/items/{id}`, `POST /api/items` `{"name", "price"}` — items live in SQLite, so
//! two versions pointed at one `--db` share their state, as blue and green share a
//! database in a real release; `GET /debug/requests` counts the requests received by
//! method, the copies turnout mirrored (`X-Turnout-Shadow: 1`) apart. The knobs make a bad
//! version: `--fail-rate` answers that share of API requests with 500, `--extra-latency`
//! slows every API answer, and `--price-as-string` changes one JSON field (`"price":
//! "2.50"` instead of `2.5`); `--not-found-status` changes the status of a missing item's
//! answer, `--feature NAME` adds the header `x-shop-feature: NAME` to API answers. And
//! `--noisy` makes answers differ every time (a `generated_at` timestamp and a random
//! `request_id` in JSON bodies, a random `x-trace-id` header), as many real services do.
//!
//! `turnout-demo-app migrate expand|contract|break --db shop.db` changes the schema, as a
//! deployment's hooks would (see `migrate.rs`).

mod migrate;
mod shop;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "migrate") {
        return migrate::main(std::env::args_os().skip(1));
    }
    let args = shop::Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("turnout-demo-app: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(shop::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turnout-demo-app: {e:#}");
            ExitCode::from(1)
        }
    }
}
