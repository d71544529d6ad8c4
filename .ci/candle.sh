#!/usr/bin/env bash
# CI for the candle backend: fetches all-MiniLM-L6-v2 into target/minilm/ so that the
# BERT test of tests/candle.rs runs in `cargo test --all-features` (under CI=true it
# fails instead of skipping when the model is absent). Run before the tests step.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-minilm.sh target/minilm
