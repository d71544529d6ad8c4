"""Seeded random parity for PyTorch (see test_parity.py, whose checkpoints and checks
it shares): load_file, conversions against ``.to()``, safe_open, iter_tensors,
load_into, F4."""

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tensorstream  # noqa: E402
from conftest import write_raw  # noqa: E402
from test_parity import (  # noqa: E402
    SEED,
    CASES,
    TORCH,
    CONVERTIBLE,
    cases,
    random_bytes,
    random_key,
    outcome,
    random_shape,
    random_name,
    same,
    raw_of,
    expected_conversion,
    check_safe_open,
    random_rules,
    expected_slice,
    as_array,
)

def torch_cases(tmp_path, salt, count=CASES):
    return cases(tmp_path, salt, count, dtypes=sorted(TORCH))


def test_load_file_torch(tmp_path):
    import safetensors.torch as stt
    import tensorstream.torch as tst
    for rng, case in torch_cases(tmp_path, 11):
        got = tst.load_file(case.path, ["cpu", "cpu:0", torch.device("cpu")][rng.integers(0, 3)])
        assert list(got) == case.order
        for name in case.order:
            same(got[name], case.tensor(name), name)
        if case.single:
            ref = stt.load_file(case.path)
            assert sorted(ref) == sorted(got)
            for name, t in ref.items():
                same(got[name], t, f"{name} vs safetensors")


def test_dtype_conversions_torch(tmp_path):
    import tensorstream.torch as tst
    names = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    for rng, case in torch_cases(tmp_path, 12):
        target = str(rng.choice(sorted(names)))
        got = tst.load_file(case.path, dtype=names[target])
        for name in case.order:
            fmt = case.tensors[name][0]
            src = case.tensor(name)
            if fmt not in CONVERTIBLE:
                same(got[name], src, name)
                continue
            want = src if fmt == target else src.to(names[target])
            nan = torch.isnan(src.float())
            assert got[name].dtype == names[target], name
            same(got[name][~nan], want[~nan], f"{name}: {fmt} -> {target} against .to()")
            # NaNs: the project's canonical quiet NaN with the source's sign.
            exp = expected_conversion(case.array(name), fmt, target)
            assert raw_of(got[name]) == raw_of(exp), f"{name}: {fmt} -> {target} NaNs"


def test_slice_strides_torch(tmp_path):
    """A slice whose dimensions of size 1 kept the view's strides (``[::2]`` of two
    rows) could not be viewed as another dtype, unlike safetensors' tensors."""
    rng = np.random.default_rng([SEED, 15])
    path = write_raw(tmp_path / "a.safetensors",
                     {"m": ("F16", (2, 3), random_bytes(rng, "F16", 6))})
    m = torch.from_numpy(np.frombuffer(open(path, "rb").read()[-12:], np.float16).copy())
    with tensorstream.safe_open(path, "pt") as f:
        for key in [slice(None, None, 2), (slice(None), slice(1, None, 3)),
                    (0, slice(None, None, 3))]:
            got = f.get_slice("m")[key]
            assert got.stride() == torch.empty(got.shape).stride(), key
            assert torch.equal(got.view(torch.uint8), m.reshape(2, 3)[key].clone(
                memory_format=torch.contiguous_format).view(torch.uint8))


def test_safe_open_torch(tmp_path):
    for rng, case in torch_cases(tmp_path, 13):
        check_safe_open(rng, case, "pt")


def test_iter_tensors_torch(tmp_path):
    import tensorstream.torch as tst
    for rng, case in torch_cases(tmp_path, 14):
        rows, cols, want = random_rules(rng, case)
        kw = {"rows": rows or None, "cols": cols or None}
        whole = tst.load_file(case.path, **kw)
        if want and rng.random() < 0.5:
            # Only the tensors sliced, converted: the same as load_file with them.
            opts = dict(kw, only=sorted(want), dtype=torch.bfloat16)
            conv = tst.load_file(case.path, **opts)
            it = list(tensorstream.iter_tensors(case.path, batch_bytes=64, **opts))
            assert [n for n, _ in it] == list(conv)
            for name, t in it:
                same(t, conv[name], f"{name} {opts}")
        got = list(tensorstream.iter_tensors(case.path, batch_bytes=int(rng.integers(1, 512)),
                                             **kw))
        assert [n for n, _ in got] == case.order
        for name, t in got:
            same(t, whole[name], name)
            full = case.tensor(name)
            exp = expected_slice(full, *want[name]) if name in want else full
            same(t, exp.contiguous(), f"{name} rows/cols {want.get(name)}")


