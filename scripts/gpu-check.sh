#!/usr/bin/env bash
# GPU check: runs ON the GPU machine, from inside the bundle that
# scripts/gpu-bundle.sh builds (prebuilt binaries; no Rust, no network needed).
#
#   bash gpu-bundle/gpu-check.sh [--budget-s 540] [--size 8G] [--large-mib 256]
#                                [--scratch DIR] [--skip-tests] [--skip-timing] [--keep]
#
# Writes one log, $OUT/gpu-check.log, and the results as JSON, $OUT/gpu-check.json.
# Steps (each under a timeout, the whole under --budget-s, default 9 minutes):
#   1. machine: card, driver, CUDA version, kernel, filesystem of the scratch
#      directory, whether O_DIRECT / io_uring / mincore / drop_caches work;
#   2. the prebuilt test binaries: the CUDA ones first (GPU tests skip cleanly
#      without a GPU); the CPU-only ones (they pass in CI) only with budget to spare;
#   3. fixtures (fixtures.py) loaded with --device cpu and --device cuda --digest
#      for --dtype none/F32/F16/BF16 and an --only filter: outputs must be
#      byte-identical, and match references from Python safetensors + torch;
#   4. conversion kernels (gpu/kernels.py) on device-resident data against a D2D
#      copy: the >= 0.70 goal (~5-20 s);
#   4b. the Python package (wheels-tensorstream/, installed with --no-index into a
#      scratch directory): pytest on python/tests with torch, on cuda:0 where
#      there is one (every dtype and conversion against the CPU path, load_into,
#      memory back to its baseline, a kernel launched at once on the result),
#      examples/python/serve_weights.py on cuda:0, and bench/cpu/iter_compare.py on
#      cuda:0 (a server's weight loop, 1 GB, 2 rounds) when 2 minutes are to spare;
#   4c. the candle backend on CUDA (bundles built with --candle; gpu/candle_check.py):
#      tests/candle.rs's CUDA tests, then candle_load on cuda:0 against candle's own
#      loading of a 2 GiB synthetic checkpoint, warm, alternating (goal >= 5x);
#   5. timing of a synthetic >= 8 GB checkpoint to cuda, cold and warm, with
#      the limits measured in the same run (pinned H2D and D2D with PyTorch,
#      raw O_DIRECT read rate) and conversion in real loads (--skip-timing: not run);
#   6. a summary with the ratios against the goals.
# Correctness comes first: steps 2-4 each keep what the later ones need (about
# 70 s for the fixtures, 20 s for the kernels), and only the timing is cut to
# what is left; --budget-s 120 --skip-timing fits all of 2-4 on an H200 (~90 s).
# Without a GPU (or with a bundle built without the cuda feature) the CUDA
# steps say "no GPU" and are skipped; the rest runs, which is how it is dry-run.
# Exit: 0 no correctness failure, 1 a failure, 2 a broken bundle or usage.

set -u
START=$SECONDS
BUDGET=540
SIZE=8G
LARGE_MIB=256
SCRATCH=${TS_SCRATCH:-}
SKIP_TESTS=0
SKIP_TIMING=0
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --budget-s) BUDGET=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --large-mib) LARGE_MIB=$2; shift 2 ;;
        --scratch) SCRATCH=$2; shift 2 ;;
        --skip-tests) SKIP_TESTS=1; shift ;;
        --skip-timing) SKIP_TIMING=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
        *) echo "gpu-check.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

B=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -z "${OUT:-}" ]; then
    OUT=$PWD/gpu-check-out
    echo "OUT is not set: writing to $OUT"
fi
mkdir -p "$OUT"
LOG=$OUT/gpu-check.log
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1

# Where things are: in a bundle (bin/, tests/ packed as tests.tar.xz, gpu/) or in a
# checkout (scripts/).
if [ -f "$B/tests.tar.xz" ] && [ ! -d "$B/tests" ]; then
    tar -C "$B" -xJf "$B/tests.tar.xz" || echo "  could not unpack $B/tests.tar.xz"
