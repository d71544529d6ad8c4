"""Seeded random parity: many small random checkpoints (every dtype NumPy or PyTorch
has, 0-sized dimensions, scalars, names with dots and unicode, metadata or none,
shards with an index) loaded through tensorstream and checked against safetensors,
the bytes written, and the framework's own conversions. This file: the checkpoints,
the checks, and NumPy; test_parity_torch.py: PyTorch. ``TENSORSTREAM_PARITY_SEED``
and ``TENSORSTREAM_PARITY_CASES`` widen a run."""

import json
import os
import re

import numpy as np
import pytest

import tensorstream
import tensorstream.numpy as tsn
from conftest import write_raw

ml_dtypes = pytest.importorskip("ml_dtypes")
safetensors = pytest.importorskip("safetensors")
from safetensors.numpy import load_file as st_np_load_file  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

SEED = int(os.environ.get("TENSORSTREAM_PARITY_SEED", "20261207"))
CASES = int(os.environ.get("TENSORSTREAM_PARITY_CASES", "50"))

#: Format dtype -> NumPy dtype (BF16 and FP8 through ml_dtypes).
NP = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16), "I16": np.dtype(np.int16), "F16": np.dtype(np.float16),
    "U32": np.dtype(np.uint32), "I32": np.dtype(np.int32), "F32": np.dtype(np.float32),
    "U64": np.dtype(np.uint64), "I64": np.dtype(np.int64), "F64": np.dtype(np.float64),
    "C64": np.dtype(np.complex64), "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
}
if hasattr(ml_dtypes, "float8_e8m0fnu"):
    NP["F8_E8M0"] = np.dtype(ml_dtypes.float8_e8m0fnu)
#: Dtypes safetensors.numpy reads (the rest: BF16, FP8).
NP_NATIVE = {"BOOL", "U8", "I8", "U16", "I16", "F16", "U32", "I32", "F32", "U64", "I64",
             "F64", "C64"}
#: Floating dtypes tensorstream converts (src/convert.rs) and its targets.
CONVERTIBLE = {"F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
               "F8_E8M0"}
TARGETS = {"F32": NP["F32"], "F16": NP["F16"], "BF16": NP["BF16"]}
#: Canonical quiet NaNs of the targets, positive and negative.
QNAN = {"F32": (0x7FC00000, 0xFFC00000), "F16": (0x7E00, 0xFE00), "BF16": (0x7FC0, 0xFFC0)}
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

TORCH = {}
if torch is not None:
    for _fmt, _name in {
        "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
        "F16": "float16", "BF16": "bfloat16", "U32": "uint32", "I32": "int32",
        "F32": "float32", "U64": "uint64", "I64": "int64", "F64": "float64",
        "C64": "complex64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
        "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
        "F8_E8M0": "float8_e8m0fnu",
    }.items():
        if hasattr(torch, _name):
            TORCH[_fmt] = getattr(torch, _name)

NAME_PARTS = ["model", "layers", "0", "17", "weight", "bias", "emb-ed", "é", "日本語", "ß",
              "𝔘", "a=b", "x y", "q?k", "w*", "[0]", "norm", "ñ.ñ", "n\nl", 'q"', "b\\s",
              "\x00"]


# --------------------------------------------------------------------------- fixtures

def random_bytes(rng, fmt, count):
    """``count`` random elements of ``fmt`` as bytes: every bit pattern, with plenty
    of values in F16 range and exact rounding ties for the F32 sources."""
    width = NP[fmt].itemsize
    if fmt == "BOOL":
        return rng.integers(0, 2, count, np.uint8).tobytes()
    raw = rng.integers(0, 256, count * width, np.uint8)
    if fmt != "F32" or count == 0:
        return raw.tobytes()
    bits = raw.view(np.uint32).copy()
    mode = rng.integers(0, 6, count)
    exp = rng.integers(127 - 26, 127 + 17, count).astype(np.uint32)
    ranged = (bits & np.uint32(0x807FFFFF)) | (exp << np.uint32(23))
    bits = np.where(mode == 1, ranged, bits)
    bits = np.where(mode == 2, (ranged & np.uint32(0xFFFF0000)) | np.uint32(0x8000), bits)
    bits = np.where(mode == 3, (ranged & np.uint32(0xFFFFE000)) | np.uint32(0x1000), bits)
    normal = (rng.standard_normal(count) * 3).astype(np.float32).view(np.uint32)
    bits = np.where(mode >= 4, normal, bits)
    return bits.astype(np.uint32).tobytes()


