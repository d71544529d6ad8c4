#!/usr/bin/env bash
# Checks that the candle backend's CUDA path compiles, with candle's own `cuda`
# feature, on a machine with no GPU and no CUDA toolkit; with --build, links its test
# binary and the candle_load example (release) for the GPU machine.
#
#   .ci/candle-cuda.sh           # cargo clippy -D warnings (lib, tests, examples)
#   .ci/candle-cuda.sh --build   # cargo build --release --test candle --example candle_load
#
# nvcc and the CUDA headers come from PyPI (the CUDA 13 wheels: PyPI's CUDA 12 nvcc
# wheels hold no nvcc), and candle-kernels compiles its kernels to PTX with them.
# candle turns on cudarc's dynamic *linking*: a binary is linked with -lcuda -lnvrtc
# -lcurand -lcublas -lcublasLt, and -lcudart (candle-kernels' MoE kernels are a static
# library that calls the CUDA runtime). All but libcuda come from PyPI's CUDA 13 wheels
# too (--build only), of the same CUDA 13.0 release as nvcc. Those wheels ship only
# lib*.so.N (the SONAME), not the lib*.so the linker looks for, so
# target/candle-cuda-link/ gets lib*.so -> lib*.so.N symlinks and is passed to the
# linker with RUSTFLAGS="-L ...". (The linker's --as-needed then keeps only libcuda.so.1,
# libcublas.so.13, libcurand.so.10 and libcudart.so.13 as the binaries' NEEDED.)
#
# libcuda.so is the driver's own library, on no registry (no wheel holds even its
# stub). So target/candle-cuda-link/libcuda.so is a stub written and compiled here:
# one function per driver entry point that cudarc declares, each returning
# CUDA_ERROR_NO_DEVICE, with the SONAME libcuda.so.1. It is ONLY for linking: the
# binary records "NEEDED libcuda.so.1", and at run time the dynamic loader finds the
# real driver's libcuda.so.1 (the stub is never copied into a bundle nor put on a
# library path). On a machine with no driver the binaries do not start: the loader
# says "libcuda.so.1: cannot open shared object file"; scripts/gpu-check.sh checks
# with ldd before it runs them.
#
# Later runs reuse target/candle-cuda-venv, target/candle-cuda-link and
# target/candle-cuda (the target directory). From scratch on the 2-core VM, with other
# builds running: the check about 10 minutes, the build 16.
# CI does not call this script (the toolkit download and candle's kernels cost more
# than CI's share); scripts/gpu-bundle.sh --candle does.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# nvcc's own dependencies pinned too: a newer NVVM emits PTX its ptxas refuses. The
# libraries are those of the same CUDA 13.0 update, the very versions PyTorch 2.11
# requires (through cuda-toolkit==13.0.2), so the SONAMEs the binaries ask for
# (libcudart.so.13, libcublas.so.13, libcurand.so.10) are those on the GPU machine.
# The libraries (about 850 MB) only for --build: a check links nothing.
PINS=("nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88"
      "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85")
BUILD=0
if [[ "${1:-}" == "--build" ]]; then
    BUILD=1
    PINS+=("nvidia-cuda-nvrtc==13.0.88" "nvidia-cublas==13.1.0.3" "nvidia-curand==10.4.0.35")
fi
VENV=target/candle-cuda-venv
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
installed() { # "yes" when the venv holds exactly the pinned versions
    "$VENV/bin/python" - "${PINS[@]}" <<'PY' 2>/dev/null || true
import importlib.metadata as m, sys
ok = all(m.version(p.split("==")[0]) == p.split("==")[1] for p in sys.argv[1:])
print("yes" if ok else "no")
PY
}
if [[ "$(installed)" != "yes" ]]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
fi
CU="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
chmod +x "$CU"/bin/* "$CU"/nvvm/bin/* 2>/dev/null || true
export PATH="$CU/bin:$PATH"
export CUDA_ROOT="$CU"
export NVCC_APPEND_FLAGS="-I$CU/include -isystem $CU/include/cccl"
# candle-kernels asks nvidia-smi for the GPU's compute capability unless told.
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
export TENSORSTREAM_CANDLE_CUDA=1
nvcc --version | tail -2 | head -1

FEATURES="candle,cuda,candle-core/cuda,candle-nn/cuda"

# The link directory (--build): symlinks to the wheels' libraries, and the libcuda stub.
link_dir() {
    LINK="$ROOT/target/candle-cuda-link"
    mkdir -p "$LINK"
    for lib in libnvrtc.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13; do
        [[ -f "$CU/lib/$lib" ]] || { echo "candle-cuda.sh: $CU/lib/$lib missing (wheel layout changed?)" >&2; exit 1; }
        ln -sfn "$CU/lib/$lib" "$LINK/${lib%.so.*}.so"
    done
    # The driver entry points cudarc may reference: every `pub unsafe fn cu...` of its
    # driver bindings (more than a binary uses; unused ones cost nothing).
    CUDARC=$(cargo metadata --format-version 1 --features "$FEATURES" 2>/dev/null | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(next(p["manifest_path"] for p in m["packages"] if p["name"] == "cudarc").rsplit("/", 1)[0])')
    SYS="$CUDARC/src/driver/sys/mod.rs"
    if [[ ! -f "$LINK/libcuda.so" || "$SYS" -nt "$LINK/libcuda.so" || "$0" -nt "$LINK/libcuda.so" ]]; then
        {
            echo "/* Link-time stub of libcuda.so.1 written by .ci/candle-cuda.sh from $SYS. */"
            echo "/* Never loaded on a GPU machine: the driver's libcuda.so.1 is. */"
            grep -o -E 'pub unsafe fn cu[A-Za-z0-9_]+' "$SYS" | awk '{print $4}' | sort -u |
                sed 's/.*/int &(void) { return 100; \/* CUDA_ERROR_NO_DEVICE *\/ }/'
        } >"$LINK/libcuda-stub.c"
        cc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/libcuda-stub.c"
        echo "libcuda stub: $(grep -c '^int ' "$LINK/libcuda-stub.c") entry points -> $LINK/libcuda.so"
    fi
    # Always the same for a build: RUSTFLAGS is part of every crate's fingerprint.
    export RUSTFLAGS="${RUSTFLAGS:-} -L native=$LINK"
}

if [[ "$BUILD" == 1 ]]; then
    link_dir
    # The executables' paths (cargo's JSON messages) go to target/candle-cuda/binaries.tsv
    # for scripts/gpu-bundle.sh; diagnostics still print as usual.
    cargo build --release --features "$FEATURES" --test candle --example candle_load \
        --target-dir target/candle-cuda --message-format=json-render-diagnostics |
        python3 -c '
import json, sys
out = open(sys.argv[1], "w")
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        out.write("%s\t%s\n" % (m["target"]["kind"][0], m["executable"]))
' target/candle-cuda/binaries.tsv
    sed 's/^/  /' target/candle-cuda/binaries.tsv
    echo "candle-cuda.sh: cargo build --release --features $FEATURES (test candle, example candle_load) with TENSORSTREAM_CANDLE_CUDA=1: ok"
else
    # clippy: cargo check and the lints, on code that no other build compiles.
    cargo clippy --features "$FEATURES" --lib --tests --examples --target-dir target/candle-cuda \
        -- -D warnings
    echo "candle-cuda.sh: cargo clippy --features $FEATURES with TENSORSTREAM_CANDLE_CUDA=1: ok"
fi
