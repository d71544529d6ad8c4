#!/usr/bin/env bash
# Loads of the synthetic Llama-layout BF16 checkpoint into candle tensors on the CPU,
# side by side in one run: tensorstream::candle::load against candle's own
# candle_core::safetensors::load and candle-nn's mmaped VarBuilder with every tensor
# fetched. Each load is a fresh process (examples/candle_load.rs) that reports its
# time, peak RSS (VmHWM) and a SHA-256 of every loaded tensor; the digests of all
# contenders must agree.
#
#   sudo bench/cpu/candle_compare.sh [--rounds N] [--size-mb N]
#
# After a warm-up, each round runs every contender cold (echo 3 > drop_caches) and
# then warm (the file read into the page cache first), contenders in a rotated order.
# Writes bench/out/candle/results.jsonl (ignored by git) and prints medians.
# Needs root (drop_caches), python3, cargo.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/bench/out/candle
ROUNDS=3
SIZE_MB=1024
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --size-mb) SIZE_MB=$2; shift 2 ;;
        *) echo "usage: $0 [--rounds N] [--size-mb N]" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" != 0 ]; then
    echo "candle_compare.sh: needs root to drop the page cache" >&2
    exit 2
fi

cd "$ROOT"
cargo build --release --features candle --example candle_load
BIN=target/release/examples/candle_load
mkdir -p "$OUT/data"
FILE=$OUT/data/model.safetensors
if [ ! -f "$FILE" ] || [ "$(cat "$OUT/data/size-mb" 2>/dev/null)" != "$SIZE_MB" ]; then
    rm -f "$FILE"
    "$BIN" --write "$OUT/data" --size-mb "$SIZE_MB" >/dev/null
    echo "$SIZE_MB" > "$OUT/data/size-mb"
fi
RESULTS=$OUT/results.jsonl
: > "$RESULTS"

run() { # contender, cold|warm
    if [ "$2" = cold ]; then
        sync
        echo 3 > /proc/sys/vm/drop_caches
    else
        cat "$FILE" > /dev/null
    fi
    sleep 1
    "$BIN" "$FILE" --with "$1" | sed "s/^{/{\"cache\":\"$2\",/" >> "$RESULTS"
}

CONTENDERS=(tensorstream candle mmap)
echo "warm-up"
for c in "${CONTENDERS[@]}"; do "$BIN" "$FILE" --with "$c" --no-digest >/dev/null; done
for ((r = 0; r < ROUNDS; r++)); do
    order=("${CONTENDERS[@]:r%3}" "${CONTENDERS[@]:0:r%3}")
    echo "round $((r + 1))/$ROUNDS: ${order[*]}"
    for cache in cold warm; do
        for c in "${order[@]}"; do run "$c" "$cache"; done
    done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
digests = {r["sha256"] for r in rows}
if len(digests) != 1:
    sys.exit(f"candle_compare: the contenders loaded different values: {digests}")
print(f"every load gave the same tensors (sha256 {digests.pop()[:16]}...), "
      f"{rows[0]['bytes'] / 1e9:.2f} GB in {rows[0]['tensors']} tensors")
med = {}
for cache in ("cold", "warm"):
    for who in ("tensorstream", "candle", "mmap"):
        rs = [r for r in rows if r["cache"] == cache and r["with"] == who]
        med[cache, who] = (
            statistics.median(r["gbps"] for r in rs),
            min(r["gbps"] for r in rs),
            max(r["gbps"] for r in rs),
            statistics.median(r["peak_rss_ratio"] for r in rs),
        )
print("| load | cold GB/s (min-max) | warm GB/s (min-max) | peak RSS / tensor bytes (cold, warm) |")
print("|---|---|---|---|")
names = {"tensorstream": "tensorstream::candle::load",
         "candle": "candle_core::safetensors::load",
         "mmap": "VarBuilder::from_mmaped_safetensors, every tensor"}
for who in ("tensorstream", "candle", "mmap"):
    c, w = med["cold", who], med["warm", who]
    print(f"| {names[who]} | {c[0]:.2f} ({c[1]:.2f}-{c[2]:.2f}) | {w[0]:.2f} ({w[1]:.2f}-{w[2]:.2f}) | {c[3]:.2f}, {w[3]:.2f} |")
for who in ("candle", "mmap"):
    print(f"tensorstream / {who}: cold {med['cold', 'tensorstream'][0] / med['cold', who][0]:.2f}x, "
          f"warm {med['warm', 'tensorstream'][0] / med['warm', who][0]:.2f}x")
PY
