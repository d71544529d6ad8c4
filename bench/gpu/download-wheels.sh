#!/usr/bin/env bash
# Downloads the peers' wheels for the GPU comparison (bench/gpu/compare.py) into
# bench/wheels/ (ignored by git). Run HERE, with network; the GPU machine has none.
#
#   bench/gpu/download-wheels.sh [DEST]
#
# Target: CPython 3.12, manylinux x86_64 (the GPU machine's torch environment).
# Peers, binary wheels only, no dependencies (torch, numpy and the rest come
# from the GPU machine's environment):
#   instanttensor            InstantTensor (scitix; PyPI name 'instanttensor')
#   fastsafetensors          IBM fastsafetensors
#   runai-model-streamer     Run:ai Model Streamer (its safetensors support is in
#                            the same package: runai_model_streamer.SafetensorsStreamer;
#                            the -s3/-gcs/-azure packages are object-store backends, not needed)
#   safetensors==0.8.*       the baseline
# plus their non-optional dependencies that the torch image might lack (each is
# checked against the list of packages that image is known to hold, and fetched
# anyway when small and pure Python, so that an offline install cannot fail on it).
# Writes DEST/FOUND.json: what was found (name, version, file, size) and what was not.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEST=${1:-$ROOT/bench/wheels}
FINAL=$DEST
mkdir -p "$FINAL"
# Download into a fresh folder, then replace the old wheels: two versions of one
# package side by side would break the offline install.
DEST=$(mktemp -d "${TMPDIR:-/tmp}/wheels.XXXXXX")
PY=${PYTHON:-python3}

PLATFORMS=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for n in 17 24 27 28 29 30 31 32 33 34 35 36 37 38 39; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PIP=("$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
     --abi cp312 --abi abi3 --abi none "${PLATFORMS[@]}" --platform any -d "$DEST" --no-cache-dir)

PEERS=(instanttensor fastsafetensors runai-model-streamer "safetensors==0.8.*")
# Non-optional dependencies of the peers (from their METADATA); the torch image on
# the GPU machine holds torch, numpy, typer, humanize (and typer's click, rich,
# shellingham, typing-extensions), but the small pure-Python ones are fetched too.
DEPS=(humanize typer)

status=()
fetch() {
    local spec=$1 kind=$2
    echo "== $spec"
    if timeout 300 "${PIP[@]}" "$spec" >"$DEST/.pip.log" 2>&1; then
        local saved
        saved=$(grep -E '^(Saved|File was already downloaded) ' "$DEST/.pip.log" | sed -E 's/^(Saved|File was already downloaded) //' | tail -1)
        echo "   ok: ${saved:-$(tail -1 "$DEST/.pip.log")}"
        status+=("$kind	$spec	ok	$(basename "${saved:-?}")")
    else
        echo "   NOT FOUND: $(grep -E 'ERROR' "$DEST/.pip.log" | head -2 | tr '\n' ' ')"
        status+=("$kind	$spec	missing	$(grep -E 'ERROR' "$DEST/.pip.log" | head -1)")
    fi
}
for p in "${PEERS[@]}"; do fetch "$p" peer; done
for d in "${DEPS[@]}"; do fetch "$d" dependency; done
rm -f "$DEST/.pip.log"
if ls "$DEST"/*.whl >/dev/null 2>&1; then
    rm -f "$FINAL"/*.whl
    mv "$DEST"/*.whl "$FINAL"/
fi
rmdir "$DEST" 2>/dev/null || rm -rf "$DEST"
DEST=$FINAL

# Record, and list the Requires-Dist of each wheel that are not extras.
STATUS_FILE=$(mktemp)
printf '%s\n' "${status[@]}" >"$STATUS_FILE"
"$PY" - "$DEST" "$STATUS_FILE" <<'EOF'
import json, os, sys, zipfile
dest = sys.argv[1]
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[2]) if l.strip()]
wheels = {}
for f in sorted(os.listdir(dest)):
    if not f.endswith(".whl"):
        continue
    name, version = f.split("-")[:2]
    reqs = []
    with zipfile.ZipFile(os.path.join(dest, f)) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode("utf-8", "replace").splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                reqs.append(line.split(":", 1)[1].strip())
    wheels[f] = {"name": name, "version": version, "bytes": os.path.getsize(os.path.join(dest, f)), "requires": reqs}
out = {
    "target": "CPython 3.12, manylinux x86_64",
    "requested": [{"kind": r[0], "spec": r[1], "status": r[2], "detail": r[3] if len(r) > 3 else ""} for r in rows],
    "wheels": wheels,
}
json.dump(out, open(os.path.join(dest, "FOUND.json"), "w"), indent=1)
print()
print("wheels in %s:" % dest)
for f, w in wheels.items():
    print("  %-28s %-12s %8.1f MiB  requires: %s" % (w["name"], w["version"], w["bytes"] / 2**20, ", ".join(w["requires"]) or "-"))
missing = [r for r in out["requested"] if r["status"] != "ok"]
print("not found: %s" % (", ".join(r["spec"] for r in missing) or "none"))
print("total %.1f MiB (the bundle carries them; a device call carries 64 MiB in all)" % (sum(w["bytes"] for w in wheels.values()) / 2**20))
EOF
rm -f "$STATUS_FILE"
