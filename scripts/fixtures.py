#!/usr/bin/env python3
"""Writes random safetensors fixtures for CPU/GPU differential checks.

    python3 scripts/fixtures.py DIR [--seed N] [--large-mib M] [--list]

Standard library only (no numpy, no torch), so it runs on the development
machine and on the GPU machine alike. Everything is deterministic from the seed:
the same seed writes the same bytes with any Python 3.9+.

Files written under DIR (printed one per line, the path to load first):

  dtypes.safetensors    every one of the 22 dtypes, odd shapes, random bytes;
                        header length not a multiple of 8 (unaligned data start);
                        data laid out in an order that is not the name order
  floats.safetensors    F32/F16/BF16: special bit patterns (NaN payloads, sNaN,
                        infinities, subnormals, rounding ties, overflow edges)
                        followed by random bits; sizes that cross 4 MiB chunks
  fp8.safetensors       the five FP8 dtypes: every code point (NaNs included) in
                        a shuffled [256] tensor, plus random odd-shaped tensors
  edge.safetensors      empty tensors ([0], [4,0], [0,3]), 0-rank tensors,
                        one-byte tensors, sub-byte F4/F6 with whole-byte shapes,
                        metadata; header length not a multiple of 8
  sharded/model.safetensors.index.json
                        three shards plus an index, mixed dtypes
  large.safetensors     (only with --large-mib M > 0) tensors of >= 64 MiB each,
                        BF16, F16, F32 and F8_E4M3, about M MiB in all: for
                        conversion throughput

Every fixture has tensors whose names contain "sel", so that
`--only '*sel*'` selects a non-empty subset of each.

Tensor bytes are random (never an all-zero buffer); floats therefore include
random NaNs and infinities, which is intended for bit-exact comparisons.
"""

import argparse
import hashlib
import json
import os
import random
import struct
import sys

# The 22 dtypes of the format: name -> bits per element.
DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
FP8 = ["F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"]

# Odd shapes per dtype; each has a bit count that is a whole number of bytes.
ODD_SHAPES = {
    "BOOL": [3, 7, 5],
    "F4": [3, 6],  # 18 * 4 bits = 9 bytes
    "F6_E2M3": [4, 5],  # 20 * 6 bits = 15 bytes
    "F6_E3M2": [2, 2, 9],  # 36 * 6 bits = 27 bytes
    "U8": [4097],
    "I8": [13, 17],
    "F8_E5M2": [31, 33],
    "F8_E4M3": [17, 61],
    "F8_E8M0": [255],
    "F8_E4M3FNUZ": [9, 3, 11],
    "F8_E5M2FNUZ": [1021],
    "I16": [3, 333],
    "U16": [777],
    "F16": [5, 1001],
    "BF16": [1031, 3],
    "I32": [7, 149],
    "U32": [1023],
    "F32": [3, 5, 7, 11],
    "C64": [129],
    "F64": [7, 73],
    "I64": [65, 3],
    "U64": [511],
}

# Special bit patterns, little-endian integers of the element width.
F32_SPECIAL = [
    0x00000000, 0x80000000,  # +0, -0
    0x7F800000, 0xFF800000,  # +inf, -inf
    0x7FC00000, 0xFFC00000,  # quiet NaNs
    0x7F800001, 0xFF800001,  # signalling NaNs (payload 1)
    0x7FBFFFFF, 0x7FC00001, 0xFFFFFFFF, 0x7FFFE000,  # NaN payloads
    0x00000001, 0x80000001, 0x007FFFFF, 0x00400000,  # F32 subnormals
    0x00800000, 0x7F7FFFFF, 0xFF7FFFFF,  # min normal, max finite
    0x477FEFFF, 0x477FF000, 0x477FF001, 0x47800000,  # around F16 max / overflow tie
    0x33000000, 0x33000001, 0x33800000, 0x337FFFFF,  # around half the F16 min subnormal
    0x38800000, 0x387FE000, 0x387FF000, 0x38000000,  # F16 normal/subnormal boundary
    0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001,  # BF16 ties (even / odd)
    0x3F801000, 0x3F803000, 0x3F800FFF,  # F16 ties
    0x7F7F8000, 0x7F7FFFFF, 0x7F7F7FFF,  # BF16 overflow edge
    0x3F800000, 0xBF800000, 0x40490FDB, 0xC2F6E979,  # ordinary values
]
F16_SPECIAL = [
    0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE00,
    0x7C01, 0xFC01, 0x7DFF, 0x7FFF, 0xFFFF, 0x7E01,  # sNaN / payloads
    0x0001, 0x8001, 0x03FF, 0x0200, 0x0400, 0x7BFF, 0xFBFF,
    0x3C00, 0xBC00, 0x3555, 0x4248, 0x0101,
]
BF16_SPECIAL = [
    0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0,
    0x7F81, 0xFF81, 0x7FBF, 0x7FFF, 0xFFFF, 0x7FC1,  # sNaN / payloads
    0x0001, 0x8001, 0x007F, 0x0080, 0x7F7F, 0xFF7F,
    0x477F, 0x4780, 0x477E, 0x3380, 0x3340, 0x3341, 0x33C0, 0x3880, 0x387F,
    0x3F80, 0xBF80, 0x4049, 0x3FC0,
]


