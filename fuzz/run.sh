#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each.
#
#   fuzz/run.sh [SECONDS]      (default 60 seconds per target)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a C++ compiler (libFuzzer
# is built from source). Works on stable Rust: cargo-fuzz passes nightly-only flags
# (-Zsanitizer=address, coverage options), which RUSTC_BOOTSTRAP=1 lets stable accept.
#
# Each target starts from fuzz/corpus/<target> (the committed seed-* files and whatever
# earlier runs added; git keeps only the seeds) and adds what it finds there. Exits 1
# when a target crashes, times out or runs out of memory, after printing the path of
# the input that did it; reproduce with `fuzz/run.sh` or with the command printed.
#
# Environment: FUZZ_SANITIZER=address|none (default address; `none` builds faster
# and runs faster but catches no memory errors and no oversized allocations);
# FUZZ_TARGET_DIR: where to build (default fuzz/target), e.g. a cache kept between
# CI runs.
set -uo pipefail

secs="${1:-60}"
sanitizer="${FUZZ_SANITIZER:-address}"
cd "$(dirname "$0")" || exit 2

if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi
# Optimised, with overflow checks and debug assertions on: an overflow is a crash.
flags=(--release --debug-assertions --sanitizer "$sanitizer")
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
    flags+=(--target-dir "$FUZZ_TARGET_DIR")
fi

start=$(date +%s)
cargo fuzz build "${flags[@]}" || exit 2
echo "fuzz/run.sh: built the targets in $(($(date +%s) - start)) s"

failed=()
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target" "artifacts/$target" artifacts/logs
    log="artifacts/logs/$target.log"
    marker="artifacts/logs/$target.started"
    touch "$marker"
    echo "fuzz/run.sh: $target for $secs s"
    # -timeout: one input taking 10 s is a hang. -malloc_limit_mb: a single allocation
    # of 512 MiB from inputs of a few KiB is sized by an unchecked value (ASan only).
    cargo fuzz run "${flags[@]}" "$target" -- \
        -max_total_time="$secs" -timeout=10 -malloc_limit_mb=512 -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    grep -E '^#[0-9]+ +(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log"
    if [ "$rc" -ne 0 ]; then
        failed+=("$target")
        echo "fuzz/run.sh: $target FAILED (exit $rc); from its log (fuzz/$log):"
        grep -m 1 -A 16 -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)' "$log" | cut -c 1-300
        find "artifacts/$target" -type f -newer "$marker" | while read -r input; do
            echo "fuzz/run.sh: crash input: fuzz/$input"
            echo "  reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} $target $input)"
            echo "  minimise:  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz tmin ${flags[*]} $target $input)"
        done
    fi
    rm -f "$marker"
done

echo "fuzz/run.sh: done in $(($(date +%s) - start)) s"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz/run.sh: crashes in: ${failed[*]}"
    exit 1
fi
