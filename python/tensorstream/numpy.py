"""NumPy front end: ``load_file`` (drop-in for ``safetensors.numpy.load_file``) and
``iter_tensors``. Arrays are allocated by NumPy in their final dtype and shape and
filled in place; BF16 and the FP8 types need ``ml_dtypes``."""

import mmap

import numpy as np

from . import _common

_TYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16,
    "F16": np.float16, "U32": np.uint32, "I32": np.int32, "F32": np.float32,
    "U64": np.uint64, "I64": np.int64, "F64": np.float64, "C64": np.complex64,
}
_ML_DTYPES = {
    "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}
try:
    import ml_dtypes

    for _name, _attr in _ML_DTYPES.items():
        if hasattr(ml_dtypes, _attr):
            _TYPES[_name] = np.dtype(getattr(ml_dtypes, _attr))
except ImportError:
    pass

#: Arrays of at least this many bytes get memory mapped for them alone: it starts on a
#: page (O_DIRECT reads land in it in place) and goes back to the system when the last
#: array using it is freed (the C heap would keep it). No huge pages: on the VMs
#: measured they made first touches several times slower (BENCHMARKS.md).
_MAP_FROM = 1 << 20


def numpy_dtype(path, name, dtype):
    """The NumPy dtype for a tensor of the format's ``dtype``, or SafetensorError."""
    t = _TYPES.get(dtype)
    if t is None:
        hint = " (install ml_dtypes)" if dtype in _ML_DTYPES else ""
        raise _common.lacking(path, name, dtype, "NumPy", hint)
    return t


def empty_bytes(nbytes):
    """A writable uint8 array of ``nbytes``: mapped memory of its own when large."""
    if nbytes < _MAP_FROM:
        return np.empty(nbytes, np.uint8)
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(m, np.uint8)


def _load_specs(ckpt, specs, loader, progress=None):
    """Allocates and fills the arrays of the planned ``specs`` with ``loader``: a list
    of (name, array)."""
    out, regions = [], []
    for name, _file_dtype, dtype, shape, nbytes in specs:
        t = numpy_dtype(ckpt.path, name, dtype)
        buf = empty_bytes(nbytes)
        regions.append((name, buf, dtype))
        out.append((name, buf.view(t).reshape(shape)))
    if regions:
        loader.load_host(ckpt, regions, progress)
    return out


def load_file(filename, *, dtype=None, only=None, rows=None, cols=None, io=None,
              progress=False):
    """Loads a safetensors file, a directory of shards or a
    ``model.safetensors.index.json`` into a dict of NumPy arrays.

    ``dtype``: convert floating tensors to float32, float16 or bfloat16. ``only``:
    whole-name globs of the tensors to load. ``rows``/``cols``: tensor-parallel
    slices, ``"GLOB=START:END"`` or ``"GLOB=RANK/WORLD"`` (one, a list, or a dict from
    glob to slice). ``io``: the I/O backend (auto, direct, buffered, pread, pread-direct).
    ``progress``: True for a bar, or a callable(done, total)."""
    ckpt = _common.native_checkpoint(filename)
    loader = _common.loader(dtype, only, rows, cols, io)
    specs = loader.plan(ckpt)
    with _common.Progress(progress) as cb:
        return dict(_load_specs(ckpt, specs, loader, cb))


def iter_tensors(filename, *, dtype=None, only=None, rows=None, cols=None, io=None,
                 batch_bytes=None):
    """Yields ``(name, array)`` in file order, a batch loaded while the one before is
    yielded (see ``tensorstream.iter_tensors``)."""
    ckpt = _common.native_checkpoint(filename)
    loader = _common.loader(dtype, only, rows, cols, io)
    specs = loader.plan(ckpt)
    for name, _file_dtype, dtype, _shape, _nbytes in specs:
        numpy_dtype(ckpt.path, name, dtype)  # a dtype NumPy lacks raises before any load
    return _common.iterate(lambda b: _load_specs(ckpt, b, loader), specs,
                           batch_bytes or _common.BATCH_BYTES)
