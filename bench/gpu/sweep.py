#!/usr/bin/env python3
"""Settings sweep of tensorstream loading to a CUDA device, on the GPU machine:
which backend, queue depth, chunk size and staging size (and write-combined
pinned staging or not) load a cached (warm) checkpoint fastest, measured side by side, one process per load,
configurations alternating run by run. After its table it prints one line

    BEST_WARM <arguments>

(the fastest configuration's `tensorstream load` arguments by median GB/s,
the device-init time left out as compare.py does), which a GPU session passes
to compare.py as --ts-best-warm. Then, in what is left of --budget-s (it keeps
about 25 s for them):
  - the in-process steady state: `tensorstream bench --warm --runs 5` with auto,
    the fastest configuration's arguments and STEADY_CONFIGS, loads after the
    first in one process reusing the Loader's pinned staging and CUDA context, as
    a server loading model after model sees them (there, more staging costs no
    pinning per load, so the bigger settings the per-process table rejects get a
    fair trial);
  - the host's copy ceiling (pread into reused host memory, no device) with 1
    thread (on a part of the checkpoint) and with 8, 16 and 32;
  - a `-v` phase profile of auto, the old default (64M plain), auto --staging-wc and the best.
Writes OUT/sweep.json (after each part, so that a cut-off run keeps what it got).
A configuration the binary rejects (an older binary without a flag) or that
hangs (30 s) fails alone and is not retried.

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

# (name, `tensorstream load` arguments). Run E (H200) moved the default to 128 MiB of
# huge-page staging; dropped after it: auto --staging-huge (now the default), pread q16
# 4M 80M, auto split 40%, balanced q32, mmap q32 512M, mmap q16 (all slower than auto).
# Measured slower on an H200 and dropped before: mmap
# 256M, mmap 1G (one registering thread), pread q64 4M 256M, pread q16 16M 256M,
# pread q8, pread q32 128M, pread q32 8M 256M (more staging to pin costs more than it
# saves); pread q32 2M 32M, pread q16 1M 16M with and without --staging-wc (too little
# staging in flight); auto --staging-upfront against a quarter pinned first (no
# difference: the option is gone, all staging is pinned first). Dropped after run D
# to make room: pread q16 (what auto runs on cached files), pread q32 2M 64M wc and
# pread q32 4M 64M (within the noise of the others in runs B-D).
CONFIGS = [
    # The default since run E: 128 MiB of staging on transparent huge pages.
    ("auto", []),
    # The default before run E: 64 MiB pinned with cuMemHostAlloc.
    ("auto 64M plain", ["--staging", "64M", "--no-staging-huge"]),
    ("auto --no-staging-huge", ["--no-staging-huge"]),
    ("auto --staging-wc", ["--staging-wc"]),
    ("auto 96M", ["--staging", "96M"]),
    ("pread q32 2M", ["--io", "pread", "--queue-depth", "32", "--chunk-size", "2M"]),
    # Split loads (--registered-share), the registered page cache and `--io mmap`
    # were removed (runs E-G: each slower than auto; BENCHMARKS.md).
    ("pread-direct 16M 256M", ["--io", "pread-direct", "--chunk-size", "16M", "--staging", "256M"]),
]
# Rank 1 of 8 of a tensor-parallel layout: rows of the column-parallel weights, columns
# of o_proj and down_proj, their selected columns gathered by 2-D copies. (Gathering
# by the CPU, --host-gather, was removed: 8.63 against 9.25 GB/s.) Their GB/s count the rank's bytes, an eighth of the
# checkpoint: compare them with each other, not with the whole loads above.
RANK = []
for _p in ("*.q_proj.weight", "*.k_proj.weight", "*.v_proj.weight", "*.gate_proj.weight",
           "*.up_proj.weight", "*embed_tokens.weight", "lm_head.weight"):
    RANK += ["--rows", _p + "=1/8"]
RANK += ["--cols", "*.o_proj.weight=1/8", "--cols", "*.down_proj.weight=1/8"]
CONFIGS += [
    ("rank 1/8 cols 2-D", RANK),
]
# In-process steady state (after auto and the fastest configuration above): settings
# whose cost in a fresh process is pinning more staging, which a kept staging pays
# once, and balanced split loads, whose registered side pins page cache every load.
STEADY_CONFIGS = [
    ("auto 64M plain", ["--staging", "64M", "--no-staging-huge"]),
    ("auto 256M", ["--staging", "256M"]),
    ("pread q32 2M", ["--io", "pread", "--queue-depth", "32", "--chunk-size", "2M"]),
]
TAIL_S = 45  # the steady state, the host ceiling and the phase profile, after the loop


def rejected(r):
    """True when the CLI refused the arguments (clap: exit 2, 'unexpected argument'):
    a binary older than a flag, not a failed load."""
    err = r.get("stderr") or ""
    return r.get("rc") == 2 and ("unexpected argument" in err or "unrecognized" in err or "Usage:" in err)


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

    def left():
        return a.budget_s - (time.time() - t0)

    os.makedirs(a.dir, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    path, err = tb.synth_checkpoint(a.bin, a.dir, a.size, a.shards, 300)
    if err:
        print("synth failed: %s" % err)
        return 1
    files = tb.checkpoint_files(path)
    w = tb.warm(files)
    print("checkpoint %s: %.2f GB, warmed in %.1f s, resident %s" % (path, tb.total_bytes(files) / 1e9, w["seconds"], w["resident_after"]), flush=True)
    results = {name: [] for name, _ in CONFIGS}
    unsupported = {}
    out = {"path": path, "results": results, "unsupported": unsupported}

    def save():
        out["seconds"] = time.time() - t0
        with open(os.path.join(a.out, "sweep.json"), "w") as f:
            json.dump(out, f, indent=1)

    for run in range(a.runs):
        for name, args in CONFIGS[run % len(CONFIGS):] + CONFIGS[: run % len(CONFIGS)]:
            if left() < TAIL_S:
                break
            if name in unsupported:
                continue
            cmd = [a.bin, "load", path, "--device", a.device, "--json"] + args
            r = tb.run_child(cmd, 30)
            j = tb.last_json(r["stdout"]) if r["rc"] == 0 else None
            if r.get("timed_out"):
                # A warm 8 GB load takes about a second: a hang is not retried.
                unsupported[name] = "timed out after 30 s (not retried)"
                rec = {"ok": False, "error": unsupported[name]}
            elif rejected(r):
                unsupported[name] = " ".join(tb.tail(r["stderr"], 300).split())
                rec = {"ok": False, "error": "arguments rejected by this binary (not retried): " + unsupported[name]}
            elif not j or tb.gbps_without_init(j) is None:
                rec = {"ok": False, "error": tb.tail(r["stderr"] or r["stdout"], 300)}
            else:
                rec = {"ok": True, "seconds": j["seconds"], "init_s": j.get("device_init_seconds") or 0.0,
                       "gbps": tb.gbps_without_init(j),
                       "gbps_with_init": j["gbps"], "io": sorted({f["io"] for f in j.get("files", [])}), "wall_s": r["wall_s"]}
                # Split loads: the share the registered page cache took (balanced: what
                # came of the two sides' speeds), from the files' report.
                shares = [re.match(r"(\d+)% of the bytes copied straight", f.get("reason") or "") for f in j.get("files", [])]
                if any(shares):
                    rec["registered_pct"] = int(next(m for m in shares if m).group(1))
            results[name].append(rec)
            print("  run %d %-22s %s" % (run, name, ("%.2f GB/s (%.2f with init %.3f s) via %s%s" % (
                rec["gbps"], rec["gbps_with_init"], rec["init_s"], ",".join(rec["io"]),
                " (%d%% registered)" % rec["registered_pct"] if "registered_pct" in rec else "")) if rec["ok"] else "FAILED " + rec["error"]), flush=True)
    rows = []
    for name, args in CONFIGS:
        g = [x["gbps"] for x in results[name] if x.get("ok")]
        if g:
            rows.append({"name": name, "args": args, "median_gbps": statistics.median(g), "runs": len(g),
                         "median_init_s": statistics.median(x["init_s"] for x in results[name] if x.get("ok"))})
            pct = [x["registered_pct"] for x in results[name] if x.get("ok") and "registered_pct" in x]
            if pct:
                rows[-1]["median_registered_pct"] = statistics.median(pct)
    rows.sort(key=lambda r: -r["median_gbps"])
    print("\nconfiguration            median GB/s (device init left out)  runs")
    for r in rows:
        print("  %-22s %8.2f   init %.3f s   %d%s" % (r["name"], r["median_gbps"], r["median_init_s"], r["runs"],
              "   %.0f%% registered" % r["median_registered_pct"] if "median_registered_pct" in r else ""))
    if unsupported:
        print("  not measured, arguments rejected by this binary: %s" % ", ".join(sorted(unsupported)))
    best = next((r for r in rows if r["args"] and not r["name"].startswith("rank")), None)
    out["rows"] = rows
    save()
    print("BEST_WARM %s" % " ".join(best["args"] if best else ["--io", "pread"]), flush=True)
    # The in-process steady state: one process, loads after the first reuse the
    # Loader's pinned staging and CUDA context (a server's steady state), against the
    # per-process figures above, which pay the context and the staging every time.
    auto_row = next((x for x in rows if x["name"] == "auto"), None)
    out["steady_state"] = {}
    # auto, and the fastest configuration above when it is another (write-combined
    # staging measured the same as auto here in run D).
    steady_cfgs = [("auto", [])]
    if best and best["name"] != "auto":
        steady_cfgs.append((best["name"], best["args"]))
    steady_cfgs += [c for c in STEADY_CONFIGS if c[0] not in dict(steady_cfgs)]
    for sname, extra in steady_cfgs:
        if sname in unsupported:
            continue
        if steady_cfgs.index((sname, extra)) >= 2 and left() < 20:
            print("  in-process steady state, %s: skipped (%.0f s left)" % (sname, left()), flush=True)
            continue
        io = [] if "--io" in extra else ["--io", "auto"]
        r = tb.run_child([a.bin, "bench", path, "--device", a.device, "--warm", "--runs", "5", "--json"] + io
                         + extra, max(15, min(60, left() + 20)))
        j = tb.last_json(r["stdout"]) if r["rc"] == 0 else None
        if j and j.get("runs"):
            steady = {"ok": True, "runs": j["runs"], "median_gbps": j.get("median_gbps"), "io": j.get("io"),
                      "device_init_seconds": j.get("device_init_seconds"), "note": j.get("note"), "wall_s": r["wall_s"]}
        else:
            steady = {"ok": False, "rc": r["rc"], "timed_out": r["timed_out"],
                      "error": (j or {}).get("note") or tb.tail(r["stderr"] or r["stdout"], 300)}
        out["steady_state"][sname] = steady
        print("  in-process steady state, %s (bench --warm --runs 5, one process): %s%s" % (
            sname,
            ("%.2f GB/s median %s via %s" % (steady["median_gbps"], [round(x, 2) for x in steady["runs"]], steady["io"] or "-"))
            if steady["ok"] else "FAILED (rc %s%s): %s" % (steady["rc"], ", timed out" if steady["timed_out"] else "", steady["error"]),
            ("; per-process auto %.2f GB/s (init left out)" % auto_row["median_gbps"]) if auto_row and steady["ok"] else ""), flush=True)
    save()
    # The host's own ceiling for the CPU half of the warm path: the pread pool copying
    # the cached files into host memory that is already backed (reused between runs),
    # with no device copy at all. Near the warm figures above, the host's memory
    # bandwidth is what limits them; far above, the pipeline to the device is.
    # One thread (on about a ninth of the tensors, to keep it short) says what a copier
    # thread gets on this machine; 8, 16 and 32 how that scales.
    ceiling = {}
    for q, only in ((16, None), (1, "model.layers.1*"), (8, None), (32, None)):
        if q != 16 and left() < 12:
            break
        r = tb.run_child([a.bin, "bench", path, "--device", "cpu", "--warm", "--io", "pread", "--reuse-memory",
                          "--runs", "3", "--queue-depth", str(q), "--json"] + (["--only", only] if only else []),
                         max(15, min(90, left() + 20)))
        j = tb.last_json(r["stdout"]) if r["rc"] == 0 else None
        ceiling["q%d" % q] = j or {"error": tb.tail(r["stderr"] or r["stdout"], 300)}
        if only and j:
            j["only"] = only
        print("  host copy ceiling, pread q%-3d into reused host memory%s: %s" % (
            q, " (--only %s)" % only if only else "",
            ("%.2f GB/s median %s" % (j["median_gbps"], [round(x, 2) for x in j.get("runs", [])])) if j else ceiling["q%d" % q]["error"]), flush=True)
    out["host_copy_ceiling"] = ceiling
    save()
    # Where the time goes: one verbose load each of auto, auto with the staging up front
    # and the best configuration (the CLI logs its phases: context, allocations, reads
    # and copies, final sync).
    phases = {}
    out["phases"] = phases
    prof = [(n, g) for n, g in CONFIGS if n in ("auto", "auto 64M plain", "auto --staging-wc") and n not in unsupported]
    if best and best["name"] not in dict(prof):
        prof.append((best["name"], best["args"]))
    for name, args in prof:
        r = tb.run_child([a.bin, "-v", "load", path, "--device", a.device] + args, max(15, min(60, left() + 20)))
        plain = re.sub(r"\x1b\[[0-9;]*m", "", r["stderr"] or "")
        lines = [ln.strip() for ln in plain.splitlines() if "phases" in ln]
        phases[name] = lines
        print("  %-22s %s" % (name, lines[-1] if lines else "no phase line (rc %s): %s" % (
            r["rc"], (plain.strip().splitlines() or ["-"])[-1][-200:])))
    save()
    # The steady state's phases: the last of three loads in one process on kept staging,
    # with the reading thread's waits for reads (reading is the limit) and for a free
    # slot (the copies to the device are).
    if left() > 10:
        r = tb.run_child([a.bin, "-v", "bench", path, "--device", a.device, "--warm", "--runs", "3",
                          "--io", "auto"], max(15, min(60, left() + 20)))
        plain = re.sub(r"\x1b\[[0-9;]*m", "", r["stderr"] or "")
        lines = [ln.strip() for ln in plain.splitlines() if "phases" in ln]
        phases["steady auto"] = lines
        print("  %-22s %s" % ("steady auto", lines[-1] if lines else "no phase line (rc %s)" % r["rc"]))
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
