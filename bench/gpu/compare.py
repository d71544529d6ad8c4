#!/usr/bin/env python3
"""Side-by-side GPU loading comparison: tensorstream against its peers, on one
machine, in one run. Runs ON the GPU machine (Python 3.12 with torch, no
network, no Rust), from the bundle that scripts/gpu-bundle.sh builds:

    python3 gpu-bundle/gpu/compare.py --out "$OUT"              # 16 GB, 4 shards, 3 runs
    python3 gpu-bundle/gpu/compare.py --size 8G --runs 2 --budget-s 300
    python3 bench/gpu/compare.py --dry-run --size 512M          # here, without a GPU

What it does:
 1. installs the peers' wheels offline (pip install --no-index --no-deps
    --target) from --wheels; a dependency the environment lacks is installed
    from the same folder when a wheel is there; a loader that fails to install
    or import is skipped with the reason logged;
 2. writes a synthetic multi-shard Llama-layout BF16 checkpoint with
    `tensorstream synth` and computes the reference SHA-256 of every tensor
    from the files (CPU, threads);
 3. measures the limits in the same run: raw O_DIRECT read rate of those files
    (Python O_DIRECT reader; fio too when present) and pinned host-to-device
    bandwidth and device-to-device copy with PyTorch;
 4. loads the checkpoint to cuda:0 with each loader, cold (page cache dropped:
    drop_caches when permitted, else posix_fadvise; residency checked with
    mincore before the run) and warm (files resident, checked), --runs rounds,
    every load in its own process (peak RSS = ru_maxrss of that process, via a
    fork/exec launcher), the clock stopped after torch.cuda.synchronize().
    Each round runs the --key-loaders first (warm, then cold; their order
    rotates every round), then the others (warm, then cold; the least measured
    and cheapest first). The budget goes to the key loaders first: a load of
    another loader starts only when it fits with the time the key loaders'
    remaining runs are expected to take (from their own measured wall times)
    kept aside, so a short budget gives the key loaders all their runs and the
    others what is left; any load that would not fit is skipped and logged;
 5. checks each loader's result: every tensor of every timed run of every
    in-process loader (tensorstream-py and the peers) by a fingerprint computed
    where it landed, after the clock stops (byte count and two wrapping int64
    sums of its 32-bit words, one position-weighted), against fingerprints of
    the files' bytes computed the same way on the same device once; and SHA-256
    of a sample of tensors copied back (largest, smallest, first/last by name,
    first of each shard, two more) against the references; the CLI's output
    (ts-default, ts-best) is checked with a full `--digest` run of each of its
    configurations (untimed);
 6. writes one JSON line per load to OUT/gpu-results.jsonl
    {loader, temperature, run, gbps, seconds, bytes, peak_rss_bytes, device, ...}
    (plus lines with kind "limit", "verify", "skip"), a log OUT/compare.log and
    a summary OUT/compare-summary.json.

Timing definitions (also in each line): tensorstream: the CLI's own `seconds`
(Loader::load, from opening the files to the tensors on the device, synchronized)
less its `device_init_seconds` (retaining the CUDA primary context, which the
Python loaders do before their clock starts); the whole is `seconds_with_init`,
`wall_s` gives the whole process; Python loaders: from the loader's first call
to torch.cuda.synchronize() after the last tensor, with torch imported and the
CUDA context created before the clock starts (`init_s` is reported apart).

Loaders: tensorstream-py (the Python package, in process like the peers:
tensorstream.torch.load_file(index or file, device="cuda:0"); its wheel from
--ts-wheels), ts-default (tensorstream load --device cuda:0), ts-best (with
--ts-best-cold / --ts-best-warm arguments), instanttensor (default: direct I/O),
instanttensor-buffered (BackendPolicy.BUFFERED, its advice for repeated loads),
fastsafetensors (nogds=True), fastsafetensors-gds (nogds=False; the copier that
really ran is recorded, and a run that fell back to nogds is marked),
safetensors (0.8 load_file(device="cuda:0") per shard), runai
(SafetensorsStreamer.stream_files(device="cuda:0")).

--dry-run exercises everything but the GPU: wheel installation (for CPython
3.12 into a target folder), synth, references, page-cache control, the
O_DIRECT reader, the launcher and timing machinery, verification, the JSON
lines and the summary; loads go to the CPU (tensorstream --device cpu, the peers
that can load to the CPU when they import here, and a stdlib reader).
"""

import argparse
import ctypes
import hashlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the checkout or the bundle
sys.path.insert(0, HERE)
import tsbench as tb  # noqa: E402

PEER_PACKAGES = {  # loader -> (wheel project name, import name)
    "tensorstream-py": ("tensorstream", "tensorstream"),
    "instanttensor": ("instanttensor", "instanttensor"),
    "instanttensor-buffered": ("instanttensor", "instanttensor"),
    "fastsafetensors": ("fastsafetensors", "fastsafetensors"),
    "fastsafetensors-gds": ("fastsafetensors", "fastsafetensors"),
    "safetensors": ("safetensors", "safetensors"),
    "runai": ("runai_model_streamer", "runai_model_streamer"),
}
ALL_LOADERS = ["tensorstream-py", "ts-default", "ts-best", "instanttensor", "instanttensor-buffered", "fastsafetensors",
               "fastsafetensors-gds", "safetensors", "runai"]
KEY_LOADERS = ["tensorstream-py", "ts-default", "instanttensor-buffered", "instanttensor", "safetensors"]
CPU_CAPABLE = {"tensorstream-py", "safetensors", "runai", "fastsafetensors", "stdlib"}  # loaders that can target the CPU (dry run)


# ---------------------------------------------------------------------------
# the child: one load in a fresh process
# ---------------------------------------------------------------------------


