#!/usr/bin/env bash
# Builds the bundle that a GPU session carries to the GPU machine (which has no
# Rust and no network). Run HERE, from anywhere in the checkout:
#
#   scripts/gpu-bundle.sh [--no-wheels] [--allow-no-cuda] [--candle]
#
# It builds `cargo build --release --features cuda` and the test binaries
# (`cargo test --release --features cuda --no-run`), and copies into gpu-bundle/
# (ignored by git):
#   bin/tensorstream      the CLI (debug info stripped, symbols kept)
#   tests.tar.xz          tests/<kind>-<name>: every test executable cargo reported, but
#                         the fake-driver tests (gpu-check.sh unpacks them)
#   gpu-check.sh          scripts/gpu-check.sh      (the GPU check)
#   gpu-session.sh        scripts/gpu-session.sh    (check + sweep + compare in one call)
#   fixtures.py           scripts/fixtures.py
#   gpu/                  bench/gpu/* (compare.py, sweep.py, kernels.py and helpers),
#                         and bench/cpu/tp_compare.py (a rank's shard against get_slice),
#                         bench/cpu/bin_write.py and tests/pytorch_fixtures.py (a .bin)
#   kernels/convert.ptx   the committed PTX, for gpu/kernels.py
#   wheels/               bench/wheels/*.whl, the peers for compare.py
#                         (fetch them first with bench/gpu/download-wheels.sh)
#   wheels-tensorstream/  the Python package as an abi3 wheel built with the same
#                         features (pip wheel ./python), and pytest's wheels, for
#                         gpu-check.sh's pytest step and compare.py
#   candle/               with --candle only: candle-cuda.tar.xz, holding test-candle
#                         (tests/candle.rs) and candle_load (examples/candle_load.rs),
#                         linked with candle's `cuda` feature by .ci/candle-cuda.sh
#                         --build (about 16 min the first time), for gpu-check.sh's
#                         candle step (gpu/candle_check.py unpacks them there). Each
#                         holds the same 32 MB of candle's MoE kernels: 46 and 40 MiB
#                         stripped, 6.3 MiB together in one xz stream with a 64 MiB
#                         window (preset 9), which finds the second copy
#   MANIFEST.json         commit, toolchain, features, build paths, sizes
# then prints the `carry` list and the commands to run there.
#
# --allow-no-cuda: when the cuda feature does not compile, build without it
# instead of failing. Such a bundle is for dry runs only (its CUDA loads fail
# with "no CUDA support"); the manifest and gpu-check.sh say so.
set -euo pipefail

WHEELS=1
ALLOW_NO_CUDA=0
CANDLE=0
for a in "$@"; do
    case "$a" in
        --no-wheels) WHEELS=0 ;;
        --allow-no-cuda) ALLOW_NO_CUDA=1 ;;
        --candle) CANDLE=1 ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "gpu-bundle.sh: unknown argument $a" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUNDLE=$ROOT/gpu-bundle
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bundle.XXXXXX")
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

FEATURES=(--features cuda)
FEATURE_LIST='["cuda"]'
# A bundle from an earlier build must not survive a failed one and be carried by mistake.
rm -rf "$BUNDLE"
echo "== cargo build --release --features cuda"
if ! cargo build --release --features cuda 2>&1 | tee "$LOGDIR/build.txt"; then
    echo
    echo "gpu-bundle.sh: 'cargo build --release --features cuda' FAILED (errors above; log $LOGDIR/build.txt)."
    echo "The GPU check needs a build with the cuda feature; there is nothing to send to the GPU machine yet."
    if [ "$ALLOW_NO_CUDA" = 1 ]; then
        echo "--allow-no-cuda: building WITHOUT the cuda feature, for a dry run only."
        FEATURES=()
        FEATURE_LIST='[]'
        cargo build --release 2>&1 | tail -3
    else
        echo "(For a dry-run bundle without CUDA: scripts/gpu-bundle.sh --allow-no-cuda)"
        exit 1
    fi
fi

echo "== cargo test --release ${FEATURES[*]:-} --no-run"
if ! cargo test --release ${FEATURES[@]+"${FEATURES[@]}"} --no-run --message-format=json >"$LOGDIR/tests.jsonl" 2>"$LOGDIR/tests-stderr.txt"; then
    tail -40 "$LOGDIR/tests-stderr.txt"
    echo "gpu-bundle.sh: building the test binaries FAILED (log $LOGDIR/tests-stderr.txt)"
    exit 1
fi
tail -2 "$LOGDIR/tests-stderr.txt"

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/tests" "$BUNDLE/gpu"
BIN=$TARGET_DIR/release/tensorstream
strip_copy() { # debug info off (they are built with debug = 1), symbols kept for backtraces
    cp "$1" "$2"
    strip --strip-debug "$2" 2>/dev/null || objcopy --strip-debug "$2" 2>/dev/null || true
    chmod +x "$2"
}
strip_copy "$BIN" "$BUNDLE/bin/tensorstream"