def random_shape(rng):
    rank = int(rng.choice([0, 1, 1, 2, 2, 2, 3, 4]))
    return tuple(0 if rng.random() < 0.12 else int(rng.integers(1, 7)) for _ in range(rank))


def random_name(rng, taken):
    if "" not in taken and rng.random() < 0.03:
        taken.add("")  # a legal name, which no glob rule can spell
        return ""
    while True:
        parts = rng.choice(NAME_PARTS, int(rng.integers(1, 5)))
        name = ".".join(str(p) for p in parts)
        if name not in taken:
            taken.add(name)
            return name


class Case:
    """A random checkpoint on disk and what it holds: ``tensors`` maps each name to
    (format dtype, shape, bytes), in file order; ``path`` is the file, the index or
    the directory of shards."""

    def __init__(self, rng, root, dtypes=None):
        dtypes = dtypes or sorted(NP)
        taken, self.tensors = set(), {}
        for _ in range(int(rng.integers(1, 9))):
            fmt = str(rng.choice(dtypes))
            shape = random_shape(rng)
            raw = random_bytes(rng, fmt, int(np.prod(shape, dtype=np.int64)))
            self.tensors[random_name(rng, taken)] = (fmt, shape, raw)
        self.metadata = None
        if rng.random() < 0.5:
            self.metadata = {str(rng.choice(NAME_PARTS)): str(rng.choice(NAME_PARTS))
                             for _ in range(int(rng.integers(1, 4)))}
        names = list(self.tensors)
        self.ranges = {}
        shards = int(rng.integers(2, 4)) if len(names) >= 3 and rng.random() < 0.3 else 1
        root.mkdir(parents=True, exist_ok=True)
        self.files = []
        groups = [names]
        if shards > 1:
            cuts = sorted(rng.choice(range(1, len(names)), shards - 1, replace=False))
            groups = [list(g) for g in np.split(np.array(names, dtype=object), cuts)]
        for group in groups:
            at = 0
            for n in group:
                self.ranges[n] = (at, at + len(self.tensors[n][2]))
                at += len(self.tensors[n][2])
        if shards == 1:
            self.path = write_raw(root / "model.safetensors", self.tensors, self.metadata)
            self.files.append(self.path)
            self.order = names
            return
        weight_map, self.order, merged = {}, [], None
        for k, group in enumerate(groups):
            file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: self.tensors[n] for n in group}
            # Shards' metadata: the same, some more or none; metadata() merges them.
            meta = self.metadata
            if rng.random() < 0.3:
                meta = None if rng.random() < 0.5 else \
                    dict(meta or {}, **{f"shard.{k}": str(rng.choice(NAME_PARTS))})
            if meta is not None:
                merged = dict(merged or {}, **meta)
            self.files.append(write_raw(root / file, part, meta))
            weight_map.update({n: file for n in group})
            self.order += group
        self.metadata = merged
        index = root / "model.safetensors.index.json"
        index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
        self.path = str(index) if rng.random() < 0.5 else str(root)

    @property
    def single(self):
        return len(self.files) == 1

    def array(self, name):
        return as_array(*self.tensors[name])

    def tensor(self, name):
        fmt, shape, raw = self.tensors[name]
        u = torch.empty(len(raw), dtype=torch.uint8)
        if raw:
            u.copy_(torch.from_numpy(np.frombuffer(raw, np.uint8).copy()))
        return u.view(TORCH[fmt]).reshape(shape)


