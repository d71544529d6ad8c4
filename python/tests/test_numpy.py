"""Parity of tensorstream.numpy and safe_open with the reference safetensors package."""

import json
import os

import ml_dtypes
import numpy as np
import pytest
import safetensors
from safetensors.numpy import load_file as ref_load_file
from safetensors.numpy import save_file

import tensorstream
import tensorstream.numpy as tsn
from conftest import random_array, write_raw

NUMPY_DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.float16, np.uint32,
                np.int32, np.float32, np.uint64, np.int64, np.float64, np.complex64]
ML = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
      "F8_E5M2": ml_dtypes.float8_e5m2, "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz,
      "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz, "F8_E8M0": ml_dtypes.float8_e8m0fnu}
SHAPES = [(), (0,), (7,), (3, 5), (2, 3, 4), (33, 65)]


def same(a, b):
    assert a.dtype == b.dtype
    assert a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.fixture
def every_dtype(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {f"{np.dtype(dt).name}.{i}": random_array(rng, dt, shape)
               for dt in NUMPY_DTYPES for i, shape in enumerate(SHAPES)}
    path = str(tmp_path / "all.safetensors")
    save_file(tensors, path, metadata={"format": "np", "note": "random"})
    return path, tensors


def test_load_file_matches_safetensors_for_every_numpy_dtype(every_dtype):
    path, tensors = every_dtype
    ref = ref_load_file(path)
    got = tsn.load_file(path)
    assert sorted(got) == sorted(ref) == sorted(tensors)
    for name in ref:
        same(got[name], ref[name])
        same(got[name], tensors[name])


def test_ml_dtypes_load_as_their_bytes(tmp_path):
    rng = np.random.default_rng(4)
    tensors, want = {}, {}
    for fmt, dt in ML.items():
        for i, shape in enumerate([(5,), (4, 9), (2, 3, 8)]):
            raw = rng.integers(0, 256, int(np.prod(shape)) * np.dtype(dt).itemsize, np.uint8)
            if fmt == "F8_E8M0":
                raw[raw == 255] = 7  # 0xFF is NaN: keep values comparable
            tensors[f"{fmt}.{i}"] = (fmt, shape, raw.tobytes())
            want[f"{fmt}.{i}"] = raw.view(dt).reshape(shape)
    path = write_raw(tmp_path / "ml.safetensors", tensors)
    got = tsn.load_file(path)
    for name, w in want.items():
        same(got[name], w)


def test_sub_byte_dtype_is_refused_naming_the_tensor(tmp_path):
    path = write_raw(tmp_path / "f4.safetensors",
                     {"ok": ("U8", (4,), b"\x01\x02\x03\x04"), "packed": ("F4", (8,), b"\x12\x34\x56\x78")})
    with pytest.raises(tensorstream.SafetensorError, match="packed.*F4"):
        tsn.load_file(path)
    assert tsn.load_file(path, only="ok")["ok"].tolist() == [1, 2, 3, 4]


def test_conversions_match_numpy_and_ml_dtypes(tmp_path):
    rng = np.random.default_rng(5)
    src = {"a": rng.standard_normal((64, 33)).astype(np.float32),
           "h": rng.standard_normal((17,)).astype(np.float16),
           "i": rng.integers(-9, 9, (6,), dtype=np.int32)}
    path = str(tmp_path / "c.safetensors")
    save_file(src, path)
    f16 = tsn.load_file(path, dtype="f16")
    same(f16["a"], src["a"].astype(np.float16))
    same(f16["h"], src["h"])
    same(f16["i"], src["i"])  # integers load as they are
    bf16 = tsn.load_file(path, dtype=ml_dtypes.bfloat16)
    same(bf16["a"], src["a"].astype(ml_dtypes.bfloat16))
    same(tsn.load_file(path, dtype=np.float32)["h"], src["h"].astype(np.float32))


def test_rows_cols_and_only(tmp_path):
    rng = np.random.default_rng(6)
    src = {"up": random_array(rng, np.float32, (8, 6)), "down": random_array(rng, np.int16, (6, 8)),
           "norm": random_array(rng, np.float32, (6,))}
    path = str(tmp_path / "tp.safetensors")
    save_file(src, path)
    got = tsn.load_file(path, rows={"up": "1/2"}, cols=["down=2:6"])
    same(got["up"], src["up"][4:8])
    same(got["down"], src["down"][:, 2:6])
    same(got["norm"], src["norm"])
    only = tsn.load_file(path, only=["n*"])
    assert list(only) == ["norm"]
    with pytest.raises(tensorstream.SafetensorError, match="nothing|matches"):
        tsn.load_file(path, only="missing*")
    with pytest.raises(tensorstream.SafetensorError):
        tsn.load_file(path, rows="up=5:3")


def shard_checkpoint(tmp_path, rng):
    tensors = {f"model.layers.{i}.{kind}": random_array(rng, dt, shape)
               for i in range(3)
               for kind, dt, shape in [("w", np.float32, (16, 8)), ("b", np.int64, (8,))]}
    names = sorted(tensors)
    weight_map, parts = {}, [names[0::3], names[1::3], names[2::3]]
    for k, part in enumerate(parts):
        fname = f"model-{k + 1:05d}-of-00003.safetensors"
        save_file({n: tensors[n] for n in part}, str(tmp_path / fname))
        weight_map.update({n: fname for n in part})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return tensors, str(index)


def test_sharded_directory_and_index(tmp_path):
    tensors, index = shard_checkpoint(tmp_path, np.random.default_rng(8))
    for path in (str(tmp_path), index):
        got = tsn.load_file(path)
        assert sorted(got) == sorted(tensors)
        for name, want in tensors.items():
            same(got[name], want)
    with tensorstream.safe_open(index, framework="np") as f:
        assert f.keys() == sorted(tensors)
        same(f.get_tensor("model.layers.2.w"), tensors["model.layers.2.w"])
        same(f.get_slice("model.layers.1.w")[3:9], tensors["model.layers.1.w"][3:9])


def test_safe_open_matches_safetensors(every_dtype):
    path, _ = every_dtype
    with safetensors.safe_open(path, framework="np") as ref, \
            tensorstream.safe_open(path, framework="np") as got:
        assert got.keys() == ref.keys()
        assert got.metadata() == ref.metadata()
        for name in ref.keys():
            same(got.get_tensor(name), ref.get_tensor(name))
            rs, gs = ref.get_slice(name), got.get_slice(name)
            assert gs.get_shape() == rs.get_shape()
            assert gs.get_dtype() == rs.get_dtype()
            shape = rs.get_shape()
            keys = [slice(None)] if shape and 0 not in shape else []
            if len(shape) >= 1 and shape[0] > 1:
                keys += [slice(1, None), slice(0, shape[0] - 1), slice(shape[0] - 2, None)]
            if len(shape) >= 2 and shape[1] > 2:
                keys += [(slice(None), slice(1, 3)), (slice(1, 2), slice(0, shape[1] - 1))]
            if len(shape) >= 3:
                keys += [(slice(0, 1), slice(None), slice(1, 3))]
            for key in keys:
                same(gs[key], rs[key])


def test_safe_open_of_a_file_without_metadata_and_missing_tensor(tmp_path):
    path = str(tmp_path / "m.safetensors")
    save_file({"x": np.arange(1, 5, dtype=np.int32)}, path)
    with tensorstream.safe_open(path, framework="np") as f:
        assert f.metadata() is None
        with pytest.raises(tensorstream.SafetensorError, match="nope"):
            f.get_tensor("nope")


def test_empty_checkpoint(tmp_path):
    path = str(tmp_path / "e.safetensors")
    save_file({}, path)
    assert tsn.load_file(path) == {}
    assert list(tensorstream.iter_tensors(path, framework="np")) == []


def test_iter_tensors_in_file_order_in_batches(tmp_path):
    tensors, index = shard_checkpoint(tmp_path, np.random.default_rng(9))
    seen = []
    for name, arr in tensorstream.iter_tensors(index, framework="np", batch_bytes=300):
        same(arr, tensors[name])
        seen.append(name)
    with tensorstream.safe_open(index, framework="np") as f:
        assert seen == f.offset_keys()
    assert sorted(seen) == sorted(tensors)


def test_progress_callback_sees_the_total(big_file):
    calls = []
    tsn.load_file(big_file, only="layer.0.weight", progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1] == 1024 * 4096 * 4


def test_plain_progress_bar(big_file, capsys, monkeypatch):
    import builtins
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda n, *a, **k: (_ for _ in ()).throw(ImportError(n)) if n == "tqdm"
                        else real(n, *a, **k))
    tsn.load_file(big_file, only="layer.1.weight", progress=True)
    assert "100%" in capsys.readouterr().err


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        tsn.load_file(str(tmp_path / "nothing-here.safetensors"))
    with pytest.raises(FileNotFoundError):
        tensorstream.safe_open(str(tmp_path / "nothing-here.safetensors"), framework="np")


def test_bad_options_raise_safetensor_error(tmp_path):
    path = str(tmp_path / "m.safetensors")
    save_file({"x": np.arange(1, 5, dtype=np.float32)}, path)
    for kwargs in [{"dtype": "int8"}, {"io": "floppy"}, {"rows": "x"}, {"cols": "x=1/0"}]:
        with pytest.raises(tensorstream.SafetensorError):
            tsn.load_file(path, **kwargs)
    assert issubclass(tensorstream.SafetensorError, ValueError)
    assert os.path.exists(path)


def test_get_slice_beyond_the_reference(tmp_path):
    rng = np.random.default_rng(10)
    src = random_array(rng, np.float32, (12, 10, 3))
    path = str(tmp_path / "s.safetensors")
    save_file({"t": src}, path)
    with tensorstream.safe_open(path, framework="np") as f:
        s = f.get_slice("t")
        for key in [slice(-3, None), (slice(2, 9, 2), slice(1, 4)), (slice(None), slice(-4, -1)),
                    (Ellipsis, 1), 3, (slice(5, 5),), (slice(1, 4), slice(2, 7), slice(0, 2))]:
            same(s[key], np.ascontiguousarray(src[key]))
