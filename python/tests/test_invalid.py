"""Every kind of invalid file raises SafetensorError (never a crash, never garbage)."""

import json
import struct

import numpy as np
import pytest

import tensorstream
import tensorstream.numpy as tsn
from conftest import write_header, write_raw


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


CASES = {
    "bad_json": (b'{"a": {"dtype": "F32", ', 16, None),
    "not_an_object": (b'[1, 2, 3]', 0, None),
    "bad_dtype": ({"a": entry("F17", [4], 0, 16)}, 16, None),
    "offsets_past_end": ({"a": entry("F32", [4], 0, 16)}, 8, None),
    "overlapping": ({"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 8, 24)}, 24, None),
    "gap_between": ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 16, 24)}, 24, None),
    "shape_mismatch": ({"a": entry("F32", [5], 0, 16)}, 16, None),
    "end_before_begin": ({"a": entry("F32", [0], 16, 0)}, 16, None),
    "header_past_end": ({"a": entry("U8", [4], 0, 4)}, 4, 1 << 20),
    "huge_header_len": ({"a": entry("U8", [4], 0, 4)}, 4, 1 << 62),
    "overflowing_shape": ({"a": entry("U8", [1 << 40, 1 << 40], 0, 4)}, 4, None),
    "metadata_not_strings": ({"__metadata__": {"k": 1}, "a": entry("U8", [4], 0, 4)}, 4, None),
    "negative_offset": ({"a": entry("U8", [4], -4, 0)}, 4, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_file_raises(tmp_path, case):
    header, data_len, prefix = CASES[case]
    path = write_header(tmp_path / f"{case}.safetensors", header, data_len, prefix)
    with pytest.raises(tensorstream.SafetensorError):
        tsn.load_file(path)
    with pytest.raises(tensorstream.SafetensorError):
        tensorstream.safe_open(path, framework="np")
    with pytest.raises(tensorstream.SafetensorError):
        list(tensorstream.iter_tensors(path, framework="np"))


def test_truncated_files_raise(tmp_path):
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, 64, np.uint8).tobytes()
    good = write_raw(tmp_path / "good.safetensors", {"a": ("U8", (64,), raw)})
    blob = open(good, "rb").read()
    for cut in [0, 3, 8, 20, len(blob) - 1]:
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(blob[:cut])
        with pytest.raises(tensorstream.SafetensorError):
            tsn.load_file(str(path))
    assert tsn.load_file(good)["a"].tobytes() == raw


def test_index_naming_a_missing_shard(tmp_path):
    write_raw(tmp_path / "a.safetensors", {"x": ("U8", (2,), b"\x05\x06")})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}))
    with pytest.raises((tensorstream.SafetensorError, OSError), match="b.safetensors"):
        tsn.load_file(str(index))


def test_index_with_bad_json(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text("{weight_map")
    with pytest.raises(tensorstream.SafetensorError):
        tsn.load_file(str(index))


def test_length_prefix_only(tmp_path):
    path = tmp_path / "p.safetensors"
    path.write_bytes(struct.pack("<Q", 2) + b"{}")
    assert tsn.load_file(str(path)) == {}


def test_directory_without_safetensors(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing to load")
    with pytest.raises(tensorstream.SafetensorError, match=str(tmp_path)):
        tsn.load_file(str(tmp_path))


def test_index_escaping_its_directory(tmp_path):
    inner = tmp_path / "ckpt"
    inner.mkdir()
    write_raw(tmp_path / "outside.safetensors", {"x": ("U8", (2,), b"\x05\x06")})
    index = inner / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": "../outside.safetensors"}}))
    with pytest.raises(tensorstream.SafetensorError):
        tsn.load_file(str(index))


def test_pickle_that_would_run_code_is_refused_naming_the_global(tmp_path):
    # A PyTorch zip checkpoint is read by its contents, whatever its name; a pickle
    # calling os.system is refused, and nothing runs.
    import zipfile
    path = tmp_path / "pytorch_model.safetensors"
    marker = tmp_path / "ran"
    payload = f"touch {marker}".encode()
    pkl = (b"\x80\x02cposix\nsystem\nq\x00X" + len(payload).to_bytes(4, "little")
           + payload + b"q\x01\x85q\x02Rq\x03.")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
    with pytest.raises(tensorstream.SafetensorError, match="posix.system"):
        tsn.load_file(str(path))
    assert not marker.exists()
