#!/usr/bin/env bash
# bench/soak.sh — turnout under steady load for a long time, switching slots all along.
#
# Two fixed-response nginx backends (blue answers "blue\n", green "green\n"), one turnout
# router in front of them, wrk at a steady rate for SOAK_SECONDS, and SOAK_SWITCHES
# `turnout switch --to blue|green` (alternately, evenly spread over the run; after each
# one a curl checks that the answer now names the new slot). The router's RSS (VmRSS)
# and open file descriptors (/proc/PID/fd) are recorded after a warm-up ("start"), every
# SOAK_SAMPLE seconds during the run, and when the load has stopped ("end"); failed
# requests are wrk's non-2xx answers plus its socket errors. A table goes to stdout.
#
# Usage: bash bench/soak.sh            (from anywhere; needs root for apt-get)
#
# Environment knobs (defaults in brackets):
#   SOAK_SECONDS       length of the loaded run                 [600]
#   SOAK_SWITCHES      switches during the run                  [500]
#   SOAK_WARMUP        seconds of load before "start"           [15]
#   SOAK_SAMPLE        seconds between RSS/fd samples           [10]
#   SOAK_CONNECTIONS   wrk -c                                   [64]
#   SOAK_THREADS       wrk -t                                   [1]
#   SOAK_WORKERS       TURNOUT_WORKER_THREADS for the router    [1]
#   TURNOUT_BIN        use this turnout binary, skip the cargo build
#   SOAK_BUILD         0 = don't build, use target/release/turnout as it is [1]
#   SOAK_OUT           directory for raw results                [a new mktemp -d]
#
# Like bench/router.sh it starts no system service: nginx runs from configs written into
# the results directory, and every process it starts is killed by pid when it exits.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
TEMPLATES="$SCRIPT_DIR/templates"

SECS=${SOAK_SECONDS:-600}
SWITCHES=${SOAK_SWITCHES:-500}
WARMUP=${SOAK_WARMUP:-15}
SAMPLE=${SOAK_SAMPLE:-10}
CONNS=${SOAK_CONNECTIONS:-64}
THREADS=${SOAK_THREADS:-1}
WORKERS=${SOAK_WORKERS:-1}
READY_DEADLINE=30

