"""First-touch rate of fresh anonymous memory, with and without transparent huge pages.

    python touch.py [--size 2300M] [--reps 3] [--settle 5] [--out FILE.json]

Explains a property of the machine that every loader pays: the cost of the first
write to memory it has just allocated. On a VM whose balloon reports free memory to
the host (virtio-balloon free page reporting), the host drops reported pages and the
next first touch of each costs a host fault; which pages are affected (and so
whether MADV_HUGEPAGE helps or hurts) depends on the machine. Each measurement waits
`--settle` seconds first, as compare.py does before every run.
"""

import argparse
import json
import mmap
import statistics
import time


def touch(n, huge):
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge:
        m.madvise(mmap.MADV_HUGEPAGE)
    t = time.perf_counter()
    for i in range(0, n, 4096):
        m[i] = 1
    dt = time.perf_counter() - t
    m.close()
    return n / dt / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="2300M")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--settle", type=float, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    n = int(float(a.size[:-1]) * mult[a.size[-1].upper()]) if a.size[-1].upper() in mult else int(a.size)
    res = {"bytes": n, "settle_seconds": a.settle, "thp_gbps": [], "4k_gbps": [], "thp_hot_gbps": []}
    for _ in range(a.reps):
        time.sleep(a.settle)
        res["thp_gbps"].append(round(touch(n, True), 3))
        # Immediately again: the pages just freed are still backed.
        res["thp_hot_gbps"].append(round(touch(n, True), 3))
        time.sleep(a.settle)
        res["4k_gbps"].append(round(touch(n, False), 3))
    for k in ("thp_gbps", "4k_gbps", "thp_hot_gbps"):
        res[k.replace("_gbps", "_median_gbps")] = statistics.median(res[k])
    print(json.dumps(res))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