# Test executables, from cargo's JSON messages (kind-name, e.g. lib-tensorstream).
python3 - "$LOGDIR/tests.jsonl" >"$LOGDIR/tests.tsv" <<'EOF'
import json, sys
seen = set()
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m.get("profile", {}).get("test"):
        continue
    kind = m["target"]["kind"][0]
    name = "%s-%s" % (kind, m["target"]["name"])
    # The fake-driver tests stand in for a GPU (and need g++): not for the GPU machine.
    if name in seen or name == "test-fake_driver":
        continue
    seen.add(name)
    print("%s\t%s" % (name, m["executable"]))
EOF
while IFS=$'\t' read -r name exe; do
    strip_copy "$exe" "$BUNDLE/tests/$name"
    echo "  test binary $name  <- $exe"
done <"$LOGDIR/tests.tsv"

echo "== python wheel: pip wheel ./python ${FEATURES[*]:-}"
mkdir -p "$BUNDLE/wheels-tensorstream"
PEP517_FEATURES=""
[ "${#FEATURES[@]}" -gt 0 ] && PEP517_FEATURES="--features cuda"
if ! MATURIN_PEP517_ARGS="$PEP517_FEATURES" python3 -m pip wheel -q --no-deps -w "$BUNDLE/wheels-tensorstream" ./python >"$LOGDIR/wheel.txt" 2>&1; then
    tail -30 "$LOGDIR/wheel.txt"
    echo "gpu-bundle.sh: building the Python wheel FAILED (log $LOGDIR/wheel.txt)"
    exit 1
fi
# pytest for the GPU machine's pytest step (pure-Python wheels; it may lack pytest).
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    -d "$BUNDLE/wheels-tensorstream" pytest >"$LOGDIR/pytest-wheels.txt" 2>&1 \
    || echo "  could not download pytest's wheels: the GPU machine's own pytest will be used, if any"
ls "$BUNDLE/wheels-tensorstream" | sed 's/^/  /'

