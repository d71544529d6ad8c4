#!/usr/bin/env python3
"""Throughput of tensorstream's conversion kernels on the GPU, against the
device-to-device copy of the same bytes, on device-resident tensors (no disk,
no PCIe): what the issue's "conversion kernels >= 70% of device-to-device copy
bandwidth on tensors of 64 MiB and more" asks.

    python3 gpu-bundle/gpu/kernels.py --ptx kernels/convert.ptx --out "$OUT" [--mib 64,256]

Loads the repository's committed PTX (the same image the binary embeds) with
CuPy's RawModule, launches each convert_<src>_<dst> kernel exactly as the Rust
code does (256 threads per block, ceil(n / 2048) blocks capped at 65535; see
CudaSink::launch in src/device/cuda.rs) on realistic random input (normal
values for F32/F16/BF16, every byte value for the FP8 formats), timed with
CUDA events over repeated launches after warm-ups. Bandwidth counts bytes read
plus bytes written; the copy's reference is a device-to-device memcpy of the
source, also read plus written. Writes OUT/kernels.json and prints a table.
"""

import argparse
import json
import os
import re
import sys

BITS = {"f32": 32, "f16": 16, "bf16": 16, "f8_e4m3": 8, "f8_e5m2": 8, "f8_e4m3fnuz": 8,
        "f8_e5m2fnuz": 8, "f8_e8m0": 8}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--ptx", default=os.path.join(here, "..", "..", "kernels", "convert.ptx"))
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--mib", default="64,256", help="source tensor sizes in MiB")
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    try:
        import cupy as cp
    except Exception as e:  # noqa: BLE001
        print("kernels.py: CuPy is not importable here (%s): skipped" % e)
        return 0
    ptx = open(a.ptx).read()
    names = re.findall(r"\.entry\s+(convert_[a-z0-9_]+)\(", ptx)
    mod = cp.RawModule(path=os.path.abspath(a.ptx))
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    print("device %s; %d kernels in %s" % (props["name"].decode(), len(names), a.ptx))

    def timed(fn, reps):
        for _ in range(3):
            fn()
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        stop.synchronize()
        return cp.cuda.get_elapsed_time(start, stop) / 1e3 / reps

    def source(src, nbytes):
        n = nbytes * 8 // BITS[src]
        if src == "f32":
            return cp.random.standard_normal(n, dtype=cp.float32).view(cp.uint8)
        if src == "f16":
            return cp.random.standard_normal(n, dtype=cp.float32).astype(cp.float16).view(cp.uint8)
        if src == "bf16":
            return (cp.random.standard_normal(n, dtype=cp.float32).view(cp.uint32) >> 16).astype(cp.uint16).view(cp.uint8)
        return cp.random.randint(0, 256, size=n, dtype=cp.uint8)

    rows = []
    for mib in [int(x) for x in a.mib.split(",") if x]:
        nbytes = mib << 20
        copy_src = cp.random.randint(0, 256, size=nbytes, dtype=cp.uint8)
        copy_dst = cp.empty_like(copy_src)
        t_copy = timed(lambda: cp.cuda.runtime.memcpyAsync(copy_dst.data.ptr, copy_src.data.ptr, nbytes,
                                                           cp.cuda.runtime.memcpyDeviceToDevice, 0), a.reps)
        copy_gbps = 2 * nbytes / t_copy / 1e9
        print("\n%d MiB source: device-to-device copy %.0f GB/s read+written" % (mib, copy_gbps))
        del copy_src, copy_dst
        for name in names:
            m = re.match(r"convert_(.+)_(f32|f16|bf16)$", name)
            if not m:
                continue
            src, dst = m.group(1), m.group(2)
            try:
                inp = source(src, nbytes)
                n = nbytes * 8 // BITS[src]
                out = cp.empty(n * BITS[dst] // 8, dtype=cp.uint8)
                k = mod.get_function(name)
                blocks = max(1, min(65535, -(-n // (256 * 8))))
                t = timed(lambda: k((blocks,), (256,), (inp, out, cp.uint64(n))), a.reps)
            except Exception as e:  # noqa: BLE001
                print("  %-26s FAILED: %s" % (name, e))
                rows.append({"kernel": name, "source_mib": mib, "error": str(e)})
                continue
            moved = nbytes + out.nbytes
            gbps = moved / t / 1e9
            rows.append({"kernel": name, "source_mib": mib, "elements": n, "seconds": t, "gbps_rw": gbps,
                         "copy_gbps_rw": copy_gbps, "ratio_to_copy": gbps / copy_gbps})
            print("  %-26s %7.3f ms  %6.0f GB/s read+written  %.2f of the copy" % (name, t * 1e3, gbps, gbps / copy_gbps))
            del inp, out
    worst = min((r for r in rows if r["source_mib"] >= 64 and "ratio_to_copy" in r), key=lambda r: r["ratio_to_copy"], default=None)
    if worst:
        print("\nslowest kernel on >= 64 MiB: %s at %.2f of the device-to-device copy (goal >= 0.70: %s)" % (
            worst["kernel"], worst["ratio_to_copy"], "MET" if worst["ratio_to_copy"] >= 0.7 else "NOT MET"))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "kernels.json"), "w") as f:
        json.dump({"device": props["name"].decode(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
