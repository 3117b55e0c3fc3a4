#!/usr/bin/env bash
# scripts/fuzz.sh — runs turnout's fuzz targets (fuzz/, a cargo-fuzz crate outside the
# workspace) each for a given time. Not part of .ci/run. See FUZZING.md.
#
# Usage: bash scripts/fuzz.sh [SECONDS] [TARGET...]
#   SECONDS  time per target [60]
#   TARGET   config goreplay compare request_head response_head [all five]
#
# Environment knobs (defaults in brackets):
#   FUZZ_MODE     libfuzzer: cargo +nightly fuzz run (needs a nightly toolchain and
#                 `cargo install cargo-fuzz`); smoke: the stable driver
#                 fuzz/src/bin/smoke.rs (seed corpus + random mutations, no coverage
#                 feedback); auto: libfuzzer when both are there, else smoke   [auto]
#   FUZZ_JOBS     libFuzzer -jobs/-workers for each target                      [1]
#   FUZZ_OUT      directory for the logs                    [a new mktemp -d]
#
# Seeds are fuzz/corpus/TARGET (committed). libFuzzer adds what it finds to
# fuzz/corpus-work/TARGET (ignored by git), never to the seeds. A crashing input goes
# to fuzz/artifacts/TARGET/; the script exits 1 when any target crashed.
# A seconds-long smoke run: FUZZ_MODE=smoke bash scripts/fuzz.sh 5

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FUZZ="$REPO/fuzz"
SECS=${1:-60}
shift || true
TARGETS=("$@")
(( ${#TARGETS[@]} )) || TARGETS=(config goreplay compare request_head response_head)
MODE=${FUZZ_MODE:-auto}
JOBS=${FUZZ_JOBS:-1}

log() { printf '[fuzz %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $SECS =~ ^[0-9]+$ ]] && (( SECS >= 1 )) || die "SECONDS must be a whole number >= 1 (got '$SECS')"
[[ $JOBS =~ ^[0-9]+$ ]] && (( JOBS >= 1 )) || die "FUZZ_JOBS must be a whole number >= 1"
for t in "${TARGETS[@]}"; do
    [[ -d $FUZZ/corpus/$t ]] || die "unknown target '$t' (no fuzz/corpus/$t)"
done

if [[ $MODE == auto ]]; then
    if rustup toolchain list 2>/dev/null | grep -q '^nightly' && cargo +nightly fuzz --version >/dev/null 2>&1; then
        MODE=libfuzzer
    else
        MODE=smoke
        log "no nightly toolchain or no cargo-fuzz: using the stable smoke driver (no coverage feedback)"
    fi
fi
[[ $MODE == libfuzzer || $MODE == smoke ]] || die "FUZZ_MODE must be auto, libfuzzer or smoke"

OUT=${FUZZ_OUT:-$(mktemp -d /tmp/turnout-fuzz.XXXXXX)}
mkdir -p "$OUT"
log "mode $MODE, ${SECS}s per target, logs in $OUT"

cd "$FUZZ"
if [[ $MODE == libfuzzer ]]; then
    log "building the targets: cargo +nightly fuzz build -O"
    cargo +nightly fuzz build -O >"$OUT/build.log" 2>&1 || { tail -n 30 "$OUT/build.log" >&2; die "build failed"; }
else
    log "building the smoke driver: cargo build --release --bin smoke"
    cargo build --release --bin smoke >"$OUT/build.log" 2>&1 || { tail -n 30 "$OUT/build.log" >&2; die "build failed"; }
fi

printf '%-14s %-10s %8s %14s %10s  %s\n' target mode seconds executions exec/s result
for t in "${TARGETS[@]}"; do
    logf="$OUT/$t.log"
    rc=0
    if [[ $MODE == libfuzzer ]]; then
        mkdir -p "corpus-work/$t"
        par=()
        # -jobs (even -jobs=1) makes libFuzzer log to fuzz-N.log in the working directory.
        (( JOBS > 1 )) && par=(-jobs="$JOBS" -workers="$JOBS")
        cargo +nightly fuzz run -O "$t" "corpus-work/$t" "corpus/$t" -- \
            -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
            -print_final_stats=1 "${par[@]}" >"$logf" 2>&1 || rc=$?
        if (( JOBS > 1 )); then cat fuzz-*.log >>"$logf" 2>/dev/null || true; rm -f fuzz-*.log; fi
        execs=$(awk '/stat::number_of_executed_units/ {s += $NF} END {print s+0}' "$logf")
        cov=$(grep -Eo 'cov: [0-9]+' "$logf" | tail -n 1 | awk '{print $2}')
        extra="cov ${cov:-?}, corpus $(find "corpus-work/$t" -type f | wc -l) files"
    else
        timeout $(( SECS + 60 )) ./target/release/smoke "$t" "corpus/$t" "${SECS}s" >"$logf" 2>&1 || rc=$?
        execs=$(grep -Eo '^[a-z_]+: [0-9]+ inputs' "$logf" | awk '{print $2}')
        extra="seeds + mutations"
    fi
    if (( rc == 0 )); then
        result="ok ($extra)"
    else
        result="CRASH (exit $rc; see $logf and fuzz/artifacts/$t/)"
        grep -E 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer|Test unit written|PANIC' "$logf" | head -n 5 >&2 || true
    fi
    printf '%-14s %-10s %8s %14s %10s  %s\n' "$t" "$MODE" "$SECS" "${execs:-?}" \
        "$(awk -v e="${execs:-0}" -v s="$SECS" 'BEGIN{printf "%.0f", e/s}')" "$result"
done | tee "$OUT/summary.txt"
grep -q CRASH "$OUT/summary.txt" && die "a target crashed (see above)"
exit 0
