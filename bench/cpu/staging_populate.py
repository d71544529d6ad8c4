"""How fast the CUDA staging's host memory is made present before it is pinned: a
region of anonymous memory advised MADV_HUGEPAGE (as `--staging-huge`, the default,
allocates it), populated by writing zeros from the CPU or by madvise(MADV_POPULATE_WRITE),
which lets the kernel's own zeroing of each page do it. The two alternate.

    python3 bench/cpu/staging_populate.py [--size 128M] [--rounds 3]

Needs no GPU: pinning (cuMemHostRegister) comes after this and is not timed here.
"""

import argparse
import ctypes
import statistics
import time

PROT_RW, MAP_PRIVATE_ANON = 3, 0x22
MADV_HUGEPAGE, MADV_POPULATE_WRITE = 14, 23
HUGE = 2 << 20


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1].upper()] if s[-1].upper() in units else int(s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="128M")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    n = parse_size(a.size)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

    def once(way):
        base = libc.mmap(None, n + HUGE, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
        if base in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        p = (base + HUGE - 1) & ~(HUGE - 1)
        t = time.perf_counter()
        libc.madvise(p, n, MADV_HUGEPAGE)
        if way == "write zeros":
            ctypes.memset(p, 0, n)
        elif libc.madvise(p, n, MADV_POPULATE_WRITE) != 0:
            raise OSError(ctypes.get_errno(), "MADV_POPULATE_WRITE")
        dt = time.perf_counter() - t
        libc.munmap(base, n + HUGE)
        return dt

    ways = ("write zeros", "MADV_POPULATE_WRITE")
    for w in ways:  # warm-up: the first mapping of a run pays for more than the rest
        once(w)
    times = {w: [] for w in ways}
    for _ in range(a.rounds):
        for w in ways:
            times[w].append(once(w))
    for w in ways:
        print("%-20s %s: median %.1f ms  %s" % (w, a.size, 1e3 * statistics.median(times[w]),
                                               [round(1e3 * x, 1) for x in times[w]]))


if __name__ == "__main__":
    main()
