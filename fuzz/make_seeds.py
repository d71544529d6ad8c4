#!/usr/bin/env python3
"""Writes the committed seed corpus: fuzz/corpus/<target>/seed-*.

Valid inputs and near-valid ones, each a step away from a rule the parser enforces.
Deterministic; run it again after changing it and commit what changes.
"""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def safetensors(header, data_len, pad_to=1, prefix=None, data_byte=0x5A):
    """A whole file: 8-byte little-endian length, JSON header, data section."""
    text = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    raw = text.encode()
    raw += b" " * (-len(raw) % pad_to)
    n = len(raw) if prefix is None else prefix
    return struct.pack("<Q", n) + raw + bytes([data_byte]) * data_len


def t(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


HEADER = {
    "empty": safetensors({}, 0),
    "one-f32": safetensors({"w": t("F32", [2, 2], 0, 16)}, 16),
    # Real writers pad the header to 8 bytes with spaces.
    "padded-metadata": safetensors(
        {"__metadata__": {"format": "pt"}, "w": t("BF16", [3], 0, 6)}, 6, pad_to=8
    ),
    "all-widths": safetensors(
        {
            "b": t("BOOL", [1], 0, 1),
            "f4": t("F4", [2], 1, 2),
            "f6": t("F6_E2M3", [4], 2, 5),
            "e": t("F8_E4M3", [0, 7], 5, 5),
            "s": t("I32", [], 5, 9),
            "c": t("C64", [1], 9, 17),
            "h": t("F8_E5M2FNUZ", [3], 17, 20),
        },
        20,
    ),
    # Listed out of offset order; the parser sorts.
    "unordered": safetensors({"z": t("U8", [2], 2, 4), "a": t("I16", [1], 0, 2)}, 4),
    "tensor-as-array": safetensors('{"w":["U16",[2],[0,4]]}', 4),
    "duplicate-name": safetensors(
        '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        '"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
        2,
    ),
    "gap": safetensors({"a": t("U8", [2], 0, 2), "b": t("U8", [2], 3, 5)}, 5),
    "overlap": safetensors({"a": t("U8", [4], 0, 4), "b": t("U8", [4], 2, 6)}, 6),
    "truncated": safetensors({"w": t("F64", [2], 0, 16)}, 9),
    "trailing-bytes": safetensors({"w": t("U8", [2], 0, 2)}, 3),
    "length-past-end": safetensors({"w": t("U8", [1], 0, 1)}, 1, prefix=4096),
    "shape-overflow": safetensors({"w": t("F32", [4294967296, 4294967296], 0, 4)}, 4),
    "sub-byte": safetensors({"w": t("F4", [3], 0, 2)}, 2),
    "huge-offsets": safetensors(
        {"w": t("U8", [18446744073709551000], 0, 18446744073709551000)}, 0
    ),
    "bad-metadata": safetensors({"__metadata__": {"n": 1}, "w": t("U8", [1], 0, 1)}, 1),
}

INDEX = {
    "basic": {
        "metadata": {"total_size": 24},
        "weight_map": {
            "model.embed.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors",
        },
    },
    "no-metadata": {"weight_map": {"w": "model.safetensors"}},
    "nested-metadata": {
        "metadata": {"a": [1, {"b": None}], "c": 1.5},
        "weight_map": {},
        "extra": True,
    },
    "parent-dir": {"weight_map": {"w": "../model.safetensors"}},
    "absolute": {"weight_map": {"w": "/etc/model.safetensors"}},
    "subdir": {"weight_map": {"w": "shards/model.safetensors"}},
    "dot": {"weight_map": {"w": "."}},
    "empty-name": {"weight_map": {"w": ""}},
    "trailing-slash": {"weight_map": {"w": "model.safetensors/"}},
    "non-string": {"weight_map": {"w": 3}},
    "missing-map": {"metadata": {}},
}


DTYPES = [
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
    "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
    "C64", "F64", "I64", "U64",
]  # tensorstream::Dtype::ALL, in order


def plan_options(
    align_log2=12, chunks=0, flags=0, gap=(2, 0, 1), dtype=None, tensor_align=9,
    patterns=(), mask=0xFFFFFFFF, rows=None,
):
    """The 16 option bytes the plan target reads (see fuzz_targets/plan.rs)."""
    o = bytearray(16)
    o[0] = align_log2
    o[1] = chunks
    o[2] = flags  # 1: chunk size off by one, 2: zero chunk size, 4: two shards, 8: rows
    o[3], o[4], o[5] = gap
    if dtype is not None:
        i = DTYPES.index(dtype)
        o[6] = 128 + (i - 128) % len(DTYPES)
    o[7] = tensor_align
    o[8] = len(patterns)
    for k, tensor in enumerate(patterns):
        o[9 + k] = tensor
    o[12:16] = struct.pack("<I", mask)
    if rows is not None:  # (tensor, or 0x80 for all; rule: bit 0 part, 1-3 rank, 4-6 world - 1, 7 columns)
        o[2] |= 8
        o[10], o[11] = rows
    return bytes(o)


PLAN_FILE = safetensors(
    {
        "a.weight": t("F32", [3], 0, 12),
        "a.bias": t("BF16", [5], 12, 22),
        "b.weight": t("U8", [4097], 22, 4119),
        "c.scale": t("F8_E4M3", [2], 4119, 4121),
        "e": t("F16", [0], 4121, 4121),
    },
    4121,
    pad_to=8,
)

GRID_FILE = safetensors(
    {
        "m.f16": t("F16", [6, 10], 0, 120),
        "m.u8": t("U8", [300, 16, 2], 120, 9720),
        "m.f4": t("F4", [4, 2], 9720, 9724),
    },
    9724,
    pad_to=8,
)

PLAN = {
    "default": plan_options() + PLAN_FILE,
    "byte-aligned-small-chunks": plan_options(align_log2=0, chunks=0, gap=(0, 0, 0)) + PLAN_FILE,
    "to-f16": plan_options(align_log2=9, chunks=3, dtype="F16") + PLAN_FILE,
    "to-bf16-two-shards": plan_options(dtype="BF16", flags=4, tensor_align=0x80 | 10) + PLAN_FILE,
    "select-one": plan_options(patterns=(2,)) + PLAN_FILE,
    "select-wildcards": plan_options(patterns=(0, 1), mask=0x01234567, dtype="F32") + PLAN_FILE,
    "odd-align": plan_options(align_log2=13, chunks=5, gap=(1, 0, 0)) + PLAN_FILE,
    "bad-chunk": plan_options(flags=1) + PLAN_FILE,
    "bad-dtype": plan_options(dtype="I8") + PLAN_FILE,
    "huge-align": plan_options(align_log2=14, dtype="F16") + PLAN_FILE,
    "huge-tensor-align": plan_options(dtype="F16", tensor_align=0x80 | 63) + PLAN_FILE,
    "chunk-below-element": plan_options(align_log2=0, chunks=0, dtype="F16") + PLAN_FILE,
    "one-f32": plan_options(align_log2=2) + HEADER["one-f32"],
    "all-widths": plan_options(align_log2=3, dtype="F32") + HEADER["all-widths"],
    # b.weight (4097 rows), rows 2..3 (range from the gap bytes 4 and 5).
    "rows-range": plan_options(gap=(2, 2, 1), rows=(2, 0)) + PLAN_FILE,
    # Every tensor, part 1 of 2: a.weight's 3 rows do not split, so refused.
    "rows-part-all": plan_options(rows=(0x80, 1 | 1 << 1 | 1 << 4), dtype="F16") + PLAN_FILE,
    # a.bias, part 0 of 5, converted.
    "rows-part-one": plan_options(rows=(1, 1 | 4 << 4), dtype="F32") + PLAN_FILE,
    # m.f16 columns 5..10 (part 1 of 2), converted, small chunks.
    "cols-part-one": plan_options(align_log2=4, chunks=1, rows=(0, 0x80 | 1 | 1 << 1 | 1 << 4), dtype="F32")
    + GRID_FILE,
    # Every tensor, columns 2..9: m.f4's 2 columns refuse.
    "cols-range-all": plan_options(gap=(2, 2, 7), rows=(0x80, 0x80)) + GRID_FILE,
    # m.u8 columns 3..4, rows gathered several to a read.
    "cols-gathered": plan_options(gap=(2, 3, 1), rows=(1, 0x80)) + GRID_FILE,
}


def main():
    for target, seeds in (("header", HEADER), ("index", INDEX), ("plan", PLAN)):
        out = os.path.join(HERE, "corpus", target)
        os.makedirs(out, exist_ok=True)
        for name, value in seeds.items():
            if not isinstance(value, bytes):
                value = json.dumps(value, separators=(",", ":")).encode()
            with open(os.path.join(out, "seed-" + name), "wb") as f:
                f.write(value)
    index = os.path.join(HERE, "corpus", "index")
    # Two spellings no JSON library writes: duplicated keys and the array form.
    with open(os.path.join(index, "seed-duplicate-key"), "wb") as f:
        f.write(b'{"weight_map":{"w":"a.safetensors","w":"b.safetensors"}}')
    with open(os.path.join(index, "seed-array-form"), "wb") as f:
        f.write(b'[null,{"w":"a.safetensors"}]')


if __name__ == "__main__":
    main()
