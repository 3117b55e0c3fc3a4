#!/usr/bin/env bash
# bench/connections.sh — what an idle keep-alive connection costs turnout, nginx and
# HAProxy, in one run: bytes per idle connection at 1k, 5k and 15k connections over plain
# HTTP/1.1, TLS and h2c; RSS after they close; a normal client's latency with and without
# the idle crowd. The measuring is bench/connections.py (its docstring has the method).
#
# Usage: bash bench/connections.sh     (from anywhere; root installs what is missing)
#   TURNOUT_BIN       use this turnout binary (else: cargo build --release -p turnout)
#   BENCH_COUNTS      connection counts           [1000,5000,15000]
#   BENCH_PROTOCOLS   http,tls,h2c                [http,tls,h2c]
#   BENCH_PROXIES     nginx,haproxy,turnout       [nginx,haproxy,turnout]
#   BENCH_PROXY_CPU / BENCH_LOAD_CPU              [0 / 1]
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
missing=()
for cmd in nginx haproxy openssl python3 taskset; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if (( ${#missing[@]} )); then
    pkgs=$(printf '%s\n' "${missing[@]}" | sed 's/^taskset$/util-linux/' | tr '\n' ' ')
    (( EUID == 0 )) || { echo "missing: $pkgs; run as root or apt-get install -y $pkgs" >&2; exit 1; }
    made=0
    [[ -e /usr/sbin/policy-rc.d ]] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made=1; }
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs
    (( made )) && rm -f /usr/sbin/policy-rc.d
fi
if [[ -z ${TURNOUT_BIN:-} ]]; then
    (cd "$REPO" && cargo build --release -p turnout) >&2
    TURNOUT_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/turnout"
fi
exec python3 "$REPO/bench/connections.py" --turnout "$TURNOUT_BIN" \
    --counts "${BENCH_COUNTS:-1000,5000,15000}" \
    --protocols "${BENCH_PROTOCOLS:-http,tls,h2c}" \
    --proxies "${BENCH_PROXIES:-nginx,haproxy,turnout}"