def _random_target(rng, fmt, shape):
    """A tensor of ``fmt`` and ``shape`` full of random bytes: contiguous, or (for
    two dimensions and more, or by a step) a non-contiguous view."""
    count = int(np.prod(shape, dtype=np.int64))
    pick = rng.random()
    if len(shape) >= 2 and pick < 0.3:
        flipped = shape[:-2] + (shape[-1], shape[-2])
        raw = random_bytes(rng, fmt, count)
        base = torch.from_numpy(np.frombuffer(raw, np.uint8).copy())
        return _view(base, fmt, flipped).transpose(-1, -2)
    if len(shape) >= 1 and pick < 0.5:
        doubled = (shape[0] * 2,) + shape[1:]
        raw = random_bytes(rng, fmt, 2 * count)
        return _view(torch.from_numpy(np.frombuffer(raw, np.uint8).copy()), fmt, doubled)[::2]
    raw = random_bytes(rng, fmt, count)
    return _view(torch.from_numpy(np.frombuffer(raw, np.uint8).copy()), fmt, shape)


def _view(u8, fmt, shape):
    if u8.numel() == 0:
        return torch.empty(shape, dtype=TORCH[fmt])
    return u8.view(TORCH[fmt]).reshape(shape)


def _snapshot(targets):
    return {n: raw_of(t) for n, t in targets.items()}


def _load_into_case(rng, root):
    """Random targets and a file for them: {name: tensor}, the file's tensors
    {name: (fmt, shape, bytes)}, and the expected missing and unexpected keys."""
    floats = [f for f in ("F32", "F16", "BF16") if f in TORCH]
    sources = [f for f in CONVERTIBLE if f in TORCH]
    taken, targets, file = set(), {}, {}
    for _ in range(int(rng.integers(1, 8))):
        name = random_name(rng, taken)
        fmt = str(rng.choice(sorted(TORCH)))
        shape = random_shape(rng)
        targets[name] = _random_target(rng, fmt, shape)
        stored = fmt
        if fmt in floats and rng.random() < 0.5:
            stored = str(rng.choice(sorted(sources)))
        if rng.random() < 0.85:
            count = int(np.prod(shape, dtype=np.int64))
            file[name] = (stored, shape, random_bytes(rng, stored, count))
    present = [n for n in targets if n in file]
    if present and rng.random() < 0.4:
        first = str(rng.choice(present))
        alias = random_name(rng, taken)
        targets[alias] = targets[first]  # tied: one tensor under two names
        file[alias] = file[first]
    for _ in range(int(rng.integers(0, 3))):
        fmt = str(rng.choice(sorted(TORCH)))
        shape = random_shape(rng)
        file[random_name(rng, taken)] = (fmt, shape, random_bytes(rng, fmt, int(np.prod(
            shape, dtype=np.int64))))
    names = list(file)
    order = [names[i] for i in rng.permutation(len(names))]
    root.mkdir(parents=True, exist_ok=True)
    path = write_raw(root / "model.safetensors", {n: file[n] for n in order})
    missing = [n for n in targets if n not in file]
    unexpected = [n for n in order if n not in targets]
    return targets, path, file, missing, unexpected


def _expected_fill(fmt, shape, raw, dtype):
    """What a parameter of torch ``dtype`` holds after loading a tensor stored as
    ``fmt``: the bytes, or their conversion (``.to()`` off NaNs, the project's NaN)."""
    src = as_array(fmt, shape, raw)
    target = {v: k for k, v in TORCH.items()}[dtype]
    if target == fmt:
        return raw
    return raw_of(expected_conversion(src, fmt, target))


