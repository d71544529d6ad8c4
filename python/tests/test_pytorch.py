"""PyTorch checkpoints (``.bin``, ``.pt``, ``.pth``, a ``pytorch_model.bin.index.json``)
through the Python package, read by the library's restricted unpickler: nothing in
them is executed. The files of tests/data/pytorch were written by real ``torch.save``;
their digests.json holds, for every tensor, what ``torch.load(weights_only=True)``
read back (dtype, shape, SHA-256 of its bytes). Hostile files are written at test
time by tests/pytorch_fixtures.py (no PyTorch needed)."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tensorstream
import tensorstream.numpy as tsn

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "tests", "data", "pytorch")
with open(os.path.join(DATA, "digests.json")) as _f:
    FILES = json.load(_f)["files"]
WHOLE = sorted(f for f, v in FILES.items() if all(t["contiguous"] for t in v["tensors"].values()))

#: safetensors dtype -> the NumPy dtype's name (ml_dtypes for BF16 and FP8).
NP_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
    "F16": "float16", "BF16": "bfloat16", "U32": "uint32", "I32": "int32", "F32": "float32",
    "U64": "uint64", "I64": "int64", "F64": "float64", "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu",
}


def sha(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def check(path, got):
    """``got`` (name -> array) holds exactly the tensors torch.load read from ``path``."""
    want = FILES[path]["tensors"]
    assert sorted(got) == sorted(want), path
    for name, w in want.items():
        a = got[name]
        assert str(a.dtype) == NP_NAMES[w["dtype"]], (path, name, a.dtype)
        assert list(a.shape) == w["shape"], (path, name)
        assert sha(a) == w["sha256"], (path, name)


def test_the_data_covers_every_dtype_and_a_sharded_index():
    dtypes = {t["dtype"] for v in FILES.values() for t in v["tensors"].values()}
    assert dtypes == set(NP_NAMES), sorted(dtypes)
    assert "sharded/pytorch_model.bin.index.json" in WHOLE
    assert any(f.endswith(".bin") for f in WHOLE) and any(f.endswith(".pth") for f in WHOLE)


@pytest.mark.parametrize("path", WHOLE)
def test_numpy_load_file_gives_what_torch_load_read(path):
    pytest.importorskip("ml_dtypes")
    check(path, tsn.load_file(os.path.join(DATA, path)))


def test_a_directory_of_bin_shards_loads_as_its_index():
    pytest.importorskip("ml_dtypes")
    got = tsn.load_file(os.path.join(DATA, "sharded"))
    check("sharded/pytorch_model.bin.index.json", got)


def test_iter_tensors_over_bin_shards():
    pytest.importorskip("ml_dtypes")
    index = os.path.join(DATA, "sharded", "pytorch_model.bin.index.json")
    got = {}
    for name, array in tensorstream.iter_tensors(index, framework="np", batch_bytes=64):
        assert name not in got
        got[name] = array.copy()
    check("sharded/pytorch_model.bin.index.json", got)


def test_safe_open_on_a_bin_file():
    pytest.importorskip("ml_dtypes")
    path = os.path.join(DATA, "module.bin")
    want = FILES["module.bin"]["tensors"]
    with tensorstream.safe_open(path, framework="np") as f:
        assert f.keys() == sorted(want)
        assert f.metadata() is None
        for name in f.keys():
            assert sha(f.get_tensor(name)) == want[name]["sha256"], name
        name = next(n for n in f.keys() if len(want[n]["shape"]) == 2 and want[n]["shape"][0] > 2)
        whole = f.get_tensor(name)
        sl = f.get_slice(name)
        assert sl.get_shape() == want[name]["shape"]
        np.testing.assert_array_equal(sl[1:3].view(np.uint8), whole[1:3].view(np.uint8))
        np.testing.assert_array_equal(sl[:, 1:3].view(np.uint8), whole[:, 1:3].view(np.uint8))


def test_dtype_conversion_of_a_bin_file_equals_the_safetensors_path(tmp_path):
    pytest.importorskip("ml_dtypes")
    from safetensors.numpy import save_file
    path = os.path.join(DATA, "module.bin")
    plain = tsn.load_file(path)
    twin = tmp_path / "module.safetensors"
    save_file(plain, str(twin))
    got = tsn.load_file(path, dtype="float32")
    ref = tsn.load_file(str(twin), dtype="float32")
    assert sorted(got) == sorted(ref)
    for name in ref:
        assert got[name].dtype == ref[name].dtype, name
        assert sha(got[name]) == sha(ref[name]), name


def test_a_strided_view_is_refused_naming_the_tensor():
    path = os.path.join(DATA, "views.pt")
    strided = sorted(n for n, t in FILES["views.pt"]["tensors"].items() if not t["contiguous"])
    with pytest.raises(tensorstream.SafetensorError) as e:
        tsn.load_file(path)
    assert "views.pt" in str(e.value)
    assert any(f"'{n}'" in str(e.value) for n in strided), str(e.value)
    assert "tensorstream convert" in str(e.value)


def hostile(tmp_path, case):
    path = str(tmp_path / f"{case}.bin")
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "pytorch_fixtures.py"), case, path],
                   check=True, capture_output=True)
    return path


def test_a_global_that_runs_a_command_is_refused_and_nothing_runs(tmp_path):
    path = hostile(tmp_path, "os_system")
    for load in (tsn.load_file, lambda p: tensorstream.safe_open(p, framework="np").keys()):
        with pytest.raises(tensorstream.SafetensorError, match="refused global posix.system"):
            load(path)
    assert not os.path.exists(path + ".pwned")


@pytest.mark.parametrize("case, words", [
    ("offset_past", ["tensor 'bad'", "storage 30"]),
    ("huge_size", ["tensor 'bad'", "overflows"]),
    ("missing_entry", ["tensor 'bad'", "data/40"]),
    ("truncated", ["truncated"]),
    ("deflated", ["compressed"]),
    ("big_endian", ["little-endian"]),
])
def test_a_broken_pytorch_file_raises_with_the_library_message(tmp_path, case, words):
    path = hostile(tmp_path, case)
    with pytest.raises(tensorstream.SafetensorError) as e:
        tsn.load_file(path)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def _devices():
    try:
        import torch
    except ImportError:
        return ["cpu"]
    cuda = torch.cuda.is_available() and tensorstream._native.has_cuda()
    return ["cpu"] + (["cuda:0"] if cuda else [])


@pytest.mark.parametrize("device", _devices())
def test_torch_load_file_and_load_into_give_what_torch_load_reads(device):
    torch = pytest.importorskip("torch")
    import tensorstream.torch as tst
    for path in WHOLE:
        full = os.path.join(DATA, path)
        got = {k: v.cpu() for k, v in tst.load_file(full, device=device).items()}
        if path.endswith(".json"):
            ref = {}
            for f in sorted(set(json.load(open(full))["weight_map"].values())):
                ref.update(torch.load(os.path.join(DATA, "sharded", f), weights_only=True))
        else:
            ref = torch.load(full, weights_only=True)
        want = FILES[path]["tensors"]
        assert sorted(got) == sorted(want), path
        for name in want:
            t = got[name]
            assert sha(t.reshape(-1).view(torch.uint8).numpy()) == want[name]["sha256"], name
            if name in ref:  # top-level tensors (nested ones are in the digests only)
                r = ref[name]
                assert t.dtype == r.dtype and t.shape == r.shape, name
    # load_into: the module torch.save wrote module.bin from (tests/data/pytorch/generate.py).
    m = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 6),
                            torch.nn.LayerNorm(6), torch.nn.Linear(6, 10, bias=False))
    m.register_buffer("steps", torch.zeros(3, dtype=torch.int64))
    m = m.to(torch.bfloat16).to(device)
    missing, unexpected = tst.load_into(m, os.path.join(DATA, "module.bin"))
    assert missing == [] and unexpected == []
    ref = torch.load(os.path.join(DATA, "module.bin"), weights_only=True)
    for name, t in m.state_dict().items():
        assert t.device == torch.device(device), name
        t = t.cpu()
        assert torch.equal(t.view(torch.uint8) if t.dtype == torch.bfloat16 else t,
                           ref[name].view(torch.uint8) if t.dtype == torch.bfloat16 else ref[name]), name
