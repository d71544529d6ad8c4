#!/usr/bin/env python3
"""The candle backend on CUDA, on the GPU machine: its CUDA tests and a timing.

Runs from the bundle that `scripts/gpu-bundle.sh --candle` builds, whose candle/
folder holds two binaries linked with candle's `cuda` feature (.ci/candle-cuda.sh)
in candle-cuda.tar.xz: `test-candle` (tests/candle.rs) and `candle_load`
(examples/candle_load.rs); they are unpacked into the scratch folder. They need
libcuda.so.1 (the driver) and libcudart.so.13, libcublas.so.13 and libcurand.so.10,
which this script finds in the nvidia-* wheels of the Python environment (PyTorch's
cu130 wheels install them) or in torch/lib, and puts on LD_LIBRARY_PATH for the
binaries only.

  python3 candle_check.py --candle-dir gpu-bundle/candle --dir SCRATCH --out candle.json
      [--cuda yes|no] [--size-mb 2048] [--runs 3] [--budget-s 120]

1. ldd: every library the binaries need is found (else: skipped without a GPU,
   failed with one);
2. `test-candle cuda::`: every candle dtype on CUDA equals candle's own load,
   conversions equal the CPU path, shards, slices and the VarBuilder, a small
   staging ring, and a candle op queued at once (a skip on a GPU is a failure);
3. timing (--cuda yes only): a synthetic Llama-layout BF16 checkpoint of --size-mb
   MiB loaded to cuda:0 by tensorstream::candle::load and by candle's own
   candle_core::safetensors::load, warm (page cache filled first), in alternating
   runs; one run each with digests first, which must agree. Logs GB/s (median) and
   the ratio; the goal is >= 5x.
Exit: 0 no failure (skips included), 1 a failure.
"""

import argparse
import importlib.util
import json
import lzma
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time

NEEDED = ["libcuda.so.1", "libcudart.so.13", "libcublas.so.13", "libcurand.so.10"]
GOAL = 5.0


def log(msg):
    print("  " + msg, flush=True)


def lib_dirs():
    """Folders of the nvidia-* wheels' and torch's shared libraries, no import needed."""
    roots = []
    for mod, sub in (("nvidia", ""), ("torch", "lib")):
        try:
            spec = importlib.util.find_spec(mod)
        except (ImportError, ValueError):
            spec = None
        for loc in (spec.submodule_search_locations or []) if spec else []:
            roots.append(os.path.join(loc, sub) if sub else loc)
    dirs = []
    for root in roots:
        for d, _, files in os.walk(root):
            if any(re.match(r"lib.*\.so(\.|$)", f) for f in files) and d not in dirs:
                dirs.append(d)
    return dirs


def missing_libs(binary, env):
    """The libraries ldd cannot find for `binary` (None: ldd unusable)."""
    if not shutil.which("ldd"):
        return None
    p = subprocess.run(["ldd", binary], capture_output=True, text=True, env=env)
    return sorted({l.split()[0] for l in p.stdout.splitlines() if "not found" in l})


def run(cmd, env, timeout):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        return p.returncode, p.stdout, p.stderr, time.time() - t0
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return 124, out, err, time.time() - t0


def binaries(candle_dir, scratch):
    """Paths of test-candle and candle_load: in `candle_dir`, or unpacked from its
    candle-cuda.tar.xz into `scratch`; None when the bundle has neither."""
    names = ("test-candle", "candle_load")
    if all(os.access(os.path.join(candle_dir, n), os.X_OK) for n in names):
        return [os.path.join(candle_dir, n) for n in names]
    packed = os.path.join(candle_dir, "candle-cuda.tar.xz")
    if not os.path.isfile(packed):
        return None
    dest = os.path.join(scratch, "candle-bin")
    os.makedirs(dest, exist_ok=True)
    out = []
    with tarfile.open(packed, "r:xz") as tf:
        for n in names:
            src = tf.extractfile(n)  # KeyError when missing
            if src is None:
                raise OSError("%s: %s is not a file" % (packed, n))
            path = os.path.join(dest, n)
            with open(path, "wb") as o:
                shutil.copyfileobj(src, o, 1 << 20)
            os.chmod(path, 0o755)
            out.append(path)
    return out


