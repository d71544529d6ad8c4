#!/usr/bin/env python3
"""A/B of two tensorstream builds loading one checkpoint to host memory, alternated.

    python3 bench/cpu/ab.py OLD_BIN NEW_BIN CHECKPOINT [--rounds 5] [--cold]

Before timing, each build loads the checkpoint once with `--digest` and the two
outputs must be identical (the same bytes, names, dtypes and shapes). Then each round
runs OLD then NEW (then NEW then OLD in the next round, so neither always goes first),
`load --device cpu --json`, warm (after one untimed warm-up load each) or, with
--cold, with the page cache dropped before every load (`echo 3 >
/proc/sys/vm/drop_caches`, needs root). Prints each load's GB/s (tensor bytes over the
load's own seconds) and the medians, and the ratio NEW/OLD.
"""
import argparse
import json
import statistics
import subprocess
import sys


def load(binary, path, extra=()):
    out = subprocess.run(
        [binary, "load", path, "--device", "cpu", *extra],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("path")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold", action="store_true")
    a = ap.parse_args()
    digests = [load(b, a.path, ["--digest"]) for b in (a.old, a.new)]
    if digests[0] != digests[1] or not digests[0]:
        print("the two builds loaded different bytes", file=sys.stderr)
        return 1
    print("digests identical: %d tensors" % len(digests[0].splitlines()))
    rates = {a.old: [], a.new: []}
    if not a.cold:
        for b in (a.old, a.new):
            load(b, a.path, ["--json"])
    for r in range(a.rounds):
        order = (a.old, a.new) if r % 2 == 0 else (a.new, a.old)
        for b in order:
            if a.cold:
                drop_caches()
            got = json.loads(load(b, a.path, ["--json"]))
            rates[b].append(got["gbps"])
            print("round %d %-4s %6.2f GB/s" % (r, "old" if b == a.old else "new", got["gbps"]))
    mo, mn = statistics.median(rates[a.old]), statistics.median(rates[a.new])
    kind = "cold" if a.cold else "warm"
    print("%s median: old %.2f GB/s %s, new %.2f GB/s %s, new/old %.3f" % (
        kind, mo, sorted(round(x, 2) for x in rates[a.old]), mn,
        sorted(round(x, 2) for x in rates[a.new]), mn / mo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