def child_load(loader, files, device, info):
    """Returns {name: tensor} with every tensor on `device`, fully loaded."""
    import torch

    dev = torch.device(device)
    out = {}
    if loader == "tensorstream-py":
        import tensorstream
        import tensorstream.torch as tst

        info["version"] = tensorstream.__version__
        info["module"] = os.path.dirname(tensorstream.__file__)
        index = os.path.join(os.path.dirname(files[0]), "model.safetensors.index.json")
        path = index if len(files) > 1 and os.path.exists(index) else None
        info["path"] = path or "per file"
        for f in [path] if path else files:
            out.update(tst.load_file(f, device=dev))
    elif loader == "safetensors":
        import safetensors
        from safetensors.torch import load_file

        info["version"] = safetensors.__version__
        info["module"] = os.path.dirname(safetensors.__file__)
        for f in files:
            out.update(load_file(f, device=str(dev)))
    elif loader.startswith("instanttensor"):
        import instanttensor
        from instanttensor import BackendPolicy, safe_open

        kw = {}
        if loader == "instanttensor-buffered":
            kw["backend"] = BackendPolicy.BUFFERED
        with safe_open(list(files), framework="pt", device=dev.index or 0, **kw) as f:
            info["backend"] = getattr(getattr(f, "backend", None), "name", str(getattr(f, "backend", "?")))
            for name, t in f.tensors():
                out[name] = t
        info["version"] = getattr(instanttensor, "__version__", None) or pkg_version("instanttensor")
    elif loader.startswith("fastsafetensors"):
        import logging

        import fastsafetensors
        from fastsafetensors import SafeTensorsFileLoader

        records = []

        class Grab(logging.Handler):
            def emit(self, r):
                records.append(r.getMessage()[:300])

        h = Grab(level=logging.WARNING)
        logging.getLogger("fastsafetensors").addHandler(h)
        logging.getLogger().addHandler(h)
        info["version"] = fastsafetensors.__version__
        ld = SafeTensorsFileLoader(None, str(dev), nogds=(loader == "fastsafetensors"))
        info["copier"] = getattr(getattr(ld, "copier_class", None), "__name__", "?")
        ld.add_filenames({0: list(files)})
        fb = ld.copy_files_to_device()
        for k in list(fb.key_to_rank_lidx.keys()):
            out[k] = fb.get_tensor(k)
        info["warnings"] = records[:5]
        info["fell_back_to_nogds"] = any("falling back" in r for r in records)
        info["_close"] = (fb, ld)
    elif loader == "runai":
        from runai_model_streamer import SafetensorsStreamer

        info["version"] = pkg_version("runai-model-streamer") or pkg_version("runai_model_streamer")
        with SafetensorsStreamer() as s:
            try:
                s.stream_files(list(files), device=str(dev))
                info["device_arg"] = True
            except TypeError:  # versions without the device argument
                s.stream_files(list(files))
                info["device_arg"] = False
            for name, t in s.get_tensors():
                out[name] = t if t.device == dev else t.to(dev)
    else:
        raise ValueError("unknown loader %s" % loader)
    return out


def pkg_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


FP_CHUNK = 1 << 26  # 32-bit words per step of a fingerprint: bounds its temporaries


def fingerprint(t):
    """"bytes:sum:weighted" of a tensor's bytes, computed where it lies: the wrapping
    int64 sum of its little-endian 32-bit words (the last zero-padded), and the same
    with word i weighted by i % 65521 + 1. Integer sums wrap the same whatever the
    order, so the CPU and the GPU agree; a wrong, missing or moved byte changes them."""
    import torch

    b = t.detach().contiguous().reshape(-1).view(torch.uint8)
    n = b.numel()
    if n % 4 or b.storage_offset() % 4:
        b = torch.cat([b, b.new_zeros((-n) % 4)])
    w = b.view(torch.int32)
    s1 = torch.zeros((), dtype=torch.int64, device=b.device)
    s2 = torch.zeros((), dtype=torch.int64, device=b.device)
    for i in range(0, w.numel(), FP_CHUNK):
        x = w[i:i + FP_CHUNK].to(torch.int64)
        s1 += x.sum()
        idx = torch.arange(i, i + x.numel(), dtype=torch.int64, device=b.device)
        s2 += (x * (idx % 65521 + 1)).sum()
    return "%d:%d:%d" % (n, s1.item(), s2.item())


def child_fingerprints(files, device):
    """The reference fingerprints: every tensor's bytes read from the files with
    plain reads, moved to `device`, fingerprinted there."""
    import torch

    out = {}
    for f in files:
        start, ts, _ = tb.parse_header(f)
        with open(f, "rb") as fh:
            for name, e in ts.items():
                fh.seek(start + e["begin"])
                raw = bytearray(fh.read(e["end"] - e["begin"]))
                t = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
                out[name] = fingerprint(t.to(device))
    return {"ok": True, "fingerprints": out}


def child_stdlib(files, samples):
    """The dry-run loader: reads every tensor into host memory with pread."""
    t = time.perf_counter()
    data = {}
    nbytes = 0
    for f in files:
        start, ts, _ = tb.parse_header(f)
        with open(f, "rb") as fh:
            for name, e in ts.items():
                fh.seek(start + e["begin"])
                data[name] = fh.read(e["end"] - e["begin"])
                nbytes += len(data[name])
    secs = time.perf_counter() - t
    return {"ok": True, "seconds": secs, "bytes": nbytes, "tensors": len(data), "init_s": 0.0, "import_s": 0.0,
            "samples": {n: hashlib.sha256(data[n]).hexdigest() for n in samples if n in data},
            "info": {"reader": "python pread"}}