def tests(test_bin, env, cuda, timeout):
    rc, out, err, secs = run([test_bin, "cuda::", "--test-threads=1", "--nocapture"], env, timeout)
    text = out + err
    passed = len(re.findall(r"^test cuda::\S+ \.\.\. ok$", text, re.M))
    failed = re.findall(r"^test (cuda::\S+) \.\.\. FAILED$", text, re.M)
    skips = len(re.findall(r"^skipping", text, re.M))
    for line in text.splitlines():
        if not re.match(r"^test .* \.\.\. ok$", line) and line.strip():
            log("| " + line)
    res = {"rc": rc, "seconds": round(secs, 1), "passed": passed, "failed": failed, "skips": skips}
    if rc == 124:
        res["result"] = "failed (timed out after %ds)" % timeout
    elif rc != 0 or failed:
        res["result"] = "failed (exit %d)" % rc
    elif passed == 0:
        res["result"] = "failed (no cuda:: test ran)"
    elif skips and cuda:
        res["result"] = "failed (%d test(s) skipped on a GPU machine)" % skips
    elif skips:
        res["result"] = "skipped (no GPU: the tests started and skipped)"
    else:
        res["result"] = "passed"
    return res


def load_once(load_bin, env, path, with_, digest, timeout):
    cmd = [load_bin, path, "--device", "cuda:0", "--with", with_]
    if not digest:
        cmd.append("--no-digest")
    rc, out, err, _ = run(cmd, env, timeout)
    line = out.strip().splitlines()[-1] if out.strip() else ""
    if rc != 0 or not line.startswith("{"):
        said = [l for l in (err + out).splitlines() if l.startswith("candle_load:")] or (err + out).strip().splitlines()[-5:]
        raise RuntimeError("candle_load --with %s: exit %d: %s" % (with_, rc, " | ".join(said)[:600]))
    return json.loads(line)


