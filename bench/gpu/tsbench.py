"""Helpers shared by bench/gpu/compare.py and bench/gpu/gpucheck.py.

Standard library only at import time (torch is imported inside the functions
that need it), Python 3.9+, so that the dry runs work on a machine without
numpy, torch or a GPU.

What is here:
- safetensors header parsing and per-tensor byte ranges (file, directory of
  shards or index), and reference SHA-256 digests read straight from the files;
- page-cache control: drop (``/proc/sys/vm/drop_caches`` when permitted, else
  ``posix_fadvise(DONTNEED)``), warm, and residency measured with ``mincore``;
- raw read rates: an O_DIRECT reader (threads, aligned buffers), fio when present;
- children run with a timeout, their own process group, and their peak RSS
  read from ``wait4`` (``ru_maxrss`` of that child alone);
- PyTorch limits: pinned host-to-device and device-to-device bandwidth, and
  torch's own dtype-conversion rate.
"""

import concurrent.futures as cf
import ctypes
import ctypes.util
import errno
import fnmatch
import hashlib
import json
import mmap
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

GB = 1e9
MIB = 1 << 20
GIB = 1 << 30

DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
CONVERTIBLE = {"F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"}
TARGETS = {"F32", "F16", "BF16"}


def now():
    return time.perf_counter()


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------
# safetensors layout
# ---------------------------------------------------------------------------


def parse_header(path):
    """Returns (data_start, {name: {dtype, shape, begin, end}}, metadata)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("%s: shorter than 8 bytes" % path)
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError("%s: header length %d over the cap" % (path, n))
        js = f.read(n)
    h = json.loads(js.decode("utf-8"))
    meta = h.pop("__metadata__", None)
    out = {}
    for name, v in h.items():
        b, e = v["data_offsets"]
        out[name] = {"dtype": v["dtype"], "shape": list(v["shape"]), "begin": b, "end": e}
    return 8 + n, out, meta


def checkpoint_files(path):
    """Shard files of a checkpoint given as a file, a directory or an index."""
    path = os.fspath(path)
    if os.path.isdir(path):
        idx = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(idx):
            return checkpoint_files(idx)
        return sorted(os.path.join(path, p) for p in os.listdir(path) if p.endswith(".safetensors"))
    if path.endswith(".json"):
        with open(path) as f:
            wm = json.load(f)["weight_map"]
        base = os.path.dirname(path)
        return [os.path.join(base, p) for p in sorted(set(wm.values()))]
    return [path]


def tensor_table(path):
    """{name: {file, dtype, shape, start, end}} with absolute file offsets."""
    table = {}
    for f in checkpoint_files(path):
        start, ts, _ = parse_header(f)
        for name, t in ts.items():
            table[name] = {
                "file": f, "dtype": t["dtype"], "shape": t["shape"],
                "start": start + t["begin"], "end": start + t["end"],
            }
    return table


def glob_match(patterns, name):
    """Whole-name glob as tensorstream's --only: '*' spans dots, '?' one char."""
    if not patterns:
        return True
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def read_range(file, start, end):
    fd = os.open(file, os.O_RDONLY)
    try:
        out = bytearray(end - start)
        mv = memoryview(out)
        got = 0
        while got < len(out):
            n = os.preadv(fd, [mv[got:]], start + got)
            if n <= 0:
                raise IOError("%s: short read at %d" % (file, start + got))
            got += n
        return bytes(out)
    finally:
        os.close(fd)


def sha256_range(file, start, end, block=16 * MIB):
    h = hashlib.sha256()
    fd = os.open(file, os.O_RDONLY)
    try:
        buf = bytearray(min(block, max(end - start, 1)))
        mv = memoryview(buf)
        off = start
        while off < end:
            want = min(len(buf), end - off)
            n = os.preadv(fd, [mv[:want]], off)
            if n <= 0:
                raise IOError("%s: short read at %d" % (file, off))
            h.update(mv[:n])
            off += n
    finally:
        os.close(fd)
    return h.hexdigest()


def reference_digests(path, names=None, threads=None):
    """{name: sha256 of the tensor's bytes in the file}; hashed on threads
    (hashlib releases the GIL), biggest tensors first."""
    table = tensor_table(path)
    todo = sorted(names if names is not None else table.keys(), key=lambda n: -(table[n]["end"] - table[n]["start"]))
    threads = threads or min(16, (os.cpu_count() or 2))
    out = {}
    with cf.ThreadPoolExecutor(threads) as ex:
        futs = {ex.submit(sha256_range, table[n]["file"], table[n]["start"], table[n]["end"]): n for n in todo}
        for fu in cf.as_completed(futs):
            out[futs[fu]] = fu.result()
    return out