def as_array(fmt, shape, raw):
    return np.frombuffer(raw, NP[fmt]).reshape(shape)


def cases(tmp_path, salt, count=CASES, dtypes=None):
    rng = np.random.default_rng([SEED, salt])
    for k in range(count):
        yield rng, Case(rng, tmp_path / f"c{k}", dtypes)


# --------------------------------------------------------------------------- helpers

def raw_of(x):
    """The bytes of a NumPy array or a PyTorch tensor, in C order."""
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu().clone(memory_format=torch.contiguous_format)
        x = x.reshape(-1).view(torch.uint8).numpy()
    return np.ascontiguousarray(x).tobytes()


def same(got, want, where):
    """Same dtype, shape and bytes."""
    assert got.dtype == want.dtype, f"{where}: dtype {got.dtype} != {want.dtype}"
    assert tuple(got.shape) == tuple(want.shape), f"{where}: shape {got.shape} != {want.shape}"
    assert raw_of(got) == raw_of(want), f"{where}: bytes differ"


def held(x):
    """Bytes of the memory under array or tensor ``x``: more than its own when it is
    a view of a larger one."""
    if torch is not None and isinstance(x, torch.Tensor):
        return x.untyped_storage().nbytes()
    while isinstance(x.base, np.ndarray):
        x = x.base
    return x.nbytes


