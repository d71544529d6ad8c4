#!/usr/bin/env python3
"""Writes PyTorch zip checkpoints as torch.save does, without PyTorch.

    python3 tests/pytorch_fixtures.py CASE OUT_FILE

A fake `torch` module in sys.modules makes the standard pickler name
`torch._utils._rebuild_tensor_v2`, `torch.FloatStorage` and the rest exactly as
torch.save does (protocol 2, persistent ids `('storage', type, key, 'cpu', numel)`).
Next to OUT_FILE it writes OUT_FILE.json: every tensor's name, dtype, shape and
contiguous bytes (hex), gathered here by strides, and the skipped entries.
Tensor data is random (seeded), never zeros.
"""
import collections
import io
import itertools
import json
import os
import pickle
import random
import sys
import types
import zipfile

torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
torch._utils = utils
sys.modules["torch"] = torch
sys.modules["torch._utils"] = utils


def _fake(module, name):
    def f(*args):
        raise RuntimeError("a fixture function is never called")

    f.__module__ = module
    f.__name__ = f.__qualname__ = name
    return f


for _n in ("_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
           "_rebuild_parameter_with_state"):
    setattr(utils, _n, _fake("torch._utils", _n))

# safetensors dtype -> (storage class, element bytes, torch dtype name)
DTYPES = {
    "F64": ("DoubleStorage", 8, "float64"),
    "F32": ("FloatStorage", 4, "float32"),
    "F16": ("HalfStorage", 2, "float16"),
    "BF16": ("BFloat16Storage", 2, "bfloat16"),
    "I64": ("LongStorage", 8, "int64"),
    "I32": ("IntStorage", 4, "int32"),
    "I16": ("ShortStorage", 2, "int16"),
    "I8": ("CharStorage", 1, "int8"),
    "U8": ("ByteStorage", 1, "uint8"),
    "BOOL": ("BoolStorage", 1, "bool"),
    "U16": (None, 2, "uint16"),
    "U32": (None, 4, "uint32"),
    "F8_E4M3": (None, 1, "float8_e4m3fn"),
}
for _cls in {d[0] for d in DTYPES.values() if d[0]} | {"UntypedStorage"}:
    setattr(torch, _cls, type(_cls, (), {"__module__": "torch"}))


class TorchDtype:
    def __init__(self, name):
        self.name = name
        self.__module__ = "torch"

    def __reduce__(self):
        return self.name


for _d in DTYPES.values():
    setattr(torch, _d[2], TorchDtype(_d[2]))

RNG = random.Random(21)


class Storage:
    def __init__(self, key, dtype, numel, untyped=False):
        self.key, self.dtype, self.untyped = str(key), dtype, untyped
        size = DTYPES[dtype][1]
        if dtype == "BOOL":
            self.data = bytes(RNG.randrange(2) for _ in range(numel))
        else:
            self.data = bytes(RNG.randrange(1, 256) for _ in range(numel * size))
        self.numel = numel * size if untyped else numel


class Tensor:
    def __init__(self, storage, size, stride=None, offset=0, param=False, state=None):
        if stride is None:
            stride, acc = [], 1
            for d in reversed(size):
                stride.insert(0, acc)
                acc *= d
        self.storage, self.size, self.stride = storage, tuple(size), tuple(stride)
        self.offset, self.param, self.state = offset, param, state

    def __reduce_ex__(self, proto):
        if self.param:
            inner = Tensor(self.storage, self.size, self.stride, self.offset)
            hooks = collections.OrderedDict()
            if self.state is not None:
                return (utils._rebuild_parameter_with_state, (inner, True, hooks, self.state))
            return (utils._rebuild_parameter, (inner, True, hooks))
        hooks = collections.OrderedDict()
        args = (self.storage, self.offset, self.size, self.stride, False, hooks)
        if self.storage.untyped:
            dtype = getattr(torch, DTYPES[self.storage.dtype][2])
            return (utils._rebuild_tensor_v3, args + (dtype,))
        return (utils._rebuild_tensor_v2, args)

    def contiguous_bytes(self):
        es = DTYPES[self.storage.dtype][1]
        out = bytearray()
        for idx in itertools.product(*(range(d) for d in self.size)):
            e = self.offset + sum(i * s for i, s in zip(idx, self.stride))
            out += self.storage.data[e * es:(e + 1) * es]
        return bytes(out)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            cls = "UntypedStorage" if obj.untyped else DTYPES[obj.dtype][0]
            return ("storage", getattr(torch, cls), obj.key, "cpu", obj.numel)
        return None