def total_bytes(files):
    return sum(os.path.getsize(f) for f in files)


# ---------------------------------------------------------------------------
# page cache
# ---------------------------------------------------------------------------

_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        _libc.syscall.restype = ctypes.c_long
    return _libc


def resident_fraction(path):
    """Fraction of the file's pages in the page cache (mincore), or raises OSError."""
    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    c = libc()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = c.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            e = ctypes.get_errno()
            raise OSError(e, "mmap: " + os.strerror(e))
        try:
            vec = (ctypes.c_ubyte * pages)()
            if c.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                e = ctypes.get_errno()
                raise OSError(e, "mincore: " + os.strerror(e))
            b = bytes(vec)
            return (pages - b.count(0)) / pages
        finally:
            c.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)


def residency(files):
    """{'fraction': bytes-weighted resident fraction or None, 'error': str|None}."""
    tot = 0
    res = 0.0
    try:
        for f in files:
            s = os.path.getsize(f)
            res += resident_fraction(f) * s
            tot += s
    except OSError as e:
        return {"fraction": None, "error": "mincore refused: %s" % e}
    return {"fraction": (res / tot) if tot else 1.0, "error": None}


def fadvise_dontneed(files):
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            try:
                os.fdatasync(fd)
            except OSError:
                pass
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def drop_cache(files, prefer="auto"):
    """Drops the files from the page cache. prefer: auto (drop_caches, then
    fadvise if pages remain), drop_caches, fadvise. Returns a dict saying which
    method ran and the residency afterwards (mincore)."""
    methods = []
    errors = []
    os.sync()
    if prefer in ("auto", "drop_caches"):
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            methods.append("drop_caches")
        except OSError as e:
            errors.append("drop_caches refused: %s" % e)
    r = residency(files)
    if prefer == "fadvise" or not methods or (r["fraction"] is not None and r["fraction"] > 0.01):
        try:
            fadvise_dontneed(files)
            methods.append("posix_fadvise")
        except OSError as e:
            errors.append("posix_fadvise failed: %s" % e)
        r = residency(files)
    return {
        "method": "+".join(methods) or "none",
        "resident_after": r["fraction"],
        "residency_error": r["error"],
        "errors": errors,
    }


def warm(files, threads=8, block=16 * MIB):
    """Reads the files through the page cache; returns seconds and residency."""
    t = now()

    def one(task):
        f, off, n = task
        fd = os.open(f, os.O_RDONLY)
        try:
            buf = bytearray(block)
            mv = memoryview(buf)
            end = off + n
            while off < end:
                k = os.preadv(fd, [mv[: min(block, end - off)]], off)
                if k <= 0:
                    break
                off += k
        finally:
            os.close(fd)

    tasks = []
    for f in files:
        size = os.path.getsize(f)
        step = 256 * MIB
        for off in range(0, size, step):
            tasks.append((f, off, min(step, size - off)))
    with cf.ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, tasks))
    r = residency(files)
    return {"seconds": now() - t, "resident_after": r["fraction"], "residency_error": r["error"]}


# ---------------------------------------------------------------------------
# raw read rates
# ---------------------------------------------------------------------------