class Tensor:
    __slots__ = ("name", "dtype", "shape", "data")

    def __init__(self, name, dtype, shape, data):
        self.name = name
        self.dtype = dtype
        self.shape = list(shape)
        self.data = data
        if nbytes(dtype, shape) != len(data):
            raise ValueError(f"{name}: {len(data)} bytes for {dtype}{shape}")


def nbytes(dtype, shape):
    n = 1
    for d in shape:
        n *= d
    bits = n * DTYPE_BITS[dtype]
    if bits % 8:
        raise ValueError(f"{dtype}{shape} is not a whole number of bytes")
    return bits // 8


def rng_for(seed, *parts):
    """An independent generator per tensor, so files do not depend on order."""
    h = hashlib.sha256(("%d:" % seed + ":".join(parts)).encode()).digest()
    return random.Random(int.from_bytes(h[:8], "little"))


def random_bytes(rng, n):
    """n random bytes; never all zeros (a 1-byte draw of 0 becomes 0x5A)."""
    if n == 0:
        return b""
    b = rng.randbytes(n) if hasattr(rng, "randbytes") else bytes(rng.getrandbits(8) for _ in range(n))
    if not any(b[:64]) and not any(b):
        b = b"\x5a" + b[1:]
    return b


def rand_tensor(seed, fname, name, dtype, shape):
    return Tensor(name, dtype, shape, random_bytes(rng_for(seed, fname, name), nbytes(dtype, shape)))


def packed(values, width):
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[width]
    return struct.pack("<%d%s" % (len(values), fmt), *values)


def write_safetensors(path, tensors, metadata=None, header_mod8=None, order_seed=None):
    """Writes a safetensors file. `header_mod8`: make the header length N satisfy
    N % 8 == header_mod8 (by trailing spaces, which the format allows). `order_seed`:
    lay the data out in a shuffled order (offsets not in name order)."""
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in " + path)
    order = list(tensors)
    if order_seed is not None:
        random.Random(order_seed).shuffle(order)
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    for t in order:
        header[t.name] = {"dtype": t.dtype, "shape": t.shape, "data_offsets": [off, off + len(t.data)]}
        off += len(t.data)
    js = json.dumps(header, separators=(",", ":"))
    if header_mod8 is not None:
        while len(js.encode()) % 8 != header_mod8:
            js += " "
    else:
        while (8 + len(js.encode())) % 8:
            js += " "
    raw = js.encode()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in order:
            f.write(t.data)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------
# The fixtures.
# ---------------------------------------------------------------------------


def fixture_dtypes(seed):
    f = "dtypes"
    ts = []
    for dt, shape in ODD_SHAPES.items():
        low = dt.lower()
        ts.append(rand_tensor(seed, f, "dtypes.%s.odd" % low, dt, shape))
        # A second tensor per dtype, a different size, some selected by --only.
        small = [2, 8] if DTYPE_BITS[dt] in (4, 6) else [3, 3]
        tag = "sel" if dt in ("BF16", "F8_E4M3", "I64", "F4", "C64", "F16", "F32") else "x"
        ts.append(rand_tensor(seed, f, "dtypes.%s.%s" % (low, tag), dt, small))
    # One tensor that crosses two 4 MiB chunks with an odd byte count.
    ts.append(rand_tensor(seed, f, "dtypes.u8.sel_chunks", "U8", [9 * 1024 * 1024 + 7]))
    return ts, {"format": "pt", "fixture": "dtypes", "seed": str(seed)}


