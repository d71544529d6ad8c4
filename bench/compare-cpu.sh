#!/usr/bin/env bash
# Side-by-side CPU comparison of tensorstream with its peers and the machine's
# limits, on one machine, in one run.
#
#   sudo bench/compare-cpu.sh [--rounds N] [--size 2300M] [--only a,b,...] [--settle S]
#                             [--diagnostics] [--baseline LABEL=BIN]... [--skip-build]
#
# Writes (or reuses) in bench/out/ (ignored by git):
#   data/bf16/model.safetensors   synthetic Llama-layout BF16 checkpoint (~2.3 GB)
#   data/f16/model.safetensors    the same layout in F16 (numpy has no bfloat16)
#   venv/                         Python with safetensors==0.8.*, numpy, matplotlib
#   peers-target/                 build of bench/cpu/peers (Rust safetensors 0.8, candle)
#   cpu-env.json                  machine and versions
#   cpu-touch.json                first-touch rate of fresh memory (huge pages, 4 KiB, populate)
#   cpu-results.jsonl             one JSON line per run (schema shared with bench/gpu/)
#   cpu-summary.json, cpu-table.md  medians and ratios; the table is printed too
# and draws bench/cpu-chart.png.
#
# After a warm-up, each round runs every contender cold (echo 3 > drop_caches, then
# fincore checks the file is out of the page cache) and then warm (file read into the
# cache, fincore checks it is all resident), alternating contenders, rotating their
# order each round; before each run it waits --settle seconds (default 5) so that
# every contender starts from the same memory state (see bench/cpu/compare.py). Peak
# RSS of every process comes from /usr/bin/time -v. touch.py first measures how fast
# fresh memory can be touched at all here, with and without huge pages;
# --diagnostics adds tensorstream-{auto,pread}-nothp (huge pages disabled by prctl);
# --baseline LABEL=BIN adds another tensorstream build as tensorstream-auto@LABEL.
# Needs root (drop_caches), fio, fincore (util-linux), python3, cargo.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${TS_BENCH_OUT:-$ROOT/bench/out}
ROUNDS=3
SIZE=2300M
ONLY=""
BUILD=1
SETTLE=5
DIAG=""
BASELINE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --skip-build) BUILD=0; shift ;;
    --settle) SETTLE=$2; shift 2 ;;
    --diagnostics) DIAG=--diagnostics; shift ;;
    --baseline) BASELINE+=(--baseline "$2"); shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\n== %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "compare-cpu.sh needs root to drop the page cache (echo 3 > /proc/sys/vm/drop_caches)" >&2; exit 1; }
if [ ! -x /usr/bin/time ]; then
  say "installing GNU time (for peak RSS)"
  apt-get install -y time >/dev/null
fi
for t in fio fincore dd python3 cargo; do
  command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done
mkdir -p "$OUT/bin" "$OUT/data"

# --- binaries: a private copy, so that a rebuild during the run changes nothing.
TS=$OUT/bin/tensorstream
PEERS=$OUT/bin/tensorstream-cpu-peers
if [ "$BUILD" = 1 ]; then
  say "building tensorstream (release)"
  (cd "$ROOT" && cargo build --release --quiet)
  cp "$ROOT/target/release/tensorstream" "$TS"
  say "building the Rust peers (bench/cpu/peers: safetensors 0.8, candle-core)"
  (cd "$ROOT/bench/cpu/peers" && CARGO_TARGET_DIR="$OUT/peers-target" cargo build --release --quiet)
  cp "$OUT/peers-target/release/tensorstream-cpu-peers" "$PEERS"
fi
[ -x "$TS" ] && [ -x "$PEERS" ] || { echo "binaries missing in $OUT/bin: run without --skip-build" >&2; exit 1; }

# --- Python peer.
VENV=$OUT/venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import safetensors, numpy, matplotlib' 2>/dev/null; then
  say "creating $VENV (safetensors==0.8.*, numpy, matplotlib)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'safetensors==0.8.*' numpy matplotlib
fi
PY=$VENV/bin/python

# --- checkpoints: reused when they exist, verify and match the requested size.
BF16=$OUT/data/bf16/model.safetensors
F16=$OUT/data/f16/model.safetensors
for spec in "BF16 $BF16" "F16 $F16"; do
  set -- $spec
  dir=$(dirname "$2")
  if [ -f "$2" ] && [ "$(cat "$dir/size" 2>/dev/null)" = "$SIZE" ] && "$TS" verify "$2" >/dev/null; then
    echo "reusing $2" >&2
  else
    say "writing a $SIZE $1 checkpoint to $dir"
    rm -rf "$dir"
    "$TS" synth "$dir" --size "$SIZE" --dtype "$1" >/dev/null
    echo "$SIZE" > "$dir/size"
  fi
