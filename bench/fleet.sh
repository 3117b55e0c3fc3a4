#!/usr/bin/env bash
# bench/fleet.sh — how fast a switch reaches every router of a fleet on etcd.
#
# Runs the fleet test `a_switch_made_on_one_replica_is_served_by_all_three` built in
# release mode with FLEET_SWITCHES switches: a real etcd (Debian's etcd-server), two
# backends, three `turnout serve` replicas on loopback. Each switch is made through the
# admin API of one replica (in turn); the time measured runs from just before that call
# until every one of the three data planes answers `GET /` from the new slot (each polled
# in turn over a keep-alive connection, as fast as it answers). Prints the test's
# FLEET_SWITCH line: the number of switches, the median, p90, p99 and the maximum.
#
# The peer, in the same run: bench/fleet_nginx.py — three nginx routers switched the way
# a deploy script does it (rewrite the included upstream file, `nginx -s reload` on each),
# timed the same way until all three serve the new backend.
#
# Usage: bash bench/fleet.sh     (installs etcd-server, protobuf-compiler, nginx if missing)
#   FLEET_SWITCHES  switches to make [100]
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); etcd $(etcd --version | head -1 | awk '{print $3}')"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
TURNOUT_FLEET_SWITCHES="${FLEET_SWITCHES:-100}" cargo test --release --locked \
  --features turnout/etcd -p turnout --test fleet a_switch_made_on_one_replica_is_served_by_all_three \
  -- --nocapture 2>&1 | grep -E "FLEET_SWITCH|test result"
python3 bench/fleet_nginx.py "${FLEET_SWITCHES:-100}"