log() { printf '[soak %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in SECS SWITCHES WARMUP SAMPLE CONNS THREADS WORKERS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
(( SECS >= 10 )) || die "SOAK_SECONDS must be at least 10"
(( SWITCHES >= 1 )) || die "SOAK_SWITCHES must be at least 1"
(( SAMPLE >= 1 )) || die "SOAK_SAMPLE must be at least 1"

# ---------------------------------------------------------------- processes
PIDS=()
OUT=""
cleanup() {
    local pid i
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for (( i = 0; i < 50; i++ )); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    [[ -n $OUT ]] && log "raw results kept in $OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ install
ensure_tools() {
    local -A pkg_of=([nginx]=nginx [wrk]=wrk [curl]=curl [python3]=python3)
    local missing=() cmd
    for cmd in nginx wrk curl python3; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_of[$cmd]}")
    done
    (( ${#missing[@]} == 0 )) && return 0
    (( EUID == 0 )) || die "missing ${missing[*]}; run as root or: apt-get install -y ${missing[*]}"
    log "installing ${missing[*]}"
    local made_policy=0 rc=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >&2 || rc=$?
    (( made_policy )) && rm -f /usr/sbin/policy-rc.d
    (( rc == 0 )) || die "apt-get failed (exit $rc)"
}

free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

render() {  # render TEMPLATE OUTFILE KEY=VALUE...
    local tpl=$1 out=$2; shift 2
    local args=() kv
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tpl" >"$out"
    ! grep -q '@[A-Z_]*@' "$out" || die "unfilled placeholder in $out"
}

body_of() { curl -s -m 2 "http://127.0.0.1:$1/" 2>/dev/null || true; }

wait_body() {  # wait_body NAME PORT PID LOG EXPECTED
    local t0=$SECONDS
    while (( SECONDS - t0 < READY_DEADLINE )); do
        kill -0 "$3" 2>/dev/null || { tail -n 20 "$4" >&2; die "$1 exited during start-up"; }
        [[ $(body_of "$2") == "$5" ]] && return 0
        sleep 0.2
    done
    tail -n 20 "$4" >&2
    die "$1 did not answer '$5' on 127.0.0.1:$2 within ${READY_DEADLINE}s"
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }

parse_wrk() {  # -> "requests rps non2xx socket_errors p99_ms"
    awk '
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0;
                         if (v ~ /m$/) return v*60000; if (v ~ /s$/) return v*1000; return v+0 }
        / requests in /     { reqs = $1 }
        /^Requests\/sec:/   { rps = $2 }
        /^[ \t]+99%/        { p99 = ms($2) }
        /Non-2xx or 3xx/    { non2xx += $NF }
        /Socket errors:/    { gsub(/,/, ""); sock += $4 + $6 + $8 + $10 }
        END { printf "%d %s %d %d %s\n", reqs, (rps==""?"nan":rps), non2xx, sock, (p99==""?"nan":p99) }
    ' "$1"
}

# ---------------------------------------------------------------- start
ensure_tools
ulimit -n 65536 2>/dev/null || true
OUT=${SOAK_OUT:-$(mktemp -d /tmp/turnout-soak.XXXXXX)}
mkdir -p "$OUT"
log "raw results go to $OUT"

if [[ -z ${TURNOUT_BIN:-} ]]; then
    TURNOUT_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/turnout"
    if [[ ${SOAK_BUILD:-1} != 0 ]]; then
        log "building turnout: cargo build --release -p turnout"
        (cd "$REPO" && nice -n 10 cargo build --release -p turnout) >"$OUT/build.log" 2>&1 ||
            { tail -n 15 "$OUT/build.log" >&2; die "cargo build failed"; }
    fi
fi
[[ -x $TURNOUT_BIN ]] || die "no turnout binary at $TURNOUT_BIN"

read -r BLUE_PORT GREEN_PORT PORT ADMIN_PORT <<<"$(free_ports 4)"

declare -A BPORT=([blue]=$BLUE_PORT [green]=$GREEN_PORT)
for slot in blue green; do
    d="$OUT/$slot"; mkdir -p "$d"
    render "$TEMPLATES/nginx-backend.conf.in" "$d/nginx.conf" DIR="$d" PORT="${BPORT[$slot]}"
    sed -i "s|return 200 \"hello world\\\\n\";|return 200 \"$slot\\\\n\";|" "$d/nginx.conf"
    grep -q "return 200 \"$slot" "$d/nginx.conf" || die "could not set the $slot backend's answer"
    nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" >"$d/stderr.log" 2>&1 &
    PIDS+=($!)
    wait_body "$slot backend" "${BPORT[$slot]}" "$!" "$d/error.log" "$slot"
    PIDS+=($(pgrep -P "${PIDS[-1]}" || true))
done

mkdir -p "$OUT/turnout"
CONFIG="$OUT/turnout/turnout.toml"
render "$TEMPLATES/turnout.toml.in" "$CONFIG" DIR="$OUT/turnout" PORT="$PORT" \
    ADMIN_PORT="$ADMIN_PORT" BACKEND_PORT="$BLUE_PORT"
printf '\n[slots.green]\nupstreams = ["127.0.0.1:%s"]\n' "$GREEN_PORT" >>"$CONFIG"
export TURNOUT_ADMIN_TOKEN=soak
TURNOUT_WORKER_THREADS=$WORKERS "$TURNOUT_BIN" serve --config "$CONFIG" >"$OUT/turnout/stderr.log" 2>&1 &
TPID=$!
PIDS+=("$TPID")
wait_body turnout "$PORT" "$TPID" "$OUT/turnout/stderr.log" blue
log "turnout pid $TPID on 127.0.0.1:$PORT (admin $ADMIN_PORT), blue :$BLUE_PORT, green :$GREEN_PORT"

switch_to() {  # switch_to SLOT -> 0 when the router then answers with SLOT
    "$TURNOUT_BIN" switch --config "$CONFIG" --to "$1" >>"$OUT/switches.log" 2>&1 || return 1
    [[ $(body_of "$PORT") == "$1" ]]
}
# Green must be healthy (TCP checks every second, two passes) before the run starts.
t0=$SECONDS
until switch_to green; do
    (( SECONDS - t0 < READY_DEADLINE )) || die "could not switch to green (see $OUT/switches.log)"
    sleep 1
done
switch_to blue || die "could not switch back to blue"
LIVE=blue

# ---------------------------------------------------------------- warm-up
if (( WARMUP > 0 )); then
    log "warm-up: wrk -t$THREADS -c$CONNS -d${WARMUP}s"
    wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$PORT/" >"$OUT/warmup.txt" 2>&1
fi
sleep 1
RSS0=$(rss_kb "$TPID"); FD0=$(fd_count "$TPID"); TH0=$(threads "$TPID")
log "start: RSS ${RSS0} kB, ${FD0} fds, ${TH0} threads"

# -------------------------------------------------------------- the run
printf 'elapsed_s\trss_kb\tfds\tthreads\tswitches\n' >"$OUT/samples.tsv"
log "run: wrk -t$THREADS -c$CONNS -d${SECS}s --latency, $SWITCHES switches"
timeout $(( SECS + 60 )) wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency \
    "http://127.0.0.1:$PORT/" >"$OUT/wrk.txt" 2>&1 &
WRK=$!
PIDS+=("$WRK")
start=$(date +%s.%N)
done_switches=0; failed_switches=0; next_sample=0
for (( i = 1; i <= SWITCHES; i++ )); do
    # Switch i at i/(SWITCHES+1) of the run, so none falls at its very start or end.
    at=$(awk -v s="$start" -v i="$i" -v n="$SWITCHES" -v d="$SECS" 'BEGIN{printf "%.3f", s + d*i/(n+1)}')
    while :; do
        now=$(date +%s.%N)
        el=$(awk -v a="$start" -v b="$now" 'BEGIN{printf "%d", b-a}')
        if (( el >= next_sample )); then
            printf '%s\t%s\t%s\t%s\t%s\n' "$el" "$(rss_kb "$TPID")" "$(fd_count "$TPID")" "$(threads "$TPID")" \
                "$done_switches" >>"$OUT/samples.tsv"
            next_sample=$(( next_sample + SAMPLE ))
        fi
        wait_s=$(awk -v a="$at" -v b="$now" 'BEGIN{w=a-b; if (w>1) w=1; printf "%.3f", (w>0?w:0)}')
        [[ $wait_s == 0.000 ]] && break
        sleep "$wait_s"
    done
    kill -0 "$TPID" 2>/dev/null || die "turnout exited during the run (see $OUT/turnout/stderr.log)"
    [[ $LIVE == blue ]] && to=green || to=blue
    if switch_to "$to"; then LIVE=$to; else failed_switches=$(( failed_switches + 1 )); fi
    done_switches=$(( done_switches + 1 ))
done
wait "$WRK" || log "wrk exited non-zero (see $OUT/wrk.txt)"
sleep 2
RSS1=$(rss_kb "$TPID"); FD1=$(fd_count "$TPID"); TH1=$(threads "$TPID")
el=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%d", b-a}')
printf '%s\t%s\t%s\t%s\t%s\n' "$el" "$RSS1" "$FD1" "$TH1" "$done_switches" >>"$OUT/samples.tsv"
log "end: RSS ${RSS1} kB, ${FD1} fds, ${TH1} threads"

read -r reqs rps non2xx sockerr p99 <<<"$(parse_wrk "$OUT/wrk.txt")"
rss_max=$(awk -F'\t' 'NR>1 && $2>m {m=$2} END{print m+0}' "$OUT/samples.tsv")
fd_max=$(awk -F'\t' 'NR>1 && $3>m {m=$3} END{print m+0}' "$OUT/samples.tsv")

{
    echo "## Soak — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
    echo "- load: \`wrk -t$THREADS -c$CONNS -d${SECS}s\` after a ${WARMUP}s warm-up; router with $WORKERS worker thread(s); two nginx backends"
    echo "- switches: $done_switches \`turnout switch\` (alternately green/blue, one every $(awk -v d="$SECS" -v n="$SWITCHES" 'BEGIN{printf "%.2f", d/(n+1)}') s), each checked by a request that must answer with the new slot's name"
    echo "- turnout commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo none)"
    echo
    echo "| | start (after warm-up) | end | change | max during run |"
    echo "|---|---:|---:|---:|---:|"
    printf '| RSS | %.1f MiB | %.1f MiB | %+.1f MiB | %.1f MiB |\n' "$(bc -l <<<"$RSS0/1024")" "$(bc -l <<<"$RSS1/1024")" \
        "$(bc -l <<<"($RSS1-$RSS0)/1024")" "$(bc -l <<<"$rss_max/1024")" 2>/dev/null ||
        echo "| RSS | $RSS0 kB | $RSS1 kB | $(( RSS1 - RSS0 )) kB | $rss_max kB |"
    echo "| open fds | $FD0 | $FD1 | $(( FD1 - FD0 )) | $fd_max |"
    echo "| threads | $TH0 | $TH1 | $(( TH1 - TH0 )) | |"
    echo
    echo "| requests | req/s | p99 | non-2xx | socket errors | switches failed |"
    echo "|---:|---:|---:|---:|---:|---:|"
    echo "| $reqs | $rps | $p99 ms | $non2xx | $sockerr | $failed_switches of $done_switches |"
    echo
    echo "RSS/fd samples every ${SAMPLE}s: $OUT/samples.tsv; wrk output: $OUT/wrk.txt"
} | tee "$OUT/results.md"
