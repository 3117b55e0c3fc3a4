//! The `turnout` binary: glue between the CLI and the libraries. The logic lives in the
//! `turnout-*` crates; this crate parses arguments, wires `serve`, and prints.
//!
//! Its modules use each other one way (`scripts/module-cycles.sh` checks it): `cli`,
//! `client`, `error` and `out` are leaves; the commands' modules use only leaves and
//! each other downwards (`demo` uses `follow`, `serve` uses `lifecycle` and `sessions`);
//! `commands` (the dispatch) is on top, and only `main` uses it.

mod capture;
mod cli;
mod client;
mod commands;
mod demo;
mod error;
mod follow;
mod lifecycle;
mod out;
mod replay;
mod serve;
mod sessions;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => commands::report(&e),
    }
}
