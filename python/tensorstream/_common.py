"""What the NumPy and PyTorch front ends share: option parsing, progress bars,
batching for ``iter_tensors``, and the errors for dtypes a framework lacks."""

import collections
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, List, Mapping, Tuple, Union

from . import _native
from ._native import SafetensorError

#: Bytes of tensors per batch of ``iter_tensors`` on the CPU.
BATCH_BYTES = 64 << 20
#: Batches of ``iter_tensors`` on the CPU that load while one is yielded. Two keep the
#: disk busy across the end of one batch's reads and the start of the next: a cold
#: 0.98 GB checkpoint in 64 MiB batches took 0.65-0.68 s against 0.95-1.09 s with one
#: (2-core VM; warm loads took the same time either way; BENCHMARKS.md).
HOST_AHEAD = 2

# The types of the public functions' arguments.
#: A checkpoint: a file, a directory of shards or an index.
Path = Union[str, "os.PathLike[str]"]
#: A conversion target: "float32", "f16", "bf16", a NumPy or PyTorch dtype; or None.
DtypeArg = Any
#: Whole-name globs of the tensors to load: one, several, or None for all.
Globs = Union[None, str, Iterable[str]]
#: One slice of a tensor-parallel rule: "START:END", "RANK/WORLD", (start, end), a slice.
SliceSpec = Union[str, slice, Tuple[int, int]]
#: Row or column rules: "GLOB=START:END" or "GLOB=RANK/WORLD", several, or a dict
#: from glob to slice.
Rules = Union[None, str, Iterable[str], Mapping[str, SliceSpec]]
#: ``progress=``: False, True (a bar), or a callable taking (bytes done, bytes total).
ProgressArg = Union[bool, Callable[[int, int], object]]

_FLOAT_NAMES = {
    "f32": "F32", "float32": "F32", "float": "F32",
    "f16": "F16", "float16": "F16", "half": "F16",
    "bf16": "BF16", "bfloat16": "BF16",
}


def dtype_name(dtype):
    """The format's name ("F32", "F16", "BF16") of a conversion target given as a
    string, a NumPy dtype or type, or a PyTorch dtype; None stays None."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        text = dtype
    elif type(dtype).__module__.startswith("torch"):
        text = str(dtype).rsplit(".", 1)[-1]
    else:
        import numpy as np
        try:
            text = np.dtype(dtype).name
        except TypeError:
            text = str(dtype)
    if text.lower() in _FLOAT_NAMES:
        return _FLOAT_NAMES[text.lower()]
    raise SafetensorError(f"dtype {dtype!r}: tensors convert only to float32, float16 or bfloat16")


def globs(only):
    """``only`` as a list of globs: None, one string, or several."""
    if only is None:
        return []
    if isinstance(only, str):
        return [only]
    return [str(g) for g in only]


def _slice_spec(spec):
    if isinstance(spec, str):
        return spec
    if isinstance(spec, slice):
        if spec.step not in (None, 1) or spec.start is None or spec.stop is None:
            raise SafetensorError(f"slice {spec!r}: give start and stop, with step 1")
        return f"{spec.start}:{spec.stop}"
    if isinstance(spec, tuple) and len(spec) == 2:
        return f"{int(spec[0])}:{int(spec[1])}"
    raise SafetensorError(f"{spec!r} is not 'START:END', 'RANK/WORLD', (start, end) or a slice")


def slice_rules(rules):
    """Row or column rules as the CLI writes them (``GLOB=START:END``,
    ``GLOB=RANK/WORLD``): None, one string, several, or a dict from glob to
    'START:END', 'RANK/WORLD', (start, end) or a slice."""
    if rules is None:
        return []
    if isinstance(rules, str):
        return [rules]
    if isinstance(rules, dict):
        return [f"{glob}={_slice_spec(spec)}" for glob, spec in rules.items()]
    return [str(r) for r in rules]


def loader(dtype=None, only=None, rows=None, cols=None, io=None, device=None):
    """A native loader with these options; ``device``: the CUDA ordinal, or None."""
    return _native.Loader(dtype=dtype_name(dtype), only=globs(only), rows=slice_rules(rows),
                          cols=slice_rules(cols), io=io, device=device)


def lacking(path, name, dtype, framework, hint=""):
    """The error for a tensor whose dtype the framework has no type for."""
    return SafetensorError(
        f"{path}: tensor '{name}': dtype {dtype} has no {framework} equivalent{hint}")


class _PlainBar:
    """A bar on stderr for when tqdm is not installed."""

    def __init__(self, desc):
        self.desc = desc
        self.shown = -1

    def __call__(self, done, total):
        if total <= 0:
            return
        pct = int(100 * done / total)
        if pct == self.shown:
            return
        self.shown = pct
        filled = pct * 30 // 100
        sys.stderr.write(f"\r{self.desc} [{'#' * filled}{' ' * (30 - filled)}] {pct:3d}% "
                         f"{done / 1e9:.2f}/{total / 1e9:.2f} GB")
        sys.stderr.flush()

    def close(self):
        if self.shown >= 0:
            sys.stderr.write("\n")
            sys.stderr.flush()


class _TqdmBar:
    def __init__(self, tqdm, desc):
        self.bar = tqdm(total=0, unit="B", unit_scale=True, desc=desc)

    def __call__(self, done, total):
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self):
        self.bar.close()


class Progress:
    """``progress=``: False (none), True (tqdm if installed, else a plain bar on
    stderr), or a callable taking (bytes done, bytes total)."""

    def __init__(self, progress: ProgressArg, desc: str = "loading") -> None:
        self.bar: Any = None
        self.callback: Any = None
        if callable(progress):
            self.callback = progress
        elif progress:
            try:
                from tqdm import tqdm
                self.bar = _TqdmBar(tqdm, desc)
            except ImportError:
                self.bar = _PlainBar(desc)
            self.callback = self.bar

    def __enter__(self):
        return self.callback

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False


def batches(specs, limit):
    """``specs`` in order, in runs of at most ``limit`` bytes (a larger tensor alone)."""
    run: List[Any] = []
    size = 0
    for s in specs:
        if run and size + s[4] > limit:
            yield run
            run, size = [], 0
        run.append(s)
        size += s[4]
    if run:
        yield run


def iterate(load_batch, specs, batch_bytes, ahead=1):
    """Yields ``(name, tensor)`` in file order: ``load_batch(specs)`` loads one batch
    (a list of (name, tensor)), and the next ``ahead`` batches load, at once, while one
    is being yielded."""
    groups = list(batches(specs, batch_bytes))
    if not groups:
        return
    with ThreadPoolExecutor(ahead, thread_name_prefix="tensorstream-iter") as pool:
        pending = collections.deque(pool.submit(load_batch, g) for g in groups[:ahead])
        for k in range(len(groups)):
            loaded = pending.popleft().result()
            if k + ahead < len(groups):
                pending.append(pool.submit(load_batch, groups[k + ahead]))
            loaded.reverse()
            while loaded:
                yield loaded.pop()
            del loaded


def native_checkpoint(path):
    """The opened checkpoint at ``path`` (str or os.PathLike)."""
    return _native.Checkpoint(path)

