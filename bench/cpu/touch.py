"""First-touch rate of fresh anonymous memory, with and without transparent huge pages,
and the rate at which the kernel can back it at all (populate, 1 and 2 threads).

    python touch.py [--size 2300M] [--reps 3] [--settle 5] [--out FILE.json]

The populate rate (madvise(MADV_POPULATE_WRITE) over the whole region, in 4 MiB
steps shared by the threads, through ctypes so the threads run in parallel) is a
ceiling for any loader that hands back new memory: every page must be backed before
a byte can land in it, whatever copies the bytes.

Explains a property of the machine that every loader pays: the cost of the first
write to memory it has just allocated. On a VM whose balloon reports free memory to
the host (virtio-balloon free page reporting), the host drops reported pages and the
next first touch of each costs a host fault; which pages are affected (and so
whether MADV_HUGEPAGE helps or hurts) depends on the machine. Each measurement waits
`--settle` seconds first, as compare.py does before every run.
"""

import argparse
import ctypes
import ctypes.util
import json
import mmap
import statistics
import threading
import time

MADV_POPULATE_WRITE = 23  # Linux 5.14


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


def populate(n, threads):
    """GB/s of backing n fresh bytes with MADV_POPULATE_WRITE on `threads` threads;
    None when the kernel refuses the call."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    step = 4 << 20
    failed = []
    t = time.perf_counter()
    addr = libc.mmap(None, n, prot, flags, -1, 0)

    def work(k):
        for off in range(k * step, n, threads * step):
            if libc.madvise(addr + off, min(step, n - off), MADV_POPULATE_WRITE) != 0:
                failed.append(ctypes.get_errno())
                return

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    dt = time.perf_counter() - t
    libc.munmap(addr, n)
    return None if failed else n / dt / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="2300M")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--settle", type=float, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    n = int(float(a.size[:-1]) * mult[a.size[-1].upper()]) if a.size[-1].upper() in mult else int(a.size)
    res = {"bytes": n, "settle_seconds": a.settle, "thp_gbps": [], "4k_gbps": [], "thp_hot_gbps": [],
           "populate1_gbps": [], "populate2_gbps": []}
    for _ in range(a.reps):
        time.sleep(a.settle)
        res["thp_gbps"].append(round(touch(n, True), 3))
        # Immediately again: the pages just freed are still backed.
        res["thp_hot_gbps"].append(round(touch(n, True), 3))
        time.sleep(a.settle)
        res["4k_gbps"].append(round(touch(n, False), 3))
        for threads in (1, 2):
            time.sleep(a.settle)
            g = populate(n, threads)
            if g is not None:
                res["populate%d_gbps" % threads].append(round(g, 3))
    for k in ("thp_gbps", "4k_gbps", "thp_hot_gbps", "populate1_gbps", "populate2_gbps"):
        res[k.replace("_gbps", "_median_gbps")] = statistics.median(res[k]) if res[k] else None
    print(json.dumps(res))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
