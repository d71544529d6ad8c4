"""PyTorch front end: ``load_file`` (drop-in for ``safetensors.torch.load_file``),
``iter_tensors`` and ``load_into`` (fills existing parameters in place). Tensors are
allocated by PyTorch (its caching allocator on CUDA) in their final dtype and shape
and filled in place; a CUDA load returns once its copies are complete, so the
tensors are ready on every stream."""

from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch

from . import _common, _native
from . import numpy as _np
from ._native import SafetensorError

#: ``device=``: "cpu", "cuda", "cuda:N", an int (a CUDA ordinal) or a torch.device.
Device = Union[str, int, torch.device]

_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
    "F16": "float16", "BF16": "bfloat16", "U32": "uint32", "I32": "int32",
    "F32": "float32", "U64": "uint64", "I64": "int64", "F64": "float64",
    "C64": "complex64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu", "F4": "float4_e2m1fn_x2",
}
_TYPES = {k: getattr(torch, v) for k, v in _NAMES.items() if hasattr(torch, v)}
#: Bytes per batch of ``iter_tensors`` on CUDA, where a batch is device memory and the
#: host holds only the staging.
_CUDA_BATCH_BYTES = 256 << 20
_FORMAT = {v: k for k, v in _TYPES.items()}


def torch_dtype(path, name, dtype):
    """The torch dtype for a tensor of the format's ``dtype``, or SafetensorError."""
    t = _TYPES.get(dtype)
    if t is None:
        raise _common.lacking(path, name, dtype, f"PyTorch {torch.__version__}")
    return t