done
sync

# --- the machine and every version, for BENCHMARKS.md.
say "recording the machine"
disk_dev=$(findmnt -n -o SOURCE -T "$BF16")
blk=$(lsblk -no PKNAME "$disk_dev" 2>/dev/null | head -1); blk=${blk:-$(basename "$disk_dev")}
"$PY" - "$OUT/cpu-env.json" <<EOF
import json, os, platform, subprocess, sys
def out(*cmd):
    try:
        return subprocess.run(cmd, text=True, capture_output=True).stdout.strip()
    except Exception as e:
        return f"? ({e})"
lscpu = dict(l.split(":", 1) for l in out("lscpu").splitlines() if ":" in l)
mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
import safetensors, numpy, matplotlib
env = {
    "cpu": lscpu.get("Model name", "?").strip(),
    "cores": os.cpu_count(),
    "mem": f"{mem / 2**30:.1f} GiB",
    "kernel": platform.release(),
    "disk": "$disk_dev ($(findmnt -n -o FSTYPE -T "$BF16"), $(cat /sys/block/$blk/queue/rotational 2>/dev/null | sed 's/1/rotational flag set/;s/0/non-rotational/'), scheduler $(cat /sys/block/$blk/queue/scheduler 2>/dev/null | tr -d '\n'), read_ahead_kb $(cat /sys/block/$blk/queue/read_ahead_kb 2>/dev/null))",
    "virtualization": out("systemd-detect-virt") or "?",
    "virtio_devices": out("sh", "-c", "for d in /sys/bus/virtio/devices/*; do basename \$(readlink \$d/driver); done | sort | paste -sd, -"),
    "page_reporting_order": out("cat", "/sys/module/page_reporting/parameters/page_reporting_order") or "n/a",
    "thp": out("cat", "/sys/kernel/mm/transparent_hugepage/enabled") + "; defrag " + out("cat", "/sys/kernel/mm/transparent_hugepage/defrag"),
    "loadavg_at_start": out("cat", "/proc/loadavg"),
    "tensorstream": out("git", "-C", "$ROOT", "describe", "--always", "--dirty"),
    "rustc": out("rustc", "--version"),
    "fio": out("fio", "--version"),
    "dd": out("dd", "--version").splitlines()[0],
    "python": sys.version.split()[0],
    "python_safetensors": safetensors.__version__,
    "numpy": numpy.__version__,
    "matplotlib": matplotlib.__version__,
    "rust_peers": out("sh", "-c", "grep -A1 -E '^name = \"(safetensors|candle-core|memmap2)\"' $ROOT/bench/cpu/peers/Cargo.lock | grep -v -- -- | paste - - | sed 's/name = //;s/version = //;s/\"//g'"),
    "checkpoint_bf16": "$BF16",
    "checkpoint_f16": "$F16",
}
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env, indent=1))
EOF

# --- the measurement.
say "first touch of fresh memory (bench/cpu/touch.py)"
"$PY" "$ROOT/bench/cpu/touch.py" --settle "$SETTLE" --out "$OUT/cpu-touch.json"
say "measuring: $ROUNDS rounds, cold and warm"
RESULTS=$OUT/cpu-results.jsonl
"$PY" "$ROOT/bench/cpu/compare.py" --ts "$TS" --peers "$PEERS" --bf16 "$BF16" --f16 "$F16" \
  --rounds "$ROUNDS" --settle "$SETTLE" --out "$RESULTS" ${ONLY:+--only "$ONLY"} $DIAG "${BASELINE[@]}"
mkdir -p "$OUT/runs"
cp "$RESULTS" "$OUT/runs/cpu-results-$(date -u +%Y%m%dT%H%M%SZ).jsonl"

say "results"
"$PY" "$ROOT/bench/cpu/summarize.py" "$RESULTS" --env "$OUT/cpu-env.json" --touch "$OUT/cpu-touch.json" \
  --md "$OUT/cpu-table.md" --json "$OUT/cpu-summary.json"
"$PY" "$ROOT/bench/chart.py" "$RESULTS" --out "$ROOT/bench/cpu-chart.png" \
  --title "tensorstream vs peers, $SIZE Llama-layout checkpoint, $(nproc)-core machine: median of $ROUNDS rounds (bars: min–max)"
echo "wrote $RESULTS, $OUT/cpu-table.md, $OUT/cpu-summary.json, bench/cpu-chart.png" >&2