class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + MARKER,))


MARKER = ""


def state_dict():
    s = [Storage(i, d, n) for i, (d, n) in enumerate(
        [("F32", 24), ("F16", 6), ("F32", 15), ("I64", 20), ("BF16", 8), ("I32", 5),
         ("I8", 7), ("U8", 3), ("BOOL", 9), ("F64", 4), ("I16", 1), ("F32", 4)])]
    u16 = Storage(12, "U16", 6, untyped=True)
    f8 = Storage(13, "F8_E4M3", 8, untyped=True)
    sd = collections.OrderedDict()
    sd["embed.weight"] = Tensor(s[0], [4, 6])
    sd["lm_head.weight"] = Tensor(s[0], [4, 6])  # tied: the same storage
    sd["layers.0.bias"] = Tensor(s[1], [6])
    sd["transposed"] = Tensor(s[2], [5, 3], [1, 5])
    sd["narrow"] = Tensor(s[3], [2, 3], [5, 1], offset=7)
    sd["bf16"] = Tensor(s[4], [2, 4])
    sd["i32"] = Tensor(s[5], [5])
    sd["i8"] = Tensor(s[6], [7])
    sd["u8"] = Tensor(s[7], [3])
    sd["mask"] = Tensor(s[8], [3, 3])
    sd["f64"] = Tensor(s[9], [2, 2])
    sd["scalar"] = Tensor(s[10], [])
    sd["empty"] = Tensor(s[11], [0, 3])
    sd["param"] = Tensor(s[11], [2], offset=2, param=True)
    sd["u16"] = Tensor(u16, [2, 3])
    sd["fp8"] = Tensor(f8, [4], [2], offset=1)
    sd._metadata = {"": {"version": 1}}
    return sd


def save(obj, path, prefix="archive", byteorder="little", compress=False, extra=None):
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    pkl = buf.getvalue()
    storages = {}

    def walk(o):
        if isinstance(o, Tensor):
            storages[o.storage.key] = o.storage
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)

    walk(obj)
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(prefix + "/data.pkl", pkl)
        if byteorder:
            z.writestr(prefix + "/byteorder", byteorder)
        for key, st in sorted(storages.items()):
            z.writestr(f"{prefix}/data/{key}", st.data, compress_type=method)
        for name, data in (extra or {}).items():
            z.writestr(f"{prefix}/{name}", data)
        z.writestr(prefix + "/version", "3\n")


def tensors_of(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, Tensor):
            out[prefix + k] = {
                "dtype": v.storage.dtype,
                "shape": list(v.size),
                "hex": v.contiguous_bytes().hex(),
            }
        elif isinstance(v, dict):
            out.update(tensors_of(v, prefix + k + "."))
    return out


def save_sharded(sd, out_dir, case):
    """Writes sd as two shards and pytorch_model.bin.index.json into out_dir,
    broken as `case` asks."""
    os.makedirs(out_dir)
    names = sorted(sd)
    half = len(names) // 2
    files = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    parts = [names[:half], names[half:]]
    if case == "shard_twice":
        parts[1] = parts[1] + [names[0]]
    weight_map = {n: files[i] for i, part in enumerate(parts) for n in part}
    weight_map[names[0]] = files[0]
    if case == "shard_escape":
        weight_map[names[1]] = "../x.bin"
    if case == "shard_missing":
        weight_map["ghost.weight"] = files[0]
    for f, part in zip(files, parts):
        shard = collections.OrderedDict((n, sd[n]) for n in part)
        save(shard, os.path.join(out_dir, f))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    with open(os.path.join(out_dir, "pytorch_model.bin.index.json"), "w") as f:
        json.dump(index, f)


