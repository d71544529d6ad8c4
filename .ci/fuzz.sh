#!/usr/bin/env bash
# CI fuzz smoke test: builds every target in fuzz/ and runs each for a short time
# (FUZZ_SECONDS, default 20), failing on any crash, hang or oversized allocation.
# Needs stable Rust, a C++ compiler (libFuzzer is built from source) and crates.io;
# installs cargo-fuzz into ~/.cargo/bin when it is missing. Builds into
# ~/.cache/tensorstream/fuzz-target so that later runs on the same machine rebuild
# only the crate. Time on 2 cores: about 5 minutes cold (the ASan build of the crate
# and its dependencies), under 2 minutes with the cache, plus 20 s per target.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
if ! command -v c++ >/dev/null 2>&1; then
    echo ".ci/fuzz.sh: no C++ compiler (libFuzzer is built from source); install g++" >&2
    exit 2
fi
export FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/tensorstream/fuzz-target}"
exec fuzz/run.sh "${FUZZ_SECONDS:-20}"