def glob_re(pattern):
    """The library's whole-name globs: ``*`` any run, ``?`` one character."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.DOTALL)


def matches(globs, names):
    return [n for n in names if any(glob_re(g).fullmatch(n) for g in globs)]


def random_globs(rng, names):
    """One to three globs that together match at least one of ``names``."""
    out = []
    for _ in range(int(rng.integers(1, 4))):
        n = str(rng.choice(names))
        kind = int(rng.integers(0, 4))
        if kind == 0 or len(n) < 2:
            out.append(n)
        elif kind == 1:
            out.append(n[: int(rng.integers(1, len(n)))] + "*")
        elif kind == 2:
            out.append("*" + n[int(rng.integers(1, len(n))):])
        else:
            i = int(rng.integers(0, len(n)))
            out.append(n[:i] + "?" + n[i + 1:])
    return out


def expected_conversion(src, fmt, target):
    """``src`` (an array of format dtype ``fmt``) converted to ``target`` by the
    project's rules: exact widening, round to nearest even (NumPy and ml_dtypes), NaN
    to the target's quiet NaN with the source's sign bit (F8_E8M0 has none)."""
    if fmt == target:
        return src
    flat = np.ascontiguousarray(src).reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        want = flat.astype(np.float32).astype(TARGETS[target])
        nan = np.isnan(flat.astype(np.float32))
    if nan.any():
        width = flat.dtype.itemsize * 8
        neg = (flat.view(UINT[flat.dtype.itemsize]) >> (width - 1)).astype(bool)
        if fmt == "F8_E8M0":
            neg[:] = False
        pos_bits, neg_bits = QNAN[target]
        u = UINT[TARGETS[target].itemsize]
        bits = want.view(u).copy()
        bits[nan] = np.where(neg[nan], neg_bits, pos_bits).astype(u)
        want = bits.view(TARGETS[target])
    return want.reshape(src.shape)


def outcome(fn, reference=False):
    """``("ok", value)`` or ``("raised", exception)``. A panic (pyo3's PanicException,
    a BaseException) is caught only from the reference: safetensors 0.8 panics on some
    keys (a slice whose start passes its stop, on an empty dimension)."""
    try:
        return "ok", fn()
    except Exception as e:  # noqa: BLE001
        return "raised", e
    except BaseException as e:
        if not reference or type(e).__name__ != "PanicException":
            raise
        return "raised", e


def random_key(rng, shape):
    """A random index of a tensor of ``shape``: ints (negative too, sometimes out of
    range), slices with negative bounds, steps, empty ranges, Ellipsis, tuples
    shorter than, as long as, or (rarely) longer than the rank."""
    rank = len(shape)
    length = int(rng.integers(0, rank + 1)) if rng.random() < 0.95 else rank + 1
    key = []
    for d in range(length):
        n = shape[d] if d < rank else 1
        r = rng.random()
        if r < 0.3:
            key.append(int(rng.integers(-n - 1, n + 1)) if rng.random() < 0.2 else
                       int(rng.integers(-n, n)) if n else 0)
        elif r < 0.4:
            key.append(slice(None))
        else:
            def bound():
                return None if rng.random() < 0.2 else int(rng.integers(-n - 2, n + 3))
            step = rng.choice([None, None, 1, 2, 3, -1]) if rng.random() < 0.4 else None
            key.append(slice(bound(), bound(), None if step is None else int(step)))
    if rng.random() < 0.25:
        key.insert(int(rng.integers(0, len(key) + 1)), Ellipsis)
    if len(key) == 1 and rng.random() < 0.5:
        return key[0]
    return tuple(key)


# --------------------------------------------------------------------------- NumPy

def test_load_file_numpy(tmp_path):
    for _, case in cases(tmp_path, 1):
        got = tsn.load_file(case.path)
        assert list(got) == case.order
        for name in case.order:
            same(got[name], case.array(name), f"{case.path}: {name}")
        native = [n for n in case.order if case.tensors[n][0] in NP_NATIVE]
        if case.single and len(native) == len(case.order):
            ref = st_np_load_file(case.path)
            assert sorted(ref) == sorted(got)
            for name, a in ref.items():
                same(got[name], a, f"{case.path}: {name} vs safetensors")


def test_only_globs(tmp_path):
    for rng, case in cases(tmp_path, 2):
        globs = random_globs(rng, case.order)
        got = tsn.load_file(case.path, only=globs)
        want = matches(globs, case.order)
        assert list(got) == want, (globs, case.order)
        for name in want:
            same(got[name], case.array(name), name)
        with pytest.raises(tensorstream.SafetensorError, match="matches"):
            tsn.load_file(case.path, only=["no such tensor*"])


def test_dtype_conversions_numpy(tmp_path):
    forms = {"F32": ["float32", np.float32, "f32"], "F16": ["float16", np.float16, "half"],
             "BF16": ["bfloat16", ml_dtypes.bfloat16, "bf16"]}
    for rng, case in cases(tmp_path, 3):
        target = str(rng.choice(sorted(forms)))
        form = forms[target][int(rng.integers(0, 3))]
        got = tsn.load_file(case.path, dtype=form)
        assert list(got) == case.order
        for name in case.order:
            fmt = case.tensors[name][0]
            src = case.array(name)
            want = expected_conversion(src, fmt, target) if fmt in CONVERTIBLE else src
            same(got[name], want, f"{name}: {fmt} -> {target}")


def test_unconvertible_target_refused(tmp_path):
    path = write_raw(tmp_path / "a.safetensors", {"a": ("F32", (2,), bytes(range(8)))})
    for bad in ["int8", np.int32, "float64", "F8_E4M3"]:
        with pytest.raises(tensorstream.SafetensorError, match="convert"):
            tsn.load_file(path, dtype=bad)


def check_slices(rng, case, f, framework, ref=None):
    """``f.get_slice(name)[key]`` for random keys, against safetensors' ``ref`` (a
    safe_open) where it answers, and against indexing the whole tensor."""
    for name in case.order:
        fmt, shape, _ = case.tensors[name]
        full = case.array(name) if framework == "np" else case.tensor(name)
        sl = f.get_slice(name)
        assert sl.get_shape() == list(shape)
        assert sl.get_dtype() == fmt
        for _ in range(6):
            key = random_key(rng, shape)
            kind, got = outcome(lambda: sl[key])
            _, plain = outcome(lambda: full[key])
            where = f"{name} {shape} [{key!r}] ({framework})"
            if ref is not None:
                rkind, rval = outcome(lambda: ref.get_slice(name)[key], reference=True)
                if rkind == "ok":
                    assert kind == "ok", \
                        f"{where}: safetensors answers, tensorstream raised {got!r}"
                    same(got, rval, where)
                    assert type(got) is type(rval), where
                    continue
            if isinstance(plain, Exception):
                assert kind == "raised", f"{where}: indexing raises {plain!r}, tensorstream not"
                # As safetensors (SafetensorError) and as the framework (its type).
                assert isinstance(got, tensorstream.SafetensorError), f"{where}: {got!r}"
                assert isinstance(got, type(plain)), f"{where}: {got!r}, not {plain!r}"
            else:
                assert kind == "ok", f"{where}: indexing answers, tensorstream raised {got!r}"
                same(got, plain, where)
                if framework == "np":
                    assert isinstance(got, np.ndarray), f"{where}: {type(got)}"
                    assert got.flags["C_CONTIGUOUS"], where
                else:
                    assert got.stride() == torch.empty(got.shape).stride(), where
                assert held(got) == got.nbytes, f"{where}: holds {held(got)} bytes"


def check_safe_open(rng, case, framework):
    with tensorstream.safe_open(case.path, framework=framework) as f:
        assert f.keys() == sorted(case.order)
        assert f.offset_keys() == case.order
        assert f.metadata() == case.metadata
        ref = None
        native = NP_NATIVE if framework == "np" else set(TORCH)
        if case.single and all(case.tensors[n][0] in native for n in case.order):
            ref = safetensors.safe_open(case.path, framework=framework)
            assert f.keys() == ref.keys()
            # safetensors orders empty tensors at one offset at random (a hash map):
            # the same byte ranges in the same order.
            assert [case.ranges[n] for n in f.offset_keys()] == \
                [case.ranges[n] for n in ref.offset_keys()]
            assert f.metadata() == ref.metadata()
        for name in reversed(case.order):
            want = case.array(name) if framework == "np" else case.tensor(name)
            same(f.get_tensor(name), want, name)
            if ref is not None:
                same(f.get_tensor(name), ref.get_tensor(name), f"{name} vs safetensors")
        check_slices(rng, case, f, framework, ref)
        with pytest.raises(tensorstream.SafetensorError):
            f.get_tensor("no such tensor")
        with pytest.raises(tensorstream.SafetensorError):
            f.get_slice("no such tensor")


def test_safe_open_numpy(tmp_path):
    for rng, case in cases(tmp_path, 4):
        check_safe_open(rng, case, "np")


def test_safe_open_numpy_against_safetensors(tmp_path):
    """Only the dtypes safetensors.numpy reads, single files: every slice compared."""
    for rng, case in cases(tmp_path, 5, dtypes=sorted(NP_NATIVE)):
        check_safe_open(rng, case, "np")


def test_slice_keys_found_wrong(tmp_path):
    """Keys the random runs caught: a 0-d result (an int on every dimension, or a
    scalar's ``[...]``) was made one-dimensional, and ``[:]`` of a scalar answered."""
    rng = np.random.default_rng([SEED, 10])
    t = {"m": ("F32", (2, 3), random_bytes(rng, "F32", 6)),
         "s": ("I16", (), random_bytes(rng, "I16", 1))}
    path = write_raw(tmp_path / "a.safetensors", t)
    m = np.frombuffer(t["m"][2], np.float32).reshape(2, 3)
    s = np.frombuffer(t["s"][2], np.int16).reshape(())
    with tensorstream.safe_open(path, "np") as f, safetensors.safe_open(path, "np") as ref:
        for name, key, want in [("m", (1, -1), m[1, -1]), ("s", ..., s), ("s", (), s)]:
            got = f.get_slice(name)[key]
            assert isinstance(got, np.ndarray) and got.shape == ()
            same(got, ref.get_slice(name)[key], f"{name}[{key!r}]")
            assert got.tobytes() == want.tobytes()
        for key in [slice(None), (slice(None),), (slice(None),) * 3]:
            with pytest.raises(tensorstream.SafetensorError):
                f.get_slice("s" if key != (slice(None),) * 3 else "m")[key]


def test_iter_tensors_numpy(tmp_path):
    for rng, case in cases(tmp_path, 6):
        batch = int(rng.integers(1, 512))
        got = list(tensorstream.iter_tensors(case.path, framework="np", batch_bytes=batch))
        assert [n for n, _ in got] == case.order
        for name, a in got:
            same(a, case.array(name), name)
        # With options: the same as load_file with them.
        kw = {"dtype": rng.choice([None, "bf16", "f16", "f32"]),
              "only": random_globs(rng, case.order) if rng.random() < 0.5 else None}
        whole = tsn.load_file(case.path, **kw)
        got = list(tensorstream.iter_tensors(case.path, framework="np", batch_bytes=batch, **kw))
        assert [n for n, _ in got] == list(whole)
        for name, a in got:
            same(a, whole[name], f"{name} {kw}")


def random_rules(rng, case):
    """Random rows/cols rules for some tensors of ``case`` (rows or columns, never
    both: the library refuses that) and the expected slices: {name: (rows or None,
    cols or None)}."""
    rows, cols, want = {}, {}, {}
    for name in case.order:
        shape = case.tensors[name][1]
        if not name or "*" in name or "?" in name or rng.random() < 0.4:
            continue
        r = c = None
        if len(shape) >= 1 and rng.random() < 0.7:
            r = _part(rng, shape[0])
        if len(shape) >= 2 and r is None:
            c = _part(rng, shape[1])
        if r is None and c is None:
            continue
        if r is not None:
            rows[name] = r[0]
        if c is not None:
            cols[name] = c[0]
        want[name] = (r and r[1], c and c[1])
    return rows, cols, want


def _part(rng, n):
    """A random 'START:END', (start, end), slice or 'RANK/WORLD' of a dimension of
    size ``n``, and the range it selects."""
    if n and rng.random() < 0.3:
        world = int(rng.choice([w for w in range(1, n + 1) if n % w == 0]))
        rank = int(rng.integers(0, world))
        return f"{rank}/{world}", (rank * n // world, (rank + 1) * n // world)
    a = int(rng.integers(0, n + 1))
    b = int(rng.integers(a, n + 1))
    form = int(rng.integers(0, 3))
    return [f"{a}:{b}", (a, b), slice(a, b)][form], (a, b)


def expected_slice(full, r, c):
    if r is not None:
        full = full[r[0]:r[1]]
    if c is not None:
        full = full[:, c[0]:c[1]]
    return full


def test_rows_cols_numpy(tmp_path):
    for rng, case in cases(tmp_path, 7):
        rows, cols, want = random_rules(rng, case)
        if not want:
            continue
        target = rng.choice([None, "F32", "F16", "BF16"])
        got = tsn.load_file(case.path, rows=rows or None, cols=cols or None, dtype=target)
        assert list(got) == case.order
        for name in case.order:
            full = case.array(name)
            exp = np.array(expected_slice(full, *want[name]) if name in want else full,
                           order="C")
            fmt = case.tensors[name][0]
            if target is not None and fmt in CONVERTIBLE:
                exp = expected_conversion(exp, fmt, target)
            same(got[name], exp, f"{name} rows/cols {want.get(name)} as {target}")
        it = dict(tsn.iter_tensors(case.path, rows=rows or None, cols=cols or None,
                                   dtype=target, batch_bytes=64))
        for name in case.order:
            same(it[name], got[name], f"{name} iter_tensors rows/cols")


def test_large_tensors_numpy(tmp_path):
    """Tensors of a MiB and more land in memory mapped for them alone: the same
    bytes, conversions and slices as small ones."""
    rng = np.random.default_rng([SEED, 18])
    t = {"big.f16": ("F16", (300, 1800), random_bytes(rng, "F16", 540_000)),
         "big.bf16": ("BF16", (1 << 19,), random_bytes(rng, "BF16", 1 << 19)),
         "big.i8": ("I8", (2, 1 << 20), random_bytes(rng, "I8", 2 << 20))}
    path = write_raw(tmp_path / "big.safetensors", t)
    for target in [None, "F32", "BF16"]:
        got = tsn.load_file(path, dtype=target)
        for name, (fmt, _, _) in t.items():
            src = as_array(*t[name])
            want = expected_conversion(src, fmt, target) \
                if target and fmt in CONVERTIBLE else src
            same(got[name], want, f"{name} -> {target}")
    got = tsn.load_file(path, rows={"big.f16": "1/3"}, cols={"big.i8": (1000, 1 << 20)})
    same(got["big.f16"], np.array(as_array(*t["big.f16"])[100:200]), "rows")
    same(got["big.i8"], np.array(as_array(*t["big.i8"])[:, 1000:]), "cols")
    # get_slice reads what it is asked for: the memory under the result is its size.
    with tensorstream.safe_open(path, "np") as f:
        for name, key in [("big.i8", -1), ("big.i8", (slice(1, 2), slice(5, 9))),
                          ("big.f16", slice(7, 9)), ("big.f16", np.int64(3))]:
            got = f.get_slice(name)[key]
            same(got, np.array(as_array(*t[name])[key], order="C"), f"{name}[{key!r}]")
            assert held(got) == got.nbytes, f"{name}[{key!r}]: holds {held(got)} bytes"


def test_slice_rule_refusals(tmp_path):
    rng = np.random.default_rng([SEED, 8])
    raw = random_bytes(rng, "F32", 12)
    path = write_raw(tmp_path / "a.safetensors", {
        "m": ("F32", (3, 4), raw), "v": ("F32", (12,), raw), "s": ("F32", (), raw[:4])})
    for kw in [{"rows": "m=0:4"}, {"rows": "m=2:1"}, {"rows": "m=0/2"}, {"cols": "v=0:1"},
               {"rows": "s=0:1"}, {"cols": "m=1/3"}, {"rows": "zz=0:1"},
               {"rows": "m=0:1", "cols": "m=0:1"}]:
        with pytest.raises(tensorstream.SafetensorError):
            tsn.load_file(path, **kw)


def test_dtype_numpy_lacks(tmp_path):
    rng = np.random.default_rng([SEED, 9])
    path = write_raw(tmp_path / "a.safetensors", {
        "ok": ("F32", (2,), random_bytes(rng, "F32", 2)),
        "tiny.w": ("F4", (4,), rng.integers(0, 256, 2, np.uint8).tobytes())})
    with pytest.raises(tensorstream.SafetensorError, match="tiny.w"):
        tsn.load_file(path)
    assert list(tsn.load_file(path, only="ok")) == ["ok"]
    # iter_tensors refuses before yielding anything, not after the tensors before.
    with pytest.raises(tensorstream.SafetensorError, match="tiny.w"):
        tensorstream.iter_tensors(path, framework="np", batch_bytes=1)
    if torch is not None:
        six = write_raw(tmp_path / "b.safetensors", {
            "ok": ("F32", (2,), random_bytes(rng, "F32", 2)),
            "six.w": ("F6_E3M2", (4,), rng.integers(0, 256, 3, np.uint8).tobytes())})
        with pytest.raises(tensorstream.SafetensorError, match="six.w"):
            tensorstream.iter_tensors(six, batch_bytes=1)
    with tensorstream.safe_open(path, "np") as f:
        assert f.get_slice("tiny.w").get_dtype() == "F4"
        with pytest.raises(tensorstream.SafetensorError, match="tiny.w"):
            f.get_tensor("tiny.w")