def fixture_floats(seed):
    f = "floats"
    ts = []
    specs = [("F32", F32_SPECIAL, 4), ("F16", F16_SPECIAL, 2), ("BF16", BF16_SPECIAL, 2)]
    for dt, special, w in specs:
        low = dt.lower()
        r = rng_for(seed, f, low, "special")
        # Specials, each also negated, then random bits; shuffled so that
        # neighbours differ.
        sign = 1 << (8 * w - 1)
        vals = list(special) + [v ^ sign for v in special]
        vals += [r.getrandbits(8 * w) for _ in range(997)]
        r.shuffle(vals)
        ts.append(Tensor("floats.%s.special_sel" % low, dt, [len(vals)], packed(vals, w)))
        # Random bits: small odd, a multi-chunk odd one, and a 2-D one.
        ts.append(rand_tensor(seed, f, "floats.%s.one" % low, dt, [1]))
        ts.append(rand_tensor(seed, f, "floats.%s.odd" % low, dt, [3, 1027]))
        elems = (5 * 1024 * 1024 + 6) // w + 1  # crosses 4 MiB chunk boundaries
        ts.append(rand_tensor(seed, f, "floats.%s.chunks" % low, dt, [elems]))
        # Finite-only values (exponent top bit cleared), as real weights are.
        r2 = rng_for(seed, f, low, "finite")
        mask = {4: 0xBFFFFFFF, 2: 0xBFFF}[w]
        fin = [r2.getrandbits(8 * w) & mask for _ in range(4099)]
        ts.append(Tensor("floats.%s.finite" % low, dt, [4099], packed(fin, w)))
    return ts, {"format": "pt", "fixture": "floats", "seed": str(seed)}


def fixture_fp8(seed):
    f = "fp8"
    ts = []
    for dt in FP8:
        low = dt.lower()
        codes = list(range(256))
        rng_for(seed, f, low, "perm").shuffle(codes)
        ts.append(Tensor("fp8.%s.all_codes_sel" % low, dt, [256], bytes(codes)))
        ts.append(Tensor("fp8.%s.all_codes_2d" % low, dt, [16, 16], bytes(range(256))))
        ts.append(rand_tensor(seed, f, "fp8.%s.odd" % low, dt, [33, 517]))
        ts.append(rand_tensor(seed, f, "fp8.%s.chunks" % low, dt, [4 * 1024 * 1024 + 3]))
    return ts, {"format": "pt", "fixture": "fp8", "seed": str(seed)}


def fixture_edge(seed):
    f = "edge"
    ts = []
    for dt, shape in [("F32", [0]), ("BF16", [4, 0]), ("F8_E4M3", [0, 3]), ("I64", [0]), ("F16", [2, 0, 5])]:
        ts.append(Tensor("edge.empty.%s_%s" % (dt.lower(), "x".join(map(str, shape))), dt, shape, b""))
    for dt in ["F32", "F16", "BF16", "F8_E5M2", "F8_E8M0", "I64", "BOOL", "C64", "F64", "U16"]:
        ts.append(rand_tensor(seed, f, "edge.scalar.%s" % dt.lower(), dt, []))
    ts.append(rand_tensor(seed, f, "edge.one_byte.u8", "U8", [1]))
    ts.append(rand_tensor(seed, f, "edge.one_byte.i8_sel", "I8", [1, 1, 1]))
    ts.append(rand_tensor(seed, f, "edge.f4.pair", "F4", [2]))
    ts.append(rand_tensor(seed, f, "edge.f6.four", "F6_E2M3", [4]))
    ts.append(rand_tensor(seed, f, "edge.scalar_sel.f32", "F32", []))
    ts.append(Tensor("edge.empty_sel.bf16", "BF16", [0], b""))
    ts.append(rand_tensor(seed, f, "edge.bf16.page_plus_one", "BF16", [2049]))
    ts.append(rand_tensor(seed, f, "edge.f32.page_minus_one", "F32", [1023]))
    return ts, {"format": "pt", "fixture": "edge", "seed": str(seed), "note": "unaligned header"}


