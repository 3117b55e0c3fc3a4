#!/usr/bin/env bash
# Installs what turnout's tests need and runs every test: formatting, lints, unit and
# integration tests. `.ci/run` calls exactly this. Needs only a Rust toolchain (with
# rustfmt and clippy) and, for later suites, Debian packages it installs itself.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked
