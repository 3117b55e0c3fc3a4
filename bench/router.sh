#!/usr/bin/env bash
# bench/router.sh — turnout beside nginx, haproxy and a direct connection.
#
# One run measures, under the same conditions, four ways to reach the same
# fixed-response HTTP backend:
#   direct   wrk -> backend
#   nginx    wrk -> nginx   -> backend
#   haproxy  wrk -> haproxy -> backend
#   turnout  wrk -> turnout -> backend
#
# Each proxy runs on one core (BENCH_PROXY_CPU, default 0) with one worker;
# wrk and the backend (a second nginx, one worker, `return 200 "hello world\n"`)
# share the other core (BENCH_LOAD_CPU, default 1). Upstream keep-alive is on
# for every proxy, logging is off, everything binds and talks to 127.0.0.1 on
# free ports chosen here. All four targets run side by side (an idle one uses
# next to no CPU) and the measured runs are interleaved round by round, so slow drift of
# the machine hits every target alike. The median of the rounds is reported.
#
# Usage: bash bench/router.sh            (from anywhere; needs root for apt-get)
#
# Environment knobs (defaults in brackets):
#   BENCH_TARGETS      targets to run, in order      [direct nginx haproxy turnout]
#   BENCH_TURNOUT      0 = leave turnout out          [1]
#   TURNOUT_BIN        use this turnout binary, skip the cargo build
#   TURNOUT_BASE_BIN   also measure this turnout binary (an earlier build, say),
#                      as target `turnout-base`, interleaved with the others: a
#                      change to the data plane beside what it replaces, in one run
#   BENCH_BUILD        0 = don't build, use target/release/turnout as it is [1]
#   BENCH_RUNS         measured runs per target       [3]
#   BENCH_DURATION     seconds per measured run       [10]
#   BENCH_WARMUP       seconds of warm-up per target  [5]
#   BENCH_CONNECTIONS  wrk -c                         [64]
#   BENCH_THREADS      wrk -t                         [1]
#   BENCH_PROXY_CPU    core for the proxy under test  [0]
#   BENCH_LOAD_CPU     core for wrk and the backend   [1]
#   BENCH_OUT          directory for raw results      [a new mktemp -d]
#   BENCH_WAIT_QUIET   budget of seconds to wait for idle cores before the
#                      warm-up and before each measured run       [0]
#
# It never starts system services: nginx and haproxy run from configs written
# into the results directory (templates in bench/templates/), in the
# foreground, and every process it starts is killed by pid when it exits.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
TEMPLATES="$SCRIPT_DIR/templates"

RUNS=${BENCH_RUNS:-3}
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-5}
CONNS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-1}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
TARGETS=${BENCH_TARGETS:-direct nginx haproxy turnout}
READY_DEADLINE=30

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for v in RUNS DURATION WARMUP CONNS THREADS PROXY_CPU LOAD_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
(( RUNS >= 1 && RUNS <= 20 )) || die "BENCH_RUNS must be 1..20"
(( DURATION >= 1 && DURATION <= 300 )) || die "BENCH_DURATION must be 1..300"
(( WARMUP <= 300 )) || die "BENCH_WARMUP must be at most 300"

if [[ ${BENCH_TURNOUT:-1} == 0 ]]; then
    TARGETS=$(tr ' ' '\n' <<<"$TARGETS" | grep -vx turnout | tr '\n' ' ' || true)
fi

# ---------------------------------------------------------------- processes
PIDS=()          # every process this script started (servers, samplers)
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
    local -A pkg_of=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [curl]=curl
                     [ss]=iproute2 [taskset]=util-linux [python3]=python3)
    local missing=() cmd
    for cmd in nginx haproxy wrk curl ss taskset python3; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_of[$cmd]}")
    done
    (( ${#missing[@]} == 0 )) && return 0
    (( EUID == 0 )) || die "missing ${missing[*]}; run as root or: apt-get install -y ${missing[*]}"
    log "installing ${missing[*]} (apt-get update once, then install)"
    # Debian starts a service when its package is installed; a policy-rc.d
    # that answers 101 forbids that. Put one in place only for the install.
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local rc=0
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >&2 || rc=$?
    (( made_policy )) && rm -f /usr/sbin/policy-rc.d
    (( rc == 0 )) || die "apt-get failed (exit $rc)"
    for cmd in nginx haproxy wrk curl ss taskset python3; do
        command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after install"
    done
}

# ---------------------------------------------------------------- helpers
free_ports() {  # free_ports N -> N distinct free loopback TCP ports
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

render() {  # render TEMPLATE OUTFILE KEY=VALUE...
    local tpl=$1 out=$2; shift 2
    local args=() kv
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tpl" >"$out"
    ! grep -q '@[A-Z_]*@' "$out" || die "unfilled placeholder in $out"
}

http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1/" 2>/dev/null || true; }

wait_ready() {  # wait_ready NAME PORT PID LOG
    local name=$1 port=$2 pid=$3 logf=$4 t0=$SECONDS
    while (( SECONDS - t0 < READY_DEADLINE )); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$logf" >&2; log "$name exited during start-up"; return 1; }
        [[ $(http_code "$port") == 200 ]] && return 0
        sleep 0.2
    done
    tail -n 20 "$logf" >&2
    log "$name did not answer 200 on 127.0.0.1:$port within ${READY_DEADLINE}s"
    return 1
}

start_pinned() {  # start_pinned CPU LOGFILE CMD... ; sets STARTED_PID
    local cpu=$1 logf=$2; shift 2
    taskset -c "$cpu" "$@" >"$logf" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

tree_pids() { echo "$1"; pgrep -P "$1" 2>/dev/null || true; }

rss_kb() {  # summed VmRSS of a process and its children, kB
    local p sum=0 v
    for p in $(tree_pids "$1"); do
        v=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || true)
        sum=$(( sum + ${v:-0} ))
    done
    echo "$sum"
}

cpu_ticks() {  # utime+stime of a process and its children (all threads), clock ticks
    local p sum=0 v
    for p in $(tree_pids "$1"); do
        v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || true)
        sum=$(( sum + ${v:-0} ))
    done
    echo "$sum"
}

core_busy() {  # busy clock ticks of one core since boot (everything but idle and iowait)
    awk -v c="cpu$1" '$1==c {print $2+$3+$4+$7+$8+$9; exit}' /proc/stat
}

sample_rss() {  # sample_rss PID OUTFILE SECONDS -- background sampler, 4 Hz, bounded
    local pid=$1 outf=$2 n=$(( $3 * 4 + 8 )) i
    for (( i = 0; i < n; i++ )); do
        kill -0 "$pid" 2>/dev/null || break
        rss_kb "$pid" >>"$outf"
        sleep 0.25
    done
}

backend_counters() {  # "accepts requests" from the backend's stub_status
    curl -s -m 2 "http://127.0.0.1:$BACKEND_PORT/__bench_status" |
        awk 'NR==3 {print $1, $3}'
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

parse_wrk() {  # parse_wrk FILE -> "rps p50_ms p99_ms requests errors"
    awk '
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0;
                         if (v ~ /m$/) return v*60000; if (v ~ /s$/) return v*1000; return v+0 }
        /^Requests\/sec:/        { rps = $2 }
        /^[ \t]+50%/             { p50 = ms($2) }
        /^[ \t]+99%/             { p99 = ms($2) }
        / requests in /          { reqs = $1 }
        /Non-2xx or 3xx/         { err += $NF }
        /Socket errors:/         { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
        END { printf "%s %s %s %s %d\n", (rps==""?"nan":rps), (p50==""?"nan":p50), (p99==""?"nan":p99), (reqs==""?0:reqs), err }
    ' "$1"
}

run_wrk() {  # run_wrk PORT SECONDS OUTFILE
    local port=$1 secs=$2 outf=$3
    timeout $(( secs + 30 )) taskset -c "$LOAD_CPU" \
        wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --latency "http://127.0.0.1:$port/" >"$outf" 2>&1 || {
        log "wrk against 127.0.0.1:$port failed (see $outf)"; return 1; }
}

# ---------------------------------------------------------------- start
ensure_tools
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

NCPU=$(nproc)
if (( NCPU < 2 )); then
    log "warning: only $NCPU core; proxy, wrk and backend all share core 0 — numbers are not comparable with a 2-core run"
    PROXY_CPU=0; LOAD_CPU=0
fi
(( PROXY_CPU < NCPU && LOAD_CPU < NCPU )) || die "BENCH_PROXY_CPU/BENCH_LOAD_CPU must be below nproc=$NCPU"

OUT=${BENCH_OUT:-$(mktemp -d /tmp/turnout-bench.XXXXXX)}
mkdir -p "$OUT"
log "raw results go to $OUT"

# --------------------------------------------------- turnout: build or skip
TURNOUT_NOTE=""
want_turnout=0
[[ " $TARGETS " == *" turnout "* ]] && want_turnout=1
if (( want_turnout )); then
    if [[ -n ${TURNOUT_BIN:-} ]]; then
        [[ -x $TURNOUT_BIN ]] || die "TURNOUT_BIN=$TURNOUT_BIN is not an executable"
    else
        TURNOUT_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/turnout"
        if [[ ${BENCH_BUILD:-1} != 0 ]]; then
            log "building turnout: cargo build --release -p turnout (log: $OUT/turnout-build.log)"
            if ! (cd "$REPO" && nice -n 10 cargo build --release -p turnout) >"$OUT/turnout-build.log" 2>&1; then
                tail -n 15 "$OUT/turnout-build.log" >&2
                TURNOUT_NOTE="cargo build --release -p turnout failed (see $OUT/turnout-build.log)"
                log "SKIPPING turnout: $TURNOUT_NOTE"
                want_turnout=0
            fi
        fi
        if (( want_turnout )) && [[ ! -x $TURNOUT_BIN ]]; then
            TURNOUT_NOTE="no binary at $TURNOUT_BIN"
            log "SKIPPING turnout: $TURNOUT_NOTE"
            want_turnout=0
        fi
    fi
fi
if (( ! want_turnout )) && [[ " $TARGETS " == *" turnout "* ]]; then
    TARGETS=$(tr ' ' '\n' <<<"$TARGETS" | grep -vx turnout | tr '\n' ' ' || true)
fi
[[ -z $TURNOUT_NOTE && ${BENCH_TURNOUT:-1} == 0 ]] && TURNOUT_NOTE="left out (BENCH_TURNOUT=0)"

if [[ -n ${TURNOUT_BASE_BIN:-} ]]; then
    [[ -x $TURNOUT_BASE_BIN ]] || die "TURNOUT_BASE_BIN=$TURNOUT_BASE_BIN is not an executable"
    [[ " $TARGETS " == *" turnout-base "* ]] || TARGETS="$TARGETS turnout-base"
fi

# From here on this shell and its helpers (curl, samplers) stay off the proxy core.
taskset -cp "$LOAD_CPU" $$ >/dev/null

read -r BACKEND_PORT NGINX_PORT HAPROXY_PORT TURNOUT_PORT TURNOUT_ADMIN_PORT TURNOUT_BASE_PORT TURNOUT_BASE_ADMIN_PORT <<<"$(free_ports 7)"

# --------------------------------------------------------------- backend
mkdir -p "$OUT/backend"
render "$TEMPLATES/nginx-backend.conf.in" "$OUT/backend/nginx.conf" DIR="$OUT/backend" PORT="$BACKEND_PORT"
# stub_status lets the script count the connections and requests that reach
# the backend (to check upstream keep-alive); it sits on its own path.
sed -i "s|^        location / {|        location = /__bench_status { stub_status; }\n        location / {|" "$OUT/backend/nginx.conf"
start_pinned "$LOAD_CPU" "$OUT/backend/stderr.log" nginx -p "$OUT/backend" -e "$OUT/backend/error.log" -c "$OUT/backend/nginx.conf"
BACKEND_PID=$STARTED_PID
wait_ready backend "$BACKEND_PORT" "$BACKEND_PID" "$OUT/backend/error.log" || die "backend did not start"
PIDS+=($(pgrep -P "$BACKEND_PID" || true))
[[ -n $(backend_counters) ]] || die "backend stub_status not available"
log "backend nginx on 127.0.0.1:$BACKEND_PORT (core $LOAD_CPU)"

# --------------------------------------------------------------- proxies
declare -A PORT PID
PORT[direct]=$BACKEND_PORT

start_target() {
    local t=$1 dir="$OUT/$1"
    mkdir -p "$dir"
    case $t in
    direct) return 0 ;;
    nginx)
        render "$TEMPLATES/nginx-proxy.conf.in" "$dir/nginx.conf" DIR="$dir" PORT="$NGINX_PORT" BACKEND_PORT="$BACKEND_PORT"
        start_pinned "$PROXY_CPU" "$dir/stderr.log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
        PORT[$t]=$NGINX_PORT ;;
    haproxy)
        render "$TEMPLATES/haproxy.cfg.in" "$dir/haproxy.cfg" DIR="$dir" PORT="$HAPROXY_PORT" BACKEND_PORT="$BACKEND_PORT"
        haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 || { cat "$dir/check.log" >&2; die "haproxy config check failed"; }
        start_pinned "$PROXY_CPU" "$dir/stderr.log" haproxy -db -f "$dir/haproxy.cfg"
        PORT[$t]=$HAPROXY_PORT ;;
    turnout)
        render "$TEMPLATES/turnout.toml.in" "$dir/turnout.toml" DIR="$dir" PORT="$TURNOUT_PORT" \
            ADMIN_PORT="$TURNOUT_ADMIN_PORT" BACKEND_PORT="$BACKEND_PORT"
        start_pinned "$PROXY_CPU" "$dir/stderr.log" \
            env TURNOUT_ADMIN_TOKEN=bench TURNOUT_WORKER_THREADS=1 "$TURNOUT_BIN" serve --config "$dir/turnout.toml"
        PORT[$t]=$TURNOUT_PORT ;;
    turnout-base)
        render "$TEMPLATES/turnout.toml.in" "$dir/turnout.toml" DIR="$dir" PORT="$TURNOUT_BASE_PORT" \
            ADMIN_PORT="$TURNOUT_BASE_ADMIN_PORT" BACKEND_PORT="$BACKEND_PORT"
        start_pinned "$PROXY_CPU" "$dir/stderr.log" \
            env TURNOUT_ADMIN_TOKEN=bench TURNOUT_WORKER_THREADS=1 "$TURNOUT_BASE_BIN" serve --config "$dir/turnout.toml"
        PORT[$t]=$TURNOUT_BASE_PORT ;;
    *) die "unknown target '$t' (known: direct nginx haproxy turnout turnout-base)" ;;
    esac
    PID[$t]=$STARTED_PID
    if ! wait_ready "$t" "${PORT[$t]}" "${PID[$t]}" "$dir/stderr.log"; then
        [[ $t == turnout* ]] || die "$t did not start"
        TURNOUT_NOTE="started but did not answer 200 within ${READY_DEADLINE}s (see $dir/stderr.log)"
        kill -TERM "${PID[$t]}" 2>/dev/null || true
        return 1
    fi
    PIDS+=($(pgrep -P "${PID[$t]}" || true))
    log "$t on 127.0.0.1:${PORT[$t]} (pid ${PID[$t]}, core $PROXY_CPU)"
}