def child_main(a):
    files = a.files
    samples = [s for s in (a.sample or "").split(",") if s]
    if a.child == "stdlib":
        return child_stdlib(files, samples)
    if a.child == "fingerprints":
        return child_fingerprints(files, a.device)
    res = {"ok": False}
    t0 = time.perf_counter()
    import torch

    pkg = PEER_PACKAGES.get(a.child, (None, None))[1]
    if pkg:
        __import__(pkg)
    t1 = time.perf_counter()
    res["import_s"] = t1 - t0
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.set_device(dev)
        torch.zeros(1, device=dev)
        torch.cuda.synchronize(dev)
    res["init_s"] = time.perf_counter() - t1
    if a.child == "baseline":
        res.update(ok=True, seconds=0.0, bytes=0, tensors=0, samples={}, info={"what": "import torch + CUDA context, no load"})
        return res
    info = {}
    t = time.perf_counter()
    tensors = child_load(a.child, files, a.device, info)
    if cuda:
        torch.cuda.synchronize(dev)
    res["seconds"] = time.perf_counter() - t
    res["bytes"] = sum(x.numel() * x.element_size() for x in tensors.values())
    res["tensors"] = len(tensors)
    res["on_device"] = sorted({str(x.device) for x in tensors.values()})
    sh = {}
    for n in samples:
        x = tensors.get(n)
        if x is None:
            continue
        c = x.detach().contiguous().reshape(-1).view(torch.uint8).cpu()
        sh[n] = hashlib.sha256(ctypes.string_at(c.data_ptr(), c.numel())).hexdigest() if c.numel() else hashlib.sha256(b"").hexdigest()
    res["samples"] = sh
    res["fingerprints"] = {n: fingerprint(x) for n, x in tensors.items()}
    close = info.pop("_close", None)
    if close:
        for o in close:
            try:
                o.close()
            except Exception:  # noqa: BLE001
                pass
    if cuda:
        res["gpu_peak_bytes"] = torch.cuda.max_memory_allocated(dev)
    res["info"] = info
    res["ok"] = True
    return res


def child_entry(a):
    try:
        r = child_main(a)
    except BaseException as e:  # noqa: BLE001 - the parent needs the reason, whatever it is
        r = {"ok": False, "error": "%s: %s" % (type(e).__name__, str(e)[:500]), "traceback": traceback.format_exc()[-1500:]}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    r["vmhwm_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    print("RESULT " + json.dumps(r, default=str), flush=True)
    return 0 if r.get("ok") else 1


# ---------------------------------------------------------------------------
# the parent
# ---------------------------------------------------------------------------


class Log:
    def __init__(self, path):
        self.f = open(path, "a")

    def __call__(self, *a):
        s = " ".join(str(x) for x in a)
        print(s, flush=True)
        self.f.write(s + "\n")
        self.f.flush()


def default_paths():
    bundle_bin = os.path.join(HERE, "..", "bin", "tensorstream")
    repo_bin = os.path.join(HERE, "..", "..", "target", "release", "tensorstream")
    bin_ = next((p for p in (bundle_bin, repo_bin) if os.path.exists(p)), shutil.which("tensorstream") or repo_bin)
    wheels = next((p for p in (os.path.join(HERE, "..", "wheels"), os.path.join(HERE, "..", "..", "bench", "wheels"))
                   if os.path.isdir(p)), os.path.join(HERE, "..", "wheels"))
    return os.path.abspath(bin_), os.path.abspath(wheels)


def choose_scratch(want):
    if want:
        os.makedirs(want, exist_ok=True)
        return want
    for c in ("/var/tmp/tensorstream-compare", "/tmp/tensorstream-compare", "/mnt/tensorstream-compare"):
        try:
            os.makedirs(c, exist_ok=True)
        except OSError:
            continue
        fs = tb.fs_type(c)["type"]
        st = os.statvfs(c)
        if fs not in ("tmpfs", "ramfs") and st.f_bavail * st.f_frsize > 20e9:
            return os.path.abspath(c)
    c = "/tmp/tensorstream-compare"
    os.makedirs(c, exist_ok=True)
    return c


def wheel_project(fname):
    return fname.split("-")[0].lower().replace("-", "_")


def install_peers(a, log):
    """Installs every peer wheel (and missing dependencies) into a.site."""
    status = {}
    if not os.path.isdir(a.wheels):
        log("  no wheel folder %s: only the peers already installed here can run" % a.wheels)
    wheels = sorted(f for f in os.listdir(a.wheels) if f.endswith(".whl")) if os.path.isdir(a.wheels) else []
    log("  wheels in %s: %s" % (a.wheels, ", ".join(wheels) or "none"))
    where = {w: os.path.join(a.wheels, w) for w in wheels}
    if os.path.isdir(a.ts_wheels):  # the package under test, built by gpu-bundle.sh
        for w in sorted(f for f in os.listdir(a.ts_wheels) if f.startswith("tensorstream-") and f.endswith(".whl")):
            wheels.append(w)
            where[w] = os.path.join(a.ts_wheels, w)
    log("  tensorstream wheel: %s" % (", ".join(w for w in wheels if w.startswith("tensorstream-")) or "none in %s" % a.ts_wheels))
    os.makedirs(a.site, exist_ok=True)
    cross = sys.version_info[:2] != (3, 12)
    base = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
            "--upgrade", "--disable-pip-version-check", "--target", a.site]
    if cross:
        # Installing cp312 wheels for another interpreter (dry run): pip needs the tags.
        base += ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
    projects = {wheel_project(w): w for w in wheels}
    peers = sorted({p for p, _ in PEER_PACKAGES.values()})
    for proj in peers:
        w = projects.get(proj)
        if not w:
            status[proj] = {"installed": False, "reason": "no wheel for %s in %s" % (proj, a.wheels)}
            continue
        r = tb.run_child(base + [where[w]], 180)
        ok = r["rc"] == 0
        status[proj] = {"installed": ok, "wheel": w, "reason": None if ok else tb.tail(r["stderr"] or r["stdout"], 400)}
        log("  install %-22s %s" % (w, "ok" if ok else "FAILED: " + status[proj]["reason"]))
    # Dependencies: installed from the folder only when the environment lacks them.
    import zipfile

    needed = set()
    for proj, st in status.items():
        if not st.get("installed"):
            continue
        with zipfile.ZipFile(where[st["wheel"]]) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            for line in z.read(meta).decode("utf-8", "replace").splitlines():
                if line.startswith("Requires-Dist:") and "extra ==" not in line and "Windows" not in line:
                    needed.add(re.split(r"[ ;<>=!~(\[]", line.split(":", 1)[1].strip())[0].lower().replace("-", "_"))
    for dep in sorted(needed):
        have = pkg_version(dep) or pkg_version(dep.replace("_", "-"))
        if have:
            log("  dependency %-14s present (%s)" % (dep, have))
            continue
        w = projects.get(dep)
        if not w:
            log("  dependency %-14s MISSING and no wheel for it: loaders needing it may fail to import" % dep)
            status["dep:" + dep] = {"installed": False, "reason": "missing, no wheel"}
            continue
        r = tb.run_child(base + [where[w]], 120)
        status["dep:" + dep] = {"installed": r["rc"] == 0, "wheel": w}
        log("  dependency %-14s installed from %s: %s" % (dep, w, "ok" if r["rc"] == 0 else tb.tail(r["stderr"], 300)))
    return status


