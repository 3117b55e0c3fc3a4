//! The `turnout` binary: glue between the CLI and the libraries. The logic lives in the
//! `turnout-*` crates; this crate parses arguments, wires `serve`, and prints.

mod capture;
mod cli;
mod client;
mod commands;
mod demo;
mod follow;
mod lifecycle;
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
