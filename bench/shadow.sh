#!/usr/bin/env bash
# bench/shadow.sh — what mirroring live traffic costs the live requests.
#
# One turnout in front of a fixed-response nginx backend (the live slot), a second
# nginx backend as the candidate. The same wrk load runs in two modes, interleaved
# round by round:
#   off     no shadowing
#   mirror  100% of GET requests mirrored to the candidate (and compared)
# Mirroring is turned on the way users turn it on: a deployment of the candidate
# (`turnout deploy v2 --upstream CANDIDATE`) with a long `[shadow]` stage; it is
# aborted (`turnout abort`) for the "off" rounds and started again for the next
# "mirror" round.
#
# Pinning as in bench/router.sh: turnout on BENCH_PROXY_CPU (one worker), wrk and both
# backends on BENCH_LOAD_CPU. On a 2-core machine the candidate backend shares the
# load core with wrk, so mirroring also takes load-generator time: the "mirror" numbers
# are a pessimistic bound.
#
# Usage: bash bench/shadow.sh     (needs nginx, wrk, curl, taskset, python3; root to
#                                  apt-get them when missing)
# Knobs: BENCH_RUNS [3], BENCH_DURATION [10], BENCH_WARMUP [3], BENCH_CONNECTIONS [64],
#        BENCH_PROXY_CPU [0], BENCH_LOAD_CPU [1], TURNOUT_BIN, BENCH_BUILD [1], BENCH_OUT,
#        BENCH_RATE: a fixed request rate (requests/s) instead of wrk's closed loop,
#        measured with oha (`cargo install oha`) and latency-corrected — the operating
#        point of a router with headroom, where mirroring should cost nothing.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
TEMPLATES="$SCRIPT_DIR/templates"

RUNS=${BENCH_RUNS:-3}
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-3}
CONNS=${BENCH_CONNECTIONS:-64}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
READY_DEADLINE=30

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in RUNS DURATION WARMUP CONNS PROXY_CPU LOAD_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
(( RUNS >= 1 && RUNS <= 20 )) || die "BENCH_RUNS must be 1..20"
(( DURATION >= 1 && DURATION <= 300 )) || die "BENCH_DURATION must be 1..300"

