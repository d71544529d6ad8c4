#!/usr/bin/env python3
"""What registering the page cache costs, straight against the driver, on the GPU
machine: the question behind `tensorstream load --io mmap` to CUDA (the registered
page-cache path), independent of tensorstream's own code.

For a cached file (written here, --size, default 2G), mapped read-only:
  1. registration: cuMemHostRegister (read-only) of every window of the file, by
     1 to 16 threads at once, windows of 4 MiB and 64 MiB; then cuMemHostUnregister
     of them all, the same way. GB/s of file registered (and given back) per second.
     Each run maps the file afresh, as a load does (the driver then also faults the
     pages into the new mapping); the same with the mapping populated first
     (MADV_POPULATE_READ, timed apart) says how much of the cost is those faults;
  2. copies from the registered page cache: the whole file registered in 64 MiB
     windows, then cuMemcpyHtoDAsync of each window into one device buffer, timed
     to the stream's end;
  3. the reference: copies from pinned memory (cuMemAllocHost, 256 MiB, 8 times);
  4. pinning 64 MiB of staging three ways: cuMemAllocHost; anonymous memory,
     populated, then cuMemHostRegister; the same with transparent huge pages
     (madvise MADV_HUGEPAGE on a 2 MiB-aligned range): seconds to allocate and pin.
Each figure is the median of --runs runs. Prints a table and one line

    REGBENCH {json}

Needs only the NVIDIA driver (libcuda.so.1) and Python 3: the driver is called
through ctypes, which lets go of the GIL during each call, so the threads register
in parallel as far as the driver lets them.

    python3 gpu-bundle/gpu/regbench.py [--size 2G] [--runs 3] [--dir /var/tmp]
"""

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

CU_MEMHOSTREGISTER_READ_ONLY = 0x08
PROT_READ, MAP_SHARED = 1, 1
MIB = 1 << 20


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = s.strip().upper()
    return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(s)


