#!/usr/bin/env bash
# Checks that the candle backend's CUDA path compiles, with candle's own `cuda`
# feature, on a machine with no GPU and no CUDA toolkit: nvcc and the CUDA headers
# come from PyPI (the CUDA 13 wheels: PyPI's CUDA 12 nvcc wheels hold no nvcc), and
# candle-kernels compiles its kernels to PTX with them. `cargo check` only: a build
# would link cuBLAS, cuRAND, NVRTC and libcuda (candle turns on cudarc's dynamic
# linking). Later runs reuse target/candle-cuda-venv and target/candle-cuda.
#
#   .ci/candle-cuda.sh [--build]   # --build also links (needs those libraries)
set -euo pipefail
cd "$(dirname "$0")/.."

# nvcc's own dependencies pinned too: a newer NVVM emits PTX its ptxas refuses.
PINS=("nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88"
      "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85")
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
CMD=check
[[ "${1:-}" == "--build" ]] && CMD=build
cargo "$CMD" --features "$FEATURES" --lib --tests --examples --target-dir target/candle-cuda
echo "candle-cuda.sh: cargo $CMD --features $FEATURES with TENSORSTREAM_CANDLE_CUDA=1: ok"