def child_env(a):
    env = dict(os.environ)
    if a.site and os.path.isdir(a.site):
        env["PYTHONPATH"] = a.site + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("RUNAI_STREAMER_LOG_LEVEL", "WARNING")
    return env


def import_checks(a, loaders, env):
    """import_check for each loader, one child per package (instanttensor and
    instanttensor-buffered import the same one), the children side by side: each
    imports torch, seconds apiece, and nothing is measured yet."""
    from concurrent.futures import ThreadPoolExecutor

    pkgs = sorted({PEER_PACKAGES[l][1] for l in loaders})
    with ThreadPoolExecutor(max_workers=max(1, len(pkgs))) as ex:
        got = dict(zip(pkgs, ex.map(lambda p: import_check(a, p, env), pkgs)))
    return {l: got[PEER_PACKAGES[l][1]] for l in loaders}


def import_check(a, pkg, env):
    code = ("import json, time; t = time.time(); import torch; import %s as m; "
            "print('RESULT ' + json.dumps({'ok': True, 'file': getattr(m, '__file__', None), 'torch': torch.__version__, "
            "'cuda': torch.cuda.is_available(), 's': time.time() - t}))" % pkg)
    r = tb.run_child([sys.executable, "-c", code], 180, env=env)
    j = tb.last_json(r["stdout"], "RESULT")
    if j and j.get("ok"):
        return True, j
    return False, tb.tail(r["stderr"] or r["stdout"] or "rc=%s" % r["rc"], 500)


def pick_samples(table, files, seed=7):
    names = sorted(table)
    by_size = sorted(names, key=lambda n: (table[n]["end"] - table[n]["start"], n))
    s = [names[0], names[-1], by_size[-1], by_size[0]]
    for f in files:
        first = min((n for n in names if table[n]["file"] == f), key=lambda n: table[n]["start"], default=None)
        if first:
            s.append(first)
    rng = random.Random(seed)
    s += rng.sample(names, min(2, len(names)))
    out = []
    for n in s:
        if n not in out:
            out.append(n)
    return out


def ts_cmd(a, loader, temp, path, device, digest=False):
    cmd = [a.bin, "load", path, "--device", device, "--json"]
    if loader == "ts-best":
        cmd += (a.ts_best_cold if temp == "cold" else a.ts_best_warm).split()
    if digest:
        cmd.append("--digest")
    return cmd


def child_timeout(a):
    """A load never runs past the budget's end plus 30 s (the command limit)."""
    return max(10, min(a.load_timeout, a._deadline + 30 - time.time()))


def run_one(a, loader, temp, path, files, samples, device, env):
    """One timed load in a fresh process. Returns the record (without cache info)."""
    if loader.startswith("ts-"):
        cmd = ts_cmd(a, loader, temp, path, device)
        r = tb.run_child(cmd, child_timeout(a), env=env)
        j = tb.last_json(r["stdout"]) if r["rc"] == 0 else None
        rec = {"wall_s": r["wall_s"], "peak_rss_bytes": r["peak_rss_bytes"], "args": cmd[3:]}
        if j:
            # Same clock as the Python loaders, whose CUDA context exists before their
            # clock starts: the CLI's seconds less the time it spent retaining the context
            # (device_init_seconds). The whole figure is kept as seconds_with_init.
            total, init = j.get("seconds"), j.get("device_init_seconds") or 0.0
            rec.update({"ok": True, "seconds": total - init if total is not None else None, "seconds_with_init": total,
                        "init_s": init, "bytes": j.get("bytes"), "gbps": tb.gbps_without_init(j),
                        "gbps_with_init": j.get("gbps"),
                        "io": sorted({f.get("io") for f in j.get("files", [])}), "engine_reason": j.get("engine_reason")})
        else:
            rec.update({"ok": False, "error": "rc=%s%s: %s" % (r["rc"], " (timed out)" if r["timed_out"] else "", tb.tail(r["stderr"], 400))})
        return rec
    cmd = [sys.executable, os.path.abspath(__file__), "--child", loader, "--device", device, "--sample", ",".join(samples), "--files"] + files
    r = tb.run_child(cmd, child_timeout(a), env=env)
    j = tb.last_json(r["stdout"], "RESULT") or {}
    rec = {"wall_s": r["wall_s"], "peak_rss_bytes": r["peak_rss_bytes"]}
    if j.get("ok"):
        rec.update({"ok": True, "seconds": j["seconds"], "bytes": j["bytes"], "gbps": j["bytes"] / j["seconds"] / 1e9 if j["seconds"] else None,
                    "init_s": j.get("init_s"), "import_s": j.get("import_s"), "tensors": j.get("tensors"),
                    "vmhwm_bytes": j.get("vmhwm_bytes"), "gpu_peak_bytes": j.get("gpu_peak_bytes"),
                    "info": j.get("info"), "samples": j.get("samples"), "on_device": j.get("on_device"),
                    "fingerprints": j.get("fingerprints")})
    else:
        err = j.get("error") or ("rc=%s%s: %s" % (r["rc"], " (timed out)" if r["timed_out"] else "", tb.tail(r["stderr"] or r["stdout"], 500)))
        rec.update({"ok": False, "error": err, "traceback": j.get("traceback")})
    return rec


def verify_samples(rec, ref, samples, ref_fp=None):
    """The sample's SHA-256 and, with `ref_fp`, every tensor's fingerprint."""
    got = rec.pop("samples", None) or {}
    missing = [n for n in samples if n not in got]
    bad = [n for n in samples if n in got and got[n] != ref[n]]
    fps = rec.pop("fingerprints", None) or {}
    if ref_fp is not None:
        missing += sorted(n for n in ref_fp if n not in fps and n not in samples)
        bad += sorted(n for n in ref_fp if n in fps and fps[n] != ref_fp[n] and n not in bad)
    rec["verified"] = not missing and not bad
    rec["verify"] = {"checked": len(got), "fingerprinted": len(fps) if ref_fp is not None else 0,
                     "mismatched": bad[:10], "mismatch_count": len(bad), "missing": missing[:10]}