def odirect_read(files, block=16 * MIB, threads=16, max_bytes=None):
    """Reads the files with O_DIRECT (aligned buffers, `threads` reads in flight,
    `block`-sized requests) and returns {ok, bytes, seconds, gbps, error}."""
    if not hasattr(os, "O_DIRECT"):
        return {"ok": False, "error": "no O_DIRECT on this platform"}
    tasks = []
    budget = max_bytes
    for f in files:
        size = os.path.getsize(f)
        if budget is not None:
            size = min(size, budget)
            budget -= size
        for off in range(0, size, block):
            tasks.append((f, off, min(block, size - off)))
        if budget is not None and budget <= 0:
            break
    fds = {}
    try:
        for f in {t[0] for t in tasks}:
            fds[f] = os.open(f, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        for fd in fds.values():
            os.close(fd)
        return {"ok": False, "error": "open(O_DIRECT) refused: %s" % e}
    local = threading.local()
    total = [0]
    lock = threading.Lock()

    def one(task):
        f, off, n = task
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = mmap.mmap(-1, block)  # page-aligned
        want = (n + 4095) // 4096 * 4096  # O_DIRECT lengths are block-aligned
        mv = memoryview(buf)[:want]
        k = os.preadv(fds[f], [mv], off)
        mv.release()
        with lock:
            total[0] += min(k, n)

    t = now()
    try:
        with cf.ThreadPoolExecutor(threads) as ex:
            list(ex.map(one, tasks))
    except OSError as e:
        return {"ok": False, "error": "O_DIRECT read failed: %s" % e}
    finally:
        for fd in fds.values():
            os.close(fd)
    s = now() - t
    return {
        "ok": True, "bytes": total[0], "seconds": s, "gbps": total[0] / s / GB if s > 0 else 0.0,
        "block": block, "threads": threads, "tool": "python preadv O_DIRECT",
    }


def fio_read(files, block="4m", iodepth=16, runtime=20, timeout=60):
    """fio, io_uring + O_DIRECT, 4 MiB blocks, queue depth 16, over the files
    (one job per file, sequential). None when fio is absent."""
    fio = shutil.which("fio")
    if not fio:
        return None
    res = {"tool": "fio", "block": block, "iodepth": iodepth}
    for engine in ("io_uring", "libaio", "psync"):
        cmd = [fio, "--readonly", "--output-format=json", "--rw=read", "--bs=" + block, "--direct=1",
               "--ioengine=" + engine, "--iodepth=%d" % iodepth, "--runtime=%d" % runtime, "--group_reporting"]
        for f in files:
            cmd += ["--name=" + os.path.basename(f), "--filename=" + f]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            res.setdefault("errors", []).append("%s: timed out" % engine)
            continue
        if p.returncode != 0:
            res.setdefault("errors", []).append("%s: %s" % (engine, (p.stderr or p.stdout).strip()[-300:]))
            continue
        try:
            j = json.loads(p.stdout[p.stdout.index("{"):])
            rd = j["jobs"][0]["read"]
            res.update({"ok": True, "engine": engine, "bytes": rd["io_bytes"],
                        "seconds": rd["runtime"] / 1000.0, "gbps": rd["bw_bytes"] / GB})
            return res
        except (ValueError, KeyError, IndexError) as e:
            res.setdefault("errors", []).append("%s: unreadable output (%s)" % (engine, e))
    res["ok"] = False
    return res


def probe_io(dirpath):
    """Is O_DIRECT accepted on this filesystem, does io_uring_setup work, is
    mincore answered, is drop_caches writable? Answers without side effects
    beyond a 1 MiB probe file."""
    out = {}
    p = os.path.join(dirpath, ".ts-probe")
    with open(p, "wb") as f:
        f.write(os.urandom(MIB))
    try:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECT)
        try:
            buf = mmap.mmap(-1, MIB)
            n = os.preadv(fd, [buf], 0)
            out["o_direct"] = "ok (read %d bytes)" % n
        finally:
            os.close(fd)
    except OSError as e:
        out["o_direct"] = "refused: %s" % e
    try:
        out["mincore"] = "ok (resident %.2f)" % resident_fraction(p)
    except OSError as e:
        out["mincore"] = "refused: %s" % e
    os.unlink(p)
    # io_uring_setup(2) is syscall 425 on x86-64 and aarch64.
    params = ctypes.create_string_buffer(120)
    c = libc()
    r = c.syscall(ctypes.c_long(425), ctypes.c_uint(4), params)
    if r >= 0:
        os.close(r)
        out["io_uring_setup"] = "ok"
    else:
        e = ctypes.get_errno()
        out["io_uring_setup"] = "refused: %s (%s)" % (errno.errorcode.get(e, e), os.strerror(e))
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            out["io_uring_disabled_sysctl"] = f.read().strip()
    except OSError:
        pass
    out["drop_caches_writable"] = os.access("/proc/sys/vm/drop_caches", os.W_OK)
    try:
        st = os.statvfs(dirpath)
        out["free_bytes"] = st.f_bavail * st.f_frsize
    except OSError:
        pass
    out["filesystem"] = fs_type(dirpath)
    return out


def fs_type(path):
    """Filesystem type and source of the mount holding `path` (from /proc/mounts)."""
    path = os.path.realpath(path)
    best = ("", "?", "?")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and (path == parts[1] or path.startswith(parts[1].rstrip("/") + "/")):
                    if len(parts[1]) >= len(best[0]):
                        best = (parts[1], parts[2], parts[0])
    except OSError:
        pass
    return {"mount": best[0], "type": best[1], "source": best[2]}