cp scripts/gpu-check.sh "$BUNDLE/gpu-check.sh"
cp scripts/gpu-session.sh "$BUNDLE/gpu-session.sh"
mkdir -p "$BUNDLE/kernels"
cp kernels/convert.ptx "$BUNDLE/kernels/convert.ptx"   # for gpu/kernels.py (the binary embeds the same)
cp scripts/fixtures.py "$BUNDLE/fixtures.py"
mkdir -p "$BUNDLE/gpu"
cp bench/cpu/tp_compare.py "$BUNDLE/gpu/tp_compare.py"
# gpucheck.py's .bin series writes its checkpoint with these.
cp bench/cpu/bin_write.py tests/pytorch_fixtures.py "$BUNDLE/gpu/"
for f in bench/gpu/*; do
    case "$f" in *__pycache__*) continue ;; esac
    [ -f "$f" ] && cp "$f" "$BUNDLE/gpu/"
done
chmod +x "$BUNDLE/gpu-check.sh" "$BUNDLE/gpu-session.sh"

if [ "$CANDLE" = 1 ]; then
    # The candle backend's CUDA path: its own build (candle's `cuda` feature links
    # libcuda, cuBLAS, cuRAND and NVRTC; see .ci/candle-cuda.sh), its own target dir.
    echo "== candle: .ci/candle-cuda.sh --build"
    if ! bash .ci/candle-cuda.sh --build >"$LOGDIR/candle.txt" 2>&1; then
        tail -40 "$LOGDIR/candle.txt"
        echo "gpu-bundle.sh: building the candle CUDA binaries FAILED (log $LOGDIR/candle.txt)"
        exit 1
    fi
    tail -4 "$LOGDIR/candle.txt"
    mkdir -p "$BUNDLE/candle"
    CTMP=$LOGDIR/candle
    mkdir -p "$CTMP"
    while IFS=$'\t' read -r kind exe; do
        case "$kind" in
            test) name=test-candle ;;
            example) name=candle_load ;;
            *) continue ;;
        esac
        strip_copy "$exe" "$CTMP/$name"
        echo "  candle $kind <- $exe"
    done <target/candle-cuda/binaries.tsv
    for f in test-candle candle_load; do
        [ -x "$CTMP/$f" ] || { echo "gpu-bundle.sh: no $f after the candle build"; exit 1; }
    done
    python3 - "$CTMP" "$BUNDLE/candle/candle-cuda.tar.xz" <<'EOF'
import os, sys, tarfile
with tarfile.open(sys.argv[2], "w:xz", preset=9) as tf:
    for name in ("test-candle", "candle_load"):
        tf.add(os.path.join(sys.argv[1], name), arcname=name)
EOF
    # What they ask the dynamic loader for (the GPU machine must have each of these).
    echo "  they need: $(readelf -d "$CTMP/test-candle" "$CTMP/candle_load" | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' | sort -u | tr '\n' ' ')"
    du -b "$CTMP"/* "$BUNDLE"/candle/* | awk '{ printf "  %s %.1f MiB\n", $2, $1/1048576 }'
fi

NWHEELS=0
if [ "$WHEELS" = 1 ] && ls bench/wheels/*.whl >/dev/null 2>&1; then
    mkdir -p "$BUNDLE/wheels"
    cp bench/wheels/*.whl "$BUNDLE/wheels/"
    [ -f bench/wheels/FOUND.json ] && cp bench/wheels/FOUND.json "$BUNDLE/wheels/"
    NWHEELS=$(ls "$BUNDLE"/wheels/*.whl | wc -l)
elif [ "$WHEELS" = 1 ]; then
    echo "  no wheels in bench/wheels (run bench/gpu/download-wheels.sh): compare.py will run tensorstream and the peers already installed there only"
fi

# The test binaries share most of their code: xz packs them to about a tenth (44 MiB to
# 4.4 MiB on 2026-12-07), which leaves the 64 MiB a device call carries for the rest.
# gpu-check.sh unpacks them (about a second).
NTESTS=$(ls "$BUNDLE/tests" | wc -l)
echo "== packing $NTESTS test binaries into tests.tar.xz"
tar -C "$BUNDLE" -cf - tests | xz -T0 -6 >"$BUNDLE/tests.tar.xz"
rm -rf "$BUNDLE/tests"

GLIBC_MAX=$(objdump -T "$BUNDLE/bin/tensorstream" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)
python3 - "$BUNDLE" "$TARGET_DIR" "$FEATURE_LIST" "$GLIBC_MAX" <<'EOF'
import json, os, subprocess, sys, datetime
bundle, target, features, glibc = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
def sh(*c):
    try:
        return subprocess.run(c, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
files = {}
for d, _, fs in os.walk(bundle):
    for f in fs:
        p = os.path.join(d, f)
        files[os.path.relpath(p, bundle)] = os.path.getsize(p)
m = {
    "git_commit": sh("git", "rev-parse", "HEAD"),
    "git_dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
    "built_at": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
    "rustc": sh("rustc", "--version"),
    "features": features,
    "repo_root": os.getcwd(),
    "target_dir": target,
    "cargo_target_tmpdir": os.path.join(target, "tmp"),
    "bin_exe": os.path.join(target, "release", "tensorstream"),
    "glibc_required": glibc,
    "files": files,
    "bytes": sum(files.values()),
}
json.dump(m, open(os.path.join(bundle, "MANIFEST.json"), "w"), indent=1)
EOF

BUNDLE_BYTES=$(du -sb "$BUNDLE" | cut -f1)
TREE_BYTES=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
TOTAL=$((BUNDLE_BYTES + TREE_BYTES))
echo
echo "== gpu-bundle/ ready: $NTESTS test binaries (packed), $NWHEELS wheel(s), features: $FEATURE_LIST, needs $GLIBC_MAX"
awk -v b="$BUNDLE_BYTES" -v t="$TREE_BYTES" 'BEGIN { printf "   bundle %.1f MiB + working tree %.1f MiB = %.1f MiB of the 64 MiB a device call carries\n", b/1048576, t/1048576, (b+t)/1048576 }'
if [ "$TOTAL" -gt $((62 * 1024 * 1024)) ]; then
    echo "   WARNING: over ~62 MiB: rebuild with --no-wheels (compare.py then runs without the peers), or trim"
fi
if [ "$FEATURE_LIST" = "[]" ]; then
    echo "   WARNING: built WITHOUT the cuda feature: a dry-run bundle, not for the GPU session"
fi
cat <<EOF

Run on the GPU machine (device tool 'run'), the whole session in one call
(a machine goes back 30 s after a call; 15 minutes of device time, start included):
  carry:     ["gpu-bundle"]
  command:   bash gpu-bundle/gpu-session.sh --budget-s 540   (less when less device time is left)
  timeout_s: 600
  (gpu-check.sh, then regbench.py, sweep.py, then compare.py against the peers; seven files under \$OUT:
   run.log, gpu-check.log/.json, sweep.json, compare.log, compare-summary.json, gpu-results.jsonl.
   Each also runs alone: bash gpu-bundle/gpu-check.sh [--budget-s N];
   python3 gpu-bundle/gpu/compare.py --bin gpu-bundle/bin/tensorstream --wheels gpu-bundle/wheels --out "\$OUT")
EOF
if [ "$CANDLE" = 1 ]; then
    echo "  With --candle, gpu-check.sh's candle step also writes \$OUT/candle-check.json (tests, GB/s against candle's own loading)."
fi