def verify_ts(a, loader, temp, scope, path, device, ref, env, log):
    """One untimed `load --digest` of a tensorstream configuration: every tensor
    (scope full) or the sample (scope sample), against the references."""
    cmd = ts_cmd(a, loader, temp, path, device, digest=True)
    if scope == "sample":
        for n in a._samples:
            cmd += ["--only", n]
    r = tb.run_child(cmd, max(30, min(300, a._deadline - time.time() - 60)), env=env)
    if r["rc"] != 0:
        return {"verified": False, "error": "rc=%s: %s" % (r["rc"], tb.tail(r["stderr"], 400)), "scope": scope}
    got = {}
    for line in r["stdout"].splitlines():
        if line.startswith("{"):
            x = json.loads(line)
            got[x["name"]] = x["sha256"]
    want = {n: ref[n] for n in (a._samples if scope == "sample" else ref)}
    bad = sorted(n for n in want if got.get(n) != want[n])
    extra = sorted(set(got) - set(want))
    return {"verified": not bad and not extra, "checked": len(want), "mismatched": bad[:10], "mismatch_count": len(bad),
            "unexpected": extra[:10], "wall_s": r["wall_s"], "scope": scope, "args": cmd[3:]}


def summarize(records, limits, log):
    groups = {}
    for r in records:
        if r.get("kind") != "load" or not r.get("ok"):
            continue
        groups.setdefault((r["loader"], r["temperature"]), []).append(r)
    rows = []
    base = {}
    for (loader, temp), rs in sorted(groups.items()):
        g = sorted(x["gbps"] for x in rs if x.get("gbps"))
        rss = sorted(x["peak_rss_bytes"] for x in rs if x.get("peak_rss_bytes"))
        row = {"loader": loader, "temperature": temp, "runs": len(rs), "median_gbps": statistics.median(g) if g else None,
               "min_gbps": g[0] if g else None, "max_gbps": g[-1] if g else None,
               "median_seconds": statistics.median(x["seconds"] for x in rs),
               "median_peak_rss_bytes": statistics.median(rss) if rss else None,
               "verified": "yes" if all(x.get("verified") for x in rs) else "NO" if any(x.get("verified") is False for x in rs) else "-"}
        rows.append(row)
        if loader == "ts-default":
            base[temp] = row["median_gbps"]
    lim_cold = limits.get("odirect_gbps")
    lim_warm = limits.get("pinned_h2d_gbps")
    log("")
    log("%-24s %-5s %4s %9s %15s %9s %9s %10s %10s %s" % ("loader", "temp", "runs", "GB/s med", "min..max", "seconds", "RSS GiB",
                                                         "vs ts-def", "vs limit", "verified"))
    failed = [r for r in records if r.get("kind") == "load" and not r.get("ok")]
    for row in rows:
        lim = lim_cold if row["temperature"] == "cold" else lim_warm
        vs = (row["median_gbps"] / base[row["temperature"]]) if base.get(row["temperature"]) and row["median_gbps"] else None
        vl = (row["median_gbps"] / lim) if lim and row["median_gbps"] else None
        row["vs_ts_default"], row["vs_limit"] = vs, vl
        log("%-24s %-5s %4d %9s %15s %9.3f %9s %10s %10s %s" % (
            row["loader"], row["temperature"], row["runs"], f2(row["median_gbps"]),
            "%s..%s" % (f2(row["min_gbps"]), f2(row["max_gbps"])), row["median_seconds"],
            f2(row["median_peak_rss_bytes"] / 2**30 if row["median_peak_rss_bytes"] else None),
            ("%.2fx" % vs) if vs else "-", ("%.2f" % vl) if vl else "-", row["verified"]))
    log("limits: cold = raw O_DIRECT read %s GB/s; warm = pinned H2D %s GB/s%s" % (
        f2(lim_cold), f2(lim_warm), "" if lim_warm else " (not measured: no GPU)"))
    if failed:
        log("failed loads: %d" % len(failed))
        seen = set()
        for r in failed:
            if r["loader"] not in seen:
                seen.add(r["loader"])
                log("  %s %s: %s" % (r["loader"], r["temperature"], r.get("error")))
    return rows


def f2(x):
    return "-" if x is None else "%.2f" % x