PIDS=()
OUT=""
cleanup() {
    local pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    [[ -n $OUT ]] && log "raw results kept in $OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for cmd in nginx wrk curl taskset python3; do
    command -v "$cmd" >/dev/null 2>&1 && continue
    (( EUID == 0 )) || die "$cmd is missing; install nginx wrk curl util-linux python3"
    log "installing nginx wrk curl"
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk curl util-linux python3 >&2
    rm -f /usr/sbin/policy-rc.d
    break
done

free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

render() {
    local tpl=$1 out=$2; shift 2
    local args=() kv
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tpl" >"$out"
}

wait_200() {  # wait_200 PORT
    local t0=$SECONDS
    while (( SECONDS - t0 < READY_DEADLINE )); do
        [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1/" || true) == 200 ]] && return 0
        sleep 0.2
    done
    die "nothing answers 200 on 127.0.0.1:$1"
}

parse_wrk() {  # -> "rps p50_ms p99_ms errors"
    awk '
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0;
                         if (v ~ /s$/) return v*1000; return v+0 }
        /^Requests\/sec:/ { rps = $2 }
        /^[ \t]+50%/      { p50 = ms($2) }
        /^[ \t]+99%/      { p99 = ms($2) }
        /Non-2xx or 3xx/  { err += $NF }
        /Socket errors:/  { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
        END { printf "%s %s %s %d\n", rps, p50, p99, err }
    ' "$1"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

ulimit -n 65536 2>/dev/null || true
OUT=${BENCH_OUT:-$(mktemp -d /tmp/turnout-shadow-bench.XXXXXX)}
mkdir -p "$OUT"

if [[ -n ${TURNOUT_BIN:-} ]]; then
    TURNOUT=$TURNOUT_BIN
else
    if [[ ${BENCH_BUILD:-1} == 1 ]]; then
        log "building turnout (release)"
        (cd "$REPO" && cargo build --release -q -p turnout) >&2
    fi
    TURNOUT=$REPO/target/release/turnout
fi
[[ -x $TURNOUT ]] || die "no turnout binary at $TURNOUT"

read -r LIVE_PORT CAND_PORT DATA_PORT ADMIN_PORT <<<"$(free_ports 4)"
for name in live cand; do
    port_var=${name^^}_PORT
    mkdir -p "$OUT/$name"
    render "$TEMPLATES/nginx-backend.conf.in" "$OUT/$name/nginx.conf" "DIR=$OUT/$name" "PORT=${!port_var}"
    taskset -c "$LOAD_CPU" nginx -c "$OUT/$name/nginx.conf" -p "$OUT/$name" >"$OUT/$name/stdout" 2>&1 &
    PIDS+=($!)
    wait_200 "${!port_var}"
done

export TURNOUT_ADMIN_TOKEN=bench-token
cat >"$OUT/turnout.toml" <<EOF
[listen]
addr = "127.0.0.1:$DATA_PORT"
[admin]
addr = "127.0.0.1:$ADMIN_PORT"
token = "env:TURNOUT_ADMIN_TOKEN"
[state]
dir = "$OUT/state"
[slots.blue]
upstreams = ["127.0.0.1:$LIVE_PORT"]
version = "v1"
[health]
path = "/"
interval = "1s"
healthy = 1
[shadow]
duration = "1h"
sample = 1.0
methods = ["GET"]
[bake]
duration = "1s"
EOF
TURNOUT_WORKER_THREADS=1 TURNOUT_LOG=warn taskset -c "$PROXY_CPU" \
    "$TURNOUT" serve --config "$OUT/turnout.toml" >"$OUT/turnout.out" 2>"$OUT/turnout.err" &
PIDS+=($!)
wait_200 "$DATA_PORT"
T=("$TURNOUT" --config "$OUT/turnout.toml")

shadow_on() {
    "${T[@]}" deploy v2 --upstream "127.0.0.1:$CAND_PORT" --detach >>"$OUT/cli.log" 2>&1 ||
        die "deploy failed (see $OUT/cli.log)"
    local t0=$SECONDS
    until "${T[@]}" status --json | grep -q '"stage":"shadow"'; do
        (( SECONDS - t0 < 30 )) || die "the deployment never reached its shadow stage"
        sleep 0.2
    done
}
shadow_off() {
    "${T[@]}" abort >>"$OUT/cli.log" 2>&1 || die "abort failed (see $OUT/cli.log)"
}

parse_oha() {  # oha JSON -> "rps p50_ms p99_ms errors"
    python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["summary"]; p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
total = sum(codes.values()) + sum(r.get("errorDistribution", {}).values())
print(f'{s["requestsPerSec"]:.2f} {p["p50"]*1000:.3f} {p["p99"]*1000:.3f} {total - ok}')
EOF
}

run() {  # run MODE ROUND
    local f="$OUT/$1-$2.txt" line
    if [[ -n ${BENCH_RATE:-} ]]; then
        timeout $(( DURATION + 30 )) taskset -c "$LOAD_CPU" \
            oha --no-tui --output-format json --latency-correction -c "$CONNS" -q "$BENCH_RATE" \
            -z "${DURATION}s" "http://127.0.0.1:$DATA_PORT/" >"$f" 2>/dev/null
        line=$(parse_oha "$f")
    else
        timeout $(( DURATION + 30 )) taskset -c "$LOAD_CPU" \
            wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$DATA_PORT/" >"$f" 2>&1
        line=$(parse_wrk "$f")
    fi
    echo "$1 $2 $line" >>"$OUT/results.txt"
    log "$1 round $2: $line (rps p50 p99 errors)"
}

log "warm-up"
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$DATA_PORT/" >/dev/null 2>&1
: >"$OUT/results.txt"
for (( r = 1; r <= RUNS; r++ )); do
    run off "$r"
    shadow_on
    run mirror "$r"
    "${T[@]}" shadow report --json >"$OUT/shadow-report-$r.json" 2>>"$OUT/cli.log" || true
    shadow_off
done

col() { awk -v m="$1" -v c="$2" '$1==m {print $c}' "$OUT/results.txt"; }
OFF_RPS=$(median $(col off 3)); MIR_RPS=$(median $(col mirror 3))
OFF_P99=$(median $(col off 5)); MIR_P99=$(median $(col mirror 5))
OFF_ERR=$(col off 6 | paste -sd+ | bc); MIR_ERR=$(col mirror 6 | paste -sd+ | bc)
MIRRORED=$(python3 - "$OUT" "$RUNS" <<'EOF'
import json, sys
out, runs = sys.argv[1], int(sys.argv[2])
m = c = d = 0
for r in range(1, runs + 1):
    try:
        rep = json.load(open(f"{out}/shadow-report-{r}.json"))
    except Exception:
        continue
    m += rep.get("requests", 0); c += rep.get("compared", 0); d += rep.get("dropped", 0)
print(f"{m} {c} {d}")
EOF
)
echo
echo "## turnout with 100% GET mirroring vs without ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo
echo "| mode | requests/s | p50 | p99 | errors | vs off |"
echo "|---|---:|---:|---:|---:|---:|"
printf '| off | %.0f | %.3f ms | %.3f ms | %s | 1.00× |\n' "$OFF_RPS" "$(median $(col off 4))" "$OFF_P99" "$OFF_ERR"
printf '| mirror | %.0f | %.3f ms | %.3f ms | %s | %.2f× rps, %.2f× p99 |\n' "$MIR_RPS" "$(median $(col mirror 4))" "$MIR_P99" "$MIR_ERR" \
    "$(echo "$MIR_RPS / $OFF_RPS" | bc -l)" "$(echo "$MIR_P99 / $OFF_P99" | bc -l)"
echo
read -r M C D <<<"$MIRRORED"
LOADGEN="wrk -t1 -c$CONNS (closed loop: as fast as turnout answers)"
[[ -n ${BENCH_RATE:-} ]] && LOADGEN="oha -c$CONNS -q $BENCH_RATE (fixed rate, latency-corrected)"
echo "mirrored $M, compared $C, dropped $D over $RUNS mirror rounds of ${DURATION}s (median of $RUNS rounds, $LOADGEN, turnout on core $PROXY_CPU, the load generator and both backends on core $LOAD_CPU)"
