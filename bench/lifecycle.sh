#!/usr/bin/env bash
# bench/lifecycle.sh — what clients see while the proxy itself is reloaded, upgraded or
# restarted: turnout beside nginx and haproxy, under the same load, in one run.
#
# For each scenario a fresh proxy is started in front of the same fixed-response backend
# (an nginx, one worker), steady load runs through it for BENCH_SECONDS (CLIENTS
# keep-alive HTTP/1.1 clients, each sending its next request PACE_MS after the last;
# the `steady` example of turnout-testkit: a client honours `Connection: close` and
# reconnects after a failure, as real clients do), and the event is triggered
# BENCH_EVENTS times, evenly spaced. Reported per scenario: requests, failed requests (no
# response, or 5xx), connections refused, the longest time one request took, and the
# longest time in which no request succeeded (the stall clients saw).
#
#   turnout-reload    `turnout reload` after a config change ([bake] duration toggled)
#   turnout-upgrade   `turnout upgrade` (the same binary: what an upgrade does is the same)
#   turnout-restart   SIGTERM, wait for the exit, `turnout serve` again (for contrast)
#   nginx-reload      `nginx -s reload`
#   nginx-upgrade     nginx's binary upgrade: USR2 to the master, then QUIT to the old one
#   haproxy-reload    a new haproxy with `-x` (listening sockets taken over through the
#                     stats socket, `expose-fd listeners`) and `-sf` the old one
#
# Usage: bash bench/lifecycle.sh   (root for apt-get; BENCH_SECONDS [12], BENCH_EVENTS [3],
#        BENCH_CLIENTS [4], BENCH_PACE_MS [1], BENCH_SCENARIOS [all six], BENCH_OUT [mktemp])
# Everything listens on and talks to 127.0.0.1 only; every process started here is
# stopped when the script exits.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
TEMPLATES="$SCRIPT_DIR/templates"
SECONDS_LOAD=${BENCH_SECONDS:-12}
EVENTS=${BENCH_EVENTS:-3}
CLIENTS=${BENCH_CLIENTS:-4}
PACE=${BENCH_PACE_MS:-1}
SCENARIOS=${BENCH_SCENARIOS:-turnout-reload turnout-upgrade turnout-restart nginx-reload nginx-upgrade haproxy-reload}