def main():
    global MARKER
    case, path = sys.argv[1], sys.argv[2]
    sd = state_dict()
    expected = {"tensors": tensors_of(sd)}
    if case == "basic":
        save(sd, path)
    elif case in ("loadable", "loadable_sharded", "loadable_nested", "loadable_zip64"):
        # Every tensor one byte range of its storage (no strided view): what `load`
        # reads straight from the file. Tied weights, offsets and overlaps kept.
        narrow = sd.pop("narrow")
        del sd["transposed"]
        sd["fp8"] = Tensor(sd["fp8"].storage, [3], offset=4)
        sd["rows"] = Tensor(narrow.storage, [2, 3], offset=11)
        sd["rows_overlap"] = Tensor(narrow.storage, [3, 3], offset=8)  # shares 3 elements
        sd["big"] = Tensor(Storage(50, "BF16", 4 * 70008), [4, 70008])
        expected = {"tensors": tensors_of(sd)}
        if case == "loadable_zip64":
            zipfile.ZIP64_LIMIT = 0  # every size and offset through the Zip64 fields
        if case in ("loadable", "loadable_zip64"):
            save(sd, path)
        elif case == "loadable_nested":
            save({"epoch": 3, "model": sd, "optimizer": {"lr": 0.1}}, path)
        else:
            save_sharded(sd, path, case)
    elif case in ("param_state", "param_state_tensor"):
        # A parameter with Python attributes, as torch.save writes one.
        st = Storage(60, "F32", 4)
        state = {"tag": "x", "n": 3}
        if case == "param_state_tensor":
            state["extra"] = Tensor(Storage(61, "F32", 2), [2])
        sd = collections.OrderedDict(p=Tensor(st, [4], param=True, state=state))
        expected = {"tensors": tensors_of(sd)}
        save(sd, path)
    elif case == "nested":
        sd["encoder"] = {"w": Tensor(Storage(20, "F32", 3), [3])}
        sd["step"] = 7
        obj = {"epoch": 3, "state_dict": sd, "optimizer": {"lr": 0.1}}
        save(obj, path, prefix="model")
        expected = {"tensors": tensors_of(sd)}
    elif case == "zip64":
        zipfile.ZIP64_LIMIT = 0  # every size and offset through the Zip64 fields
        save(sd, path)
    elif case == "os_system":
        MARKER = path + ".pwned"
        sd["evil"] = Evil()
        save(sd, path)
    elif case == "offset_past":
        sd["bad"] = Tensor(Storage(30, "F32", 6), [2], offset=100)
        save(sd, path)
    elif case == "huge_size":
        sd["bad"] = Tensor(Storage(30, "F32", 6), [1 << 40, 1 << 40], [1 << 40, 1])
        save(sd, path)
    elif case == "missing_entry":
        save(sd, path)
        st = Storage(40, "F32", 2)
        sd2 = collections.OrderedDict(bad=Tensor(st, [2]))
        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump(sd2)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", buf.getvalue())
    elif case == "truncated":
        save(sd, path)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) * 2 // 3])
    elif case == "deflated":
        save(sd, path, compress=True)
    elif case == "big_endian":
        save(sd, path, byteorder="big")
    elif case in ("sharded", "shard_escape", "shard_missing", "shard_twice"):
        save_sharded(sd, path, case)
    elif case == "raw":
        # The pickle in the file named by the third argument, alone in a zip.
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", open(sys.argv[3], "rb").read())
            z.writestr("archive/version", "3\n")
        expected = {"tensors": {}}
    elif case == "legacy":
        open(path, "wb").write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
    else:
        sys.exit(f"unknown case {case}")
    with open(path + ".json", "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    main()
