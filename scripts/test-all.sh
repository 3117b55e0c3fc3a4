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

echo "== chromium (for the dashboard's browser test)"
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
    && ! command -v google-chrome >/dev/null && [ -z "${TURNOUT_CHROMIUM:-}" ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium
fi

echo "== curl and openssl (for the TLS tests)"
if ! command -v curl >/dev/null || ! command -v openssl >/dev/null; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends curl openssl
fi

echo "== cargo test"
cargo test --workspace --locked
