#!/usr/bin/env bash
# A tensor-parallel rank's load against the whole checkpoint, side by side.
#
#   bench/tp-rows.sh [CHECKPOINT] [ROUNDS] [WORLD]      (defaults: a synthetic 2.3 GB
#                                                        BF16 checkpoint, 5, 4)
#
# Rank 1 of WORLD keeps its rows (dimension 0) of the column-parallel weights of a
# Llama layout (q/k/v, gate/up, the embedding and lm_head); norms are replicated.
# Kind `rank` loads o_proj and down_proj whole; kind `rank+cols` keeps only its
# columns (dimension 1) of them, as a tensor-parallel server's rank does: the same
# bytes read, a quarter kept, gathered in staging. Each round loads the whole
# checkpoint and the two ranks' shares, in rotating order, cold (page cache dropped,
# needs root) and then warm, with `tensorstream load --json` on the CPU. Prints one
# JSON line per load and the medians per kind. Needs a release build
# (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
TS=target/release/tensorstream
CKPT="${1:-}"
ROUNDS="${2:-5}"
WORLD="${3:-4}"
if [[ -z "$CKPT" ]]; then
    CKPT=target/tp-rows-ckpt
    [[ -d "$CKPT" ]] || "$TS" synth "$CKPT" --size 2300M >/dev/null
fi
RULES=()
for p in '*.q_proj.weight' '*.k_proj.weight' '*.v_proj.weight' '*.gate_proj.weight' \
    '*.up_proj.weight' '*embed_tokens.weight' 'lm_head.weight'; do
    RULES+=(--rows "$p=1/$WORLD")
done
COLS=(--cols "*.o_proj.weight=1/$WORLD" --cols "*.down_proj.weight=1/$WORLD")
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
cache() { find "$CKPT" -name '*.safetensors' -exec cat {} + >/dev/null; }
one() { # kind temperature
    local args=()
    [[ "$1" == rank ]] && args=("${RULES[@]}")
    [[ "$1" == rank+cols ]] && args=("${RULES[@]}" "${COLS[@]}")
    [[ "$2" == cold ]] && drop
    "$TS" load "$CKPT" --json "${args[@]}" 2>/dev/null | python3 -c '
import json, sys
s = json.loads(sys.stdin.read().strip().splitlines()[-1])
print(json.dumps({"kind": sys.argv[1], "temp": sys.argv[2], "seconds": s["seconds"],
                  "read_bytes": s["read_bytes"], "bytes": s["bytes"],
                  "output_bytes": s["output_bytes"],
                  "io": [f["io"] for f in s["files"]]}))' "$1" "$2"
}
"$TS" load "$CKPT" >/dev/null 2>&1 # warm-up (the binary, the header)
OUT=$(mktemp)
for temp in cold warm; do
    # Cold loads read with O_DIRECT, which leaves the page cache empty.
    [[ "$temp" == warm ]] && cache
    for r in $(seq 1 "$ROUNDS"); do
        case $((r % 3)) in
        1) order=(whole rank rank+cols) ;;
        2) order=(rank rank+cols whole) ;;
        *) order=(rank+cols whole rank) ;;
        esac
        for k in "${order[@]}"; do one "$k" "$temp" | tee -a "$OUT"; done
    done
done
python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for temp in ("cold", "warm"):
    m = {}
    for kind in ("whole", "rank", "rank+cols"):
        xs = [r for r in rows if r["kind"] == kind and r["temp"] == temp]
        m[kind] = statistics.median(r["seconds"] for r in xs)
        print("%s %-9s median %.3f s over %d (range %.3f-%.3f), read %.2f GB, kept %.2f GB" % (
            temp, kind, m[kind], len(xs), min(r["seconds"] for r in xs),
            max(r["seconds"] for r in xs), xs[0]["read_bytes"] / 1e9, xs[0]["output_bytes"] / 1e9))
    print("%s time against whole: rank %.2f, rank+cols %.2f" % (
        temp, m["rank"] / m["whole"], m["rank+cols"] / m["whole"]))
EOF
rm -f "$OUT"
