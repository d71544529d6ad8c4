"""tensorstream: loads safetensors checkpoints into NumPy arrays and PyTorch tensors as
fast as the hardware allows, with strict validation.

- ``tensorstream.numpy.load_file(path)`` and ``tensorstream.torch.load_file(path,
  device="cpu")``: drop-in for ``safetensors.numpy.load_file`` and
  ``safetensors.torch.load_file``, for a file, a directory of shards or an index;
- ``tensorstream.safe_open(path, framework="pt")``: drop-in for ``safetensors.safe_open``;
- ``tensorstream.iter_tensors(path)``: ``(name, tensor)`` pairs as they land, in file
  order, with bounded host memory;
- ``tensorstream.torch.load_into(module, path)``: fills existing parameters in place.

Loads release the GIL; Ctrl-C cancels them. An invalid file raises
``SafetensorError`` (a ``ValueError``), an I/O failure ``OSError``.
"""

from typing import Any, Iterator, Optional, Tuple

from ._common import DtypeArg, Globs, Path, Rules
from ._native import SafetensorError
from ._safe_open import safe_open


def iter_tensors(path: Path, device: Any = "cpu", *, framework: str = "pt",
                 dtype: DtypeArg = None, only: Globs = None, rows: Rules = None,
                 cols: Rules = None, io: Optional[str] = None,
                 batch_bytes: Optional[int] = None) -> Iterator[Tuple[str, Any]]:
    """Yields ``(name, tensor)`` for the tensors of ``path`` in file order, loading the
    next batches (``batch_bytes``: by default 64 MiB on the CPU, 256 MiB on CUDA) while
    one is being yielded: the first tensor arrives before the last bytes are read.
    On CUDA the loader holds at most two batches, in device memory (the host holds only
    the staging). On the CPU it holds at most three (two load while one is yielded),
    and reuses the memory of tensors the caller has dropped for later ones of the same
    size (keeping up to two batches of it).
    ``framework``: "pt" (PyTorch tensors on ``device``) or "np" (NumPy arrays). Other
    options as ``tensorstream.torch.load_file``."""
    if framework in ("np", "numpy"):
        from . import numpy as np_front
        if str(device) != "cpu":
            raise SafetensorError(f"NumPy arrays live on the cpu, not {device}")
        return np_front.iter_tensors(path, dtype=dtype, only=only, rows=rows, cols=cols,
                                     io=io, batch_bytes=batch_bytes)
    if framework in ("pt", "torch"):
        from . import torch as pt_front
        return pt_front.iter_tensors(path, device, dtype=dtype, only=only, rows=rows,
                                     cols=cols, io=io, batch_bytes=batch_bytes)
    raise SafetensorError(f"framework {framework!r}: use 'pt' or 'np'")


__all__ = ["SafetensorError", "safe_open", "iter_tensors"]
__version__ = "0.1.0"
