#!/usr/bin/env python3
"""Generates kernels/convert.ptx from kernels/convert.cu with NVRTC.

The crate embeds the PTX, so it needs nothing but the NVIDIA driver at run time.
The driver JIT-compiles PTX only up to the PTX ISA version it knows (CUDA 12.0
drivers know ISA 8.0), so the PTX must come from NVRTC 12.0: it writes
`.version 8.0`. This script refuses any other NVRTC version, which also keeps the
output deterministic, so CI (.ci/kernels.sh) can regenerate it and diff it against
the committed file.

NVRTC comes from the PyPI wheel, loaded with ctypes (no CUDA toolkit needed):

    python3 -m venv target/kernel-venv
    target/kernel-venv/bin/pip install nvidia-cuda-nvrtc-cu12==12.0.140
    target/kernel-venv/bin/python kernels/gen_ptx.py            # writes kernels/convert.ptx
    target/kernel-venv/bin/python kernels/gen_ptx.py -o OUT.ptx # writes elsewhere
"""

import argparse
import ctypes
import hashlib
import importlib.metadata
import pathlib
import re
import sys

NVRTC_PACKAGE = "nvidia-cuda-nvrtc-cu12"
NVRTC_VERSION = "12.0.140"
PTX_VERSION = "8.0"
ARCH = "compute_80"
OPTIONS = [
    f"--gpu-architecture={ARCH}",
    "--std=c++17",
    # Integer-only kernels, but pin the float defaults anyway.
    "--ftz=false",
    "--prec-div=true",
    "--prec-sqrt=true",
]
KERNELS_DIR = pathlib.Path(__file__).resolve().parent
SOURCE = KERNELS_DIR / "convert.cu"
DEFAULT_OUT = KERNELS_DIR / "convert.ptx"

# The 21 entry points, in the order convert.cu defines them.
SOURCES = ["f32", "f16", "bf16", "f8_e4m3", "f8_e5m2", "f8_e4m3fnuz", "f8_e5m2fnuz", "f8_e8m0"]
TARGETS = ["f32", "f16", "bf16"]
KERNELS = [f"convert_{s}_{d}" for s in SOURCES for d in TARGETS if s != d]


def fail(msg):
    print(f"gen_ptx.py: {msg}", file=sys.stderr)
    sys.exit(1)


def load_nvrtc():
    try:
        version = importlib.metadata.version(NVRTC_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        fail(f"{NVRTC_PACKAGE} is not installed; pip install {NVRTC_PACKAGE}=={NVRTC_VERSION}")
    if version != NVRTC_VERSION:
        fail(
            f"{NVRTC_PACKAGE} {version} is installed, but the PTX must come from "
            f"{NVRTC_VERSION} (PTX ISA {PTX_VERSION}, loadable by CUDA 12.0+ drivers)"
        )
    files = importlib.metadata.files(NVRTC_PACKAGE) or []
    libs = [f for f in files if f.name == "libnvrtc.so.12"]
    if not libs:
        fail(f"libnvrtc.so.12 not found in {NVRTC_PACKAGE}")
    path = pathlib.Path(libs[0].locate()).resolve()
    try:
        return ctypes.CDLL(str(path))
    except OSError as e:
        fail(f"cannot load {path}: {e}")


def check(nvrtc, status, what):
    if status != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        fail(f"{what}: {nvrtc.nvrtcGetErrorString(status).decode()}")


def compile_ptx(nvrtc, source):
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(nvrtc, nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    prog = ctypes.c_void_p()
    check(
        nvrtc,
        nvrtc.nvrtcCreateProgram(
            ctypes.byref(prog), source, b"convert.cu", 0, None, None
        ),
        "nvrtcCreateProgram",
    )
    try:
        opts = (ctypes.c_char_p * len(OPTIONS))(*[o.encode() for o in OPTIONS])
        status = nvrtc.nvrtcCompileProgram(prog, len(OPTIONS), opts)
        log_size = ctypes.c_size_t()
        check(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(log_size)), "log size")
        log = ctypes.create_string_buffer(log_size.value)
        check(nvrtc, nvrtc.nvrtcGetProgramLog(prog, log), "log")
        text = log.value.decode(errors="replace").strip()
        if status != 0:
            fail(f"NVRTC {major.value}.{minor.value} failed to compile convert.cu:\n{text}")
        if text:
            fail(f"NVRTC {major.value}.{minor.value} warnings (fix them):\n{text}")
        size = ctypes.c_size_t()
        check(nvrtc, nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        ptx = ctypes.create_string_buffer(size.value)
        check(nvrtc, nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return f"{major.value}.{minor.value}", ptx.value.decode()


def validate(ptx):
    version = re.search(r"^\.version\s+(\S+)", ptx, re.M)
    target = re.search(r"^\.target\s+(\S+)", ptx, re.M)
    if not version or version.group(1) != PTX_VERSION:
        fail(f"PTX ISA is {version and version.group(1)}, expected {PTX_VERSION}")
    if not target or target.group(1) != ARCH.replace("compute_", "sm_"):
        fail(f"PTX target is {target and target.group(1)}, expected sm_80")
    entries = re.findall(r"^\.visible \.entry (\w+)\(", ptx, re.M)
    if sorted(entries) != sorted(KERNELS):
        missing = sorted(set(KERNELS) - set(entries))
        extra = sorted(set(entries) - set(KERNELS))
        fail(f"kernel entries differ: missing {missing}, unexpected {extra}")
    return version.group(1), target.group(1), len(entries)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    nvrtc = load_nvrtc()
    source = SOURCE.read_bytes()
    nvrtc_version, ptx = compile_ptx(nvrtc, source)
    ptx_version, target, n = validate(ptx)
    header = (
        "//\n"
        "// kernels/convert.ptx: generated by kernels/gen_ptx.py from kernels/convert.cu; do not edit.\n"
        f"// NVRTC {nvrtc_version} ({NVRTC_PACKAGE}=={NVRTC_VERSION}), options: {' '.join(OPTIONS)}\n"
        # build.rs compares this with kernels/convert.cu, so a stale PTX fails the build.
        f"// source sha256: {hashlib.sha256(source).hexdigest()}\n"
        "//\n"
    )
    text = header + ptx.replace("\r\n", "\n")
    if not text.endswith("\n"):
        text += "\n"
    args.out.write_text(text)
    print(f"gen_ptx.py: wrote {args.out}: {n} kernels, .version {ptx_version}, .target {target}")


if __name__ == "__main__":
    main()