def test_load_into(tmp_path):
    import tensorstream.torch as tst
    rng = np.random.default_rng([SEED, 16])
    for k in range(CASES):
        targets, path, file, missing, unexpected = _load_into_case(rng, tmp_path / f"c{k}")
        before = _snapshot(targets)
        if missing or unexpected:
            with pytest.raises(RuntimeError, match="missing keys"):
                tst.load_into(targets, path)
            assert _snapshot(targets) == before, "strict load_into wrote before raising"
        got = tst.load_into(targets, path, strict=False)
        assert list(got.missing_keys) == missing
        assert list(got.unexpected_keys) == unexpected
        for name, t in targets.items():
            if name in missing:
                assert raw_of(t) == before[name], f"{name}: missing, yet written"
                continue
            fmt, shape, raw = file[name]
            assert raw_of(t) == _expected_fill(fmt, shape, raw, t.dtype), \
                f"{name}: {fmt} {shape} into {t.dtype} {tuple(t.shape)} {t.stride()}"
            if fmt != {v: k for k, v in TORCH.items()}[t.dtype]:
                src = torch.from_numpy(np.frombuffer(raw, np.uint8).copy()) if raw else \
                    torch.empty(0, dtype=torch.uint8)
                src = _view(src, fmt, shape)
                ok = ~torch.isnan(src.float())
                same(t[ok], src.to(t.dtype)[ok], f"{name} against .to()")


def test_load_into_refusals(tmp_path):
    """A shape that differs, or a dtype the file's tensor cannot be loaded as (only
    floating tensors convert), raises SafetensorError naming the tensor."""
    import tensorstream.torch as tst
    rng = np.random.default_rng([SEED, 17])
    path = write_raw(tmp_path / "a.safetensors", {
        "a.w": ("F32", (2, 3), random_bytes(rng, "F32", 6)),
        "b.w": ("I32", (4,), random_bytes(rng, "I32", 4)),
        "c.w": ("F64", (2,), random_bytes(rng, "F64", 2))})
    good = {"a.w": torch.empty(2, 3), "b.w": torch.empty(4, dtype=torch.int32),
            "c.w": torch.empty(2, dtype=torch.float64)}
    for name, bad in [("a.w", torch.empty(3, 2)), ("b.w", torch.empty(4)),
                      ("a.w", torch.empty(2, 3, dtype=torch.int32)),
                      ("c.w", torch.empty(2)), ("a.w", torch.empty(2, 3, dtype=torch.float64))]:
        targets = {n: _random_target(rng, {v: k for k, v in TORCH.items()}[t.dtype],
                                     tuple(t.shape)) for n, t in good.items()}
        targets[name] = bad.fill_(7)
        before = _snapshot(targets)
        why = "shape" if bad.dtype == good[name].dtype else "cannot be loaded"
        with pytest.raises(tensorstream.SafetensorError, match=re.escape(name) + ".*" + why):
            tst.load_into(targets, path)
        assert _snapshot(targets) == before, f"{name}: written before the error"


def test_load_into_module(tmp_path):
    """A module with a tied weight, a buffer and a non-contiguous parameter."""
    import safetensors.torch as stt
    import tensorstream.torch as tst

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(11, 6)
            self.head = torch.nn.Linear(6, 11, bias=False)
            self.head.weight = self.emb.weight
            self.norm = torch.nn.LayerNorm(6).to(torch.bfloat16)
            self.register_buffer("steps", torch.zeros(3, dtype=torch.int64))
            self.wt = torch.nn.Parameter(torch.empty(5, 4).t())

    torch.manual_seed(SEED % 2**31)
    src, dst = Net(), Net()
    with torch.no_grad():
        for p in list(src.parameters()) + list(src.buffers()):
            p.copy_(torch.randn(p.shape).to(p.dtype) * 5 if p.is_floating_point()
                    else torch.randint(-9, 9, p.shape))
    state = {k: v.detach().clone().contiguous() for k, v in src.state_dict().items()}
    path = str(tmp_path / "net.safetensors")
    stt.save_file(state, path)
    got = tst.load_into(dst, path)
    assert list(got.missing_keys) == [] and list(got.unexpected_keys) == []
    for k, v in dst.state_dict().items():
        same(v, state[k], k)
    assert dst.head.weight is dst.emb.weight and not dst.wt.is_contiguous()
    # A file with one name of the tied pair (as safetensors.torch.save_model writes):
    # the other is missing, as load_state_dict reports it, yet its memory is filled.
    del state["head.weight"]
    stt.save_file(state, path)
    dst = Net()
    with pytest.raises(RuntimeError, match="head.weight"):
        tst.load_into(dst, path)
    got = tst.load_into(dst, path, strict=False)
    assert list(got.missing_keys) == ["head.weight"] and list(got.unexpected_keys) == []
    assert list(dst.load_state_dict(state, strict=False).missing_keys) == ["head.weight"]
    same(dst.head.weight, state["emb.weight"], "tied")


