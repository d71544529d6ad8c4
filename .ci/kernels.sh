#!/usr/bin/env bash
# Checks the committed CUDA kernels without a GPU or a CUDA toolkit:
#   1. kernels/convert.ptx is exactly what kernels/gen_ptx.py makes from
#      kernels/convert.cu with the pinned NVRTC (PTX ISA 8.0, loadable by CUDA 12.0+
#      drivers);
#   2. ptxas (from the pinned nvcc wheel, CUDA 12.0) assembles it for sm_80 and
#      later architectures.
# Run from the repository root. Needs python3 (with venv) and network access to
# PyPI the first time; later runs reuse target/kernel-venv and take seconds.
set -euo pipefail

NVRTC_PIN="nvidia-cuda-nvrtc-cu12==12.0.140"
NVCC_PIN="nvidia-cuda-nvcc-cu12==12.0.140"
ARCHS=(sm_80 sm_86 sm_89 sm_90)
VENV=target/kernel-venv
OUT=target/kernels

if [[ ! -f kernels/convert.cu || ! -f kernels/gen_ptx.py ]]; then
    echo "kernels.sh: run from the repository root" >&2
    exit 2
fi

installed() { # prints "yes" when the venv holds exactly the pinned versions
    "$VENV/bin/python" - "$NVRTC_PIN" "$NVCC_PIN" <<'EOF' 2>/dev/null || true
import importlib.metadata as m, sys
ok = all(m.version(p.split("==")[0]) == p.split("==")[1] for p in sys.argv[1:])
print("yes" if ok else "no")
EOF
}

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "kernels.sh: creating $VENV"
    python3 -m venv "$VENV"
fi
if [[ "$(installed)" != "yes" ]]; then
    echo "kernels.sh: installing $NVRTC_PIN $NVCC_PIN"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "$NVRTC_PIN" "$NVCC_PIN"
fi

mkdir -p "$OUT"
"$VENV/bin/python" kernels/gen_ptx.py -o "$OUT/convert.ptx"
if ! cmp -s "$OUT/convert.ptx" kernels/convert.ptx; then
    diff -u kernels/convert.ptx "$OUT/convert.ptx" | head -40 >&2 || true
    echo "kernels.sh: kernels/convert.ptx is stale: run" >&2
    echo "  $VENV/bin/python kernels/gen_ptx.py   # and commit kernels/convert.ptx" >&2
    exit 1
fi
echo "kernels.sh: kernels/convert.ptx matches a fresh NVRTC build of kernels/convert.cu"

PTXAS="$("$VENV/bin/python" - <<'EOF'
import importlib.metadata as m
print(next(f.locate() for f in m.files("nvidia-cuda-nvcc-cu12") if f.name == "ptxas"))
EOF
)"
chmod +x "$PTXAS" 2>/dev/null || true
ptxas_version="$("$PTXAS" --version | tail -1)"
for arch in "${ARCHS[@]}"; do
    "$PTXAS" -arch="$arch" kernels/convert.ptx -o /dev/null
    echo "kernels.sh: ptxas -arch=$arch kernels/convert.ptx: ok ($ptxas_version)"
done

version="$(grep -m1 '^\.version' kernels/convert.ptx)"
target="$(grep -m1 '^\.target' kernels/convert.ptx)"
entries="$(grep -c '^\.visible \.entry convert_' kernels/convert.ptx)"
echo "kernels.sh: ok: $entries kernels, PTX '$version', '$target'"