class Driver:
    """The few driver calls this needs, with their C signatures."""

    def __init__(self, ordinal=0):
        self.cu = cu = ctypes.CDLL("libcuda.so.1")
        p, sz, u, u64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_uint64
        sigs = {
            "cuInit": [u],
            "cuDeviceGet": [ctypes.POINTER(ctypes.c_int), ctypes.c_int],
            "cuDevicePrimaryCtxRetain": [ctypes.POINTER(p), ctypes.c_int],
            "cuCtxSetCurrent": [p],
            "cuMemHostRegister_v2": [p, sz, u],
            "cuMemHostUnregister": [p],
            "cuMemAlloc_v2": [ctypes.POINTER(u64), sz],
            "cuMemFree_v2": [u64],
            "cuMemAllocHost_v2": [ctypes.POINTER(p), sz],
            "cuMemFreeHost": [p],
            "cuStreamCreate": [ctypes.POINTER(p), u],
            "cuStreamSynchronize": [p],
            "cuMemcpyHtoDAsync_v2": [u64, p, sz, p],
            "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
        }
        for name, args in sigs.items():
            f = getattr(cu, name)
            f.argtypes, f.restype = args, ctypes.c_int
        self.check(cu.cuInit(0), "cuInit")
        dev = ctypes.c_int()
        self.check(cu.cuDeviceGet(ctypes.byref(dev), ordinal), "cuDeviceGet")
        self.ctx = p()
        self.check(cu.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), dev), "cuDevicePrimaryCtxRetain")
        self.bind()
        self.stream = p()
        self.check(cu.cuStreamCreate(ctypes.byref(self.stream), 0), "cuStreamCreate")

    def check(self, rc, what):
        if rc != 0:
            name = ctypes.c_char_p()
            self.cu.cuGetErrorName(rc, ctypes.byref(name))
            raise RuntimeError(f"{what}: {name.value.decode() if name.value else rc}")

    def bind(self):
        self.check(self.cu.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")

    def register(self, addr, n):
        self.check(self.cu.cuMemHostRegister_v2(addr, n, CU_MEMHOSTREGISTER_READ_ONLY), "cuMemHostRegister")

    def unregister(self, addr):
        self.check(self.cu.cuMemHostUnregister(addr), "cuMemHostUnregister")

    def copy(self, dst, src, n):
        self.check(self.cu.cuMemcpyHtoDAsync_v2(dst, src, n, self.stream), "cuMemcpyHtoDAsync")

    def sync(self):
        self.check(self.cu.cuStreamSynchronize(self.stream), "cuStreamSynchronize")


def map_file(path, size):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    fd = os.open(path, os.O_RDONLY)
    addr = libc.mmap(None, size, PROT_READ, MAP_SHARED, fd, 0)
    os.close(fd)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    return addr


def unmap(addr, size):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.munmap(addr, size)


MADV_POPULATE_READ = 22


def populate(addr, size):
    """Faults every page of the mapping in (Linux 5.14+); False where refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise(addr, size, MADV_POPULATE_READ) == 0


def write_file(path, size):
    """`size` bytes (a random 64 MiB block repeated), left in the page cache."""
    block = os.urandom(64 * MIB)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            left -= f.write(block[: min(left, len(block))])
    with open(path, "rb") as f:  # make sure every page is cached
        while f.read(64 * MIB):
            pass


def staging_pin(d, runs, n=64 * MIB):
    """Median seconds to allocate and pin `n` bytes: cuMemAllocHost, or anonymous
    memory populated and registered (4 KiB pages, or transparent huge pages)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    prot_rw, map_private_anon, madv_hugepage, madv_nohugepage = 3, 0x22, 14, 15
    huge = 2 * MIB

    def alloc_host():
        p = ctypes.c_void_p()
        t = time.perf_counter()
        d.check(d.cu.cuMemAllocHost_v2(ctypes.byref(p), n), "cuMemAllocHost")
        t = time.perf_counter() - t
        d.cu.cuMemFreeHost(p)
        return t

    def registered(advice):
        t = time.perf_counter()
        raw = libc.mmap(None, n + huge, prot_rw, map_private_anon, -1, 0)
        if raw in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        addr = (raw + huge - 1) & ~(huge - 1)
        libc.madvise(addr, n, advice)
        ctypes.memset(addr, 0, n)
        try:
            d.check(d.cu.cuMemHostRegister_v2(addr, n, 0), "cuMemHostRegister")
            t = time.perf_counter() - t
            d.unregister(addr)
        finally:
            libc.munmap(raw, n + huge)
        return t

    ways = {
        "cuMemAllocHost": alloc_host,
        "anonymous + cuMemHostRegister": lambda: registered(madv_nohugepage),
        "huge pages + cuMemHostRegister": lambda: registered(madv_hugepage),
    }
    return {k: statistics.median(f() for _ in range(runs)) for k, f in ways.items()}


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--threads", default="1,2,4,8,16")
    ap.add_argument("--windows", default="4M,64M")
    a = ap.parse_args()
    size = parse_size(a.size)
    path = os.path.join(a.dir, "tensorstream-regbench.bin")
    out = {"size": size, "runs": a.runs, "register": [], "errors": []}
    try:
        d = Driver()
    except (OSError, RuntimeError) as e:
        print(f"regbench: no usable driver: {e}")
        out["errors"].append(str(e))
        print("REGBENCH " + json.dumps(out))
        return 1
    write_file(path, size)
    gb = size / 1e9
    print(f"regbench: {size / 2**30:.1f} GiB file, cached, mapped read-only afresh for each run; medians of {a.runs} runs")
    print(f"{'threads':>7} {'window':>7} {'register GB/s':>14} {'give back GB/s':>15} {'populated first: populate, register GB/s':>42}")

    def on_thread():
        d.bind()

    def one_run(pool, w, populated):
        """(populate s, register s, give back s) for one fresh mapping."""
        addr = map_file(path, size)
        try:
            windows = [(addr + off, min(w, size - off)) for off in range(0, size, w)]
            pop = 0.0
            if populated:
                t0 = time.perf_counter()
                pop = time.perf_counter() - t0 if populate(addr, size) else -1.0
            try:
                reg = timed(lambda: list(pool.map(lambda x: d.register(*x), windows)))
            except RuntimeError:
                for x, _ in windows:  # whatever is registered
                    try:
                        d.unregister(x)
                    except RuntimeError:
                        pass
                raise
            unreg = timed(lambda: list(pool.map(lambda x: d.unregister(x[0]), windows)))
            return pop, reg, unreg
        finally:
            unmap(addr, size)

    can_populate = True
    for w in [parse_size(x) for x in a.windows.split(",")]:
        for t in [int(x) for x in a.threads.split(",")]:
            try:
                with ThreadPoolExecutor(max_workers=t, initializer=on_thread) as pool:
                    fresh = [one_run(pool, w, False) for _ in range(a.runs)]
                    pre = [one_run(pool, w, True) for _ in range(a.runs)] if can_populate else []
            except RuntimeError as e:
                out["errors"].append(f"threads {t}, window {w}: {e}")
                print(f"{t:>7} {w // MIB:>6}M  failed: {e}")
                break
            r = gb / statistics.median(x[1] for x in fresh)
            u = gb / statistics.median(x[2] for x in fresh)
            row = {"threads": t, "window": w, "register_gbps": r, "give_back_gbps": u}
            extra = ""
            if pre and all(x[0] > 0 for x in pre):
                row["populate_s"] = statistics.median(x[0] for x in pre)
                row["register_populated_gbps"] = gb / statistics.median(x[1] for x in pre)
                extra = f"{row['populate_s']:>20.3f} s {row['register_populated_gbps']:>14.2f}"
            elif pre:
                can_populate = False
                extra = "  (MADV_POPULATE_READ refused)"
            out["register"].append(row)
            print(f"{t:>7} {w // MIB:>6}M {r:>14.2f} {u:>15.2f} {extra}")

    base = map_file(path, size)
    dptr = ctypes.c_uint64()
    d.check(d.cu.cuMemAlloc_v2(ctypes.byref(dptr), size), "cuMemAlloc")
    try:
        windows = [(base + off, min(64 * MIB, size - off)) for off in range(0, size, 64 * MIB)]
        for addr, n in windows:
            d.register(addr, n)
        try:

            def copy_all():
                for i, (addr, n) in enumerate(windows):
                    d.copy(dptr.value + i * 64 * MIB, addr, n)
                d.sync()

            copy_all()  # warm-up
            out["copy_registered_gbps"] = gb / statistics.median(timed(copy_all) for _ in range(a.runs))
        finally:
            for addr, _ in windows:
                d.unregister(addr)
        pinned = ctypes.c_void_p()
        n = min(256 * MIB, size)
        d.check(d.cu.cuMemAllocHost_v2(ctypes.byref(pinned), n), "cuMemAllocHost")
        try:
            ctypes.memset(pinned, 7, n)

            def copy_pinned():
                for i in range(8):
                    d.copy(dptr.value + (i * n) % max(size - n, 1), pinned.value, n)
                d.sync()

            copy_pinned()
            out["copy_pinned_gbps"] = 8 * n / 1e9 / statistics.median(timed(copy_pinned) for _ in range(a.runs))
        finally:
            d.cu.cuMemFreeHost(pinned)
    except RuntimeError as e:
        out["errors"].append(str(e))
        print(f"copies failed: {e}")
    finally:
        d.cu.cuMemFree_v2(dptr.value)
    try:
        out["staging_pin_s"] = staging_pin(d, a.runs)
    except (OSError, RuntimeError) as e:
        out["errors"].append(f"staging: {e}")
    for k, v in out.get("staging_pin_s", {}).items():
        print(f"pinning 64 MiB of staging, {k}: {v * 1e3:.1f} ms")
    if "copy_registered_gbps" in out:
        print(f"copy from the registered page cache: {out['copy_registered_gbps']:.2f} GB/s")
    if "copy_pinned_gbps" in out:
        print(f"copy from pinned memory (cuMemAllocHost): {out['copy_pinned_gbps']:.2f} GB/s")
    os.unlink(path)
    print("REGBENCH " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
