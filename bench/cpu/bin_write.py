#!/usr/bin/env python3
"""Writes a safetensors file's tensors as a PyTorch zip checkpoint, laid out as
torch.save lays it out (data.pkl, byteorder, one stored entry per storage, version),
without PyTorch: the pickle names the globals torch.save names, through the fake
`torch` module of tests/pytorch_fixtures.py. Storages are copied in 16 MiB pieces,
so memory stays small whatever the size.

    python3 bench/cpu/bin_write.py IN.safetensors OUT.bin
"""
import collections
import json
import os
import struct
import sys
import zipfile

# tests/ in a checkout; beside this script in the GPU bundle.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../tests"))
import pytorch_fixtures as fx  # noqa: E402  (installs the fake torch module)


def main():
    src, out = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    start = 8 + n
    header.pop("__metadata__", None)
    sd = collections.OrderedDict()
    ranges = []
    for i, (name, t) in enumerate(sorted(header.items(), key=lambda kv: kv[1]["data_offsets"])):
        b, e = t["data_offsets"]
        st = fx.Storage.__new__(fx.Storage)
        size = fx.DTYPES[t["dtype"]][1]
        st.key, st.dtype, st.untyped, st.numel = str(i), t["dtype"], False, (e - b) // size
        sd[name] = fx.Tensor(st, t["shape"])
        ranges.append((str(i), start + b, e - b))
    import io
    buf = io.BytesIO()
    fx.Pickler(buf, protocol=2).dump(sd)
    prefix = os.path.splitext(os.path.basename(out))[0]
    with open(src, "rb") as f, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        z.writestr(prefix + "/data.pkl", buf.getvalue())
        z.writestr(prefix + "/byteorder", "little")
        for key, off, length in ranges:
            with z.open(f"{prefix}/data/{key}", "w", force_zip64=length >= 1 << 31) as w:
                f.seek(off)
                left = length
                while left:
                    chunk = f.read(min(left, 16 << 20))
                    w.write(chunk)
                    left -= len(chunk)
        z.writestr(prefix + "/version", "3\n")


if __name__ == "__main__":
    main()