def parent_main(a):
    t_start = time.time()
    a.out = os.path.abspath(a.out)
    os.makedirs(a.out, exist_ok=True)
    log = Log(os.path.join(a.out, "compare.log"))
    results = os.path.join(a.out, "gpu-results.jsonl")
    open(results, "w").close()
    deadline = t_start + a.budget_s
    a._deadline = deadline

    def left():
        return deadline - time.time()

    def emit(rec):
        tb.write_jsonl(results, rec)

    device = a.device if not a.dry_run else "cpu"
    log("tensorstream side-by-side comparison  %s%s" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "  DRY RUN (no GPU loads)" if a.dry_run else ""))
    log("python %s (%s); tensorstream %s; host %s, %d cores; budget %ds" % (
        platform.python_version(), sys.executable, a.bin, platform.node(), os.cpu_count() or 0, a.budget_s))
    if not os.path.exists(a.bin):
        log("no tensorstream binary at %s" % a.bin)
        return 2
    env = child_env(a)
    # -- environment (in a child: the parent never touches CUDA) --------------------
    code = ("import json, torch; d = {'torch': torch.__version__, 'cuda_build': torch.version.cuda, 'cuda': torch.cuda.is_available()}\n"
            "if d['cuda']:\n p = torch.cuda.get_device_properties(0); d.update(name=p.name, memory=p.total_memory, sms=p.multi_processor_count)\n"
            "print('RESULT ' + json.dumps(d))")
    r = tb.run_child([sys.executable, "-c", code], 120, env=env)
    envinfo = tb.last_json(r["stdout"], "RESULT") or {"error": tb.tail(r["stderr"], 300)}
    log("torch: %s" % json.dumps(envinfo))
    if not a.dry_run and not envinfo.get("cuda"):
        log("no CUDA device visible to torch: nothing to compare (use --dry-run to exercise the machinery)")
        emit({"kind": "skip", "loader": "*", "reason": "no CUDA device", "env": envinfo})
        return 1
    emit({"kind": "env", "env": envinfo, "python": platform.python_version(), "dry_run": a.dry_run})
    # -- peers ---------------------------------------------------------------------------
    log("== installing the peers (offline)")
    inst = install_peers(a, log)
    env = child_env(a)  # now that the site folder exists
    loaders = [l for l in (a.loaders.split(",") if a.loaders else ALL_LOADERS) if l]
    if a.dry_run and "stdlib" not in loaders:
        loaders.append("stdlib")
    runnable = []
    checks = import_checks(a, [l for l in loaders if l in PEER_PACKAGES and not (a.dry_run and l not in CPU_CAPABLE)], env)
    for l in loaders:
        if l.startswith("ts-") or l == "stdlib":
            runnable.append(l)
            continue
        if l not in PEER_PACKAGES:
            log("  unknown loader %s: skipped" % l)
            continue
        if a.dry_run and l not in CPU_CAPABLE:
            emit({"kind": "skip", "loader": l, "reason": "dry run: this loader only targets CUDA"})
            log("  %-22s skipped: dry run, CUDA-only loader" % l)
            continue
        proj = PEER_PACKAGES[l][0]
        st = inst.get(proj, {})
        ok, detail = checks[l]
        if ok:
            log("  %-22s imports (%s)%s" % (l, detail.get("file"), "" if st.get("installed") else "  [from the environment, not the bundle]"))
            runnable.append(l)
        else:
            reason = "install failed: %s" % st.get("reason") if st and not st.get("installed") else "import failed: %s" % detail
            log("  %-22s SKIPPED: %s" % (l, reason.strip().splitlines()[-1] if reason.strip() else reason))
            emit({"kind": "skip", "loader": l, "reason": reason})
    # -- checkpoint and references ---------------------------------------------------------
    log("== synthetic checkpoint")
    a.dir = choose_scratch(a.dir)
    t = time.time()
    path, err = tb.synth_checkpoint(a.bin, a.dir, a.size, a.shards, max(60, min(400, left() - 120)))
    if err:
        log("synth failed: %s" % err)
        return 1
    files = tb.checkpoint_files(path)
    nbytes = tb.total_bytes(files)
    log("  %s: %d shard(s), %.2f GB on %s (%s), %.1f s" % (path, len(files), nbytes / 1e9, a.dir, tb.fs_type(a.dir)["type"], time.time() - t))
    t = time.time()
    table = tb.tensor_table(path)
    ref = tb.reference_digests(path)
    samples = pick_samples(table, files)
    a._samples = samples
    tensor_bytes = sum(e["end"] - e["start"] for e in table.values())
    log("  references: %d tensors, %.2f GB hashed in %.1f s; sample of %d: %s" % (
        len(ref), tensor_bytes / 1e9, time.time() - t, len(samples), ", ".join(samples)))
    t = time.time()
    r = tb.run_child([sys.executable, os.path.abspath(__file__), "--child", "fingerprints", "--device", device, "--files"] + files,
                     max(60, min(300, left() - 120)), env=env)
    ref_fp = (tb.last_json(r["stdout"], "RESULT") or {}).get("fingerprints")
    log("  fingerprints of every tensor on %s: %s" % (device, ("%d in %.1f s" % (len(ref_fp), time.time() - t)) if ref_fp
                                                    else "FAILED (%s): in-process loads checked by the sample only" % tb.tail(r["stderr"], 300)))
    # -- limits ------------------------------------------------------------------------------
    log("== limits")
    limits = {}
    d = tb.drop_cache(files)
    log("  page cache: dropped by %s, resident after %s%s" % (d["method"], fmt_frac(d["resident_after"]),
                                                            ("; " + "; ".join(d["errors"])) if d["errors"] else ""))
    od = tb.odirect_read(files)
    emit({"kind": "limit", "loader": "odirect-read-python", "temperature": "cold", "gbps": od.get("gbps"), "seconds": od.get("seconds"),
          "bytes": od.get("bytes"), "ok": od.get("ok"), "error": od.get("error"), "device": "disk"})
    log("  O_DIRECT read (python, 16 x 16 MiB in flight): %s" % (("%.2f GB/s" % od["gbps"]) if od.get("ok") else od.get("error")))
    fio = tb.fio_read(files, runtime=20, timeout=60) if left() > 200 else None
    if fio is not None:
        emit({"kind": "limit", "loader": "odirect-read-fio", "temperature": "cold", "gbps": fio.get("gbps"), "ok": fio.get("ok"),
              "engine": fio.get("engine"), "errors": fio.get("errors"), "device": "disk"})
    log("  O_DIRECT read (fio): %s" % ("not installed" if fio is None else ("%.2f GB/s (%s)" % (fio["gbps"], fio["engine"])) if fio.get("ok") else fio.get("errors")))
    limits["odirect_gbps"] = max([x for x in (od.get("gbps") if od.get("ok") else None, fio.get("gbps") if fio and fio.get("ok") else None) if x] or [0]) or None
    if not a.dry_run:
        code = "import sys, json; sys.path.insert(0, %r); import tsbench; print('LIMITS ' + json.dumps(tsbench.measure_limits(%r)))" % (HERE, device)
        r = tb.run_child([sys.executable, "-c", code], 180, env=env)
        lim = tb.last_json(r["stdout"], "LIMITS")
        if lim:
            limits["pinned_h2d_gbps"] = lim["pinned_h2d_to"]["gbps_median"]
            limits["d2d_gbps_rw"] = lim["d2d_copy"]["gbps_rw"]
            emit({"kind": "limit", "loader": "pinned-h2d-torch", "temperature": "n/a", "gbps": limits["pinned_h2d_gbps"],
                  "bytes": lim["bytes"], "device": device, "detail": lim})
            log("  pinned H2D %.1f GB/s (1 GiB, torch .to(cuda, non_blocking=True)); pageable %.1f; D2D %.0f GB/s read+written" % (
                limits["pinned_h2d_gbps"], lim["pageable_h2d_copy"]["gbps_median"], limits["d2d_gbps_rw"]))
        else:
            log("  torch limits failed: %s" % (tb.tail(r["stderr"], 400).strip().splitlines() or ["rc=%s" % r["rc"]])[-1])
    else:
        log("  pinned H2D / D2D: not measured (dry run)")
    b = run_one(a, "baseline", "n/a", path, files, [], device, env)
    emit(dict({"kind": "limit", "loader": "baseline-rss", "temperature": "n/a", "device": device}, **b))
    limits["baseline_rss_bytes"] = b.get("peak_rss_bytes")
    log("  baseline: a child that imports torch%s and loads nothing peaks at %s GiB RSS%s" % (
        "" if a.dry_run else " and creates the CUDA context", f2(b["peak_rss_bytes"] / 2**30 if b.get("peak_rss_bytes") else None),
        "" if b.get("ok") else " (failed: %s)" % tb.tail(b.get("error", ""), 200)))
    # -- verification of tensorstream's configurations ------------------------------------
    log("== verification of tensorstream's output (untimed, --digest, %s)" % a.verify)
    ts_verified = {}
    for l in runnable:
        if not l.startswith("ts-") or a.verify == "none":
            continue
        temps = ["warm"] if l == "ts-default" or a.ts_best_cold == a.ts_best_warm else ["cold", "warm"]
        for temp in temps:
            if left() < 120:
                log("  %s: verification skipped (budget)" % l)
                break
            scope = a.verify if l == "ts-default" else "sample"
            v = verify_ts(a, l, temp, scope, path, device, ref, env, log)
            key = l if l == "ts-default" else "%s/%s" % (l, temp)
            ts_verified[key] = v
            emit(dict({"kind": "verify", "loader": l, "temperature": temp, "device": device}, **v))
            log("  %-16s %s  (%s)" % (key, ("verified (%d tensors, %s)" % (v["checked"], scope)) if v.get("verified")
                                      else "NOT VERIFIED: %s" % (v.get("error") or v.get("mismatched") or v.get("unexpected")),
                                      " ".join(v.get("args", []))))
    # -- the runs ----------------------------------------------------------------------------
    key_set = set() if a.key_loaders.strip().lower() in ("", "none") else set(x for x in a.key_loaders.split(",") if x)
    key = [l for l in runnable if l in key_set]
    others = [l for l in runnable if l not in key_set]
    log("== loads: %d round(s), cold and warm; key loaders first: %s; then, as they fit: %s" % (
        a.runs, ", ".join(key) or "none", ", ".join(others) or "none"))
    records = []
    gds_fallback = False
    hung = set()
    disk_s = nbytes / (max(limits.get("odirect_gbps") or 0.5, 0.5) * 1e9)  # the bytes at the raw read rate

    def walls(loader, temp):
        w = [x["wall_s"] for x in records if x["loader"] == loader and x.get("temperature") == temp and x.get("seconds")]
        if not w and loader.startswith("ts-"):  # another tensorstream configuration: the same process, near enough
            w = [x["wall_s"] for x in records if x["loader"].startswith("ts-") and x.get("temperature") == temp and x.get("seconds")]
        return w

    def need(loader, temp):
        """What a load must find left to start: its longest measured wall time and 5 s,
        or, never measured, a generous guess."""
        w = walls(loader, temp)
        if w:
            return 5 + max(w)
        if temp == "cold":
            # The disk's time for the bytes at two thirds of the raw read rate, and start-up.
            return 15 + disk_s * 1.5
        return 20

    def expect(loader, temp):
        """What a load is expected to take (median wall time, else a guess from the
        2026-11-26 H200 runs: a Python loader's child spends ~5 s on torch and its
        import, ~7 s on a slow warm load; a tensorstream process ~1 s)."""
        w = walls(loader, temp)
        if w:
            return 1 + statistics.median(w)
        ts = loader.startswith("ts-")
        return (2 if ts else 8) + (disk_s if temp == "cold" else 1 if ts else 7)

    def key_reserve(after_run):
        """The key loaders' runs still to come, in the rounds after `after_run`."""
        return sum(expect(l, t) for r in range(after_run + 1, a.runs) for l in key if l not in hung for t in ("warm", "cold"))

    def count(loader, temp):
        return sum(1 for x in records if x["loader"] == loader and x.get("temperature") == temp and x.get("ok"))

    for run in range(a.runs):
        rk = key[run % len(key):] + key[:run % len(key)] if key else []
        tasks = [(l, t, True) for t in ("warm", "cold") for l in rk]
        for temp in ("warm", "cold"):
            # Warm loads first: they take seconds, cold ones the disk's time; when the
            # budget runs short, the others get warm figures before cold ones.
            tasks += [(l, temp, False) for l in sorted(others, key=lambda l: (count(l, temp), expect(l, temp)))]
        kept = []  # (loader, temp, left, reserve) skipped this round for the key loaders' later runs
        for loader, temp, is_key in tasks:
            if loader == "fastsafetensors-gds" and gds_fallback and any(
                    x["loader"] == loader and x.get("temperature") == temp for x in records):
                continue
            if loader in hung:
                continue
            reserve = 0 if is_key else key_reserve(run)
            if left() < need(loader, temp) + reserve:
                fits_alone = left() >= need(loader, temp)
                why = "budget (%.0f s left%s)" % (left(), ", %.0f s kept for the key loaders' later runs" % reserve if fits_alone else "")
                emit({"kind": "skip", "loader": loader, "temperature": temp, "run": run, "reason": why})
                if fits_alone:
                    kept.append((loader, temp, left(), reserve))
                else:
                    log("  %-22s %s run %d: skipped (%s)" % (loader, temp, run, why))
                continue
            pre = {}
            if temp == "cold":
                d = tb.drop_cache(files)
                pre = {"drop_method": d["method"], "resident_before": d["resident_after"]}
            else:
                rf = tb.residency(files)["fraction"]
                if rf is None or rf < 0.99:
                    w = tb.warm(files)
                    rf = w["resident_after"]
                pre = {"resident_before": rf}
            rec = run_one(a, loader, temp, path, files, samples, device, env)
            rec = dict({"kind": "load", "loader": loader, "temperature": temp, "run": run, "device": device}, **rec)
            rec.update(pre)
            if loader.startswith("ts-"):
                v = ts_verified.get(loader) or ts_verified.get("%s/%s" % (loader, temp)) or ts_verified.get("%s/warm" % loader) or {}
                rec["verified"] = (v.get("verified") if v else None) if rec.get("ok") else False
                rec["verify"] = "separate --digest run (%s)" % v.get("scope") if v else "not verified"
                if rec.get("ok") and rec.get("bytes") != tensor_bytes:
                    rec["verified"] = False
                    rec["verify"] = "bytes %s != %d" % (rec.get("bytes"), tensor_bytes)
            elif rec.get("ok"):
                verify_samples(rec, ref, samples, ref_fp if loader != "stdlib" else None)
                if rec.get("bytes") != tensor_bytes:
                    rec["verified"] = False
                    rec["verify"]["bytes"] = rec.get("bytes")
            if loader == "fastsafetensors-gds" and rec.get("ok"):
                info = rec.get("info") or {}
                if info.get("fell_back_to_nogds") or info.get("copier") != "GdsFileCopier":
                    gds_fallback = True
                    rec["note"] = "GDS requested; ran %s%s" % (info.get("copier"), ", fell back to nogds" if info.get("fell_back_to_nogds") else "")
            if not rec.get("ok") and "timed out" in str(rec.get("error")):
                hung.add(loader)
                rec["note"] = "timed out: no further runs of this loader"
            records.append(rec)
            emit(rec)
            log("  %-22s %s run %d: %s  rss %s GiB  %s%s" % (
                loader, temp, run,
                ("%6.2f GB/s %7.3f s" % (rec["gbps"], rec["seconds"])) if rec.get("ok") else "FAILED %s" % tb.tail(rec.get("error", ""), 200),
                f2(rec["peak_rss_bytes"] / 2**30 if rec.get("peak_rss_bytes") else None),
                ("cache %s, resident %s" % (pre.get("drop_method"), fmt_frac(pre.get("resident_before")))) if temp == "cold" else "resident %s" % fmt_frac(pre.get("resident_before")),
                ("" if not rec.get("ok") else "  verified" if rec.get("verified") else "  unverified" if rec.get("verified") is None
                 else "  NOT VERIFIED %s" % rec.get("verify"))
                + ("  [%s]" % ",".join(rec["io"]) if rec.get("io") else "")
                + ("  [%s]" % rec["note"] if rec.get("note") else "")))
        if kept:
            log("  round %d, not started (%.0f s left, %.0f s kept for the key loaders' later runs): %s" % (
                run, kept[0][2], kept[0][3], ", ".join("%s %s" % (l, t) for l, t, _, _ in kept)))
    rows = summarize(records, limits, log)
    with open(os.path.join(a.out, "compare-summary.json"), "w") as f:
        json.dump({"env": envinfo, "installed": inst, "limits": limits, "rows": rows, "samples": samples,
                   "checkpoint": {"path": path, "files": len(files), "tensor_bytes": tensor_bytes, "size": a.size, "shards": a.shards},
                   "ts_verify": ts_verified, "dry_run": a.dry_run, "seconds": time.time() - t_start}, f, indent=1, default=str)
    if not a.keep:
        shutil.rmtree(os.path.join(a.dir, "synth-%s-%d" % (a.size, a.shards)), ignore_errors=True)
    log("done in %.0f s; results %s" % (time.time() - t_start, results))
    bad = [r for r in records if r.get("ok") and r.get("verified") is False]
    return 1 if bad else 0


