"""``safe_open``: drop-in for ``safetensors.safe_open`` (keys, metadata, get_tensor,
get_slice), over a file, a directory of shards or an index. The headers are read
once; each ``get_tensor`` loads one tensor, and ``get_slice(name)[i]`` or
``[a:b, c:d]`` reads only the rows (or the columns) asked for."""

import numbers
from typing import Any, Dict, List, Optional

from . import _common
from ._native import SafetensorError

#: The characters of a glob (the library's: `[` is literal): a name holding one cannot be a
#: rule of its own.
_GLOB = set("*?")


class safe_open:
    """``with safe_open(path, framework="pt", device="cpu") as f:`` then
    ``f.keys()``, ``f.metadata()``, ``f.get_tensor(name)``, ``f.get_slice(name)``.
    ``framework``: "pt" (PyTorch) or "np" (NumPy)."""

    _ckpt: Any

    def __init__(self, filename: _common.Path, framework: str, device: Any = "cpu") -> None:
        if framework in ("pt", "torch"):
            from . import torch as pt
            dev = pt.device_of(device)
            self._loader: Any = lambda **kw: pt._loader(dev, **kw)
            self._load: Any = lambda specs, ld: pt._load_specs(self._ckpt, specs, ld, dev)
        elif framework in ("np", "numpy"):
            from . import numpy as np_front
            if str(device) != "cpu":
                raise SafetensorError(f"NumPy arrays live on the cpu, not {device}")
            self._loader = _common.loader
            self._load = lambda specs, ld: np_front._load_specs(self._ckpt, specs, ld)
        else:
            raise SafetensorError(f"framework {framework!r}: use 'pt' or 'np'")
        self._framework = "pt" if framework in ("pt", "torch") else "np"
        self._ckpt = _common.native_checkpoint(filename)
        self._info = {name: (dtype, shape) for name, dtype, shape in self._ckpt.tensors()}
        # One loader for every get_tensor: on CUDA it pins its staging once.
        self._whole: Optional[Any] = None

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def keys(self) -> List[str]:
        """The tensor names, sorted."""
        return sorted(self._info)

    def offset_keys(self) -> List[str]:
        """The tensor names in file order."""
        return [name for name, _, _ in self._ckpt.tensors()]

    def metadata(self) -> Optional[Dict[str, str]]:
        """The ``__metadata__`` dict (of every shard, merged), or None."""
        return self._ckpt.metadata()

    def _spec(self, name):
        if name not in self._info:
            raise SafetensorError(f"File does not contain tensor {name}")

    def _get(self, name, rows=None, cols=None):
        if rows is None and cols is None:
            if self._whole is None:
                ld = self._loader()
                self._whole = (ld, {s[0]: s for s in ld.plan(self._ckpt)})
            ld, specs = self._whole
            return self._load([specs[name]], ld)[0][1]
        ld = self._loader(only=[name],
                          rows=None if rows is None else [f"{name}={rows[0]}:{rows[1]}"],
                          cols=None if cols is None else [f"{name}={cols[0]}:{cols[1]}"])
        specs = [s for s in ld.plan(self._ckpt) if s[0] == name]
        return self._load(specs, ld)[0][1]

    def get_tensor(self, name: str) -> Any:
        """The whole tensor ``name``."""
        self._spec(name)
        return self._get(name)

    def get_slice(self, name: str) -> "_Slice":
        """A lazy slice of ``name``: ``get_shape()``, ``get_dtype()``, and indexing."""
        self._spec(name)
        return _Slice(self, name)


class SliceError(SafetensorError, IndexError):
    """An index ``get_slice`` cannot take: a ``SafetensorError`` (a ``ValueError``), as
    safetensors raises for NumPy, and an ``IndexError``, as NumPy and PyTorch raise."""


class _Slice:
    def __init__(self, owner, name):
        self._owner = owner
        self._name = name
        self._dtype, self._shape = owner._info[name]

    def get_shape(self) -> List[int]:
        return list(self._shape)

    def get_dtype(self) -> str:
        return self._dtype

    def __getitem__(self, key: Any) -> Any:
        if self._dtype == "F4" and self._owner._framework == "pt":
            raise SliceError(f"tensor '{self._name}': F4 loads packed in pairs "
                             "(torch.float4_e2m1fn_x2): use get_tensor")
        try:
            rows, cols, rest = self._narrow(key)
        except (IndexError, TypeError, ValueError) as e:
            raise self._refused(key, e) from e
        read = self._owner._get(self._name, rows, cols)
        if len(rest) <= len(self._shape) and all(isinstance(k, slice) and k == slice(None)
                                                 for k in rest):
            return read
        try:
            t = read[tuple(rest)]
        except (IndexError, TypeError, ValueError) as e:
            raise self._refused(key, e) from e
        # A copy unless the result is all that was read: a view would keep the rest
        # alive. PyTorch's contiguous() would keep a view whose dimensions of size 1
        # have other strides (x[::2] of two rows), which cannot be viewed as a dtype
        # of another size: the strides must be a fresh tensor's.
        if self._owner._framework == "pt":
            import torch

            from .torch import fresh_strides
            if t.nbytes == read.nbytes and t.stride() == fresh_strides(t.shape):
                return t
            return t.clone(memory_format=torch.contiguous_format)
        import numpy as np
        # An array, never a NumPy scalar; np.ascontiguousarray would make a 0-d
        # result (an int on every dimension) one-dimensional.
        t = np.asarray(t)
        return t if t.nbytes == read.nbytes and t.flags.c_contiguous else t.copy(order="C")

    def _refused(self, key, e):
        return SliceError(f"tensor '{self._name}' of shape {list(self._shape)}: "
                          f"index {key!r}: {e}")

    def _narrow(self, key):
        """The rows or columns to read of the tensor for ``key`` (None: all), and the
        index that takes the rest from what is read."""
        key = key if isinstance(key, tuple) else (key,)
        rest = list(key)
        rows = cols = None
        shape = self._shape
        # Rows or columns are read through a rule on the name: not for a name a rule
        # cannot spell (empty, or a glob matching others) nor for sub-byte dtypes.
        plain = bool(self._name) and not (_GLOB & set(self._name)) \
            and self._dtype not in ("F4", "F6_E2M3", "F6_E3M2")
        if plain and len(rest) >= 1 and isinstance(rest[0], slice) and len(shape) >= 1:
            a, b, step = rest[0].indices(shape[0])
            if step == 1 and a < b and (a, b) != (0, shape[0]):
                rows, rest[0] = (a, b), slice(None)
        elif plain and len(rest) >= 1 and _is_int(rest[0]) and len(shape) >= 1 \
                and -shape[0] <= rest[0] < shape[0] and shape[0] > 1:
            i = int(rest[0]) % shape[0]
            rows, rest[0] = (i, i + 1), 0  # one row read, not the whole tensor
        if plain and rows is None and len(rest) >= 2 and isinstance(rest[1], slice) \
                and isinstance(rest[0], slice) and len(shape) >= 2:
            a, b, step = rest[1].indices(shape[1])
            if step == 1 and a < b and (a, b) != (0, shape[1]):
                cols, rest[1] = (a, b), slice(None)
        return rows, cols, rest


def _is_int(k):
    """An integer index (not a bool, which NumPy takes as a mask)."""
    return isinstance(k, numbers.Integral) and not isinstance(k, bool)