def fixture_sharded(seed):
    f = "sharded"
    shards = [[], [], []]
    layers = 6
    k = 0
    for l in range(layers):
        for part, dt, shape in [
            ("attn.q.weight", "BF16", [96, 64]),
            ("attn.scale", "F32", [3]),
            ("mlp.up.weight", "F8_E4M3", [256, 65]),
            ("mlp.up.weight_scale", "F8_E8M0", [256]),
            ("mlp.down.weight", "F16", [64, 131]),
            ("norm.weight", "BF16", [64]),
        ]:
            name = "model.layers.%d.%s" % (l, part)
            if l in (1, 4) and part.startswith("attn"):
                name = "model.layers.%d.sel.%s" % (l, part)
            shards[k % 3].append(rand_tensor(seed, f, name, dt, shape))
            k += 1
    shards[0].append(rand_tensor(seed, f, "model.embed_sel.weight", "BF16", [1000, 64]))
    shards[2].append(rand_tensor(seed, f, "lm_head.weight", "BF16", [1000, 64]))
    shards[1].append(rand_tensor(seed, f, "model.position_ids", "I64", [1, 77]))
    return shards


def fixture_large(seed, total_mib):
    """Tensors of >= 64 MiB each (so kernels see big inputs), ~total_mib in all."""
    f = "large"
    mib = 1 << 20
    per = max(64, total_mib // 4)
    ts = []
    for i, (dt, w) in enumerate([("BF16", 2), ("F16", 2), ("F32", 4), ("F8_E4M3", 1)]):
        elems = per * mib // w
        cols = 4096
        rows = elems // cols
        tag = "sel" if i % 2 == 0 else "x"
        ts.append(rand_tensor(seed, f, "large.%s.%s" % (dt.lower(), tag), dt, [rows, cols]))
    return ts, {"format": "pt", "fixture": "large", "seed": str(seed)}


def write_all(out, seed, large_mib):
    os.makedirs(out, exist_ok=True)
    written = []
    for name, fn, kw in [
        ("dtypes", fixture_dtypes, {"header_mod8": 3, "order_seed": seed + 1}),
        ("floats", fixture_floats, {"order_seed": seed + 2}),
        ("fp8", fixture_fp8, {}),
        ("edge", fixture_edge, {"header_mod8": 5, "order_seed": seed + 4}),
    ]:
        ts, meta = fn(seed)
        written.append(write_safetensors(os.path.join(out, name + ".safetensors"), ts, meta, **kw))
    shards = fixture_sharded(seed)
    sdir = os.path.join(out, "sharded")
    os.makedirs(sdir, exist_ok=True)
    weight_map = {}
    total = 0
    n = len(shards)
    for i, ts in enumerate(shards):
        fname = "model-%05d-of-%05d.safetensors" % (i + 1, n)
        write_safetensors(
            os.path.join(sdir, fname),
            ts,
            {"format": "pt"},
            header_mod8=(i * 3) % 8 if i else None,
            order_seed=seed + 10 + i,
        )
        for t in ts:
            weight_map[t.name] = fname
            total += len(t.data)
    index = os.path.join(sdir, "model.safetensors.index.json")
    with open(index, "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, fh, indent=1)
    written.append(index)
    if large_mib > 0:
        ts, meta = fixture_large(seed, large_mib)
        written.append(write_safetensors(os.path.join(out, "large.safetensors"), ts, meta))
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="output directory (created if missing)")
    ap.add_argument("--seed", type=int, default=20251126, help="seed (default 20251126)")
    ap.add_argument(
        "--large-mib",
        type=int,
        default=0,
        help="also write large.safetensors of about this many MiB (tensors >= 64 MiB each; 0: none)",
    )
    ap.add_argument("--list", action="store_true", help="print the fixture paths only, write nothing")
    a = ap.parse_args(argv)
    if a.list:
        names = ["dtypes.safetensors", "floats.safetensors", "fp8.safetensors", "edge.safetensors",
                 os.path.join("sharded", "model.safetensors.index.json")]
        if a.large_mib > 0:
            names.append("large.safetensors")
        for n in names:
            print(os.path.join(a.dir, n))
        return 0
    for p in write_all(a.dir, a.seed, a.large_mib):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
