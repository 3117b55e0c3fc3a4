#!/usr/bin/env bash
# Installs what turnout's tests need and runs every test: formatting, lints, unit and
# integration tests. `.ci/run` calls exactly this. Needs only a Rust toolchain (with
# rustfmt and clippy); the Debian packages the tests use are installed when missing:
# chromium (the dashboard's browser test), curl and openssl (TLS tests), etcd-server (the
# fleet tests start and stop their own etcd) and protobuf-compiler (the etcd client's
# build needs protoc).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Debian packages the tests need"
missing=()
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
    && ! command -v google-chrome >/dev/null && [ -z "${TURNOUT_CHROMIUM:-}" ]; then
  missing+=(chromium)
fi
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v etcd >/dev/null || [ -n "${ETCD_BIN:-}" ] || missing+=(etcd-server)
command -v protoc >/dev/null || [ -n "${PROTOC:-}" ] || missing+=(protobuf-compiler)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing: ${missing[*]}"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

# The etcd backend is a cargo feature (its build needs protoc); the tests use it.
features="turnout/etcd,turnout-store/etcd"
# A clean checkout builds once: incremental compilation would only cost time and disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (with and without the etcd feature)"
cargo clippy --workspace --all-targets --locked --features "$features" -- -D warnings
cargo clippy -p turnout --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked --features "$features"