# ---------------------------------------------------------------------------
# children
# ---------------------------------------------------------------------------


# The launcher between the parent and a measured child: a fresh, small process
# that fork()s (not vfork) and exec()s the command, then reports the command's
# own rusage. Without it, Linux would charge the parent's memory high-water mark
# to the child: at exec, ru_maxrss takes the hiwater of the mm being replaced,
# which after vfork is the parent's. With it, the floor is this launcher's RSS
# (~10 MB), the same for every loader.
_LAUNCHER = r"""
import os, sys, json
out = sys.argv[1]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as e:
        os.write(2, ("launcher: cannot run %s: %s\n" % (sys.argv[2], e)).encode())
        os._exit(127)
while True:
    try:
        _, st, ru = os.wait4(pid, 0)
        break
    except InterruptedError:
        pass
with open(out, "w") as f:
    json.dump({"maxrss_kib": ru.ru_maxrss, "utime": ru.ru_utime, "stime": ru.ru_stime, "status": st}, f)
if os.WIFSIGNALED(st):
    sys.exit(128 + os.WTERMSIG(st))
sys.exit(os.WEXITSTATUS(st))
"""


def run_child(cmd, timeout, env=None, cwd=None):
    """Runs cmd (through the launcher above) in its own process group; kills the
    group after `timeout` s. Returns {rc, timed_out, wall_s, peak_rss_bytes,
    stdout, stderr}; peak RSS is ru_maxrss of the command alone."""
    fd, ru_path = tempfile.mkstemp(prefix="ts-rusage-")
    os.close(fd)
    full = [sys.executable, "-S", "-c", _LAUNCHER, ru_path] + list(cmd)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = now()
        try:
            p = subprocess.Popen(full, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True)
        except OSError as e:
            os.unlink(ru_path)
            return {"rc": None, "timed_out": False, "wall_s": 0.0, "peak_rss_bytes": None,
                    "stdout": "", "stderr": "could not start %s: %s" % (cmd[0], e)}
        fired = []

        def kill():
            fired.append(1)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            rc = p.wait()
        finally:
            timer.cancel()
        wall = now() - t
        # Whatever the command left in its group dies with it.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        peak = None
        try:
            with open(ru_path) as f:
                peak = json.load(f)["maxrss_kib"] * 1024
        except (OSError, ValueError, KeyError):
            pass
        os.unlink(ru_path)
        out.seek(0)
        err.seek(0)
        return {
            "rc": rc, "timed_out": bool(fired), "wall_s": wall, "peak_rss_bytes": peak,
            "stdout": out.read().decode("utf-8", "replace"), "stderr": err.read().decode("utf-8", "replace"),
        }


def gbps_without_init(j):
    """GB/s of a `tensorstream load --json` result (or a record with its bytes,
    seconds and device_init_seconds) with the CUDA context's creation left out, as
    the Python loaders' clocks leave theirs out; None when it cannot be worked out."""
    b, secs, init = j.get("bytes"), j.get("seconds"), j.get("device_init_seconds") or 0.0
    if not b or secs is None or secs <= init:
        return None
    return b / (secs - init) / GB


def synth_checkpoint(bin_, root, size, shards, timeout):
    """Writes (or reuses, when a finished one is there) the synthetic checkpoint
    `root/synth-SIZE-SHARDS` with `tensorstream synth`; returns (path, error)."""
    sdir = os.path.join(root, "synth-%s-%d" % (size, shards))
    marker = os.path.join(sdir, ".complete")
    if os.path.exists(marker):
        return open(marker).read().strip(), None
    shutil.rmtree(sdir, ignore_errors=True)
    r = run_child([bin_, "synth", sdir, "--size", size, "--shards", str(shards)], timeout)
    if r["rc"] != 0:
        return None, tail(r["stderr"])
    path = r["stdout"].strip().splitlines()[-1]
    with open(marker, "w") as f:
        f.write(path)
    return path, None