def test_load_into_rows_cols(tmp_path):
    """Targets shaped as a tensor-parallel rank's slices are filled with them."""
    import tensorstream.torch as tst
    for rng, case in torch_cases(tmp_path, 19, count=CASES // 2):
        rows, cols, want = random_rules(rng, case)
        if not want:
            continue
        targets = {}
        for name in case.order:
            full = case.tensor(name)
            exp = expected_slice(full, *want[name]) if name in want else full
            targets[name] = torch.empty_like(exp, memory_format=torch.contiguous_format)
        got = tst.load_into(targets, case.path, rows=rows or None, cols=cols or None)
        assert list(got.missing_keys) == [] and list(got.unexpected_keys) == []
        for name, t in targets.items():
            full = case.tensor(name)
            exp = expected_slice(full, *want[name]) if name in want else full
            same(t, exp, f"{name} rows/cols {want.get(name)}")


@pytest.mark.skipif(torch is not None and not hasattr(torch, "float4_e2m1fn_x2"),
                    reason="this PyTorch has no float4_e2m1fn_x2")
def test_f4_torch(tmp_path):
    """F4 loads as safetensors.torch loads it: torch.float4_e2m1fn_x2, two values a
    byte, the last dimension halved; an odd last dimension is refused."""
    import safetensors.torch as stt
    import tensorstream.torch as tst
    rng = np.random.default_rng([SEED, 20])
    for k in range(CASES // 2):
        shape = random_shape(rng)
        if not shape or rng.random() < 0.8:
            shape = shape[:-1] + (2 * int(rng.integers(0, 4)),) if shape else (2,)
        if k < 2:
            shape = [(2, 3), (3,)][k]  # odd last dimensions, whole bytes or not
        count = int(np.prod(shape, dtype=np.int64))
        raw = rng.integers(0, 256, (count + 1) // 2, np.uint8).tobytes()
        other = random_bytes(rng, "F16", 3)
        path = write_raw(tmp_path / f"f4-{k}.safetensors",
                         {"w.f4": ("F4", shape, raw), "b": ("F16", (3,), other)})
        if count % 2 or shape[-1] % 2:
            with pytest.raises(tensorstream.SafetensorError, match="w.f4"):
                tst.load_file(path)
            continue
        ref = stt.load_file(path)
        got = tst.load_file(path)
        for name in ref:
            same(got[name], ref[name], f"{name} {shape}")
        with tensorstream.safe_open(path, "pt") as f:
            same(f.get_tensor("w.f4"), ref["w.f4"], "get_tensor")
            assert f.get_slice("w.f4").get_shape() == list(shape)
            assert f.get_slice("w.f4").get_dtype() == "F4"
            with pytest.raises(tensorstream.SafetensorError, match="get_tensor"):
                f.get_slice("w.f4")[:1]
        it = dict(tensorstream.iter_tensors(path, batch_bytes=1))
        same(it["w.f4"], ref["w.f4"], "iter_tensors")
        targets = {n: torch.empty_like(t) for n, t in ref.items()}
        tst.load_into(targets, path)
        same(targets["w.f4"], ref["w.f4"], "load_into")
        with pytest.raises(tensorstream.SafetensorError, match="w.f4"):
            tst.load_into({"w.f4": torch.empty(shape), "b": torch.empty(3)}, path)


def test_iter_tensors_kept_while_buffers_are_reused(tmp_path):
    """iter_tensors reuses the memory of tensors dropped (tensors of a MiB and more):
    tensors kept, their views, their ``.numpy()`` arrays and dtype views keep theirs."""
    rng = np.random.default_rng([SEED, 21])
    t = {}
    for i in range(10):
        fmt = str(rng.choice(["F32", "BF16", "I8"]))
        width = {"F32": 4, "BF16": 2, "I8": 1}[fmt]
        rows = int(rng.choice([256, 512])) * 4 // width
        t[f"l{i}.w"] = (fmt, (rows, 1024), random_bytes(rng, fmt, rows * 1024))
    path = write_raw(tmp_path / "layers.safetensors", t)
    kept = {}
    for k, (name, x) in enumerate(tensorstream.iter_tensors(path, batch_bytes=3 << 20)):
        how = k % 5
        if how == 0:
            kept[name] = (x, x)
        elif how == 1:
            kept[name] = (x[3:5].clone(), x[3:5])
        elif how == 2:
            kept[name] = (x.clone(), torch.from_numpy(x.view(torch.uint8).numpy()).view(x.dtype))
        elif how == 3:
            kept[name] = (x.clone(), x.view(torch.uint8).view(x.dtype))
        del x  # how == 4: dropped, its memory free for the next tensors
    for name, (want, got) in kept.items():
        if got.data_ptr() == want.data_ptr():
            want = torch.from_numpy(np.frombuffer(t[name][2], np.uint8).copy()) \
                .view(got.dtype).reshape(got.shape)
        same(got, want, name)


def _random_state(rng, count):
    """A state dict as models hold them: random dtypes and shapes, and views (slices,
    steps, transposes, several of one storage) beside whole tensors."""
    fmts = sorted(f for f in TORCH if f != "F4")
    state, taken = {}, set()
    for _ in range(count):
        fmt = str(rng.choice(fmts))
        shape = random_shape(rng)
        n = int(np.prod(shape, dtype=np.int64))
        raw = random_bytes(rng, fmt, n)
        x = torch.from_numpy(np.frombuffer(raw, np.uint8).copy()).view(TORCH[fmt]) \
            .reshape(shape) if n else torch.empty(shape, dtype=TORCH[fmt])
        name = random_name(rng, taken)
        state[name] = x
        pick = rng.random()
        if len(shape) >= 2 and pick < 0.25:
            state[random_name(rng, taken)] = x.transpose(0, 1)
        elif len(shape) >= 1 and shape[0] > 1 and pick < 0.5:
            state[random_name(rng, taken)] = x[1:]
            state[random_name(rng, taken)] = x[::2]
    return state


def test_torch_save_checkpoints(tmp_path):
    """PyTorch checkpoints written by torch.save load as torch.load(weights_only=True)
    reads them."""
    import tensorstream.torch as tst
    rng = np.random.default_rng([SEED, 22])
    for k in range(CASES // 2):
        state = _random_state(rng, int(rng.integers(1, 7)))
        path = str(tmp_path / f"m{k}.{['bin', 'pt', 'pth'][k % 3]}")
        torch.save(state, path)
        want = torch.load(path, weights_only=True)
        strided = [n for n, w in want.items() if not w.is_contiguous()]
        if strided:
            # The checkpoint is refused, naming such a tensor: the library reads each
            # tensor as one byte range (`tensorstream convert` rewrites the file).
            with pytest.raises(tensorstream.SafetensorError, match="strided view") as e:
                tst.load_file(path)
            if all(n.isprintable() and "\\" not in n for n in strided):  # others escaped
                assert any(f"'{n}'" in str(e.value) for n in strided), str(e.value)
            continue
        got = tst.load_file(path)
        assert sorted(got) == sorted(want)
        for name, w in want.items():
            same(got[name], w, f"{path}: {name} {tuple(w.shape)} {w.stride()}")
        with tensorstream.safe_open(path, "pt") as f:
            for name, w in want.items():
                for _ in range(4):
                    key = random_key(rng, tuple(w.shape))
                    kind, x = outcome(lambda: f.get_slice(name)[key])
                    pkind, px = outcome(lambda: w[key])
                    assert kind == pkind, f"{path}: {name}[{key!r}]: {x!r} / {px!r}"
                    if kind == "ok":
                        same(x, px, f"{path}: {name}[{key!r}]")
        it = list(tensorstream.iter_tensors(path, batch_bytes=int(rng.integers(1, 256))))
        assert sorted(n for n, _ in it) == sorted(want)
        for name, x in it:
            same(x, want[name], f"{path}: {name} iter_tensors")
        with tensorstream.safe_open(path, "np") as f:
            for name, w in want.items():
                if w.dtype != torch.bfloat16 and not str(w.dtype).startswith("torch.float8"):
                    same(torch.from_numpy(f.get_tensor(name)), w, f"{path}: {name} np")
