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


def main():
    for target, seeds in (("header", HEADER), ("index", INDEX)):
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
