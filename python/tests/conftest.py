"""Fixtures written at test time: safetensors files of random data, by the
reference ``safetensors`` package where it can hold the dtype and by hand
otherwise."""

import json
import os
import struct

import numpy as np
import pytest


def write_raw(path, tensors, metadata=None):
    """Writes a safetensors file from ``{name: (dtype, shape, bytes)}`` in order."""
    header, offset, data = {}, 0, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)
    return str(path)


def write_header(path, header, data_len, prefix=None):
    """Writes a file with this header (a dict or raw bytes) and ``data_len`` random bytes."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(blob) if prefix is None else prefix
    rng = np.random.default_rng(1)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + blob + rng.integers(0, 256, data_len, np.uint8).tobytes())
    return str(path)


def random_array(rng, dtype, shape):
    """Random values of a NumPy dtype, never all zeros."""
    return np.asarray(_random(rng, np.dtype(dtype), shape), dtype=dtype)


def _random(rng, dtype, shape):
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def rss():
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="session")
def big_file(tmp_path_factory):
    """A 256 MiB F32 checkpoint of random data in 16 tensors."""
    from safetensors.numpy import save_file
    rng = np.random.default_rng(7)
    tensors = {f"layer.{i}.weight": rng.standard_normal((1024, 4096), dtype=np.float32)
               for i in range(16)}
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    save_file(tensors, str(path))
    del tensors
    return str(path)
