#!/usr/bin/env python3
"""Writes the PyTorch checkpoints of this folder with real `torch.save`, and
digests.json: for every tensor of each, as `torch.load(weights_only=True)` reads it
back, its safetensors dtype, shape and the SHA-256 of its contiguous little-endian
bytes; and the entries that are not tensors. tests/pytorch_torch.rs checks
`tensorstream convert` and `load` against it. CI does not need PyTorch: the files
are committed. Rerun after a change (seeded, but torch.save's output may differ
between PyTorch versions):

    python3 -m venv target/torch-venv
    target/torch-venv/bin/pip install torch numpy
    target/torch-venv/bin/python tests/data/pytorch/generate.py
"""
import collections
import hashlib
import json
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# torch dtype -> safetensors dtype: every dtype both have (F4 is packed two to a
# byte in torch, F6 has no torch dtype).
DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
    torch.bool: "BOOL",
    torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fnuz: "F8_E4M3FNUZ",
    torch.float8_e5m2fnuz: "F8_E5M2FNUZ",
    torch.float8_e8m0fnu: "F8_E8M0",
}


def rand(dtype, *shape):
    """Random values of `dtype`, never all zeros."""
    n = 1
    for d in shape:
        n *= d
    if dtype.is_floating_point:
        return (torch.randn(n) * 4 + 0.5).to(dtype).reshape(shape)
    if dtype == torch.complex64:
        return torch.randn(n, dtype=torch.complex64).reshape(shape)
    if dtype == torch.bool:
        return (torch.arange(n) % 3 == 1).reshape(shape)
    # Integers: random bytes of the type (uint64 and the rest alike).
    size = torch.empty(0, dtype=dtype).element_size()
    return torch.randint(1, 256, (n * size,), dtype=torch.uint8).view(dtype).reshape(shape)


def raw(t):
    """The contiguous bytes of a tensor, as safetensors stores them."""
    t = t.detach().contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes()


def dtypes():
    sd = collections.OrderedDict()
    for i, (dt, name) in enumerate(DTYPES.items()):
        sd[f"t.{name.lower()}"] = rand(dt, 3, 5 + i)
    sd["scalar"] = rand(torch.float32)
    sd["empty"] = rand(torch.float16, 0, 4)
    return sd


def views():
    base = rand(torch.float32, 6, 8)
    fp8 = rand(torch.float8_e4m3fn, 40)
    u16 = rand(torch.uint16, 4, 6)
    return collections.OrderedDict(
        base=base,
        transposed=base.t(),
        narrow=base[1:4, 2:6],
        stepped=base[::2, ::3],
        row=base[3],
        expanded=rand(torch.bfloat16, 1, 4).expand(3, 4),
        fp8_strided=fp8[1::3],
        fp8_tail=fp8[30:],
        u16_cols=u16[:, 1:3],
        u16_rows=u16[1:3],
    )


def module():
    torch.manual_seed(7)
    m = torch.nn.Sequential(
        torch.nn.Embedding(10, 4),
        torch.nn.Linear(4, 6),
        torch.nn.LayerNorm(6),
        torch.nn.Linear(6, 10, bias=False),
    )
    m[3].weight = torch.nn.Parameter(rand(torch.float32, 10, 6))
    m[0].weight = torch.nn.Parameter(m[3].weight.data[:, :4].contiguous())
    m.register_buffer("steps", torch.tensor([3, 1, 4], dtype=torch.int64))
    m = m.to(torch.bfloat16)
    return m


def tied_module():
    """A module whose head shares its embedding's weight (tied weights)."""
    emb = torch.nn.Embedding(12, 5)
    head = torch.nn.Linear(5, 12, bias=False)
    head.weight = emb.weight
    return torch.nn.ModuleDict({"emb": emb, "head": head})


def parameters():
    p = torch.nn.Parameter(rand(torch.float32, 3, 2))
    q = torch.nn.Parameter(rand(torch.float16, 4), requires_grad=False)
    q.tag = "attr"
    q.count = 3
    return {"p": p, "q": q, "plain": rand(torch.int32, 5)}


def save_all():
    """Every case: file name -> the object saved."""
    torch.manual_seed(21)
    m = module()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.tensor([1, 2])).float().sum().backward()
    opt.step()  # the optimizer's state now holds tensors, which are not converted
    cases = collections.OrderedDict()
    cases["dtypes.pt"] = dtypes()
    cases["views.pt"] = views()
    cases["module.bin"] = m.state_dict()
    cases["tied.bin"] = tied_module().state_dict()
    cases["parameters.pth"] = parameters()
    cases["nested_state_dict.pt"] = {
        "epoch": 3,
        "state_dict": tied_module().state_dict(),
        "optimizer": opt.state_dict(),
        "note": "trained",
    }
    cases["nested_model.pt"] = {"model": m.state_dict(), "step": 11}
    for name, obj in cases.items():
        torch.save(obj, os.path.join(HERE, name))
    # A sharded set as transformers writes it.
    sd = dtypes()
    names = sorted(sd)
    shard_dir = os.path.join(HERE, "sharded")
    os.makedirs(shard_dir, exist_ok=True)
    weight_map = {}
    for i, part in enumerate([names[: len(names) // 2], names[len(names) // 2:]]):
        f = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({n: sd[n] for n in part}, os.path.join(shard_dir, f))
        weight_map.update({n: f for n in part})
    total = sum(len(raw(t)) for t in sd.values())
    with open(os.path.join(shard_dir, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return list(cases) + ["sharded/pytorch_model.bin.index.json"]


def describe(obj, prefix=""):
    """Tensors by dotted name, as tensorstream names them, and what else is there."""
    tensors, skipped = {}, []
    for k, v in obj.items():
        name = prefix + str(k)
        if isinstance(v, torch.Tensor):
            tensors[name] = v
        elif isinstance(v, dict):
            t, s = describe(v, name + ".")
            tensors.update(t)
            skipped += s
        else:
            skipped.append(name)
    return tensors, skipped


def record(path):
    if path.endswith(".json"):
        index = json.load(open(path))
        obj = {}
        for f in sorted(set(index["weight_map"].values())):
            obj.update(torch.load(os.path.join(os.path.dirname(path), f), weights_only=True))
    else:
        obj = torch.load(path, weights_only=True)
    inner = obj
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict", "module"):
            if isinstance(obj.get(key), dict):
                inner = obj[key]
                break
    tensors, _ = describe(inner)
    out = {}
    for name, t in sorted(tensors.items()):
        out[name] = {
            "dtype": DTYPES[t.dtype],
            "shape": list(t.shape),
            "sha256": hashlib.sha256(raw(t)).hexdigest(),
            # Whether the tensor is one byte range of its storage (what `load` reads).
            "contiguous": t.is_contiguous(),
        }
    skipped = [k for k in obj if inner is not obj and obj[k] is not inner]
    return {"tensors": out, "skipped_top_level": [str(k) for k in skipped]}


def main():
    files = save_all()
    digests = {"torch": torch.__version__, "files": {}}
    for f in files:
        digests["files"][f] = record(os.path.join(HERE, f))
    with open(os.path.join(HERE, "digests.json"), "w") as out:
        json.dump(digests, out, indent=1, sort_keys=True)
        out.write("\n")


if __name__ == "__main__":
    main()