ACTIVE=()
for t in $TARGETS; do
    if start_target "$t"; then ACTIVE+=("$t"); fi
done
(( ${#ACTIVE[@]} > 0 )) || die "nothing to measure"

# Idle RSS: after start-up and one request, before any load.
declare -A RSS_IDLE
sleep 1
for t in "${ACTIVE[@]}"; do
    [[ $t == direct ]] && continue
    http_code "${PORT[$t]}" >/dev/null
    RSS_IDLE[$t]=$(rss_kb "${PID[$t]}")
done

# ----------------------------------------------------- is the machine quiet?
# Anything else running on the cores makes every number lower and noisier.
# BENCH_WAIT_QUIET=N waits up to N seconds for both cores to be (nearly) idle.
CLK_TCK=$(getconf CLK_TCK)
busy_pct_1s() {
    local a b
    a=$(( $(core_busy "$PROXY_CPU") + $(core_busy "$LOAD_CPU") ))
    sleep 1
    b=$(( $(core_busy "$PROXY_CPU") + $(core_busy "$LOAD_CPU") ))
    echo $(( 100 * (b - a) / CLK_TCK ))
}
# The budget is for the whole script; the check runs before the warm-up and
# again before every measured run.
quiet_deadline=$(( SECONDS + ${BENCH_WAIT_QUIET:-0} ))
wait_quiet() {
    local busy
    while :; do
        busy=$(busy_pct_1s)
        (( busy <= 10 )) && return 0
        if (( SECONDS >= quiet_deadline )); then
            log "warning: cores $PROXY_CPU+$LOAD_CPU are ${busy}% busy (of 200%) before measuring; other programs are running"
            return 0
        fi
        log "waiting for a quiet machine (cores ${busy}% busy; $(( quiet_deadline - SECONDS ))s of BENCH_WAIT_QUIET left)"
        sleep 4
    done
}
wait_quiet

# ---------------------------------------------------------------- warm-up
if (( WARMUP > 0 )); then
    for t in "${ACTIVE[@]}"; do
        log "warm-up $t: ${WARMUP}s"
        run_wrk "${PORT[$t]}" "$WARMUP" "$OUT/$t/warmup.txt" || die "warm-up of $t failed"
    done
fi

# ---------------------------------------------------------- measured runs
printf 'target\trun\trps\tp50_ms\tp99_ms\trequests\terrors\tbackend_new_conns\tbackend_requests\tproxy_cpu_pct\tcpu_us_per_req\trss_max_kb\tproxy_core_other_pct\tload_core_busy_pct\n' >"$OUT/runs.tsv"
for (( r = 1; r <= RUNS; r++ )); do
    for t in "${ACTIVE[@]}"; do
        log "run $r/$RUNS $t: wrk -t$THREADS -c$CONNS -d${DURATION}s --latency"
        f="$OUT/$t/run$r.txt"
        wait_quiet
        read -r acc0 req0 <<<"$(backend_counters)"
        sampler=""; cpu0=0
        if [[ $t != direct ]]; then
            cpu0=$(cpu_ticks "${PID[$t]}")
            : >"$OUT/$t/rss-run$r.kb"
            sample_rss "${PID[$t]}" "$OUT/$t/rss-run$r.kb" "$DURATION" &
            sampler=$!; PIDS+=("$sampler")
        fi
        pbusy0=$(core_busy "$PROXY_CPU"); lbusy0=$(core_busy "$LOAD_CPU"); pself0=$cpu0
        t0=$(date +%s.%N)
        run_wrk "${PORT[$t]}" "$DURATION" "$f" || die "measured run of $t failed"
        t1=$(date +%s.%N)
        pbusy1=$(core_busy "$PROXY_CPU"); lbusy1=$(core_busy "$LOAD_CPU")
        read -r acc1 req1 <<<"$(backend_counters)"
        read -r rps p50 p99 reqs errs <<<"$(parse_wrk "$f")"
        cpu_pct="-"; us_req="-"; rss_max="-"
        if [[ -n $sampler ]]; then
            cpu1=$(cpu_ticks "${PID[$t]}")
            kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
            cpu_pct=$(awk -v d=$(( cpu1 - cpu0 )) -v hz="$CLK_TCK" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", 100*d/hz/(b-a)}')
            us_req=$(awk -v d=$(( cpu1 - cpu0 )) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN{ if (n>0) printf "%.2f", 1e6*d/hz/n; else print "-"}')
            rss_max=$(sort -n "$OUT/$t/rss-run$r.kb" | tail -n 1)
            pself0=$(( cpu1 - cpu0 ))
        else
            pself0=0
        fi
        # Time the proxy core spent on anything but the proxy (other programs,
        # interrupts), and how busy the wrk+backend core was.
        other_pct=$(awk -v b=$(( pbusy1 - pbusy0 - pself0 )) -v hz="$CLK_TCK" -v a="$t0" -v c="$t1" 'BEGIN{v=100*b/hz/(c-a); if (v<0) v=0; printf "%.0f", v}')
        load_pct=$(awk -v b=$(( lbusy1 - lbusy0 )) -v hz="$CLK_TCK" -v a="$t0" -v c="$t1" 'BEGIN{printf "%.0f", 100*b/hz/(c-a)}')
        # The second stub_status read is itself one connection and one request.
        printf '%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n' "$t" "$r" "$rps" "$p50" "$p99" "$reqs" "$errs" \
            $(( acc1 - acc0 - 1 )) $(( req1 - req0 - 1 )) "$cpu_pct" "$us_req" "${rss_max:--}" "$other_pct" "$load_pct" >>"$OUT/runs.tsv"
    done
done

# ---------------------------------------------------------------- report
col() {  # col TARGET COLUMN-NAME -> values of that column for the target
    awk -F'\t' -v t="$1" -v c="$2" 'NR==1 {for (i=1;i<=NF;i++) if ($i==c) k=i; next} $1==t && $k!="-" {print $k}' "$OUT/runs.tsv"
}
med() { median $(col "$1" "$2"); }
mib() { awk -v k="$1" 'BEGIN{ if (k=="" || k=="-") print "-"; else printf "%.1f MiB", k/1024 }'; }
fmt_ms() { awk -v v="$1" 'BEGIN{ if (v=="nan") print "-"; else if (v < 1) printf "%.0f µs", v*1000; else printf "%.2f ms", v }'; }

NGINX_RPS=""
[[ " ${ACTIVE[*]} " == *" nginx "* ]] && NGINX_RPS=$(med nginx rps)

git_rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "none (no commits yet)")
# Uncommitted changes to the code (bench/ and BENCHMARKS.md themselves don't count).
[[ -n $(git -C "$REPO" status --porcelain --untracked-files=no -- . ':!bench' ':!BENCHMARKS.md' 2>/dev/null | head -n 1) ]] &&
    git_rev="$git_rev + uncommitted changes"

{
    echo "## Router benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $NCPU cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
    echo "- load: \`wrk -t$THREADS -c$CONNS -d${DURATION}s --latency\`, ${WARMUP}s warm-up per target, $RUNS measured runs per target interleaved; median of the runs (each column on its own)"
    echo "- pinning: proxy on core $PROXY_CPU (one worker); wrk and backend on core $LOAD_CPU"
    echo "- backend: nginx $(nginx -v 2>&1 | sed 's|.*nginx/||'), 1 worker, \`return 200 \"hello world\\n\"\`"
    echo "- versions: nginx $(nginx -v 2>&1 | sed 's|.*nginx/||'), haproxy $(haproxy -v 2>&1 | awk 'NR==1 {print $3}'), $(wrk --version 2>&1 | awk 'NR==1 {print $1, $2}'), turnout commit $git_rev"
    [[ -n $TURNOUT_NOTE ]] && echo "- turnout: not measured — $TURNOUT_NOTE"
    [[ -n ${TURNOUT_BASE_BIN:-} ]] && echo "- turnout-base: $TURNOUT_BASE_BIN ($(cat "$TURNOUT_BASE_BIN.rev" 2>/dev/null || echo "an earlier build"))"
    echo
    echo "| target | requests/s | p50 | p99 | req/s vs nginx | RSS idle | RSS max under load |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for t in direct nginx haproxy turnout turnout-base; do
        if [[ " ${ACTIVE[*]} " != *" $t "* ]]; then
            [[ " $TARGETS ${BENCH_TARGETS:-direct nginx haproxy turnout} " == *" $t "* ]] &&
                echo "| $t | not measured | | | | | |"
            continue
        fi
        rps=$(med "$t" rps); p50=$(med "$t" p50_ms); p99=$(med "$t" p99_ms)
        ratio="-"
        [[ -n $NGINX_RPS && $t != nginx ]] && ratio=$(awk -v a="$rps" -v b="$NGINX_RPS" 'BEGIN{printf "%.2f×", a/b}')
        [[ $t == nginx ]] && ratio="1.00×"
        rss_i="-"; rss_m="-"
        if [[ $t != direct ]]; then
            rss_i=$(mib "${RSS_IDLE[$t]}")
            rss_m=$(mib "$(col "$t" rss_max_kb | sort -n | tail -n 1)")
        fi
        printf '| %s | %.0f | %s | %s | %s | %s | %s |\n' "$t" "$rps" "$(fmt_ms "$p50")" "$(fmt_ms "$p99")" "$ratio" "$rss_i" "$rss_m"
    done
    echo
    echo "Diagnostics (medians of the measured runs):"
    echo
    echo "| target | proxy CPU (core $PROXY_CPU) | proxy CPU µs/request | core $PROXY_CPU used by others | core $LOAD_CPU (wrk+backend) busy | new backend connections per run | backend requests / wrk requests | errors (all runs) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for t in "${ACTIVE[@]}"; do
        fwd=$(awk -F'\t' -v t="$t" '$1==t {b+=$9; w+=$6} END{ if (w>0) printf "%.3f", b/w; else print "-"}' "$OUT/runs.tsv")
        errs=$(awk -F'\t' -v t="$t" '$1==t {e+=$7} END{print e+0}' "$OUT/runs.tsv")
        cpu="-"; usr="-"
        if [[ $t != direct ]]; then cpu="$(med "$t" proxy_cpu_pct)%"; usr=$(med "$t" cpu_us_per_req); fi
        printf '| %s | %s | %s | %s%% | %s%% | %s | %s | %s |\n' "$t" "$cpu" "$usr" "$(med "$t" proxy_core_other_pct)" \
            "$(med "$t" load_core_busy_pct)" "$(med "$t" backend_new_conns)" "$fwd" "$errs"
    done
    echo
    noisy=$(awk -F'\t' 'NR>1 && $13+0 > 5 {n++} END{print n+0}' "$OUT/runs.tsv")
    (( noisy > 0 )) && echo "**Warning:** in $noisy measured run(s) other programs took more than 5% of core $PROXY_CPU; the machine was not quiet and the proxy numbers are lower and noisier than they should be. CPU µs/request is the least affected column." && echo
    echo "RSS is VmRSS from /proc/PID/status summed over the proxy's processes (nginx: master + worker), sampled at 4 Hz during the measured runs."
    echo "Raw wrk output and runs.tsv: $OUT"
} | tee "$OUT/results.md"
