"""Medians and ratios from compare.py's JSON lines: a Markdown table and a JSON summary.

    python summarize.py RESULTS.jsonl [--md OUT.md] [--json OUT.json] [--env ENV.json]

GB/s is tensor bytes (bytes read, for fio and dd) over the loader's own timed region;
"× ts" is the ratio to tensorstream-auto at the same temperature; "× limit" the ratio
to the median of fio (cold, O_DIRECT) or dd (warm, page cache). Failed runs and runs
whose page-cache state could not be set are counted and left out of the medians.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict

REF = "tensorstream-auto"
TEMPS = ["cold", "warm"]
# The goals for tensorstream-auto on the CPU.
# The same goals are also reported for tensorstream-auto-reuse (host memory kept
# between loads in one process, as a server switching models), which is not what the
# goals ask for (one `tensorstream load`) and is listed apart.
REUSE = "tensorstream-auto-reuse"
GOALS = [
    (REF, "cold", "limit", 0.95, "cold ≥ 0.95× fio (O_DIRECT, io_uring, 4 MiB, QD16)"),
    (REF, "warm", "limit", 0.80, "warm ≥ 0.8× dd (bs=16M, page cache)"),
    (REF, "warm", "python-safetensors", 3.0, "warm ≥ 3× Python safetensors (numpy, F16 copy)"),
    (REUSE, "cold", "limit", 0.95, "memory reused: cold ≥ 0.95× fio"),
    (REUSE, "warm", "limit", 0.80, "memory reused: warm ≥ 0.8× dd"),
    (REUSE, "warm", "python-safetensors", 3.0, "memory reused: warm ≥ 3× Python safetensors"),
]
RSS_GOAL = 1.15


def load(paths):
    recs = []
    for p in paths:
        with open(p) as f:
            recs += [json.loads(line) for line in f if line.strip()]
    return recs


def summarize(recs):
    groups = defaultdict(list)
    failed = defaultdict(list)
    disturbed = defaultdict(int)
    for r in recs:
        key = (r.get("device", "cpu"), r["loader"], r["temperature"])
        if r.get("disturbed"):
            # Another process changed the page cache; compare.py measured it again.
            disturbed[key] += 1
        elif r.get("ok", True) and r.get("gbps"):
            groups[key].append(r)
        else:
            failed[key].append(r.get("error", "failed"))
    out = {}
    for key in set(groups) | set(failed) | set(disturbed):
        rs = groups.get(key, [])
        g = [r["gbps"] for r in rs]
        rss = [r["peak_rss_bytes"] / r["tensor_bytes"] for r in rs
               if r.get("peak_rss_bytes") and r.get("tensor_bytes")]
        out[key] = {
            "device": key[0], "loader": key[1], "temperature": key[2],
            "runs": len(rs), "failed": len(failed.get(key, [])), "disturbed": disturbed.get(key, 0),
            "errors": sorted(set(failed.get(key, [])))[:3],
            "median_gbps": statistics.median(g) if g else None,
            "min_gbps": min(g) if g else None, "max_gbps": max(g) if g else None,
            "median_seconds": statistics.median([r["seconds"] for r in rs]) if rs else None,
            "median_wall_seconds": statistics.median([r["wall_seconds"] for r in rs if r.get("wall_seconds")]) if rs else None,
            "median_rss_ratio": statistics.median(rss) if rss else None,
            "max_rss_ratio": max(rss) if rss else None,
            "role": next((r.get("role") for r in rs if r.get("role")), None),
            "io": sorted({r["io"] for r in rs if r.get("io")}),
        }
    return out


def limit_of(summ, device, temp):
    for s in summ.values():
        if s["device"] == device and s["temperature"] == temp and s["role"] == "limit":
            return s
    return None


def fmt(x, f="{:.2f}"):
    return "—" if x is None else f.format(x)


def table(summ, device="cpu"):
    loaders = []
    for (d, l, _t) in sorted(summ, key=lambda k: k[1]):
        if d == device and l not in loaders:
            loaders.append(l)
    # tensorstream first, then peers, then the limits.
    order = lambda l: (0 if l.startswith("tensorstream") else 2 if l in ("fio", "dd") else 1,
                       ["auto", "direct", "buffered", "pread", "mmap"].index(l.split("-", 1)[1])
                       if l.startswith("tensorstream-") and l.split("-", 1)[1] in ["auto", "direct", "buffered", "pread", "mmap"] else 9, l)
    loaders.sort(key=order)
    lim = {t: limit_of(summ, device, t) for t in TEMPS}
    ref = {t: summ.get((device, REF, t)) for t in TEMPS}
    head = ["loader"]
    for t in TEMPS:
        lname = lim[t]["loader"] if lim[t] else "limit"
        head += [f"{t} GB/s median (min–max)", f"{t} × ts-auto", f"{t} × {lname}"]
    head += ["peak RSS / tensor bytes (cold, warm)", "read path"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for l in loaders:
        row = [f"`{l}`"]
        for t in TEMPS:
            s = summ.get((device, l, t))
            if not s or s["median_gbps"] is None:
                note = f"failed ×{s['failed']}" if s and s["failed"] else "not run"
                row += [note, "—", "—"]
                continue
            m = s["median_gbps"]
            cell = f"**{m:.2f}** ({s['min_gbps']:.2f}–{s['max_gbps']:.2f}), n={s['runs']}"
            if s["failed"]:
                cell += f", {s['failed']} failed"
            row.append(cell)
            r = ref[t]["median_gbps"] if ref[t] and ref[t]["median_gbps"] else None
            row.append(fmt(m / r, "{:.2f}×") if r else "—")
            lm = lim[t]["median_gbps"] if lim[t] and lim[t]["median_gbps"] else None
            row.append(fmt(m / lm, "{:.2f}×") if lm else "—")
        rs = [summ.get((device, l, t)) for t in TEMPS]
        row.append(", ".join(fmt(s["median_rss_ratio"]) if s else "—" for s in rs))
        ios = [f"{t}: {', '.join(s['io'])}" for t, s in zip(TEMPS, rs) if s and s["io"]]
        if len({tuple(s["io"]) for s in rs if s and s["io"]}) == 1:
            ios = [", ".join(next(s["io"] for s in rs if s and s["io"]))]
        row.append("; ".join(ios))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def goals(summ, device="cpu"):
    lines = []
    for who, temp, against, factor, text in GOALS:
        s = summ.get((device, who, temp))
        other = limit_of(summ, device, temp) if against == "limit" else summ.get((device, against, temp))
        if not s or not other or not s["median_gbps"] or not other["median_gbps"]:
            lines.append(f"- {text}: not measured")
            continue
        ratio = s["median_gbps"] / other["median_gbps"]
        verdict = (f"**met** ({ratio:.2f}×)" if ratio >= factor else
                   f"**missed** ({ratio:.2f}×; {who} would need {factor * other['median_gbps']:.2f} GB/s, "
                   f"has {s['median_gbps']:.2f}: {factor / ratio:.2f}× short)")
        lines.append(f"- {text}: {who} {s['median_gbps']:.2f} GB/s vs {other['loader']} "
                     f"{other['median_gbps']:.2f} GB/s → {verdict}")
    for temp in TEMPS:
        s = summ.get((device, REF, temp))
        if not s or s["max_rss_ratio"] is None:
            lines.append(f"- peak RSS ≤ {RSS_GOAL}× tensor bytes ({temp}): not measured")
            continue
        x = s["max_rss_ratio"]
        lines.append(f"- peak RSS ≤ {RSS_GOAL}× tensor bytes ({temp}): {REF} at most {x:.3f}× → "
                     + ("**met**" if x <= RSS_GOAL else f"**missed** by {x - RSS_GOAL:.3f}×"))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    ap.add_argument("--md")
    ap.add_argument("--json")
    ap.add_argument("--env", help="cpu-env.json written by compare-cpu.sh, for the header")
    ap.add_argument("--touch", help="cpu-touch.json written by touch.py")
    a = ap.parse_args()
    recs = load(a.results)
    summ = summarize(recs)
    parts = []
    if a.env:
        with open(a.env) as f:
            env = json.load(f)
        parts.append(f"Machine: {env.get('cpu', '?')}, {env.get('cores', '?')} cores, "
                     f"{env.get('mem', '?')} RAM, kernel {env.get('kernel', '?')}, disk {env.get('disk', '?')}; "
                     f"tensorstream {env.get('tensorstream', '?')}; {max(r['run'] for r in recs)} rounds.")
        parts.append("")
    if a.touch:
        try:
            with open(a.touch) as f:
                tj = json.load(f)
            parts.append(f"First touch of fresh memory after {tj['settle_seconds']:g} s idle (touch.py, "
                         f"{tj['bytes'] / 1e9:.1f} GB, median of {len(tj['thp_gbps'])}): "
                         f"transparent huge pages {tj['thp_median_gbps']:.2f} GB/s, 4 KiB pages "
                         f"{tj['4k_median_gbps']:.2f} GB/s; huge pages again at once (memory still "
                         f"backed) {tj['thp_hot_median_gbps']:.2f} GB/s."
                         + (f" Backing it in the kernel (MADV_POPULATE_WRITE), the ceiling for any loader "
                            f"that returns new memory: {tj['populate1_median_gbps']:.2f} GB/s on one thread, "
                            f"{tj['populate2_median_gbps']:.2f} GB/s on two."
                            if tj.get("populate2_median_gbps") else ""))
            parts.append("")
        except OSError:
            pass
    parts.append(table(summ))
    parts.append("")
    parts.append("Goals for tensorstream-auto:")
    parts.append("")
    parts.append(goals(summ))
    md = "\n".join(parts) + "\n"
    print(md)
    if a.md:
        with open(a.md, "w") as f:
            f.write(md)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(sorted(summ.values(), key=lambda s: (s["device"], s["loader"], s["temperature"])), f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