log() { printf '[lifecycle %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
for v in SECONDS_LOAD EVENTS CLIENTS PACE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
(( SECONDS_LOAD >= 4 && SECONDS_LOAD <= 120 )) || die "BENCH_SECONDS must be 4..120"
(( EVENTS >= 1 && EVENTS <= 10 )) || die "BENCH_EVENTS must be 1..10"

OUT=${BENCH_OUT:-$(mktemp -d /tmp/turnout-lifecycle.XXXXXX)}
mkdir -p "$OUT"
PIDS=()
cleanup() {
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # Processes that took over from one this script started (turnout upgrade, nginx's
    # new master, haproxy's new process) are found by their config file.
    pkill -TERM -f "$OUT/" 2>/dev/null || true
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    pkill -KILL -f "$OUT/" 2>/dev/null || true
    log "raw results in $OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ install, build
missing=()
for cmd in nginx haproxy curl python3; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
if (( ${#missing[@]} )); then
    (( EUID == 0 )) || die "missing ${missing[*]}; run as root or apt-get install -y ${missing[*]}"
    made=0
    [[ -e /usr/sbin/policy-rc.d ]] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made=1; }
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    (( made )) && rm -f /usr/sbin/policy-rc.d
fi
log "building turnout and the load client (release)"
(cd "$REPO" && cargo build --release -q -p turnout && cargo build --release -q -p turnout-testkit --example steady) >&2
TURNOUT=$REPO/target/release/turnout
STEADY=$REPO/target/release/examples/steady
NGINX=$(command -v nginx)
HAPROXY=$(command -v haproxy)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
render() {  # render TEMPLATE OUTFILE KEY=VALUE...
    local tpl=$1 out=$2; shift 2
    local args=() kv
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tpl" >"$out"
}
wait_200() {  # wait_200 PORT
    local i
    for (( i = 0; i < 150; i++ )); do
        [[ $(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$1/" || true) == 200 ]] && return 0
        sleep 0.1
    done
    die "nothing answers 200 on 127.0.0.1:$1"
}

# ------------------------------------------------------------------ backend
BACKEND_PORT=$(free_port)
mkdir -p "$OUT/backend"
render "$TEMPLATES/nginx-backend.conf.in" "$OUT/backend/nginx.conf" DIR="$OUT/backend" PORT="$BACKEND_PORT"
"$NGINX" -c "$OUT/backend/nginx.conf" -p "$OUT/backend" >"$OUT/backend/log" 2>&1 &
PIDS+=($!)
wait_200 "$BACKEND_PORT"

# ------------------------------------------------------------------ scenarios
start_turnout() {  # start_turnout DIR PORT
    local dir=$1 port=$2
    "$TURNOUT" serve --config "$dir/turnout.toml" >>"$dir/stdout" 2>>"$dir/log" &
    PIDS+=($!)
    wait_200 "$port"
}

event() {  # event SCENARIO DIR N -- the N-th reload/upgrade/restart
    local sc=$1 dir=$2 n=$3 pid
    case $sc in
    turnout-reload)
        if (( n % 2 )); then sed -i 's/^duration = "5m"/duration = "6m"/' "$dir/turnout.toml"
        else sed -i 's/^duration = "6m"/duration = "5m"/' "$dir/turnout.toml"; fi
        "$TURNOUT" reload --config "$dir/turnout.toml" >>"$dir/events" 2>&1 ;;
    turnout-upgrade)
        "$TURNOUT" upgrade --config "$dir/turnout.toml" >>"$dir/events" 2>&1 ;;
    turnout-restart)
        pid=$(pgrep -f "serve --config $dir/turnout.toml" | head -1)
        kill -TERM "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
        "$TURNOUT" serve --config "$dir/turnout.toml" >>"$dir/stdout" 2>>"$dir/log" &
        PIDS+=($!) ;;
    nginx-reload)
        "$NGINX" -c "$dir/nginx.conf" -p "$dir" -s reload >>"$dir/events" 2>&1 ;;
    nginx-upgrade)
        # The master's pid: nginx.pid at first, then the one each upgrade started (the
        # old master removes nginx.pid as it exits).
        pid=$(cat "$dir/master" 2>/dev/null || cat "$dir/nginx.pid")
        kill -USR2 "$pid"
        local i
        local new=""
        for (( i = 0; i < 200; i++ )); do
            new=$(cat "$dir/nginx.pid" 2>/dev/null || true)
            [[ -n $new && $new != "$pid" ]] && break
            sleep 0.05
        done
        echo "$new" >"$dir/master"
        kill -QUIT "$pid"
        # The next upgrade is refused while the old master lives.
        for (( i = 0; i < 400; i++ )); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done ;;
    haproxy-reload)
        pid=$(cat "$dir/haproxy.pid")
        "$HAPROXY" -f "$dir/haproxy.cfg" -x "$dir/stats.sock" -sf "$pid" >>"$dir/log" 2>&1 &
        PIDS+=($!)
        echo $! >"$dir/haproxy.pid" ;;
    esac
}

run() {  # run SCENARIO
    local sc=$1 dir=$OUT/$1 port
    mkdir -p "$dir"
    port=$(free_port)
    case $sc in
    turnout-*)
        cat >"$dir/turnout.toml" <<EOF
[listen]
addr = "127.0.0.1:$port"
[admin]
addr = "127.0.0.1:$(free_port)"
[state]
dir = "$dir/state"
[slots.blue]
upstreams = ["127.0.0.1:$BACKEND_PORT"]
[bake]
duration = "5m"
EOF
        TURNOUT_WORKER_THREADS=1 start_turnout "$dir" "$port" ;;
    nginx-*)
        render "$TEMPLATES/nginx-proxy.conf.in" "$dir/nginx.conf" DIR="$dir" PORT="$port" BACKEND_PORT="$BACKEND_PORT"
        if [[ $sc == nginx-upgrade ]]; then
            # nginx ignores USR2 while its master's parent is the one it started with:
            # the binary upgrade needs a daemonized master (its processes are found by
            # their config path at the end).
            sed -i 's/^daemon off;/daemon on;/' "$dir/nginx.conf"
            "$NGINX" -c "$dir/nginx.conf" -p "$dir" >"$dir/log" 2>&1
        else
            "$NGINX" -c "$dir/nginx.conf" -p "$dir" >"$dir/log" 2>&1 &
            PIDS+=($!)
        fi
        wait_200 "$port" ;;
    haproxy-*)
        render "$TEMPLATES/haproxy.cfg.in" "$dir/haproxy.cfg" DIR="$dir" PORT="$port" BACKEND_PORT="$BACKEND_PORT"
        sed -i "s|^    pidfile .*|&\n    stats socket $dir/stats.sock mode 600 level admin expose-fd listeners|" "$dir/haproxy.cfg"
        "$HAPROXY" -f "$dir/haproxy.cfg" >"$dir/log" 2>&1 &
        PIDS+=($!)
        # In the foreground haproxy writes no pidfile: the script keeps it.
        echo $! >"$dir/haproxy.pid"
        wait_200 "$port" ;;
    esac
    "$STEADY" "127.0.0.1:$port" "$SECONDS_LOAD" "$CLIENTS" "$PACE" >"$dir/result.json" &
    local load=$! gap i
    gap=$(python3 -c "print($SECONDS_LOAD / ($EVENTS + 1))")
    for (( i = 1; i <= EVENTS; i++ )); do
        sleep "$gap"
        event "$sc" "$dir" "$i"
    done
    wait "$load"
    printf '%s %s\n' "$sc" "$(cat "$dir/result.json")" | tee -a "$OUT/results.txt"
    pkill -TERM -f "$dir/" 2>/dev/null || true
    sleep 1
}

log "scenarios: $SCENARIOS; ${SECONDS_LOAD}s of load each, $EVENTS events, $CLIENTS clients, ${PACE} ms pace"
: >"$OUT/results.txt"
for sc in $SCENARIOS; do run "$sc"; done

echo
printf '| %-16s | %9s | %7s | %8s | %13s | %16s |\n' scenario requests failed refused "longest (ms)" "no success (ms)"
printf '|%s|%s|%s|%s|%s|%s|\n' ------------------ ----------- --------- ---------- --------------- ------------------
while read -r sc json; do
    python3 - "$sc" "$json" <<'EOF'
import json, sys
sc, r = sys.argv[1], json.loads(sys.argv[2])
print(f"| {sc:<16} | {r['requests']:>9} | {r['failed']:>7} | {r['refused']:>8} | {r['longest_ms']:>13} | {r['gap_ms']:>16} |")
EOF
done <"$OUT/results.txt"