fi
if [ -x "$B/bin/tensorstream" ]; then TS=$B/bin/tensorstream; else TS=${TS_BIN:-$B/../target/release/tensorstream}; fi
if [ -d "$B/gpu" ]; then GPU_PY=$B/gpu; else GPU_PY=$B/../bench/gpu; fi
FIXTURES_PY=$B/fixtures.py
MANIFEST=$B/MANIFEST.json
PY=${PYTHON:-python3}

left() { echo $((BUDGET - (SECONDS - START))); }
hr() { printf '\n== %s  [t=%ds, %ds left]\n' "$1" $((SECONDS - START)) "$(left)"; }
# run_step SECONDS CMD...: a timeout on everything, the exit status logged.
run_step() {
    local t=$1; shift
    if [ "$t" -lt 5 ]; then echo "  (skipped: budget spent)"; return 124; fi
    timeout -k 5 "$t" "$@"
    local rc=$?
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "  (TIMED OUT after ${t}s: $*)"
    return $rc
}
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
max() { if [ "$1" -gt "$2" ]; then echo "$1"; else echo "$2"; fi; }
# What each later step keeps for itself (seconds) while an earlier one runs. The
# fixtures' matrix took ~55 s on an H200 (52 cases + the io variants); kernels.py
# ~5 s there (CuPy import and JIT included); the summary ~2 s. The timing keeps
# nothing: it gets what is left.
RES_FIX=70
RES_KER=20
RES_END=10
if [ "$SKIP_TIMING" = 1 ]; then RES_TIMING=0; else RES_TIMING=200; fi

echo "tensorstream GPU check  $(date -u +%Y-%m-%dT%H:%M:%SZ)  budget ${BUDGET}s"
echo "bundle: $B"
if [ ! -x "$TS" ]; then echo "no tensorstream binary at $TS (build the bundle with scripts/gpu-bundle.sh)"; exit 2; fi
for f in "$FIXTURES_PY" "$GPU_PY/gpucheck.py" "$GPU_PY/tsbench.py"; do
    [ -f "$f" ] || { echo "missing $f: the bundle is incomplete"; exit 2; }
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ts-gpu-check.XXXXXX")

hr "machine"
if [ -f "$MANIFEST" ]; then
    "$PY" - "$MANIFEST" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
print("  built from %s%s on %s, rustc %s, features %s" % (m.get("git_commit", "?")[:12], " (dirty)" if m.get("git_dirty") else "",
      m.get("built_at", "?"), m.get("rustc", "?"), ",".join(m.get("features", [])) or "none"))
if "cuda" not in m.get("features", []):
    print("  WARNING: this bundle was built WITHOUT the cuda feature (a dry-run bundle): CUDA loads will fail")
EOF
fi
echo "  host $(hostname) | $(uname -srm) | $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME") | $(nproc) cores | $(free -g 2>/dev/null | awk '/Mem:/{print $2 " GiB RAM"}')"
HAVE_GPU=0
SMI=""
if command -v nvidia-smi >/dev/null 2>&1; then
    if run_step 30 nvidia-smi >"$WORK/smi.txt" 2>&1; then
        HAVE_GPU=1
        sed 's/^/  /' "$WORK/smi.txt" | head -20
        SMI=$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max --format=csv,noheader 2>/dev/null | head -1)
        CUDA_DRV=$(grep -o 'CUDA Version: [0-9.]*' "$WORK/smi.txt" | head -1)
        SMI="$SMI, $CUDA_DRV"
        echo "  GPU: $SMI"
    else
        echo "  nvidia-smi failed: $(tail -3 "$WORK/smi.txt")"
    fi
else
    echo "  no nvidia-smi: no GPU here; the CUDA steps will report 'no GPU' and skip"
