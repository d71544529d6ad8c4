"""tensorstream.numpy.load_file against safetensors.numpy.load_file, side by side.

    python bench/cpu/py_compare.py PATH [--rounds 5] [--cold]

Each run is a fresh Python process (imports done before the clock starts) that
loads PATH, stops the clock, then hashes every tensor's bytes; the parent checks
every run's hashes against hashes of the file's own bytes. Loaders alternate
round by round after one warm-up run each. Warm: the file stays in the page cache;
--cold drops the caches before every run (root). Prints one line per run and a
summary: median seconds, GB/s, the ratio, and each loader's peak RSS (ru_maxrss,
taken right after its load) against the tensor bytes.
"""

import argparse
import hashlib
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import time

LOADERS = ["tensorstream", "safetensors"]


def child(loader, path):
    import numpy  # noqa: F401  (imported before the clock, as the loaders need it)
    if loader == "tensorstream":
        from tensorstream.numpy import load_file
    else:
        from safetensors.numpy import load_file
    t0 = time.perf_counter()
    tensors = load_file(path)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    digests = {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in tensors.items()}
    nbytes = sum(int(v.nbytes) for v in tensors.values())
    print(json.dumps({"loader": loader, "seconds": seconds, "bytes": nbytes,
                      "peak_rss": peak, "digests": digests}))


def file_digests(path):
    """sha256 of each tensor's bytes, read straight from the file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        out = {}
        for name, e in header.items():
            if name == "__metadata__":
                continue
            a, b = e["data_offsets"]
            f.seek(8 + n + a)
            out[name] = hashlib.sha256(f.read(b - a)).hexdigest()
    return out


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run_child(script, args, path, cold):
    """One run of ``script`` in a fresh process (``--child`` and ``args``) after the
    page cache was dropped (``cold``, root) or filled with ``path``: its last line, as
    JSON."""
    if cold:
        drop_caches()
    else:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass
    out = subprocess.run([sys.executable, script, "--child", *args],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def timed_rounds(loaders, run, want, rounds):
    """A warm-up run of each loader, then ``rounds`` rounds with the order rotated
    each round; every run's digests must equal ``want``. Prints one line per run and
    returns {loader: [results]}."""
    for loader in loaders:
        run(loader)
    results = {k: [] for k in loaders}
    width = max(len(k) for k in loaders) + 2
    for r in range(rounds):
        for loader in loaders[r % len(loaders):] + loaders[:r % len(loaders)]:
            res = run(loader)
            if res["digests"] != want:
                bad = [k for k in want if res["digests"].get(k) != want[k]]
                sys.exit(f"{loader}: round {r}: wrong bytes in {len(bad)} tensors, e.g. {bad[:3]}")
            results[loader].append(res)
            print(f"round {r} {loader:{width}s} {res['seconds']:.3f} s "
                  f"{res['bytes'] / res['seconds'] / 1e9:6.2f} GB/s "
                  f"peak RSS {res['peak_rss'] / res['bytes']:.3f}x tensor bytes (verified)")
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--child", choices=LOADERS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.path)
    want = file_digests(a.path)
    size = os.path.getsize(a.path)
    print(f"{a.path}: {len(want)} tensors, {size / 2**30:.2f} GiB, "
          f"{'cold' if a.cold else 'warm'}, {a.rounds} rounds after a warm-up")
    results = timed_rounds(LOADERS, lambda k: run_child(__file__, [k, a.path], a.path, a.cold),
                           want, a.rounds)
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in results.items()}
    nbytes = results["tensorstream"][0]["bytes"]
    summary = {
        "mode": "cold" if a.cold else "warm",
        "tensor_bytes": nbytes,
        "median_s": med,
        "gbps": {k: nbytes / s / 1e9 for k, s in med.items()},
        "speedup": med["safetensors"] / med["tensorstream"],
        "peak_rss_ratio": {k: max(x["peak_rss"] for x in v) / nbytes for k, v in results.items()},
    }
    print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
