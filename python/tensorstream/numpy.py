"""NumPy front end: ``load_file`` (drop-in for ``safetensors.numpy.load_file``) and
``iter_tensors``. Arrays are allocated by NumPy in their final dtype and shape and
filled in place; BF16 and the FP8 types need ``ml_dtypes``."""

import mmap
import sys
import threading

from typing import Dict, Iterator, Optional, Tuple

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


def empty_bytes(nbytes, recycler=None):
    """A writable uint8 array of ``nbytes``: mapped memory of its own when large (from
    ``recycler`` when given)."""
    if nbytes < _MAP_FROM:
        return np.empty(nbytes, np.uint8)
    if recycler is not None:
        return recycler.take(nbytes)
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(m, np.uint8)


class Recycler:
    """The large host buffers of one ``iter_tensors``, each used again once nothing
    outside refers to it any more. A server's loop copies each tensor into its
    parameter and drops it, so later batches land in memory already faulted in
    instead of new pages the kernel must fault and zero (on the 2-core VM that was
    most of the loop's time: BENCHMARKS.md). A buffer is reused only for a tensor of
    the same size, rounded to pages (a model's layers repeat their sizes); a tensor the
    caller keeps, or any view of it, keeps its buffer out of reuse. The most recently
    freed buffers, at most ``keep_bytes`` of them, are kept; older ones go back to
    the system."""

    # References to a handed-out map that is free again, seen from `_reclaim`: the list
    # `_out`, the loop variable and `sys.getrefcount`'s argument.
    _UNUSED_REFS = 3

    def __init__(self, keep_bytes):
        self._lock = threading.Lock()
        self._out = []
        self._free = []
        self._free_bytes = 0
        self._keep = keep_bytes

    def take(self, nbytes):
        """A writable uint8 array of ``nbytes`` over a reused or new anonymous map."""
        size = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
        with self._lock:
            self._reclaim()
            m = None
            for i in range(len(self._free) - 1, -1, -1):
                if len(self._free[i]) == size:
                    m = self._free.pop(i)
                    self._free_bytes -= size
                    break
            if m is None:
                m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self._out.append(m)
        return np.frombuffer(m, np.uint8, count=nbytes)

    def _reclaim(self):
        still = []
        for m in self._out:
            if sys.getrefcount(m) > self._UNUSED_REFS:
                still.append(m)
            else:
                self._free.append(m)
                self._free_bytes += len(m)
        self._out = still
        while self._free_bytes > self._keep:
            self._free_bytes -= len(self._free.pop(0))


def _load_specs(ckpt, specs, loader, progress=None, recycler=None):
    """Allocates and fills the arrays of the planned ``specs`` with ``loader``: a list
    of (name, array)."""
    out, regions = [], []
    for name, _file_dtype, dtype, shape, nbytes in specs:
        t = numpy_dtype(ckpt.path, name, dtype)
        buf = empty_bytes(nbytes, recycler)
        regions.append((name, buf, dtype))
        out.append((name, buf.view(t).reshape(shape)))
    if regions:
        loader.load_host(ckpt, regions, progress)
    return out


def load_file(filename: _common.Path, *, dtype: _common.DtypeArg = None,
              only: _common.Globs = None, rows: _common.Rules = None,
              cols: _common.Rules = None, io: Optional[str] = None,
              progress: _common.ProgressArg = False) -> Dict[str, np.ndarray]:
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


def iter_tensors(filename: _common.Path, *, dtype: _common.DtypeArg = None,
                 only: _common.Globs = None, rows: _common.Rules = None,
                 cols: _common.Rules = None, io: Optional[str] = None,
                 batch_bytes: Optional[int] = None) -> Iterator[Tuple[str, np.ndarray]]:
    """Yields ``(name, array)`` in file order, a batch loaded while the one before is
    yielded (see ``tensorstream.iter_tensors``)."""
    ckpt = _common.native_checkpoint(filename)
    loader = _common.loader(dtype, only, rows, cols, io)
    specs = loader.plan(ckpt)
    for name, _file_dtype, as_dtype, _shape, _nbytes in specs:
        numpy_dtype(ckpt.path, name, as_dtype)  # a dtype NumPy lacks raises before any load
    batch_bytes = batch_bytes or _common.BATCH_BYTES
    recycler = Recycler(2 * batch_bytes)
    return _common.iterate(lambda b: _load_specs(ckpt, b, loader, recycler=recycler), specs,
                           batch_bytes, _common.HOST_AHEAD)
