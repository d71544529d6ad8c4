#!/usr/bin/env python3
"""Settings sweep of tensorstream loading to a CUDA device, on the GPU machine:
which backend, queue depth, chunk size and staging size load a cached (warm)
checkpoint fastest, measured side by side, configurations alternating run by
run. Writes OUT/sweep.json and prints, last, one line

    BEST_WARM <arguments>

(the fastest configuration's `tensorstream load` arguments by median GB/s,
the device-init time left out as compare.py does), which a GPU session passes
to compare.py as --ts-best-warm.

    python3 gpu-bundle/gpu/sweep.py --bin gpu-bundle/bin/tensorstream --out "$OUT" [--size 8G] [--runs 3]

The checkpoint is the one compare.py uses (same folder, reused by it).
"""

import argparse
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tsbench as tb  # noqa: E402

CONFIGS = [
    ("auto", []),
    ("pread q8", ["--io", "pread", "--queue-depth", "8"]),
    ("pread q16", ["--io", "pread"]),
    ("pread q32 128M", ["--io", "pread", "--queue-depth", "32", "--staging", "128M"]),
    ("pread q32 2M 64M", ["--io", "pread", "--queue-depth", "32", "--chunk-size", "2M"]),
    ("pread q32 8M 256M", ["--io", "pread", "--queue-depth", "32", "--chunk-size", "8M", "--staging", "256M"]),
    ("pread q64 4M 256M", ["--io", "pread", "--queue-depth", "64", "--staging", "256M"]),
    ("pread q16 16M 256M", ["--io", "pread", "--chunk-size", "16M", "--staging", "256M"]),
    ("mmap", ["--io", "mmap"]),
    ("mmap 256M", ["--io", "mmap", "--staging", "256M"]),
    ("mmap 1G", ["--io", "mmap", "--chunk-size", "16M", "--staging", "1G"]),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--dir", default="/var/tmp/tensorstream-compare", help="scratch root (compare.py's default)")
    ap.add_argument("--size", default="8G")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--budget-s", type=int, default=90)
    a = ap.parse_args()
    t0 = time.time()
    os.makedirs(a.dir, exist_ok=True)
    path, err = tb.synth_checkpoint(a.bin, a.dir, a.size, a.shards, 300)
    if err:
        print("synth failed: %s" % err)
        return 1
    files = tb.checkpoint_files(path)
    w = tb.warm(files)
    print("checkpoint %s: %.2f GB, warmed in %.1f s, resident %s" % (path, tb.total_bytes(files) / 1e9, w["seconds"], w["resident_after"]), flush=True)
    results = {name: [] for name, _ in CONFIGS}
    for run in range(a.runs):
        for name, args in CONFIGS[run % len(CONFIGS):] + CONFIGS[: run % len(CONFIGS)]:
            if time.time() - t0 > a.budget_s:
                break
            cmd = [a.bin, "load", path, "--device", a.device, "--json"] + args
            r = tb.run_child(cmd, 60)
            j = tb.last_json(r["stdout"]) if r["rc"] == 0 else None
            if not j or tb.gbps_without_init(j) is None:
                rec = {"ok": False, "error": tb.tail(r["stderr"] or r["stdout"], 300)}
            else:
                rec = {"ok": True, "seconds": j["seconds"], "init_s": j.get("device_init_seconds") or 0.0,
                       "gbps": tb.gbps_without_init(j),
                       "gbps_with_init": j["gbps"], "io": sorted({f["io"] for f in j.get("files", [])}), "wall_s": r["wall_s"]}
            results[name].append(rec)
            print("  run %d %-20s %s" % (run, name, ("%.2f GB/s (%.2f with init %.3f s) via %s" % (
                rec["gbps"], rec["gbps_with_init"], rec["init_s"], ",".join(rec["io"]))) if rec["ok"] else "FAILED " + rec["error"]), flush=True)
    rows = []
    for name, args in CONFIGS:
        g = [x["gbps"] for x in results[name] if x.get("ok")]
        if g:
            rows.append({"name": name, "args": args, "median_gbps": statistics.median(g), "runs": len(g),
                         "median_init_s": statistics.median(x["init_s"] for x in results[name] if x.get("ok"))})
    rows.sort(key=lambda r: -r["median_gbps"])
    print("\nconfiguration          median GB/s (device init left out)  runs")
    for r in rows:
        print("  %-20s %8.2f   init %.3f s   %d" % (r["name"], r["median_gbps"], r["median_init_s"], r["runs"]))
    best = next((r for r in rows if r["args"]), None)
    # The host's own ceiling for the CPU half of the warm path: the pread pool copying
    # the cached files into host memory that is already backed (reused between runs),
    # with no device copy at all. Near the warm figures above, the host's memory
    # bandwidth is what limits them; far above, the pipeline to the device is.
    ceiling = {}
    for q in (8, 16):
        r = tb.run_child([a.bin, "bench", path, "--device", "cpu", "--warm", "--io", "pread", "--reuse-memory",
                          "--runs", "3", "--queue-depth", str(q), "--json"], 90)
        j = tb.last_json(r["stdout"]) if r["rc"] == 0 else None
        ceiling["q%d" % q] = j or {"error": tb.tail(r["stderr"] or r["stdout"], 300)}
        print("  host copy ceiling, pread q%-3d into reused host memory: %s" % (
            q, ("%.2f GB/s median %s" % (j["median_gbps"], [round(x, 2) for x in j.get("runs", [])])) if j else ceiling["q%d" % q]["error"]), flush=True)
    # Where the time goes: one verbose load each of auto and the best configuration
    # (the CLI logs its phases: context, allocations, reads and copies, final sync).
    phases = {}
    for name, args in [("auto", [])] + ([(best["name"], best["args"])] if best else []):
        r = tb.run_child([a.bin, "-v", "load", path, "--device", a.device] + args, 60)
        plain = re.sub(r"\x1b\[[0-9;]*m", "", r["stderr"] or "")
        lines = [ln.strip() for ln in plain.splitlines() if "phases" in ln]
        phases[name] = lines
        print("  %-20s %s" % (name, lines[-1] if lines else "no phase line (rc %s): %s" % (r["rc"], tb.tail(r["stderr"], 200))))
    with open(os.path.join(a.out, "sweep.json"), "w") as f:
        json.dump({"path": path, "results": results, "rows": rows, "phases": phases, "host_copy_ceiling": ceiling, "seconds": time.time() - t0}, f, indent=1)
    print("BEST_WARM %s" % " ".join(best["args"] if best else ["--io", "pread"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