def fmt_frac(x):
    return "unknown" if x is None else "%.1f%%" % (100 * x)


def main(argv=None):
    bin_, wheels = default_paths()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=bin_, help="tensorstream binary (default: %(default)s)")
    ap.add_argument("--wheels", default=wheels, help="folder of peer wheels (default: %(default)s)")
    ap.add_argument("--ts-wheels", default=os.path.join(os.path.dirname(wheels), "wheels-tensorstream"),
                    help="folder of the tensorstream wheel for tensorstream-py (default: %(default)s)")
    ap.add_argument("--site", default=None, help="where to install the wheels (default: a temp folder)")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(HERE, "..", "out"), help="results folder (default: $OUT)")
    ap.add_argument("--dir", default=os.environ.get("TS_SCRATCH"), help="scratch folder on a real disk (default: chosen)")
    ap.add_argument("--size", default="16G", help="synthetic checkpoint size (default 16G)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--loaders", default=None, help="comma-separated subset of: " + ",".join(ALL_LOADERS))
    ap.add_argument("--key-loaders", default=",".join(KEY_LOADERS),
                    help="loaders whose --runs come first, the budget kept for them (default %(default)s; 'none': all alike)")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--budget-s", type=int, default=520, help="start no load that would end after this many seconds (default 520)")
    ap.add_argument("--load-timeout", type=int, default=180)
    # Cold: O_DIRECT reads from 16 threads of 16 MiB each (as fastsafetensors reads),
    # against the default's one io_uring submitter. Runs B and E timed io_uring with
    # 32 x 16 MiB in flight and 1 GiB of staging: no faster than the default.
    ap.add_argument("--ts-best-cold", default="--io pread-direct --chunk-size 16M --staging 256M")
    ap.add_argument("--ts-best-warm", default="--io pread --queue-depth 32 --chunk-size 2M")
    ap.add_argument("--verify", choices=["full", "sample", "none"], default="full",
                    help="tensorstream's check: full --digest of every tensor, or of the sample only")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint")
    # internal: one load in a child process
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--files", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--sample", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child_entry(a)
    a.bin = os.path.abspath(a.bin)
    a.wheels = os.path.abspath(a.wheels)
    a.ts_wheels = os.path.abspath(a.ts_wheels)
    if a.site is None:
        a.site = os.path.join(os.environ.get("TMPDIR", "/tmp"), "ts-peers-py%d%d" % sys.version_info[:2])
    return parent_main(a)


if __name__ == "__main__":
    sys.exit(main())
