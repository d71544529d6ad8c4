#!/usr/bin/env bash
# CI: the Python package: its crate's fmt and clippy, a wheel built by pip from the
# checkout, and its tests (pytest, CPU; PyTorch tests skip where torch is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "--- cargo fmt / clippy (python/)"
cargo fmt --manifest-path python/Cargo.toml --check
cargo clippy --manifest-path python/Cargo.toml --all-targets -- -D warnings
cargo clippy --manifest-path python/Cargo.toml --all-targets --features cuda -- -D warnings

echo "--- venv, pip install ./python"
venv=target/python-ci
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q numpy ml_dtypes safetensors pytest
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps ./python

echo "--- one abi3 wheel for CPython 3.9 and newer: its tag, and sources that 3.9 can run"
grep -qx 'Tag: cp39-abi3-linux_x86_64' "$venv"/lib/python3*/site-packages/tensorstream-*.dist-info/WHEEL \
    || { echo "the wheel is not tagged cp39-abi3:"; cat "$venv"/lib/python3*/site-packages/tensorstream-*.dist-info/WHEEL; exit 1; }
"$venv/bin/python" -m pip install -q vermin
"$venv/bin/vermin" -q --no-tips --violations -t=3.9- python/tensorstream examples/python

echo "--- types: the native module's stubs against the module (stubtest), the package (mypy)"
"$venv/bin/python" -m pip install -q mypy
"$venv/bin/python" -m mypy.stubtest --ignore-disjoint-bases \
    --allowlist python/stubtest-allowlist.txt tensorstream._native
"$venv/bin/python" -m mypy --check-untyped-defs --ignore-missing-imports -p tensorstream

echo "--- pytest python/tests"
(cd python/tests && "../../$venv/bin/python" -m pytest -q -p no:cacheprovider .)
