"""tensorstream.torch against safetensors.torch, on the CPU and, where there is one,
on CUDA: every dtype, conversions, slices, iter_tensors, load_into, memory."""

import gc

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import safetensors  # noqa: E402
from safetensors.torch import load_file as ref_load_file  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import tensorstream  # noqa: E402
import tensorstream.torch as tst  # noqa: E402
from conftest import write_raw  # noqa: E402

CUDA = torch.cuda.is_available() and tensorstream._native.has_cuda()
DEVICES = ["cpu"] + (["cuda:0"] if CUDA else [])
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device, or a build without cuda")

NAMES = ["bool", "uint8", "int8", "int16", "uint16", "float16", "bfloat16", "int32",
         "uint32", "float32", "uint64", "int64", "float64", "complex64", "float8_e4m3fn",
         "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"]
DTYPES = [getattr(torch, n) for n in NAMES if hasattr(torch, n)]
FLOATS = [torch.float32, torch.float16, torch.bfloat16] + [
    getattr(torch, n) for n in ["float8_e4m3fn", "float8_e5m2"] if hasattr(torch, n)]


def random_tensor(gen, dtype, shape):
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype, generator=gen)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 4).to(dtype)
    bits = torch.iinfo(dtype).bits
    raw = torch.randint(0, 256, (int(np.prod(shape)) * bits // 8,), dtype=torch.uint8,
                        generator=gen)
    return raw.view(dtype).reshape(shape)


def same(a, b):
    assert a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)
    x = a.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    y = b.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    assert torch.equal(x, y)


@pytest.fixture(scope="module")
def every_dtype(tmp_path_factory):
    gen = torch.Generator().manual_seed(11)
    tensors = {f"{str(dt)[6:]}.{i}": random_tensor(gen, dt, shape)
               for dt in DTYPES
               for i, shape in enumerate([(), (7,), (3, 5), (2, 3, 64), (0,), (4, 0)])}
    path = str(tmp_path_factory.mktemp("pt") / "all.safetensors")
    save_file(tensors, path, metadata={"framework": "pt"})
    return path, tensors


@pytest.mark.parametrize("device", DEVICES)
def test_load_file_matches_safetensors(every_dtype, device):
    path, tensors = every_dtype
    ref = ref_load_file(path, device=device)
    got = tst.load_file(path, device=device)
    assert sorted(got) == sorted(ref)
    for name in ref:
        assert got[name].device == ref[name].device
        same(got[name], ref[name])
        same(got[name], tensors[name])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("target", [torch.float32, torch.float16, torch.bfloat16])
def test_conversions_match_torch(tmp_path, device, target):
    gen = torch.Generator().manual_seed(12)
    src = {f"{str(dt)[6:]}": random_tensor(gen, dt, (33, 70)) for dt in FLOATS}
    src["ints"] = random_tensor(gen, torch.int32, (9,))
    path = str(tmp_path / "c.safetensors")
    save_file(src, path)
    got = tst.load_file(path, device=device, dtype=target)
    for name, t in src.items():
        want = t if name == "ints" else t.to(target)
        same(got[name], want)
    if device != "cpu":
        cpu = tst.load_file(path, dtype=target)
        for name in src:
            same(got[name], cpu[name])


@pytest.mark.parametrize("device", DEVICES)
def test_safe_open_matches_safetensors(every_dtype, device):
    path, _ = every_dtype
    with safetensors.safe_open(path, framework="pt", device=device) as ref, \
            tensorstream.safe_open(path, framework="pt", device=device) as got:
        assert got.keys() == ref.keys()
        assert got.metadata() == ref.metadata()
        for name in ref.keys():
            same(got.get_tensor(name), ref.get_tensor(name))
            shape = ref.get_slice(name).get_shape()
            if len(shape) >= 2:
                for key in [slice(1, 3), (slice(None), slice(2, 4)), (slice(0, 2), slice(1, 3))]:
                    same(got.get_slice(name)[key], ref.get_slice(name)[key])