def torch_shape(path, name, dtype, shape):
    """The shape of the torch tensor holding a tensor of the format's ``dtype`` and
    ``shape``: as it is, or, for F4 (``torch.float4_e2m1fn_x2``, two values a byte, as
    safetensors loads it), its last dimension halved."""
    shape = list(shape)
    if dtype != "F4":
        return shape
    if not shape or shape[-1] % 2:
        raise SafetensorError(
            f"{path}: tensor '{name}': F4 of shape {shape} loads as "
            "torch.float4_e2m1fn_x2 (pairs along the last dimension), which needs an even "
            "last dimension")
    return shape[:-1] + [shape[-1] // 2]


def device_of(device):
    """``device`` ("cpu", "cuda", "cuda:N", an int, a torch.device) as a torch.device."""
    if isinstance(device, int):
        return torch.device("cuda", device)
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    if d.type not in ("cpu", "cuda"):
        raise SafetensorError(f"device {device}: tensorstream loads to cpu or cuda")
    return d


def fresh_strides(shape):
    """The strides of a new tensor of ``shape``."""
    return torch.empty(shape, device="meta").stride()


def _bytes_of(t):
    """A uint8 view of contiguous tensor ``t``'s memory. PyTorch calls a tensor
    contiguous whatever the strides of its dimensions of size 1 (``x[::2]`` of two
    rows), and such a tensor cannot be viewed as bytes: it is given fresh strides,
    which address the same memory."""
    t = t.detach()
    strides = fresh_strides(t.shape)
    if t.stride() != strides:
        t = t.as_strided(t.shape, strides, t.storage_offset())
    return t.reshape(-1).view(torch.uint8)


def _empty_bytes(nbytes, device, recycler=None):
    # An empty NumPy array becomes a tensor of stride 0, which cannot be viewed as
    # another dtype: empty tensors come from PyTorch.
    if device.type == "cpu" and nbytes:
        return torch.from_numpy(_np.empty_bytes(nbytes, recycler))
    return torch.empty(nbytes, dtype=torch.uint8, device=device)


def _loader(device, dtype=None, only=None, rows=None, cols=None, io=None):
    """A native loader for ``device`` (a torch.device)."""
    if device.type == "cuda" and not _native.has_cuda():
        raise RuntimeError("this build of tensorstream has no CUDA support: reinstall it "
                           "with the cuda feature (see the README)")
    return _common.loader(dtype, only, rows, cols, io,
                          device.index if device.type == "cuda" else None)


def _fill(ckpt, regions, device, loader, progress=None):
    """Loads ``regions`` ((name, uint8 tensor, format dtype), all on ``device``)."""
    if not regions:
        return
    if device.type == "cpu":
        loader.load_host(ckpt, [(n, b.numpy(), d) for n, b, d in regions], progress)
        return
    with torch.cuda.device(device):
        loader.load_device(ckpt, regions, progress)


def _load_specs(ckpt, specs, loader, device, progress=None, recycler=None):
    """Allocates on ``device`` and fills with ``loader`` the tensors of the planned
    ``specs``: a list of (name, tensor)."""
    out, regions = [], []
    for name, _file_dtype, dtype, shape, nbytes in specs:
        t = torch_dtype(ckpt.path, name, dtype)
        shape = torch_shape(ckpt.path, name, dtype, shape)
        buf = _empty_bytes(nbytes, device, recycler)
        regions.append((name, buf, dtype))
        out.append((name, buf.view(t).reshape(shape)))
    _fill(ckpt, regions, device, loader, progress)
    return out


def load_file(filename: _common.Path, device: Device = "cpu", *,
              dtype: _common.DtypeArg = None, only: _common.Globs = None,
              rows: _common.Rules = None, cols: _common.Rules = None,
              io: Optional[str] = None,
              progress: _common.ProgressArg = False) -> Dict[str, torch.Tensor]:
    """Loads a safetensors file, a directory of shards or a
    ``model.safetensors.index.json`` into a dict of tensors on ``device``.

    ``dtype``: convert floating tensors to torch.float32, float16 or bfloat16 (on
    CUDA, on the GPU). ``only``, ``rows``, ``cols``, ``io``, ``progress``: as
    ``tensorstream.numpy.load_file``."""
    dev = device_of(device)
    ckpt = _common.native_checkpoint(filename)
    loader = _loader(dev, dtype, only, rows, cols, io)
    specs = loader.plan(ckpt)
    with _common.Progress(progress) as cb:
        return dict(_load_specs(ckpt, specs, loader, dev, cb))


def iter_tensors(filename: _common.Path, device: Device = "cpu", *,
                 dtype: _common.DtypeArg = None, only: _common.Globs = None,
                 rows: _common.Rules = None, cols: _common.Rules = None,
                 io: Optional[str] = None,
                 batch_bytes: Optional[int] = None) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yields ``(name, tensor)`` in file order, a batch loaded while the one before is
    yielded (see ``tensorstream.iter_tensors``)."""
    dev = device_of(device)
    ckpt = _common.native_checkpoint(filename)
    loader = _loader(dev, dtype, only, rows, cols, io)
    specs = loader.plan(ckpt)
    for name, _file_dtype, as_dtype, shape, _nbytes in specs:
        # A tensor PyTorch cannot hold raises before any load.
        torch_dtype(ckpt.path, name, as_dtype)
        torch_shape(ckpt.path, name, as_dtype, shape)
    if batch_bytes is None:
        batch_bytes = _common.BATCH_BYTES if dev.type == "cpu" else _CUDA_BATCH_BYTES
    # On CUDA, PyTorch's caching allocator reuses freed memory already, and one batch
    # loads at a time (the loads share the loader's pinned staging).
    cpu = dev.type == "cpu"
    recycler = _np.Recycler(2 * batch_bytes) if cpu else None
    return _common.iterate(lambda b: _load_specs(ckpt, b, loader, dev, recycler=recycler),
                           specs, batch_bytes, _common.HOST_AHEAD if cpu else 1)


def _incompatible(missing, unexpected):
    try:
        from torch.nn.modules.module import _IncompatibleKeys
        return _IncompatibleKeys(missing, unexpected)
    except ImportError:
        return missing, unexpected


def load_into(module: Union[torch.nn.Module, Mapping[str, torch.Tensor]],
              filename: _common.Path, strict: bool = True, *, only: _common.Globs = None,
              rows: _common.Rules = None, cols: _common.Rules = None,
              io: Optional[str] = None, progress: _common.ProgressArg = False) -> Any:
    """Fills the parameters and buffers of ``module`` (a torch.nn.Module, or a dict of
    tensors) in place from ``filename``, on their own devices, converting each
    floating tensor to its parameter's dtype when that is float32, float16 or
    bfloat16 (other tensors load into parameters of their own dtype). Returns
    ``(missing_keys, unexpected_keys)`` as ``load_state_dict`` does; with ``strict``,
    either raises before anything is read, as does a shape that differs or a dtype a
    tensor cannot be loaded as (SafetensorError, naming the tensor). Nothing is
    allocated on a device beyond the staging (a non-contiguous CPU parameter goes
    through a temporary)."""
    if isinstance(module, torch.nn.Module):
        targets = module.state_dict(keep_vars=True)
    else:
        targets = dict(module)
    ckpt = _common.native_checkpoint(filename)
    specs = {s[0]: s for s in _common.loader(None, only, rows, cols, io).plan(ckpt)}
    missing = [k for k in targets if k not in specs]
    unexpected = [k for k in specs if k not in targets]
    if strict and (missing or unexpected):
        raise RuntimeError(f"Error(s) in loading state_dict from {filename}: missing keys "
                           f"{missing}, unexpected keys {unexpected}")
    by_device: Dict[torch.device, List[Any]] = {}
    after: List[Tuple[torch.Tensor, torch.Tensor]] = []
    seen = set()
    for name, target in targets.items():
        spec = specs.get(name)
        if spec is None:
            continue
        t = target.detach()
        place = (t.device, t.data_ptr(), t.nbytes)
        if t.nbytes and place in seen:
            continue  # a tied parameter: its memory is filled under its first name
        seen.add(place)
        fmt = _FORMAT.get(t.dtype)
        if fmt is None:
            raise SafetensorError(f"{filename}: tensor '{name}': parameter dtype {t.dtype} "
                                  "has no safetensors equivalent")
        if list(t.shape) != torch_shape(filename, name, fmt, spec[3]):
            raise SafetensorError(f"{filename}: tensor '{name}': shape {list(spec[3])} in the "
                                  f"file, {list(t.shape)} in the module")
        if not _native.loads_as(spec[1], fmt):
            # Checked here, for every device, before any is filled.
            raise SafetensorError(f"{filename}: tensor '{name}': {spec[1]} in the file cannot "
                                  f"be loaded into a {t.dtype} parameter (floating tensors "
                                  "convert to float32, float16 or bfloat16)")
        if not t.is_contiguous():
            tmp = torch.empty(t.shape, dtype=t.dtype, device=t.device)
            after.append((t, tmp))
            t = tmp
        by_device.setdefault(t.device, []).append((name, _bytes_of(t), fmt))
    with _common.Progress(progress) as cb:
        for device, regions in by_device.items():
            device = device_of(device)
            _fill(ckpt, regions, device, _loader(device, None, only, rows, cols, io), cb)
    with torch.no_grad():
        for t, tmp in after:
            t.copy_(tmp)
    return _incompatible(missing, unexpected)