def timing(load_bin, env, scratch, size_mb, runs, deadline):
    res = {"size_mb": size_mb}
    d = os.path.join(scratch, "candle-synth")
    shutil.rmtree(d, ignore_errors=True)
    rc, out, err, secs = run([load_bin, "--write", d, "--size-mb", str(size_mb)], env, max(30, deadline - time.time()))
    if rc != 0:
        raise RuntimeError("candle_load --write: exit %d: %s" % (rc, (err or out).strip()[-500:]))
    path = out.strip().splitlines()[-1]
    log("wrote %s (%d MiB) in %.1f s" % (path, size_mb, secs))
    try:
        # Warm-up and agreement: the page cache filled, one digest each.
        first = {}
        for w in ("tensorstream", "candle"):
            first[w] = load_once(load_bin, env, path, w, True, max(30, deadline - time.time()))
            log("warm-up %-12s %.3f GB/s  sha256 %s" % (w, first[w]["gbps"], first[w]["sha256"][:16]))
        res["bytes"] = first["tensorstream"]["bytes"]
        res["digests_equal"] = first["tensorstream"]["sha256"] == first["candle"]["sha256"]
        if not res["digests_equal"]:
            res["result"] = "failed (tensorstream and candle loaded different tensors)"
            return res
        gbps = {"tensorstream": [], "candle": []}
        per_run = max(first["tensorstream"]["seconds"], first["candle"]["seconds"]) + 3
        for i in range(runs):
            for w in (("tensorstream", "candle") if i % 2 == 0 else ("candle", "tensorstream")):
                if time.time() + per_run > deadline:
                    break
                r = load_once(load_bin, env, path, w, False, max(10, deadline - time.time()))
                gbps[w].append(r["gbps"])
                log("run %d %-12s %.3f GB/s (%.3f s)" % (i + 1, w, r["gbps"], r["seconds"]))
        res["gbps"] = gbps
        if gbps["tensorstream"] and gbps["candle"]:
            ts, cd = statistics.median(gbps["tensorstream"]), statistics.median(gbps["candle"])
            res["median_gbps"] = {"tensorstream": ts, "candle": cd}
            res["ratio"] = round(ts / cd, 2)
            res["result"] = "measured"
            log("warm, median of %d/%d runs: tensorstream %.2f GB/s, candle %.2f GB/s: %.2fx (goal >= %.0fx: %s)"
                % (len(gbps["tensorstream"]), len(gbps["candle"]), ts, cd, res["ratio"], GOAL,
                   "met" if res["ratio"] >= GOAL else "NOT met"))
        else:
            res["result"] = "skipped (budget: no alternating run fitted)"
        return res
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candle-dir", required=True)
    ap.add_argument("--dir", required=True, help="scratch folder on a disk (the checkpoint)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cuda", choices=["yes", "no"], default="yes")
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--budget-s", type=int, default=120)
    a = ap.parse_args()
    start = time.time()
    deadline = start + a.budget_s
    cuda = a.cuda == "yes"
    out = {"cuda": cuda}

    def finish(rc):
        shutil.rmtree(os.path.join(a.dir, "candle-bin"), ignore_errors=True)  # what binaries() unpacked
        out["seconds"] = round(time.time() - start, 1)
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
        return rc

    try:
        bins = binaries(a.candle_dir, a.dir)
    except (OSError, EOFError, KeyError, lzma.LZMAError, tarfile.TarError) as e:  # a damaged bundle, a full disk
        bins, out["result"] = None, "failed (unpacking the candle binaries: %s)" % e
    if bins is None:
        out.setdefault("result", "skipped (no candle binaries in %s: build the bundle with scripts/gpu-bundle.sh --candle)" % a.candle_dir)
        log(out["result"])
        return finish(1 if out["result"].startswith("failed") else 0)
    test_bin, load_bin = bins

    dirs = lib_dirs()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(dirs + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p])
    # Backtraces for panics, not for every candle error (a skip would print one).
    env.setdefault("RUST_BACKTRACE", "1")
    env["RUST_LIB_BACKTRACE"] = "0"
    out["lib_dirs"] = dirs
    log("library folders from the nvidia-* wheels and torch: %s" % (" ".join(dirs) or "none"))
    missing = sorted(set(sum((missing_libs(b, env) or [] for b in (test_bin, load_bin)), [])))
    out["missing_libs"] = missing
    if missing:
        why = "the binaries need %s, not found (driver or nvidia-* wheels absent)" % ", ".join(missing)
        out["result"] = ("failed (%s)" % why) if cuda else ("skipped (no GPU: %s)" % why)
        log(out["result"])
        return finish(1 if cuda else 0)
    log("every library the binaries need is found: %s" % ", ".join(NEEDED))

    t = tests(test_bin, env, cuda, max(20, min(120, int(deadline - time.time()) - (40 if cuda else 0))))
    out["tests"] = t
    log("candle CUDA tests: %s (%d passed, %d skipped, %.0f s)" % (t["result"], t["passed"], t["skips"], t["seconds"]))
    failed = t["result"].startswith("failed")
    if not cuda:
        out["timing"] = {"result": "skipped (no GPU)"}
    elif deadline - time.time() < 30:
        out["timing"] = {"result": "skipped (budget)"}
    else:
        try:
            out["timing"] = timing(load_bin, env, a.dir, a.size_mb, a.runs, deadline)
        except (RuntimeError, OSError, ValueError) as e:
            out["timing"] = {"result": "failed (%s)" % e}
        log("timing: %s" % out["timing"]["result"])
        failed = failed or out["timing"]["result"].startswith("failed")
    out["result"] = "failed" if failed else ("passed" if cuda else "skipped (no GPU)")
    return finish(1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
