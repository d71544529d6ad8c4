#!/usr/bin/env bash
# A whole GPU session in one device call (a machine goes back 30 s after a call, and a
# session has 15 minutes of device time, the start included). Runs ON the GPU machine,
# from the bundle that scripts/gpu-bundle.sh builds:
#
#   bash gpu-bundle/gpu-session.sh [--budget-s 540] [--check-s N] [--reg-s 0] [--sweep-s 100]
#                                  [--tp-s 0]
#
# then, in order, each under its share of the budget:
#   1. gpu-check.sh --skip-timing (CUDA tests, CPU-vs-CUDA digests of every fixture,
#      conversion kernels against a D2D copy, the Python package's pytest and
#      serve_weights on cuda:0, the candle step): $OUT/gpu-check.log, .json; correctness
#      first. --check-s defaults to 120 s (~90 s on an H200 without the last two),
#      plus 90 s when the bundle has the Python wheel and 100 s when it has candle/
#      (the share gpu-check.sh keeps for that step); the cold/warm figures come from
#      2 and 3;
#   1b. with --reg-s N (off by default): gpu/regbench.py (what registering the page cache
#      costs the driver, by 1 to 16 threads, and copies from it against pinned memory;
#      ~15 s; into run.log);
#   2. gpu/sweep.py (warm settings of tensorstream to cuda, the staging's size and kind,
#      the in-process steady state, host copy ceiling, phase profiles with the reading
#      thread's waits): $OUT/sweep.json;
#      run when its share and 30 s more are left;
#   3. gpu/compare.py against the peers with the rest, with the sweep's best warm
#      settings as ts-best (3 warm and 3 cold runs of the key loaders first, the
#      others as they fit): $OUT/compare.log, compare-summary.json, gpu-results.jsonl;
#   2b. with --tp-s N (off by default): gpu/tp_compare.py --device cuda, one tensor-parallel
#      rank's shard (--rows/--cols) against safetensors get_slice + .to("cuda") on a 2 GB
#      synthetic checkpoint, 3 rounds cold and warm, bytes checked equal first (into run.log);
# --check-s 0, --reg-s 0 or --sweep-s 0 skips that step (a session that only compares the loaders:
# --check-s 0 --reg-s 0 --sweep-s 0 --budget-s 540 gives compare.py about 525 s; from run D's
# load times, about 560 s would cover three warm and three cold runs of every loader);
# and writes everything it prints to $OUT/run.log (seven files in all, eight with
# --tp-s: the device tool brings back at most eight). Give the call a timeout_s of budget + 60.
set -u
BUDGET=540
CHECK=
# regbench.py is off by default since run E measured it (bench/results/h200-2026-11-26/
# e-run.log); --reg-s 40 runs it again.
REG=0
SWEEP=100
TP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --budget-s) BUDGET=$2; shift 2 ;;
        --check-s) CHECK=$2; shift 2 ;;
        --reg-s) REG=$2; shift 2 ;;
        --sweep-s) SWEEP=$2; shift 2 ;;
        --tp-s) TP=$2; shift 2 ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        *) echo "gpu-session.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
B=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -z "$CHECK" ]; then
    CHECK=120
    ls "$B"/wheels-tensorstream/tensorstream-*.whl >/dev/null 2>&1 && CHECK=$((CHECK + 90))
    [ -d "$B/candle" ] && CHECK=$((CHECK + 100))
fi
OUT=${OUT:-$PWD/gpu-session-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
START=$SECONDS
left() { echo $((BUDGET - (SECONDS - START))); }
echo "tensorstream GPU session  $(date -u +%Y-%m-%dT%H:%M:%SZ)  budget ${BUDGET}s (check ${CHECK}s, regbench ${REG}s, sweep ${SWEEP}s, compare the rest)"

if [ "$CHECK" -gt 0 ]; then
    echo "== 1. gpu-check.sh --skip-timing --budget-s $CHECK  [t=$((SECONDS - START))s]"
    OUT=$OUT bash "$B/gpu-check.sh" --skip-timing --budget-s "$CHECK" >/dev/null 2>&1
    echo "   exit $?"
    sed -n '/== summary ==/,$p' "$OUT/gpu-check.log"
else
    echo "== 1. gpu-check.sh: skipped (--check-s 0)"
fi

if [ "$REG" -gt 0 ] && [ "$(left)" -gt $((REG + 60)) ]; then
    echo "== 1b. regbench.py  [t=$((SECONDS - START))s]"
    timeout "$REG" python3 "$B/gpu/regbench.py" --size 2G --runs 3
    echo "   exit $?"
else
    echo "== 1b. regbench.py: skipped"
fi

BEST="--io pread --queue-depth 32 --chunk-size 2M"
# (Passed as --ts-best-warm="$BEST": as a separate word, a value that starts with "--"
# is taken by compare.py's argument parser for an option, and it exits 2.)
# sweep.py keeps its whole run, the checkpoint it may write and its tail (steady state,
# host ceiling, phases) included, inside --budget-s; 30 s more is the margin its last
# loads may run past it, and what compare.py needs at least is checked below.
if [ "$SWEEP" -le 0 ]; then
    echo "== 2. sweep.py: skipped (--sweep-s 0)"
elif [ "$(left)" -gt $((SWEEP + 30)) ]; then
    echo "== 2. sweep.py --budget-s $SWEEP  [t=$((SECONDS - START))s]"
    timeout $((SWEEP + 40)) python3 "$B/gpu/sweep.py" --bin "$B/bin/tensorstream" --out "$OUT" --size 8G --runs 5 \
        --budget-s "$SWEEP" | tee "$OUT/.sweep.txt"
    got=$(grep '^BEST_WARM ' "$OUT/.sweep.txt" | cut -d' ' -f2-)
    [ -n "$got" ] && BEST=$got
    rm -f "$OUT/.sweep.txt"
else
    echo "== 2. sweep.py: skipped ($(left) s left)"
fi

if [ "$TP" -gt 0 ] && [ "$(left)" -gt $((TP + 75)) ]; then
    echo "== 2b. tp_compare.py --device cuda  [t=$((SECONDS - START))s]"
    TPDIR=$PWD/ts-tp-ckpt  # on the disk (a tmpfs /tmp would make cold runs meaningless)
    [ -f "$TPDIR/model.safetensors" ] || "$B/bin/tensorstream" synth "$TPDIR" --size 2G >/dev/null
    timeout "$TP" python3 "$B/gpu/tp_compare.py" "$TPDIR/model.safetensors" --device cuda \
        --rounds 3 --settle 2 --ts "$B/bin/tensorstream" --out "$OUT/tp.jsonl" | grep -v '^{'
    echo "   exit ${PIPESTATUS[0]}"
    rm -rf "$TPDIR"
elif [ "$TP" -gt 0 ]; then
    echo "== 2b. tp_compare.py: skipped ($(left) s left)"
fi

CMP=$(( $(left) - 15 ))
if [ "$CMP" -gt 60 ]; then
    echo "== 3. compare.py --budget-s $CMP --ts-best-warm '$BEST'  [t=$((SECONDS - START))s]"
    timeout $((CMP + 45)) python3 "$B/gpu/compare.py" --bin "$B/bin/tensorstream" --wheels "$B/wheels" --out "$OUT" \
        --size 8G --runs 3 --budget-s "$CMP" --ts-best-warm="$BEST" >/dev/null 2>&1
    echo "   exit $?"
    sed -n '/^loader /,$p' "$OUT/compare.log"
else
    echo "== 3. compare.py: skipped ($(left) s left)"
fi
echo "gpu-session finished in $((SECONDS - START)) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