fi
command -v nvcc >/dev/null 2>&1 && echo "  nvcc: $(nvcc --version | tail -2 | head -1)"
# The PTX embedded in the binary: its ISA version must not exceed what the driver JITs.
PTXV=$(grep -a -o -m1 -E '\.version [0-9]+\.[0-9]+' "$TS" | head -1)
PTXT=$(grep -a -o -m1 -E '\.target sm_[0-9a-z]+' "$TS" | head -1)
echo "  PTX embedded in tensorstream: ${PTXV:-none found} ${PTXT:-}"

# The driver library and NVRTC must be findable by cudarc's dynamic loading.
add_lib_dirs=""
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64 \
         /usr/local/cuda/targets/x86_64-linux/lib \
         $("$PY" -c 'import site,glob; [print(p) for s in site.getsitepackages() for p in glob.glob(s+"/nvidia/*/lib")+glob.glob(s+"/nvidia/cu*/lib")]' 2>/dev/null); do
    if ls "$d"/libnvrtc.so* "$d"/libcuda.so* >/dev/null 2>&1; then
        case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) ;; *) add_lib_dirs="$add_lib_dirs:$d" ;; esac
    fi
done
if [ -n "$add_lib_dirs" ]; then
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}${add_lib_dirs}"
    export LD_LIBRARY_PATH=${LD_LIBRARY_PATH#:}
fi
echo "  libcuda: $(ldconfig -p 2>/dev/null | grep -o 'libcuda\.so[.0-9]* ' | sort -u | tr -d ' ' | tr '\n' ' ')"
LDP=${LD_LIBRARY_PATH:-}
echo "  libnvrtc: $(for d in ${LDP//:/ }; do ls "$d"/libnvrtc.so* 2>/dev/null; done | sort -u | tr '\n' ' ')"
echo "  LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

# Scratch: a real disk (not tmpfs), with room for the synthetic checkpoint.
if [ -z "$SCRATCH" ]; then
    for c in /var/tmp/tensorstream-gpu /tmp/tensorstream-gpu /mnt/tensorstream-gpu; do
        mkdir -p "$c" 2>/dev/null || continue
        fstype=$(stat -f -c %T "$c" 2>/dev/null)
        free=$(df -Pk "$c" 2>/dev/null | awk 'NR==2{print $4}')
        if [ "$fstype" != "tmpfs" ] && [ "$fstype" != "ramfs" ] && [ "${free:-0}" -gt $((12 * 1024 * 1024)) ]; then
            SCRATCH=$c; break
        fi
        echo "  scratch candidate $c: ${fstype:-?}, $((${free:-0} / 1024 / 1024)) GiB free: not used"
    done
fi
[ -n "$SCRATCH" ] || { SCRATCH=/tmp/tensorstream-gpu; echo "  WARNING: no disk-backed scratch with 12 GiB free; using $SCRATCH (cold figures may be meaningless)"; }
mkdir -p "$SCRATCH"
echo "  scratch: $SCRATCH ($(stat -f -c %T "$SCRATCH"), $(df -Ph "$SCRATCH" | awk 'NR==2{print $4 " free on " $1}'))"
run_step 90 "$PY" "$GPU_PY/gpucheck.py" env --out "$WORK/env.json" --probe-dir "$SCRATCH" || true
CUDA_TORCH=$("$PY" -c 'import json,sys; print(1 if json.load(open(sys.argv[1])).get("cuda_available") else 0)' "$WORK/env.json" 2>/dev/null || echo 0)
[ "$HAVE_GPU" = 1 ] && [ "$CUDA_TORCH" != 1 ] && echo "  WARNING: nvidia-smi sees a GPU but torch does not"
# The candle step (4c) keeps its share while the steps before it run, when it has
# binaries and a GPU: its tests took ~30 s and the timing ~60 s (estimates until measured).
RES_CAN=0
if [ -d "$B/candle" ] && [ "$HAVE_GPU" = 1 ]; then RES_CAN=100; fi
RES_END=$((RES_END + RES_CAN))

# Test binaries carry absolute paths from the build machine (CARGO_TARGET_TMPDIR,
# CARGO_BIN_EXE_tensorstream): recreate them here when they are missing.
fixup_paths() {
    [ -f "$MANIFEST" ] || return 0
    "$PY" - "$MANIFEST" "$TS" <<'EOF'
import json, os, sys
m = json.load(open(sys.argv[1])); ts = sys.argv[2]
for d in [m.get("cargo_target_tmpdir")]:
    if d and not os.path.isdir(d):
        try:
            os.makedirs(d, exist_ok=True); print("  created %s (CARGO_TARGET_TMPDIR of the build)" % d)
        except OSError as e:
            print("  cannot create %s: %s (tests that write there will fail)" % (d, e))
exe = m.get("bin_exe")
if exe and not os.path.exists(exe):
    try:
        os.makedirs(os.path.dirname(exe), exist_ok=True); os.symlink(ts, exe)
        print("  linked %s -> %s (CARGO_BIN_EXE_tensorstream of the build)" % (exe, ts))
    except OSError as e:
        print("  cannot link %s: %s" % (exe, e))
EOF
}

hr "tests (prebuilt test binaries)"
echo '{"binaries": []}' >"$WORK/tests.json"
if [ "$SKIP_TESTS" = 1 ]; then
    echo "  skipped (--skip-tests)"
elif ! ls "$B"/tests/* >/dev/null 2>&1; then
    echo "  no test binaries in $B/tests (not a bundle?)"
else
    fixup_paths
    results=""
    TESTS_END=$((SECONDS + 150))  # all test binaries together; one binary at most 60 s
    # The CUDA tests first: they are what this machine is for (at least 45 s, at most
    # 90 s, leaving the fixtures, the kernels and the summary theirs). The CPU-only
    # binaries already pass in CI; here they run only while the budget also leaves the
    # timing 200 s (none with --skip-timing), each with 20 s at least (a shorter limit
    # would report a slow pass as a failure), and are reported as skipped otherwise.
    gpu_first() {
        for f in "$B"/tests/*; do case "$(basename "$f")" in *cuda*|*gpu*) echo "$f" ;; esac; done
        for f in "$B"/tests/*; do case "$(basename "$f")" in *cuda*|*gpu*) ;; *) echo "$f" ;; esac; done
    }
    for t in $(gpu_first); do
        name=$(basename "$t")
        case "$name" in
            *cuda*|*gpu*) tl=$(min 90 "$(max 45 $(( $(left) - RES_FIX - RES_KER - RES_END )))") ;;
            *) tl=$(min 60 "$(min $((TESTS_END - SECONDS)) $(( $(left) - RES_FIX - RES_KER - RES_END - RES_TIMING )))")
               [ "$tl" -lt 20 ] && tl=0 ;;
        esac
        if [ "$tl" -lt 5 ]; then
            echo "-- $name: skipped (budget; CPU-only tests run in CI)"
            results="$results{\"name\":\"$name\",\"result\":\"skipped\",\"skip_mentions\":0},"
            continue
        fi
        echo "-- $name (timeout ${tl}s)"
        # GPU tests print why they skip; show it (a skip on a GPU machine is a finding).
        case "$name" in *cuda*|*gpu*) extra=--nocapture ;; *) extra= ;; esac
        run_step "$tl" "$t" --test-threads=8 $extra >"$WORK/test-$name.txt" 2>&1
        rc=$?
        # Everything but the 'test x ... ok' lines: failures, skips with reasons, totals.
        grep -v -E '^test .* \.\.\. ok$' "$WORK/test-$name.txt" | grep -v '^$' | sed 's/^/  /' | head -150
        echo "  ($(grep -c -E '^test .* \.\.\. ok$' "$WORK/test-$name.txt") passed lines not shown; exit $rc)"
        case $rc in 0) res=passed ;; 124|137) res=timeout ;; *) res="failed(rc=$rc)" ;; esac
        skips=$(grep -c -i 'skipping' "$WORK/test-$name.txt")
        results="$results{\"name\":\"$name\",\"result\":\"$res\",\"skip_mentions\":$skips},"
    done
    echo "{\"binaries\": [${results%,}]}" >"$WORK/tests.json"
fi

hr "fixtures: cpu vs cuda digests, and references (safetensors + torch)"
FIX=$SCRATCH/fixtures
rm -rf "$FIX"
run_step "$(min 120 "$(max 30 $(( $(left) - RES_KER - RES_END )))")" "$PY" "$FIXTURES_PY" "$FIX" --large-mib "$LARGE_MIB" | sed 's/^/  wrote /'
if [ "$HAVE_GPU" = 1 ]; then CUDA_MODE=yes; else CUDA_MODE=auto; fi
# DIFF_BUDGET stops the matrix from starting new cases (the io variants, ~10 s, come
# after it); the timeout beyond it lets the last case and the JSON out. At least
# 60 s: the whole matrix is the point of this step, the kernels and the summary may
# then run a little past the budget.
DIFF_BUDGET=$(min 240 "$(max 60 $(( $(left) - RES_KER - RES_END - 15 )))")
echo "  matrix budget ${DIFF_BUDGET}s"
run_step $((DIFF_BUDGET + 45)) "$PY" "$GPU_PY/gpucheck.py" diff --bin "$TS" --fixtures "$FIX" \
    --out "$WORK/diff.json" --cuda "$CUDA_MODE" --budget-s "$DIFF_BUDGET"
DIFF_RC=$?

hr "conversion kernels: device-resident, against a D2D copy (kernels.py)"
if [ "$HAVE_GPU" = 1 ]; then K_CUDA=yes; else K_CUDA=no; fi
KT=$(min 60 "$(max 20 $(( $(left) - RES_END )))")
run_step $((KT + 10)) "$PY" "$GPU_PY/gpucheck.py" kernels --out "$WORK/kernels.json" --cuda "$K_CUDA" --timeout "$KT"

hr "python package: pytest python/tests (torch, cuda:0 where there is one)"
PY_RC=0
PY_TESTS=$B/../python/tests
if ! ls "$B"/wheels-tensorstream/tensorstream-*.whl >/dev/null 2>&1; then
    echo "  no tensorstream wheel in the bundle (scripts/gpu-bundle.sh builds it): skipped"
elif [ ! -d "$PY_TESTS" ]; then
    echo "  no python/tests beside the bundle (carry the checkout with it): skipped"
else
    PYT=$WORK/pyts
    run_step 60 "$PY" -m pip install -q --no-deps --no-index --target "$PYT" "$B"/wheels-tensorstream/*.whl
    PT=$(min 150 "$(max 45 $(( $(left) - RES_END - 60 )))")
    (cd "$PY_TESTS" && PYTHONPATH="$PYT" run_step "$PT" "$PY" -m pytest -q -rs -p no:cacheprovider .) >"$WORK/pytest.txt" 2>&1
    PY_RC=$?
    tail -40 "$WORK/pytest.txt" | sed 's/^/  /'
    echo "  (pytest exit $PY_RC)"
    SW=$B/../examples/python/serve_weights.py
    if [ "$HAVE_GPU" = 1 ] && [ -f "$SW" ]; then
        echo "  examples/python/serve_weights.py --device cuda:0 (each rank's shard, checked):"
        PYTHONPATH="$PYT" run_step 90 "$PY" "$SW" --device cuda:0 >"$WORK/serve_weights.txt" 2>&1
        SW_RC=$?
        tail -6 "$WORK/serve_weights.txt" | sed 's/^/    /'
        [ "$SW_RC" -ne 0 ] && PY_RC=1
    fi
    IC=$B/../bench/cpu/iter_compare.py
    if [ "$HAVE_GPU" = 1 ] && [ -f "$IC" ] && [ "$(left)" -gt $((RES_END + 120)) ]; then
        echo "  bench/cpu/iter_compare.py --device cuda:0 (a server's weight loop: safetensors' iterator, iter_tensors, load_into; 1 GB BF16, warm, 2 rounds, every run's bytes checked):"
        "$TS" synth "$WORK/iter" --size 1G >/dev/null 2>&1
        PYTHONPATH="$PYT" run_step 60 "$PY" "$IC" "$WORK/iter/model.safetensors" --device cuda:0 --rounds 2 >"$WORK/iter.txt" 2>&1
        echo "    (exit $?)"
        tail -8 "$WORK/iter.txt" | sed 's/^/    /'
        rm -rf "$WORK/iter"
    fi
fi

hr "candle backend on CUDA: tests, and candle_load against candle's own loading"
RES_END=$((RES_END - RES_CAN))
CAN_RC=0
rm -f "$OUT/candle-check.json"  # none from an earlier run in the summary
if [ ! -d "$B/candle" ]; then
    echo "  no candle/ in the bundle (scripts/gpu-bundle.sh --candle builds it): skipped"
else
    if [ "$HAVE_GPU" = 1 ]; then C_CUDA=yes; else C_CUDA=no; fi
    # At most 150 s; the timing step after it keeps 120 s unless skipped.
    if [ "$SKIP_TIMING" = 1 ]; then C_KEEP=0; else C_KEEP=120; fi
    CB=$(min 150 "$(max 40 $(( $(left) - RES_END - C_KEEP )))")
    run_step $((CB + 20)) "$PY" "$GPU_PY/candle_check.py" --candle-dir "$B/candle" --dir "$SCRATCH" \
        --out "$OUT/candle-check.json" --cuda "$C_CUDA" --budget-s "$CB"
    CAN_RC=$?
fi

hr "timing: synthetic checkpoint to cuda, cold and warm; limits; conversion in real loads"
# The one step the budget squeezes: what the others left, less the summary's share.
TL=$(( $(left) - RES_END ))
if [ "$SKIP_TIMING" = 1 ]; then
    echo "  skipped (--skip-timing)"
elif [ "$TL" -lt 60 ]; then
    echo "  skipped (budget: ${TL}s left for it, 60 s at least needed)"
else
    if [ "$HAVE_GPU" = 1 ]; then T_CUDA=yes; else T_CUDA=no; echo "  no GPU: CUDA timings skipped; disk and page-cache machinery still run"; fi
    run_step "$TL" "$PY" "$GPU_PY/gpucheck.py" timing --bin "$TS" --dir "$SCRATCH" --fixtures "$FIX" \
        --out "$WORK/timing.json" --size "$SIZE" --cuda "$T_CUDA" --budget-s $((TL - 20))
fi

hr "result"
run_step 60 "$PY" "$GPU_PY/gpucheck.py" summary --env "$WORK/env.json" --tests "$WORK/tests.json" \
    --diff "$WORK/diff.json" --kernels "$WORK/kernels.json" --timing "$WORK/timing.json" --smi "$SMI" --out "$OUT/gpu-check.json"
RC=$?
[ "$DIFF_RC" -ne 0 ] && [ "$RC" -eq 0 ] && RC=1
[ "$PY_RC" -ne 0 ] && [ "$RC" -eq 0 ] && RC=1
[ "$CAN_RC" -ne 0 ] && [ "$RC" -eq 0 ] && RC=1
if [ -f "$OUT/candle-check.json" ]; then
    "$PY" - "$OUT/candle-check.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
t = c.get("timing", {})
line = "candle on CUDA: %s; tests %s" % (c.get("result", "?"), c.get("tests", {}).get("result", "not run"))
if "ratio" in t:
    line += "; warm load %.2f GB/s against candle's %.2f GB/s: %.2fx (goal >= 5x)" % (
        t["median_gbps"]["tensorstream"], t["median_gbps"]["candle"], t["ratio"])
else:
    line += "; timing %s" % t.get("result", "not run")
print(line)
EOF
fi
if [ "$KEEP" = 0 ]; then rm -rf "$SCRATCH/synth" "$FIX"; fi
rm -rf "$WORK"
echo
echo "gpu-check finished in $((SECONDS - START)) s, exit $RC; log $LOG, results $OUT/gpu-check.json"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit $RC
