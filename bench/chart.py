"""Bar chart of loading speed: median GB/s per loader, cold and warm, with the
machine's limits drawn as lines; one panel per device.

    python bench/chart.py RESULTS.jsonl [MORE.jsonl ...] [--out bench/cpu-chart.png]
                          [--limit LOADER[:TEMPERATURE]] [--title TEXT]

Input: JSON lines, one per run, the schema shared by bench/compare-cpu.sh and the GPU
harness (bench/gpu/):

    {"loader", "temperature", "run", "gbps", "seconds", "bytes", "peak_rss_bytes", "device"}

A missing "device" means "cpu". Runs with "ok": false are left out, and so are
records whose "kind" is neither "load" nor "limit" (the GPU harness also writes
"env", "skip" and "verify" lines). A record with "role": "limit" (fio cold and dd
warm on the CPU) or "kind": "limit" (the GPU harness's O_DIRECT read and pinned
host-to-device copy) is drawn as a horizontal line at its median instead of a bar;
--limit marks more loaders as limits. A limit on a device that has no loads of its
own (the GPU harness gives the disk's limit "device": "disk") is drawn on every
panel of the same input file; a limit whose temperature is not cold or warm (e.g.
"n/a") is drawn in grey. Error bars span min to max.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TEMP_ORDER = ["cold", "warm"]
COLOURS = {"cold": "#3b6ea8", "warm": "#e08a2c"}
EXTRA_COLOURS = ["#5a9e5a", "#a0506e", "#7a7a7a", "#8c6bb1"]


def load(paths):
    recs = []
    for p in paths:
        with open(p) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    recs.append((p, json.loads(line)))
                except json.JSONDecodeError as e:
                    sys.exit(f"{p}:{n}: not JSON: {e}")
    return recs


def loader_key(name):
    if name.startswith("tensorstream"):
        backends = ["auto", "direct", "buffered", "pread", "mmap"]
        tail = name.split("-", 1)[1] if "-" in name else ""
        return (0, backends.index(tail) if tail in backends else len(backends), name)
    return (1, 0, name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--out", default="bench/cpu-chart.png")
    ap.add_argument("--limit", action="append", default=[],
                    help="LOADER or LOADER:TEMPERATURE to draw as a limit line")
    ap.add_argument("--title", default=None)
    a = ap.parse_args()

    extra_limits = set()
    for spec in a.limit:
        loader, _, temp = spec.partition(":")
        extra_limits.add((loader, temp or None))

    def is_limit(r):
        return (r.get("role") == "limit" or r.get("kind") == "limit"
                or (r["loader"], None) in extra_limits
                or (r["loader"], r.get("temperature")) in extra_limits)

    runs = defaultdict(list)  # (device, loader, temperature) -> [gbps] of loads
    limits = defaultdict(list)  # (source, device, loader, temperature) -> [gbps]
    sources = defaultdict(set)  # device -> input files with loads on it
    for src, r in load(a.results):
        if r.get("kind") not in (None, "load", "limit"):
            continue
        if r.get("ok") is False or not r.get("gbps") or "loader" not in r:
            continue
        device = r.get("device") or "cpu"
        temp = r.get("temperature") or "n/a"
        if is_limit(r):
            limits[(src, device, r["loader"], temp)].append(float(r["gbps"]))
        else:
            runs[(device, r["loader"], temp)].append(float(r["gbps"]))
            sources[device].add(src)
    if not runs:
        sys.exit("no successful loads in the input")

    devices = sorted({k[0] for k in runs}, key=lambda d: (d != "cpu", d))
    fig, axes = plt.subplots(len(devices), 1, figsize=(10, 4.6 * len(devices)), squeeze=False)
    for ax, device in zip(axes[:, 0], devices):
        keys = [k for k in runs if k[0] == device]
        temps = sorted({k[2] for k in keys}, key=lambda t: (TEMP_ORDER.index(t) if t in TEMP_ORDER else 9, t))
        colour = {t: COLOURS.get(t) or EXTRA_COLOURS[i % len(EXTRA_COLOURS)] for i, t in enumerate(temps)}
        bar_loaders = sorted({k[1] for k in keys}, key=loader_key)
        width = 0.8 / max(1, len(temps))
        ymax = 0.0
        for i, t in enumerate(temps):
            xs, ys, lo, hi = [], [], [], []
            for j, loader in enumerate(bar_loaders):
                v = runs.get((device, loader, t))
                if not v:
                    continue
                m = statistics.median(v)
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(m)
                lo.append(m - min(v))
                hi.append(max(v) - m)
                ymax = max(ymax, max(v))
            bars = ax.bar(xs, ys, width, color=colour[t], label=f"{t} (median, min–max)",
                          yerr=[lo, hi], capsize=2, error_kw={"elinewidth": 0.8, "ecolor": "#333"})
            # The median, written above the error bar so that the two do not overlap.
            for b, y, h in zip(bars, ys, hi):
                ax.annotate(f"{y:.2f}", (b.get_x() + b.get_width() / 2, y + h), xytext=(0, 2),
                            textcoords="offset points", ha="center", va="bottom", fontsize=6.5)
        for (src, ldev, loader, t), v in sorted(limits.items()):
            if ldev != device and (ldev in devices or src not in sources[device]):
                continue
            m = statistics.median(v)
            ymax = max(ymax, m)
            ax.axhline(m, color=colour.get(t, "#777"), linestyle="--", linewidth=1.2,
                       label=f"{t + ' ' if t in TEMP_ORDER else ''}limit: {loader} {m:.2f} GB/s")
        ax.set_xticks(range(len(bar_loaders)))
        ax.set_xticklabels(bar_loaders, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel("GB/s (10⁹ bytes/s)")
        ax.set_ylim(0, ymax * 1.15 if ymax else 1)
        ax.grid(axis="y", alpha=0.3)
        n = max((len(v) for k, v in runs.items() if k[0] == device), default=0)
        ax.set_title(a.title or f"Loading a checkpoint on {device}: median of up to {n} runs", fontsize=10)
        ax.legend(fontsize=7.5, loc="upper right")
    fig.tight_layout()
    fig.savefig(a.out, dpi=90, pil_kwargs={"optimize": True})
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