def last_json(text, prefix=None):
    """The last line of `text` that parses as a JSON object (after `prefix`)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if prefix:
            if not line.startswith(prefix):
                continue
            line = line[len(prefix):].strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def tail(text, n=600):
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


# ---------------------------------------------------------------------------
# PyTorch limits (imports torch)
# ---------------------------------------------------------------------------


def cuda_sync_time(torch, fn, reps, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = now()
        fn()
        torch.cuda.synchronize()
        ts.append(now() - t)
    ts.sort()
    return ts


def measure_limits(device="cuda:0", nbytes=GIB, reps=8):
    """Pinned H2D (torch pinned tensor .to(cuda, non_blocking=True), synchronized),
    pageable H2D, D2D copy, D2H pinned, and torch's dtype conversion rates.
    Rates in GB/s (1e9). For D2D and conversions both 'copy' (bytes of the
    destination per second) and 'rw' (bytes read + written per second) are given."""
    import torch

    dev = torch.device(device)
    torch.cuda.set_device(dev)
    out = {"device_name": torch.cuda.get_device_name(dev), "bytes": nbytes, "reps": reps}
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    host.random_(0, 255)
    d = torch.empty(nbytes, dtype=torch.uint8, device=dev)

    def h2d_to():
        return host.to(dev, non_blocking=True)

    ts = cuda_sync_time(torch, h2d_to, reps)
    out["pinned_h2d_to"] = {"gbps_median": nbytes / ts[len(ts) // 2] / GB, "gbps_best": nbytes / ts[0] / GB}
    ts = cuda_sync_time(torch, lambda: d.copy_(host, non_blocking=True), reps)
    out["pinned_h2d_copy"] = {"gbps_median": nbytes / ts[len(ts) // 2] / GB, "gbps_best": nbytes / ts[0] / GB}
    ts = cuda_sync_time(torch, lambda: host.copy_(d, non_blocking=True), reps)
    out["pinned_d2h_copy"] = {"gbps_median": nbytes / ts[len(ts) // 2] / GB, "gbps_best": nbytes / ts[0] / GB}
    pageable = torch.empty(nbytes // 4, dtype=torch.uint8)
    pageable.random_(0, 255)
    dp = torch.empty(nbytes // 4, dtype=torch.uint8, device=dev)
    ts = cuda_sync_time(torch, lambda: dp.copy_(pageable), max(3, reps // 2))
    out["pageable_h2d_copy"] = {"gbps_median": (nbytes // 4) / ts[len(ts) // 2] / GB, "bytes": nbytes // 4}
    pageable = dp = None  # free before the next measurement
    d2 = torch.empty_like(d)
    ts = cuda_sync_time(torch, lambda: d2.copy_(d), reps * 2)
    med = ts[len(ts) // 2]
    out["d2d_copy"] = {"gbps_copy": nbytes / med / GB, "gbps_rw": 2 * nbytes / med / GB, "seconds_median": med}
    d2 = None
    conv = {}
    pairs = [("BF16", "F32"), ("F16", "F32"), ("F32", "BF16"), ("F32", "F16"), ("BF16", "F16"), ("F16", "BF16")]
    tmap = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    fp8 = getattr(torch, "float8_e4m3fn", None)
    if fp8 is not None:
        tmap["F8_E4M3"] = fp8
        pairs += [("F8_E4M3", "BF16"), ("F8_E4M3", "F32")]
    for s, t in pairs:
        n_src = 256 * MIB  # bytes of input, >= 64 MiB
        es = torch.empty((), dtype=tmap[s]).element_size()
        et = torch.empty((), dtype=tmap[t]).element_size()
        src = d[:n_src].view(tmap[s]) if n_src <= nbytes else None
        if src is None:
            continue
        dst = torch.empty(src.numel(), dtype=tmap[t], device=dev)
        ts = cuda_sync_time(torch, lambda: dst.copy_(src), reps)
        med = ts[len(ts) // 2]
        n = src.numel()
        conv["%s->%s" % (s, t)] = {"seconds_median": med, "src_bytes": n * es, "dst_bytes": n * et,
                                   "gbps_rw": n * (es + et) / med / GB, "gbps_dst": n * et / med / GB}
    out["torch_convert"] = conv
    d = host = None
    torch.cuda.empty_cache()
    return out


def measure_registered_map(files, device="cuda:0", window=256 * MIB):
    """The other candidate path to the device for files already in the page cache:
    map each file read-only, register the map with the driver
    (cudaHostRegister(..., cudaHostRegisterReadOnly), which pins the page-cache pages
    themselves) and copy straight from it, with no CPU copy into a staging buffer.
    Done window by window, registering the next window while the previous one copies.
    Returns the device attributes that decide whether it can work, the rate of
    registration alone, and the end-to-end rate (register + copy + unregister), in
    GB/s of file bytes; or the error the driver gave. The CPU never reads the map, so
    a file truncated meanwhile makes registration fail instead of raising SIGBUS."""
    import torch

    dev = torch.device(device)
    torch.cuda.set_device(dev)
    cudart = torch.cuda.cudart()
    out = {"window_bytes": window}
    try:
        cu = ctypes.CDLL("libcuda.so.1")
        d = ctypes.c_int()
        cu.cuDeviceGet(ctypes.byref(d), dev.index or 0)
        attrs = {"host_register_supported": 99, "read_only_host_register_supported": 113,
                 "pageable_memory_access_uses_host_page_tables": 100}
        for k, code in attrs.items():
            v = ctypes.c_int(-1)
            rc = cu.cuDeviceGetAttribute(ctypes.byref(v), code, d)
            out[k] = v.value if rc == 0 else "error %d" % rc
    except OSError as e:
        out["attributes_error"] = str(e)
    READ_ONLY = 8
    c = libc()
    PROT_READ, MAP_SHARED = 1, 1
    total = 0
    t_reg = 0.0
    stream = torch.cuda.Stream(dev)
    t0 = now()
    try:
        for path in files:
            size = os.path.getsize(path)
            fd = os.open(path, os.O_RDONLY)
            try:
                addr = c.mmap(None, size, PROT_READ, MAP_SHARED, fd, 0)
                if addr in (None, ctypes.c_void_p(-1).value):
                    raise OSError(ctypes.get_errno(), "mmap failed")
                dst = torch.empty(size, dtype=torch.uint8, device=dev)
                pending = []  # (event, start, length) registered windows in flight
                try:
                    off = 0
                    while off < size:
                        n = min(window, size - off)
                        # Whole pages: the map starts page-aligned and windows are multiples of 4 KiB.
                        reg_len = (n + 4095) // 4096 * 4096
                        t = now()
                        err = cudart.cudaHostRegister(addr + off, reg_len, READ_ONLY)
                        t_reg += now() - t
                        if int(err) != 0:
                            raise RuntimeError("cudaHostRegister(read-only) of %d bytes: error %s" % (reg_len, err))
                        src = torch.frombuffer((ctypes.c_ubyte * n).from_address(addr + off), dtype=torch.uint8)
                        with torch.cuda.stream(stream):
                            dst[off:off + n].copy_(src, non_blocking=True)
                            ev = torch.cuda.Event()
                            ev.record(stream)
                        pending.append((ev, addr + off))
                        while len(pending) > 2:
                            e, a0 = pending.pop(0)
                            e.synchronize()
                            cudart.cudaHostUnregister(a0)
                        off += n
                    for e, a0 in pending:
                        e.synchronize()
                        cudart.cudaHostUnregister(a0)
                    pending = []
                finally:
                    stream.synchronize()
                    for _, a0 in pending:
                        cudart.cudaHostUnregister(a0)
                    c.munmap(addr, size)
                total += size
                dst = None
            finally:
                os.close(fd)
        torch.cuda.synchronize()
        secs = now() - t0
        out.update(ok=True, bytes=total, seconds=secs, gbps=total / secs / GB,
                   register_seconds=t_reg, register_gbps=total / max(t_reg, 1e-9) / GB)
    except Exception as e:  # the driver refused: recorded, not fatal
        out.update(ok=False, error=str(e))
    torch.cuda.empty_cache()
    return out


def json_default(o):
    return str(o)


def write_jsonl(path, obj):
    with open(path, "a") as f:
        f.write(json.dumps(obj, default=json_default, sort_keys=False) + "\n")


if __name__ == "__main__":
    # Tiny CLI for manual checks: resident/drop/warm/odirect/probe FILES...
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "resident":
        print(json.dumps(residency(args)))
    elif cmd == "drop":
        print(json.dumps(drop_cache(args)))
    elif cmd == "warm":
        print(json.dumps(warm(args)))
    elif cmd == "odirect":
        print(json.dumps(odirect_read(args)))
    elif cmd == "probe":
        print(json.dumps(probe_io(args[0] if args else ".")))
    elif cmd == "limits":
        print(json.dumps(measure_limits()))
    else:
        sys.exit("usage: tsbench.py resident|drop|warm|odirect|probe|limits ARGS")
