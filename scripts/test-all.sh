#!/usr/bin/env bash
# Installs what turnout's tests need and runs every test: formatting, lints, unit and
# integration tests. `.ci/run` calls exactly this. Needs only a Rust toolchain (with
# rustfmt and clippy) on Debian; every other file the build and the tests rely on is
# listed below with the Debian package that provides it, checked by the file itself (not
# only by a command on the PATH), installed when missing, and checked again after.
set -euo pipefail
cd "$(dirname "$0")/.."

# file the build or a test relies on        Debian package     what for
needs=(
  "/usr/bin/protoc                            protobuf-compiler  etcd client's build: protoc"
  "/usr/include/google/protobuf/descriptor.proto libprotobuf-dev etcd client's build: protoc's well-known types"
  "/usr/include/google/protobuf/struct.proto  libprotobuf-dev    etcd client's build: protoc's well-known types"
  "/usr/bin/etcd                              etcd-server        fleet tests start their own etcd"
  "/usr/bin/chromium                          chromium           dashboard test in a real browser"
  "/usr/bin/curl                              curl               TLS tests"
  "/usr/bin/openssl                           openssl            TLS tests make their own certificates"
  "/usr/bin/systemd-socket-activate           systemd            socket-activation test"
)
# Overrides for files elsewhere: PROTOC (with PROTOC_INCLUDE), ETCD_BIN, TURNOUT_CHROMIUM.
overridden() {
  case "$1" in
    /usr/bin/protoc) [ -n "${PROTOC:-}" ] ;;
    /usr/include/google/protobuf/*) [ -n "${PROTOC_INCLUDE:-}" ] ;;
    /usr/bin/etcd) [ -n "${ETCD_BIN:-}" ] ;;
    /usr/bin/chromium) [ -n "${TURNOUT_CHROMIUM:-}" ] ;;
    *) false ;;
  esac
}
missing_packages() {
  local line file pkg
  for line in "${needs[@]}"; do
    read -r file pkg _ <<<"$line"
    if [ ! -e "$file" ] && ! overridden "$file"; then echo "$pkg"; fi
  done | sort -u
}

echo "== Debian packages the tests need"
mapfile -t missing < <(missing_packages)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing: ${missing[*]}"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
failed=0
for line in "${needs[@]}"; do
  read -r file pkg what <<<"$line"
  if [ ! -e "$file" ] && ! overridden "$file"; then
    echo "missing: $file ($what), which Debian's package $pkg provides; install it with: apt-get install $pkg" >&2
    failed=1
  fi
done
[ "$failed" -eq 0 ] || exit 1
echo "all present: ${#needs[@]} files"

# The etcd backend is a cargo feature (its build needs protoc); the tests use it.
features="turnout/etcd,turnout-store/etcd"
# A clean checkout builds once: incremental compilation would only cost time and disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== module cycles (each crate's modules use each other one way)"
bash scripts/module-cycles.sh crates/turnout/src
bash scripts/module-cycles.sh crates/turnout-proxy/src

echo "== cargo clippy (with and without the etcd feature)"
cargo clippy --workspace --all-targets --locked --features "$features" -- -D warnings
cargo clippy -p turnout --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked --features "$features"