@pytest.mark.parametrize("device", DEVICES)
def test_rows_cols_and_iter_tensors(tmp_path, device):
    gen = torch.Generator().manual_seed(13)
    src = {"q": random_tensor(gen, torch.bfloat16, (8, 16)),
           "o": random_tensor(gen, torch.bfloat16, (16, 8)),
           "n": random_tensor(gen, torch.float32, (16,))}
    path = str(tmp_path / "tp.safetensors")
    save_file(src, path)
    for rank in range(2):
        got = tst.load_file(path, device=device, rows={"q": f"{rank}/2"}, cols={"o": f"{rank}/2"})
        same(got["q"], src["q"][4 * rank:4 * rank + 4])
        same(got["o"], src["o"][:, 4 * rank:4 * rank + 4])
        same(got["n"], src["n"])
    seen = [n for n, t in tensorstream.iter_tensors(path, device=device, batch_bytes=64)
            if same(t, src[n]) is None]
    assert sorted(seen) == sorted(src)


def test_missing_dtype_names_the_tensor(tmp_path):
    path = write_raw(tmp_path / "f6.safetensors",
                     {"w6": ("F6_E2M3", (8,), b"\x12\x34\x56\x78\x9a\xbc")})
    with pytest.raises(tensorstream.SafetensorError, match="w6"):
        tst.load_file(path)


class Small(torch.nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.lin = torch.nn.Linear(24, 40, dtype=dtype)
        self.norm = torch.nn.LayerNorm(40, dtype=dtype)
        self.register_buffer("steps", torch.zeros(3, dtype=torch.int64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_into_fills_a_module(tmp_path, device, dtype):
    torch.manual_seed(14)
    src = Small()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
        src.steps.copy_(torch.tensor([5, 6, 7]))
    path = str(tmp_path / "m.safetensors")
    save_file(src.state_dict(), path)
    dst = Small(dtype).to(device)
    ptrs = {k: v.data_ptr() for k, v in dst.state_dict().items()}
    result = tst.load_into(dst, path)
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    for k, v in dst.state_dict().items():
        assert v.data_ptr() == ptrs[k]  # in place
        same(v, src.state_dict()[k].to(v.dtype))


def test_load_into_keys_and_shapes(tmp_path):
    src = Small()
    sd = dict(src.state_dict())
    sd["extra"] = torch.ones(2)
    del sd["norm.bias"]
    path = str(tmp_path / "m.safetensors")
    save_file(sd, path)
    with pytest.raises(RuntimeError, match="norm.bias"):
        tst.load_into(Small(), path)
    missing, unexpected = tst.load_into(Small(), path, strict=False)
    assert missing == ["norm.bias"] and unexpected == ["extra"]
    bad = {"lin.weight": torch.empty(3, 3)}
    with pytest.raises(tensorstream.SafetensorError, match="lin.weight"):
        tst.load_into(bad, path, strict=False)


def test_load_into_non_contiguous_cpu_tensor(tmp_path):
    w = torch.randn(6, 4)
    path = str(tmp_path / "t.safetensors")
    save_file({"w": w}, path)
    dst = {"w": torch.empty(4, 6).t()}
    tst.load_into(dst, path)
    same(dst["w"], w)


@needs_cuda
def test_cuda_memory_back_to_baseline(every_dtype):
    path, _ = every_dtype
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    got = tst.load_file(path, device="cuda:0", dtype=torch.bfloat16)
    assert torch.cuda.memory_allocated() > base
    del got
    gc.collect()
    assert torch.cuda.memory_allocated() == base


@needs_cuda
def test_kernel_launched_at_once_sees_the_bytes(tmp_path):
    gen = torch.Generator().manual_seed(15)
    src = {f"w{i}": random_tensor(gen, torch.float32, (512, 1024)) for i in range(8)}
    path = str(tmp_path / "k.safetensors")
    save_file(src, path)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = tst.load_file(path, device="cuda:0", dtype=torch.float16)
        sums = {k: (v.float() * 2).sum(dim=1) for k, v in got.items()}
    for k, v in sums.items():
        want = (src[k].to(torch.float16).float() * 2).sum(dim=1)
        assert torch.equal(v.cpu(), want)


def test_load_into_tied_weights(tmp_path):
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    w = torch.randn(10, 4)
    path = str(tmp_path / "tied.safetensors")
    save_file({"emb.weight": w, "head.weight": w.clone()}, path)
    tst.load_into(model, path)
    same(model["head"].weight, w)
    assert model["head"].weight.data_ptr() == model["emb"].weight.data_ptr()
