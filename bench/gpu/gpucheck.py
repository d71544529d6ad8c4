#!/usr/bin/env python3
"""The Python half of scripts/gpu-check.sh (runs on the GPU machine, no Rust,
no network; also runs without a GPU, where the CUDA parts say so and skip).

    gpucheck.py env     --out env.json
    gpucheck.py diff    --bin TS --fixtures DIR --out diff.json [--cuda auto|yes|no]
    gpucheck.py kernels --out kernels.json [--cuda yes|no]
    gpucheck.py timing  --bin TS --dir SCRATCH --fixtures DIR --out timing.json [--size 8G]
    gpucheck.py summary --env env.json --tests tests.json --diff diff.json --kernels kernels.json
                        --timing timing.json --out all.json

diff: for every fixture, every --dtype (none, F32, F16, BF16) and with and
without an --only filter, runs `tensorstream load --digest` on the CPU and on
CUDA and requires byte-identical output; checks both against references:
  raw loads   sha256 of the tensor's bytes from the file (stdlib parser), and
              from Python safetensors + torch where they support the dtype;
  conversions torch's `.to(dtype)` on the CPU (round to nearest even for these
              pairs), and the same with NaNs re-encoded as tensorstream's
              canonical quiet NaN with the input's sign; ml_dtypes (numpy) as a
              second opinion where torch disagrees.
  A digest equal to the NaN-canonical reference but not to torch's raw output
  is reported (NaN payloads differ) and is not a failure.

kernels: the conversion kernels alone on device-resident data (kernels.py:
the committed PTX launched as the loader launches it, with CuPy, against a
device-to-device copy of the same bytes); a few seconds. Its own step, so
that it runs when the timing does not (gpu-check.sh --skip-timing).

timing: writes a synthetic checkpoint (>= 8 GB), times cold and warm loads to
CUDA (page cache dropped with drop_caches when permitted, else posix_fadvise;
residency checked with mincore), measures the limits (pinned H2D and D2D with
PyTorch, the raw O_DIRECT read rate with fio or a Python O_DIRECT reader) and
the conversion kernels in real loads (ncu when present, plus end-to-end loads
with and without --dtype).

summary: the ratios against the goals, from the files of the steps that ran.
"""

import argparse
import hashlib
import importlib
import re
import json
import os
import shutil
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the checkout or the bundle
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tsbench as tb  # noqa: E402

GOALS = {
    "warm_vs_pinned_h2d": 0.8,
    "cold_vs_odirect": 0.9,
    "convert_vs_d2d": 0.7,
}


def log(*a):
    print(*a, flush=True)


def dump(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def parse_size(s):
    s = s.strip()
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(s[-1].lower(), 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


# ---------------------------------------------------------------------------
# env
# ---------------------------------------------------------------------------


def cmd_env(a):
    info = {"python": sys.version.split()[0], "executable": sys.executable}
    for mod in ("torch", "safetensors", "numpy", "ml_dtypes"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001 - any import failure is information
            info[mod] = "unavailable: %s" % e
    try:
        import torch

        info["torch_cuda_build"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["device"] = {
                "name": p.name, "capability": "%d.%d" % (p.major, p.minor),
                "memory_bytes": p.total_memory, "sms": p.multi_processor_count,
            }
    except Exception as e:  # noqa: BLE001
        info["cuda_available"] = False
        info["cuda_error"] = str(e)
    info["ncu"] = shutil.which("ncu")
    info["nvcc"] = shutil.which("nvcc")
    info["fio"] = shutil.which("fio")
    if a.probe_dir:
        os.makedirs(a.probe_dir, exist_ok=True)
        info["io_probe"] = tb.probe_io(a.probe_dir)
    for k, v in info.items():
        log("  %-18s %s" % (k, json.dumps(v) if isinstance(v, (dict, list)) else v))
    dump(a.out, info)
    return 0


# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------

CANON = {  # target -> (positive quiet NaN, negative quiet NaN) as signed ints of the width
    "F32": (0x7FC00000, -0x00400000),  # 0xFFC00000 as int32
    "F16": (0x7E00, -0x0200),  # 0xFE00 as int16
    "BF16": (0x7FC0, -0x0040),  # 0xFFC0 as int16
}


class Refs:
    """Per-tensor reference digests, computed once and cached."""

    def __init__(self):
        self.cache = {}
        self.notes = {}
        self.torch_ok = self._importable("torch", ("torch", "safetensors.torch"))
        self.mld_ok = self._importable("ml_dtypes", ("numpy", "ml_dtypes"))

    def _importable(self, key, modules):
        """True when every module imports; else False, with the reason in notes[key]."""
        try:
            for m in modules:
                importlib.import_module(m)
            return True
        except Exception as e:  # noqa: BLE001
            self.notes[key] = "%s unavailable: %s" % ("/".join(modules), e)
            return False

    # -- torch ---------------------------------------------------------------

    def torch_dtype(self, name):
        import torch

        return {
            "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
            "F8_E4M3FNUZ": getattr(torch, "float8_e4m3fnuz", None),
            "F8_E5M2FNUZ": getattr(torch, "float8_e5m2fnuz", None),
            "F8_E8M0": getattr(torch, "float8_e8m0fnu", None),
        }.get(name)

    def torch_get(self, t):
        from safetensors import safe_open

        with safe_open(t["file"], framework="pt") as f:
            return f.get_tensor(t["name"])

    @staticmethod
    def torch_bytes(x):
        import torch

        x = x.detach().contiguous().reshape(-1)
        if x.is_complex():
            x = torch.view_as_real(x).reshape(-1)
        return x.view(torch.uint8).numpy().tobytes()

    def torch_convert(self, t, src, dst):
        """(raw sha, NaN-canonical sha, NaN count) of torch's src.to(dst), CPU."""
        import torch

        x = self.torch_get(t)
        want = self.torch_dtype(src)
        if want is None or x.dtype != want:
            raise RuntimeError("torch gave %s for %s" % (x.dtype, src))
        y = x.to(self.torch_dtype(dst))
        raw = self.torch_bytes(y)
        ibits = {1: torch.uint8, 2: torch.int16, 4: torch.int32}
        nan = torch.isnan(x.float()).reshape(-1)
        if src == "F8_E8M0":
            neg = torch.zeros_like(nan)
        else:
            xb = x.reshape(-1).view(ibits[x.element_size()])
            neg = (xb >= 128) if x.element_size() == 1 else (xb < 0)
        yb = y.reshape(-1).view(ibits[y.element_size()]).clone()
        pos_nan, neg_nan = CANON[dst]
        yb[nan & ~neg] = pos_nan
        yb[nan & neg] = neg_nan
        canon = yb.view(torch.uint8).numpy().tobytes()
        return hashlib.sha256(raw).hexdigest(), hashlib.sha256(canon).hexdigest(), int(nan.sum())

    # -- ml_dtypes ------------------------------------------------------------

    def mld_convert(self, t, src, dst):
        import ml_dtypes as m
        import numpy as np

        nd = {
            "F32": np.float32, "F16": np.float16, "BF16": m.bfloat16, "F8_E4M3": m.float8_e4m3fn,
            "F8_E5M2": m.float8_e5m2, "F8_E4M3FNUZ": m.float8_e4m3fnuz, "F8_E5M2FNUZ": m.float8_e5m2fnuz,
            "F8_E8M0": getattr(m, "float8_e8m0fnu", None),
        }
        if nd.get(src) is None:
            raise RuntimeError("ml_dtypes has no %s" % src)
        raw = tb.read_range(t["file"], t["start"], t["end"])
        np.seterr(all="ignore")  # overflow to inf and NaN inputs are intended
        x = np.frombuffer(raw, dtype=nd[src])
        f = x.astype(np.float32)
        y = f.astype(nd[dst]) if dst != "F32" else f
        ib = {1: np.uint8, 2: np.int16, 4: np.int32}
        nan = np.isnan(f)
        if src == "F8_E8M0":
            neg = np.zeros_like(nan)
        else:
            xb = x.view(ib[x.itemsize])
            neg = (xb >= 128) if x.itemsize == 1 else (xb < 0)
        yb = y.view(ib[y.itemsize]).copy()
        pos_nan, neg_nan = CANON[dst]
        yb[nan & ~neg] = pos_nan
        yb[nan & neg] = neg_nan
        return hashlib.sha256(y.tobytes()).hexdigest(), hashlib.sha256(yb.tobytes()).hexdigest()

    # -- per tensor -------------------------------------------------------------

    def expected(self, t, target):
        """Reference for tensor t (a tensor_table entry + name) loaded with
        --dtype target (None for raw)."""
        src = t["dtype"]
        out = target if (target and src in tb.CONVERTIBLE and target in tb.TARGETS) else src
        key = (t["file"], t["name"], out)
        if key in self.cache:
            return self.cache[key]
        r = {"dtype": out, "shape": t["shape"], "src": src}
        if out == src:
            r["kind"] = "raw"
            r["file_sha"] = tb.sha256_range(t["file"], t["start"], t["end"])
            if self.torch_ok:
                try:
                    r["torch_sha"] = hashlib.sha256(self.torch_bytes(self.torch_get(t))).hexdigest()
                except Exception as e:  # noqa: BLE001
                    r["torch_note"] = "safetensors/torch cannot read %s: %s" % (src, str(e)[:120])
        else:
            r["kind"] = "convert"
            if self.torch_ok:
                try:
                    r["torch_sha"], r["torch_canon_sha"], r["nan_count"] = self.torch_convert(t, src, out)
                except Exception as e:  # noqa: BLE001
                    r["torch_note"] = "torch conversion unavailable: %s" % str(e)[:160]
            if self.mld_ok:
                try:
                    r["mld_sha"], r["mld_canon_sha"] = self.mld_convert(t, src, out)
                except Exception as e:  # noqa: BLE001
                    r["mld_note"] = "ml_dtypes conversion unavailable: %s" % str(e)[:160]
        self.cache[key] = r
        return r


def classify(got, ref):
    """(status, detail). Statuses: ok, ok-nan-payload, ok-torch-differs (warning),
    mismatch (failure), no-reference (warning)."""
    if got["dtype"] != ref["dtype"] or list(got["shape"]) != list(ref["shape"]):
        return "mismatch", "dtype/shape %s%s, expected %s%s" % (got["dtype"], got["shape"], ref["dtype"], ref["shape"])
    sha = got["sha256"]
    if ref["kind"] == "raw":
        if sha != ref["file_sha"]:
            return "mismatch", "sha256 differs from the file's bytes"
        if "torch_sha" in ref and ref["torch_sha"] != ref["file_sha"]:
            return "ok-torch-differs", "file bytes match; safetensors+torch gave other bytes (reference problem)"
        if "torch_sha" not in ref:
            return "ok", ref.get("torch_note", "file bytes")
        return "ok", ""
    if "torch_sha" in ref:
        if sha == ref["torch_sha"]:
            return "ok", ""
        if sha == ref["torch_canon_sha"]:
            return "ok-nan-payload", "%d NaN(s): torch encodes them differently" % ref.get("nan_count", 0)
        if sha in (ref.get("mld_sha"), ref.get("mld_canon_sha")):
            return "ok-torch-differs", "matches ml_dtypes (RNE), not torch"
        return "mismatch", "differs from torch (raw and NaN-canonical) and from ml_dtypes"
    if "mld_sha" in ref:
        if sha == ref["mld_canon_sha"] or sha == ref["mld_sha"]:
            return "ok", "ml_dtypes reference (torch unavailable)"
        return "mismatch", "differs from ml_dtypes (torch unavailable)"
    return "no-reference", ref.get("torch_note", "") + " " + ref.get("mld_note", "")


# ---------------------------------------------------------------------------
# diff
# ---------------------------------------------------------------------------


def fixture_paths(d):
    out = []
    for n in ("dtypes.safetensors", "floats.safetensors", "fp8.safetensors", "edge.safetensors"):
        p = os.path.join(d, n)
        if os.path.exists(p):
            out.append(p)
    idx = os.path.join(d, "sharded", "model.safetensors.index.json")
    if os.path.exists(idx):
        out.append(idx)
        out.append(os.path.join(d, "sharded"))  # the directory form too
    p = os.path.join(d, "large.safetensors")
    if os.path.exists(p):
        out.append(p)
    return out


def run_load(bin_, path, device, dtype=None, only=(), io=None, timeout=60, digest=True, extra=()):
    cmd = [bin_, "load", path, "--device", device, "--json"] + list(extra)
    if digest:
        cmd.append("--digest")
    if dtype:
        cmd += ["--dtype", dtype]
    if io:
        cmd += ["--io", io]
    for o in only:
        cmd += ["--only", o]
    r = tb.run_child(cmd, timeout)
    r["cmd"] = cmd
    summary = tb.last_json(r["stderr"] if digest else r["stdout"])
    r["summary"] = summary
    r["io"] = sorted({f.get("io") for f in (summary or {}).get("files", [])}) if summary else []
    return r


def digest_lines(text):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def cmd_diff(a):
    bin_ = os.path.abspath(a.bin)
    refs = Refs()
    for k, v in refs.notes.items():
        log("  note: %s" % v)
    paths = fixture_paths(a.fixtures)
    if not paths:
        log("no fixtures under %s" % a.fixtures)
        return 2
    tables = {p: tb.tensor_table(p) for p in paths}
    for p, t in tables.items():
        for n, e in t.items():
            e["name"] = n
    cuda_state = a.cuda
    cuda_reason = ""
    if cuda_state == "auto":
        r = run_load(bin_, paths[0], a.device, timeout=a.timeout)
        if r["rc"] == 0:
            cuda_state = "yes"
        else:
            cuda_state = "no"
            cuda_reason = tb.tail(r["stderr"], 300) or "rc=%s" % r["rc"]
            log("  CUDA: no GPU load possible here, CUDA comparisons skipped: %s" % cuda_reason)
    elif cuda_state == "no":
        cuda_reason = "disabled (--cuda no)"
    res = {"cuda": cuda_state, "cuda_reason": cuda_reason, "cases": [], "io_variants": [], "notes": refs.notes}
    totals = {}
    failures = []
    cuda_timeouts = 0
    dtypes = [None, "F32", "F16", "BF16"]
    # (Every --only glob must match some tensor of the checkpoint, as --rows and --cols.)
    onlys = [[], ["*sel*"]]
    t_start = time.time()
    for p in paths:
        short = os.path.relpath(p, a.fixtures)
        for dt in dtypes:
            for only in onlys:
                if only and p.endswith("large.safetensors"):
                    continue  # big tensors: the unfiltered load is enough
                if time.time() - t_start > a.budget_s:
                    log("  budget of %ds spent: stopping the matrix here" % a.budget_s)
                    res["stopped_early"] = True
                    break
                case = {"fixture": short, "dtype": dt or "none", "only": only}
                runs = {"cpu": run_load(bin_, p, "cpu", dt, only, timeout=a.timeout)}
                if cuda_state == "yes":
                    runs["cuda"] = run_load(bin_, p, a.device, dt, only, timeout=a.timeout)
                    if runs["cuda"]["timed_out"]:
                        cuda_timeouts += 1
                        if cuda_timeouts >= 2:
                            cuda_state = "hung"
                            res["cuda_reason"] = "two CUDA loads timed out (%ds each): the rest of the CUDA runs are skipped" % a.timeout
                            failures.append(res["cuda_reason"])
                            log("  " + res["cuda_reason"])
                sel = {n: e for n, e in tables[p].items() if tb.glob_match(only, n)}
                counts = {}
                bad = []
                for dev, r in runs.items():
                    case[dev + "_rc"] = r["rc"]
                    case[dev + "_io"] = r["io"]
                    if r["rc"] != 0:
                        bad.append("%s load failed (rc=%s): %s" % (dev, r["rc"], tb.tail(r["stderr"], 300)))
                        continue
                    lines = digest_lines(r["stdout"])
                    names = [x["name"] for x in lines]
                    if names != sorted(names):
                        bad.append("%s: digest lines not sorted by name" % dev)
                    if set(names) != set(sel):
                        missing = sorted(set(sel) - set(names))[:5]
                        extra = sorted(set(names) - set(sel))[:5]
                        bad.append("%s: tensor set differs (missing %s, extra %s)" % (dev, missing, extra))
                    for x in lines:
                        if x["name"] not in sel:
                            continue
                        st, detail = classify(x, refs.expected(sel[x["name"]], dt))
                        counts[st] = counts.get(st, 0) + 1
                        if st == "mismatch":
                            bad.append("%s %s: %s" % (dev, x["name"], detail))
                        elif st not in ("ok", "ok-nan-payload", "no-reference") and dev == "cpu":
                            case.setdefault("warnings", []).append("%s: %s: %s" % (x["name"], st, detail))
                if "cuda" in runs:
                    same = runs["cpu"]["rc"] == 0 and runs["cuda"]["rc"] == 0 and runs["cpu"]["stdout"] == runs["cuda"]["stdout"]
                    case["cpu_cuda_identical"] = same
                    if not same and runs["cpu"]["rc"] == 0 and runs["cuda"]["rc"] == 0:
                        bad.append("cpu and cuda digests differ")
                case["reference"] = counts
                case["failures"] = bad
                for k, v in counts.items():
                    totals[k] = totals.get(k, 0) + v
                res["cases"].append(case)
                ident = {True: "IDENTICAL", False: "DIFFERENT"}.get(case.get("cpu_cuda_identical"), "cuda skipped")
                log("  %-44s --dtype %-4s %-9s cpu/cuda %-12s ref %s%s" % (
                    short, case["dtype"], "--only" if only else "all", ident,
                    " ".join("%s=%d" % kv for kv in sorted(counts.items())),
                    ("  FAIL: " + "; ".join(bad[:3])) if bad else ""))
                for w in case.get("warnings", [])[:3]:
                    log("      warning: %s" % w)
                failures += ["%s --dtype %s%s: %s" % (short, case["dtype"], " --only" if only else "", b) for b in bad]
    # Every I/O backend on the GPU path must give the CPU's bytes.
    if cuda_state == "yes":
        base = [p for p in paths if p.endswith("dtypes.safetensors")] or paths[:1]
        ref = run_load(bin_, base[0], "cpu", timeout=a.timeout)
        # The file is cached now (the CPU load read it): auto copies from the page cache.
        variants = [(io, io, []) for io in ("auto", "direct", "buffered", "pread", "pread-direct")] + [
            ("pread q1", "pread", ["--queue-depth", "1"]),
            ("pread-direct q1", "pread-direct", ["--queue-depth", "1"]),
            ("auto huge", "auto", ["--staging-huge"]),
            ("auto plain", "auto", ["--no-staging-huge"]),
        ]
        # Row and column selections (tensor-parallel parts, ranges across chunks),
        # converted and not: against the CPU load of the same slices.
        rows = ["--dtype", "F32"]
        for rule in ("dtypes.u8.sel_chunks=1001:9000001", "dtypes.bf16.odd=17:1030",
                     "dtypes.f8_e4m3.odd=5:12", "dtypes.f16.odd=1/5"):
            rows += ["--rows", rule]
        cols = []
        for rule in ("dtypes.f16.odd=250:750", "dtypes.i16.odd=1/3", "dtypes.f32.odd=1/5",
                     "dtypes.f8_e5m2.odd=3:30"):
            cols += ["--cols", rule]
        # Columns are gathered by 2-D copies on every path (write-combined staging too).
        variants += [("auto rows", "auto", rows), ("pread-direct rows", "pread-direct", rows),
                     ("auto cols", "auto", cols), ("pread cols", "pread", cols + ["--dtype", "BF16"]),
                     ("direct cols", "direct", cols + ["--dtype", "F32"]),
                     ("wc cols", "auto", cols + ["--staging-wc", "--dtype", "F16"])]
        refs_by_extra = {}
        for label, io, extra in variants:
            r = run_load(bin_, base[0], a.device, io=io, timeout=a.timeout, extra=extra)
            if r["rc"] == 2 and extra:
                log("  io %-10s -> not in this binary (usage error): skipped" % label)
                continue
            want = ref
            if "--rows" in extra or "--cols" in extra:
                key = tuple(extra)
                if key not in refs_by_extra:
                    refs_by_extra[key] = run_load(bin_, base[0], "cpu", timeout=a.timeout, extra=extra)
                want = refs_by_extra[key]
            same = r["rc"] == 0 and want["rc"] == 0 and r["stdout"] == want["stdout"]
            v = {"io": label, "rc": r["rc"], "ran": r["io"], "identical_to_cpu": same,
                 "error": None if r["rc"] == 0 else tb.tail(r["stderr"], 300)}
            res["io_variants"].append(v)
            log("  io %-10s -> %-28s cpu/cuda %s%s" % (label, ",".join(r["io"]) or "-", "IDENTICAL" if same else "DIFFERENT",
                                                     "" if r["rc"] == 0 else "  (rc=%s: %s)" % (r["rc"], v["error"])))
            if not same and r["rc"] == 0:
                failures.append("--io %s: cuda digest differs from cpu" % label)
            if r["rc"] != 0 and extra:
                failures.append("--io %s failed on cuda: %s" % (label, v["error"]))
            if r["rc"] != 0 and io == "auto":
                failures.append("--io auto failed on cuda: %s" % v["error"])
    res["cuda"] = cuda_state
    res["totals"] = totals
    res["failures"] = failures
    res["seconds"] = time.time() - t_start
    res["ok"] = not failures
    log("  reference totals: %s" % " ".join("%s=%d" % kv for kv in sorted(totals.items())))
    log("  %s" % ("no failures" if not failures else "%d FAILURE(S)" % len(failures)))
    for f in failures[:40]:
        log("    FAIL %s" % f)
    dump(a.out, res)
    return 0 if not failures else 1


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------


def find_ptx(explicit=None):
    """The committed PTX: in a bundle gpu/../kernels/convert.ptx, in a checkout
    bench/gpu/../../kernels/convert.ptx."""
    here = os.path.dirname(os.path.abspath(__file__))
    cands = [explicit] if explicit else [os.path.join(here, "..", "kernels", "convert.ptx"),
                                         os.path.join(here, "..", "..", "kernels", "convert.ptx")]
    return next((os.path.abspath(p) for p in cands if p and os.path.exists(p)), None)


def cmd_kernels(a):
    """Runs kernels.py (CuPy) under a timeout, logs its lines as they are, and
    writes its kernels.json to --out ({"skipped": why} or {"error": ...} when
    there is nothing to measure)."""
    here = os.path.dirname(os.path.abspath(__file__))
    ptx = find_ptx(a.ptx)
    if a.cuda == "no":
        log("  no GPU: conversion kernels not measured")
        dump(a.out, {"skipped": "no GPU"})
        return 0
    if not ptx:
        log("  no kernels/convert.ptx next to the bundle's gpu/ folder: conversion kernels not measured")
        dump(a.out, {"skipped": "no kernels/convert.ptx"})
        return 0
    kdir = a.out + ".d"
    os.makedirs(kdir, exist_ok=True)
    t = time.time()
    r = tb.run_child([sys.executable, os.path.join(here, "kernels.py"), "--ptx", ptx, "--out", kdir, "--mib", a.mib],
                     a.timeout)
    for line in (r["stdout"] or "").splitlines():
        if line.strip():
            log("  kernels: " + line.strip())
    kj = load_json(os.path.join(kdir, "kernels.json"))
    shutil.rmtree(kdir, ignore_errors=True)
    if kj:
        kj["seconds"] = time.time() - t
    else:
        why = ("timed out after %ds" % a.timeout) if r["timed_out"] else tb.tail(r["stderr"] or r["stdout"], 500)
        kj = {"error": why, "rc": r["rc"]}
        if r["timed_out"] or r["stderr"]:  # (its stdout is logged above)
            log("  kernels.py: %s" % why.strip())
    dump(a.out, kj)
    return 0


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------


class Budget:
    def __init__(self, seconds):
        self.end = time.time() + seconds

    def left(self):
        return self.end - time.time()

    def ok(self, need):
        return self.left() > need


def ts_load_json(bin_, path, device, io=None, dtype=None, timeout=120, extra=()):
    cmd = [bin_, "load", path, "--device", device, "--json"] + list(extra)
    if io:
        cmd += ["--io", io]
    if dtype:
        cmd += ["--dtype", dtype]
    r = tb.run_child(cmd, timeout)
    j = tb.last_json(r["stdout"]) if r["rc"] == 0 else None
    out = {"rc": r["rc"], "timed_out": r["timed_out"], "wall_s": r["wall_s"], "peak_rss_bytes": r["peak_rss_bytes"]}
    if j:
        out.update({"seconds": j.get("seconds"), "gbps": j.get("gbps"), "bytes": j.get("bytes"),
                    "device_init_seconds": j.get("device_init_seconds"),
                    "output_bytes": j.get("output_bytes"),
                    "io": sorted({f.get("io") for f in j.get("files", [])}),
                    "io_reasons": sorted({f.get("reason") for f in j.get("files", []) if f.get("reason")}),
                    "engine_reason": j.get("engine_reason")})
    else:
        out["error"] = tb.tail(r["stderr"] or r["stdout"], 400)
    return out


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def median_ex_init(series):
    """Median GB/s of a series with the CUDA context's creation (device_init_seconds)
    left out, as a framework that already holds the context sees a load."""
    return median([tb.gbps_without_init(r) for r in series.get("runs", []) if r.get("device_init_seconds") is not None])


def timed_series(name, a, files, path, device, temp, io=None, runs=3, budget=None, dtype=None):
    """`runs` loads at temperature `temp` ('cold' or 'warm'); returns a record."""
    rec = {"name": name, "temperature": temp, "io_requested": io or "auto", "dtype": dtype, "runs": []}
    for i in range(runs):
        if budget and not budget.ok(30):
            rec["note"] = "budget spent after %d run(s)" % i
            break
        pre = {}
        if temp == "cold":
            pre = tb.drop_cache(files)
        else:
            r = tb.residency(files)
            if r["fraction"] is None or r["fraction"] < 0.99:
                pre = {"warmed": tb.warm(files)}
            pre["resident_before"] = tb.residency(files)["fraction"]
        tmo = a.load_timeout if budget is None else max(10, min(a.load_timeout, budget.left() - 10))
        r = ts_load_json(a.bin, path, device, io=io, dtype=dtype, timeout=tmo)
        r["pre"] = pre
        rec["runs"].append(r)
        if r.get("timed_out"):
            rec["note"] = "run %d timed out after %ds; series stopped" % (i, tmo)
            log("    %-26s %s run %d: TIMED OUT after %ds; series stopped" % (name, temp, i, tmo))
            break
        log("    %-26s %s run %d: %s  (io %s; %s)" % (
            name, temp, i, ("%.2f GB/s, %.3f s (device init %.3f s)" % (r["gbps"], r["seconds"], r.get("device_init_seconds") or 0.0))
            if r.get("gbps") else "FAILED: %s" % r.get("error"),
            ",".join(r.get("io", [])) or "-",
            ("cache: %s, resident after %s" % (pre.get("method"), fmt_frac(pre.get("resident_after"))))
            if temp == "cold" else "resident %s" % fmt_frac(pre.get("resident_before"))))
    rec["median_gbps"] = median([r.get("gbps") for r in rec["runs"]])
    rec["median_gbps_ex_init"] = median_ex_init(rec)
    rec["median_seconds"] = median([r.get("seconds") for r in rec["runs"]])
    rec["io"] = sorted({x for r in rec["runs"] for x in r.get("io", [])})
    return rec


def bin_series(a, st, budget):
    """`load` of a PyTorch zip checkpoint (the tensors of `st`, written as torch.save
    lays them out by bin_write.py) against `load` of `st`, to the GPU, cold then warm,
    the two alternating run by run: the same plan and I/O, plus reading the pickle."""
    here = os.path.dirname(os.path.abspath(__file__))
    pt = os.path.join(os.path.dirname(st), "pytorch_model.bin")
    t = time.time()
    r = tb.run_child([sys.executable, os.path.join(here, "bin_write.py"), st, pt], 300)
    if r["rc"] != 0:
        log("  .bin: writing it failed: %s" % tb.tail(r["stderr"] or r["stdout"], 300))
        return {"error": "bin_write failed"}
    log("  .bin: %s written from %s in %.1f s" % (pt, os.path.basename(st), time.time() - t))
    rec = {"safetensors": st, "bin": pt, "runs": []}
    for temp in ("cold", "warm"):
        for i in range(max(2, a.runs)):
            for kind, path in (("safetensors", st), ("bin", pt))[:: 1 if i % 2 == 0 else -1]:
                if not budget.ok(40):
                    rec["note"] = "budget spent"
                    break
                if temp == "cold":
                    tb.drop_cache([path])
                elif (tb.residency([path])["fraction"] or 0.0) < 0.99:
                    tb.warm([path])
                x = ts_load_json(a.bin, path, a.device, timeout=max(10, min(a.load_timeout, budget.left() - 10)))
                x.update({"kind": kind, "temperature": temp})
                rec["runs"].append(x)
                log("    .bin check %-11s %s run %d: %s" % (kind, temp, i, ("%.2f GB/s, %.3f s" % (x["gbps"], x["seconds"]))
                                                              if x.get("gbps") else "FAILED: %s" % x.get("error")))
    for temp in ("cold", "warm"):
        m = {k: median([x.get("seconds") for x in rec["runs"] if x["kind"] == k and x["temperature"] == temp])
             for k in ("safetensors", "bin")}
        rec[temp] = m
        if m["safetensors"] and m["bin"]:
            log("  .bin / safetensors load time to %s, %s: %.2f (medians %.3f / %.3f s)" % (
                a.device, temp, m["bin"] / m["safetensors"], m["bin"], m["safetensors"]))
    os.remove(pt)
    return rec


def fmt_frac(x):
    return "unknown" if x is None else "%.1f%%" % (100 * x)


def parse_ncu_csv(text):
    """Per kernel: launches, seconds, bytes read+written, from ncu --csv
    --print-units base output."""
    import csv
    import io as sio

    start = text.find('"ID"')
    if start < 0:
        return {}
    body = "\n".join(l for l in text[start:].splitlines() if l.startswith('"'))
    rows = list(csv.DictReader(sio.StringIO(body)))
    launches = {}
    for r in rows:
        key = (r.get("ID"), r.get("Kernel Name"))
        m = r.get("Metric Name")
        if not m or not (r.get("ID") or "").isdigit():
            continue
        try:
            v = float((r.get("Metric Value") or "0").replace(",", ""))
        except ValueError:
            continue
        unit = (r.get("Metric Unit") or "").lower()
        if m == "gpu__time_duration.sum":
            v *= {"nsecond": 1e-9, "ns": 1e-9, "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3, "second": 1.0, "s": 1.0}.get(unit, 1e-9)
        elif m.startswith("dram__bytes"):
            v *= {"byte": 1, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9}.get(unit, 1)
        launches.setdefault(key, {})[m] = v
    per = {}
    for (lid, kname), ms in launches.items():
        base = re.sub(r"^void\s+", "", (kname or "?").split("(")[0].split("<")[0].strip())
        p = per.setdefault(base, {"launches": 0, "seconds": 0.0, "bytes_rw": 0.0})
        p["launches"] += 1
        p["seconds"] += ms.get("gpu__time_duration.sum", 0.0)
        p["bytes_rw"] += ms.get("dram__bytes_read.sum", 0.0) + ms.get("dram__bytes_write.sum", 0.0)
    for p in per.values():
        p["gbps_rw"] = p["bytes_rw"] / p["seconds"] / 1e9 if p["seconds"] > 0 else None
    return per


def cmd_timing(a):
    budget = Budget(a.budget_s)
    out = {"device": a.device, "size_request": a.size}
    os.makedirs(a.dir, exist_ok=True)
    log("  scratch %s: %s" % (a.dir, json.dumps(tb.probe_io(a.dir))))
    out["io_probe"] = tb.probe_io(a.dir)
    # -- synthetic checkpoint ---------------------------------------------------
    sdir = os.path.join(a.dir, "synth")
    t = time.time()
    r = tb.run_child([a.bin, "synth", sdir, "--size", a.size, "--shards", str(a.shards)], a.synth_timeout)
    if r["rc"] != 0:
        log("  synth failed: %s" % tb.tail(r["stderr"]))
        out["error"] = "synth failed"
        dump(a.out, out)
        return 1
    path = r["stdout"].strip().splitlines()[-1]
    files = tb.checkpoint_files(path)
    nbytes = tb.total_bytes(files)
    out["synth"] = {"path": path, "files": len(files), "file_bytes": nbytes, "seconds": time.time() - t}
    log("  synthetic checkpoint: %s, %d file(s), %.2f GB, written in %.1f s" % (path, len(files), nbytes / 1e9, time.time() - t))
    # -- raw disk rate ------------------------------------------------------------
    d = tb.drop_cache(files)
    out["drop_probe"] = d
    log("  page-cache drop: method %s, resident after %s%s" % (d["method"], fmt_frac(d["resident_after"]),
                                                              ("; " + "; ".join(d["errors"])) if d["errors"] else ""))
    od = tb.odirect_read(files)
    out["odirect_python"] = od
    log("  O_DIRECT read (python, 16 threads x 16 MiB): %s" % (("%.2f GB/s" % od["gbps"]) if od.get("ok") else od.get("error")))
    fio = tb.fio_read(files, runtime=20, timeout=60) if budget.ok(90) else None
    out["odirect_fio"] = fio
    log("  O_DIRECT read (fio): %s" % ("not installed" if fio is None else ("%.2f GB/s via %s" % (fio["gbps"], fio["engine"])) if fio.get("ok") else fio.get("errors")))
    tb.drop_cache(files)
    cpu_direct = ts_load_json(a.bin, path, "cpu", io="direct", timeout=a.load_timeout)
    out["ts_cpu_direct_cold"] = cpu_direct
    log("  tensorstream --device cpu --io direct, cold: %s (io %s)" % (
        ("%.2f GB/s" % cpu_direct["gbps"]) if cpu_direct.get("gbps") else cpu_direct.get("error"), ",".join(cpu_direct.get("io", []))))
    # -- limits with PyTorch --------------------------------------------------------
    lim = None
    if a.cuda != "no":
        code = "import sys, json; sys.path.insert(0, %r); import tsbench; print('LIMITS ' + json.dumps(tsbench.measure_limits(%r)))" % (
            os.path.dirname(os.path.abspath(__file__)), a.device)
        r = tb.run_child([sys.executable, "-c", code], 180)
        lim = tb.last_json(r["stdout"], "LIMITS")
        if lim is None:
            out["limits_error"] = tb.tail(r["stderr"] or r["stdout"], 500)
            log("  limits (torch): unavailable: %s" % out["limits_error"].strip().splitlines()[-1])
        else:
            log("  pinned H2D (torch .to(cuda, non_blocking) of 1 GiB): %.1f GB/s median; copy_ %.1f GB/s; pageable %.1f GB/s" % (
                lim["pinned_h2d_to"]["gbps_median"], lim["pinned_h2d_copy"]["gbps_median"], lim["pageable_h2d_copy"]["gbps_median"]))
            log("  D2D copy of 1 GiB: %.0f GB/s (bytes copied), %.0f GB/s (read+written)" % (
                lim["d2d_copy"]["gbps_copy"], lim["d2d_copy"]["gbps_rw"]))
            for k, v in lim.get("torch_convert", {}).items():
                log("  torch conversion %-14s %.0f GB/s read+written" % (k, v["gbps_rw"]))
    out["limits"] = lim
    dump(a.out, out)
    # -- cold and warm loads to CUDA -------------------------------------------------
    series = []
    hung = False
    if a.cuda == "no":
        log("  CUDA loads: skipped (no GPU)")
    else:
        log("  cold loads (page cache dropped before each):")
        for io, temp in ((None, "cold"), ("direct", "cold"), ("pread-direct", "cold"), (None, "warm"), ("buffered", "warm"), ("direct", "warm")):
            if io is None and temp == "warm":
                log("  warm loads (files in the page cache):")
            series.append(timed_series(io or "auto", a, files, path, a.device, temp, io=io, runs=a.runs, budget=budget))
            out["series"] = series
            dump(a.out, out)
            if series[-1].get("note", "").startswith("run 0 timed out"):
                log("  the first load timed out: the other series, conversion and bench are skipped (a hang)")
                hung = True
                break
    out["series"] = series
    dump(a.out, out)
    # -- a PyTorch .bin checkpoint against the safetensors file it holds -------------------
    if a.cuda != "no" and not hung and budget.ok(120):
        out["bin"] = bin_series(a, files[0], budget)
        dump(a.out, out)
    # -- the other path for cached files: register the page cache, copy from it --------
    if a.cuda != "no" and not hung and budget.ok(90):
        tb.warm(files)
        code = "import sys, json; sys.path.insert(0, %r); import tsbench; print('REGMAP ' + json.dumps(tsbench.measure_registered_map(%r, %r)))" % (
            os.path.dirname(os.path.abspath(__file__)), files, a.device)
        r = tb.run_child([sys.executable, "-c", code], min(120, max(30, budget.left() - 60)))
        reg = tb.last_json(r["stdout"], "REGMAP")
        out["registered_map"] = reg if reg is not None else {"ok": False, "error": tb.tail(r["stderr"] or r["stdout"], 500)}
        reg = out["registered_map"]
        log("  registered page cache (mmap + cudaHostRegister read-only + copy, warm): %s; attributes %s" % (
            ("%.2f GB/s end to end, registration alone %.2f GB/s" % (reg["gbps"], reg["register_gbps"])) if reg.get("ok")
            else "failed: %s" % (reg.get("error") or "").strip()[-300:],
            {k: reg.get(k) for k in ("host_register_supported", "read_only_host_register_supported",
                                     "pageable_memory_access_uses_host_page_tables")}))
        dump(a.out, out)
    # -- conversion in real loads ----------------------------------------------------------
    # (the kernels alone, on device-resident data, are the `kernels` step: cmd_kernels)
    conv = {}
    large = os.path.join(a.fixtures, "large.safetensors") if a.fixtures else None
    if a.cuda != "no" and large and os.path.exists(large) and not hung:
        lf = [large]
        conv["file_bytes"] = os.path.getsize(large)
        tb.warm(lf)
        e2e = {}
        for dt in (None, "F32", "F16", "BF16"):
            if not budget.ok(40):
                log("  conversion end-to-end: budget spent")
                break
            rs = [ts_load_json(a.bin, large, a.device, dtype=dt, timeout=max(10, min(a.load_timeout, budget.left() - 10))) for _ in range(3)]
            e2e[dt or "none"] = {"median_seconds": median([x.get("seconds") for x in rs]),
                                 "median_gbps": median([x.get("gbps") for x in rs]), "runs": rs}
            log("  warm load of large.safetensors --dtype %-4s: %s" % (dt or "none", "%.3f s" % e2e[dt or "none"]["median_seconds"] if e2e[dt or "none"]["median_seconds"] else "FAILED %s" % rs[0].get("error")))
        conv["end_to_end"] = e2e
        ncu = shutil.which("ncu")
        if ncu and budget.ok(150):
            # Logical bytes each kernel must move (input read + output written),
            # from the fixture's header: the figure does not depend on what L2
            # caught (the input was just copied in), unlike ncu's DRAM counters.
            logical = {}
            for name, t in tb.tensor_table(large).items():
                for dt in ("F32", "BF16"):
                    if t["dtype"] in tb.CONVERTIBLE and t["dtype"] != dt:
                        k = "convert_%s_%s" % (t["dtype"].lower(), dt.lower())
                        n_src = t["end"] - t["start"]
                        n_el = n_src * 8 // tb.DTYPE_BITS[t["dtype"]]
                        logical[k] = logical.get(k, 0) + n_src + n_el * tb.DTYPE_BITS[dt] // 8
            per = {}
            for dt in ("F32", "BF16"):
                if not budget.ok(60):
                    break
                # --clock-control none: ncu would otherwise lock the clocks at base.
                cmd = [ncu, "--target-processes", "all", "--clock-control", "none", "--kernel-name", "regex:convert",
                       "--metrics", "gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum",
                       "--csv", "--print-units", "base", a.bin, "load", large, "--device", a.device, "--dtype", dt]
                r = tb.run_child(cmd, min(150, max(30, budget.left() - 30)))
                parsed = parse_ncu_csv(r["stdout"])
                if not parsed:
                    conv.setdefault("ncu_errors", []).append(tb.tail(r["stdout"] + r["stderr"], 600))
                per.update(parsed)
            for k, v in per.items():
                v["logical_bytes"] = logical.get(k)
                v["gbps_logical"] = logical[k] / v["seconds"] / 1e9 if logical.get(k) and v["seconds"] > 0 else None
            conv["ncu_kernels"] = per
            for k, v in sorted(per.items()):
                log("  ncu %-26s %4d launch(es) %8.3f ms: %s GB/s logical read+written, %s GB/s DRAM" % (
                    k, v["launches"], v["seconds"] * 1e3, fmt(v.get("gbps_logical")), fmt(v.get("gbps_rw"))))
            if not per:
                log("  ncu: no convert kernels profiled: %s" % (conv.get("ncu_errors") or ["?"])[0])
        else:
            conv["ncu_kernels"] = None
            log("  ncu: %s" % ("not installed" if not ncu else "skipped (budget)"))
    out["conversion"] = conv
    dump(a.out, out)
    # The product's own benchmark (its cold runs use posix_fadvise).
    bench = []
    if a.cuda != "no" and budget.ok(120) and not hung:
        for temp in ("--cold", "--warm"):
            if not budget.ok(60):
                bench.append({"temperature": temp, "error": "skipped (budget)"})
                continue
            r = tb.run_child([a.bin, "bench", path, "--device", a.device, temp, "--runs", "2", "--backends", "auto,direct", "--json"],
                             min(240, max(30, budget.left() - 60)))
            for line in r["stdout"].splitlines():
                if line.startswith("{"):
                    try:
                        bench.append(json.loads(line))
                    except ValueError:
                        pass
            if r["rc"] != 0:
                bench.append({"temperature": temp, "error": tb.tail(r["stderr"], 300), "rc": r["rc"], "timed_out": r["timed_out"]})
        for b in bench:
            log("  tensorstream bench: %s" % json.dumps(b))
    out["bench"] = bench
    dump(a.out, out)
    return 0


# ---------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------


def load_json(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError, TypeError):
        return None


def cmd_summary(a):
    env = load_json(a.env) or {}
    tests = load_json(a.tests) or {}
    diff = load_json(a.diff) or {}
    tim = load_json(a.timing) or {}
    conv = tim.get("conversion") or {}
    # The kernels step's output; a timing.json of an older layout kept it in conversion.kernels.
    kern = (load_json(a.kernels) if a.kernels else None) or conv.get("kernels") or {}
    lines = []
    verdicts = {}

    def say(s=""):
        lines.append(s)

    say("== summary ==")
    dev = env.get("device") or {}
    say("card: %s (cc %s, %s SMs); torch %s (CUDA %s); python %s" % (
        dev.get("name", "no GPU visible to torch"), dev.get("capability", "-"), dev.get("sms", "-"),
        env.get("torch"), env.get("torch_cuda_build"), env.get("python")))
    if a.smi:
        say("nvidia-smi: %s" % a.smi)
    probe = tim.get("io_probe") or env.get("io_probe") or {}
    if probe:
        say("scratch filesystem %s (%s); O_DIRECT %s; io_uring_setup %s; mincore %s; drop_caches writable: %s" % (
            probe.get("filesystem", {}).get("type"), probe.get("filesystem", {}).get("mount"), probe.get("o_direct"),
            probe.get("io_uring_setup"), probe.get("mincore"), probe.get("drop_caches_writable")))
    if tests and not tests.get("binaries"):
        say("tests: none run (no test binaries, or --skip-tests)")
    if tests and tests.get("binaries"):
        say("tests: %s" % ", ".join("%s %s%s" % (t["name"], t["result"], " (%d skip lines)" % t["skip_mentions"] if t.get("skip_mentions") else "")
                                     for t in tests.get("binaries", [])))
        if dev.get("name") and any(t.get("skip_mentions") and ("cuda" in t["name"] or "gpu" in t["name"]) for t in tests.get("binaries", [])):
            say("  WARNING: GPU tests printed 'skipping' on a machine where torch sees a GPU: read the test output above")
        ran = [t for t in tests.get("binaries", []) if t["result"] != "skipped"]
        verdicts["tests"] = all(t["result"] == "passed" for t in ran) if ran else None
    if diff:
        say("fixtures cpu vs cuda: %s; reference: %s; failures: %d" % (
            ("CUDA skipped: " + diff.get("cuda_reason", "")) if diff.get("cuda") != "yes" else
            "%d/%d cases identical" % (sum(1 for c in diff["cases"] if c.get("cpu_cuda_identical")), len(diff["cases"])),
            " ".join("%s=%d" % kv for kv in sorted(diff.get("totals", {}).items())), len(diff.get("failures", []))))
        iov = diff.get("io_variants") or []
        if iov:
            say("io paths on cuda: " + "; ".join("%s->%s%s" % (v["io"], ",".join(v["ran"]) or "-", "" if v["identical_to_cpu"] else " (DIFF/FAIL)") for v in iov))
        verdicts["fixtures"] = diff.get("ok")
    lim = tim.get("limits") or {}
    pinned = (lim.get("pinned_h2d_to") or {}).get("gbps_median")
    d2d_rw = (lim.get("d2d_copy") or {}).get("gbps_rw")
    od = tim.get("odirect_python") or {}
    fio = tim.get("odirect_fio") or {}
    raw = max([x for x in (od.get("gbps") if od.get("ok") else None, fio.get("gbps") if fio and fio.get("ok") else None) if x] or [0]) or None
    series = tim.get("series") or []
    if tim.get("synth"):
        s = tim["synth"]
        say("synthetic checkpoint: %.2f GB in %d file(s)" % (s["file_bytes"] / 1e9, s["files"]))
    if tim.get("drop_probe"):
        d = tim["drop_probe"]
        say("cold = page cache dropped by %s (resident after: %s)" % (d["method"], fmt_frac(d.get("resident_after"))))
    if raw:
        say("raw O_DIRECT read: python %s, fio %s" % (
            "%.2f GB/s" % od["gbps"] if od.get("ok") else od.get("error"),
            ("%.2f GB/s (%s)" % (fio["gbps"], fio.get("engine"))) if fio and fio.get("ok") else "n/a"))
    if pinned:
        say("pinned H2D %.1f GB/s; D2D %.0f GB/s read+written" % (pinned, d2d_rw or 0))
    for s in series:
        say("%s %-5s --io %-9s median %s  via %s" % (tim.get("device", "cuda"), s["temperature"], s["io_requested"],
                                                      ("%.2f GB/s" % s["median_gbps"]) if s.get("median_gbps") else "n/a",
                                                      ",".join(s.get("io", [])) or "-"))
    reg = tim.get("registered_map")
    if reg:
        say("registered page cache (mmap + cudaHostRegister read-only, no CPU copy; Python probe, warm): %s" % (
            ("%.2f GB/s end to end, registration alone %.2f GB/s" % (reg["gbps"], reg["register_gbps"])) if reg.get("ok")
            else "failed: %s" % (reg.get("error") or "").strip()[-200:]))
    if not tim:
        say("timing: not run here (gpu-check.sh --skip-timing, or no budget left); the warm figures are sweep.py's, the cold compare.py's")
    say()
    say("goals (ratios measured side by side in this run):")
    warm_auto = next((s for s in series if s["temperature"] == "warm" and s["io_requested"] == "auto"), None)
    warm_best = max((s for s in series if s["temperature"] == "warm" and s.get("median_gbps")), key=lambda s: s["median_gbps"], default=None)
    cold_auto = next((s for s in series if s["temperature"] == "cold" and s["io_requested"] == "auto"), None)

    def ratio_line(key, label, num, den, extra=""):
        if num is None or not den:
            say("  %-44s NOT MEASURED%s" % (label, extra))
            verdicts[key] = None
            return
        r = num / den
        ok = r >= GOALS[key]
        verdicts[key] = ok
        say("  %-44s %.2f  (goal >= %.2f)  %s%s" % (label, r, GOALS[key], "MET" if ok else "NOT MET", extra))

    ratio_line("warm_vs_pinned_h2d", "warm (auto) / pinned H2D",
               warm_auto and warm_auto.get("median_gbps"), pinned,
               "  [%s GB/s vs %s]" % (fmt(warm_auto and warm_auto.get("median_gbps")), fmt(pinned)))
    ex_init = warm_auto and median_ex_init(warm_auto)
    if ex_init and pinned:
        say("  %-44s %.2f  (%.2f GB/s; the context's creation left out)" % (
            "warm (auto) / pinned H2D, context made", ex_init / pinned, ex_init))
    if warm_best and warm_best is not warm_auto and pinned:
        say("  %-44s %.2f  (best warm backend: --io %s)" % ("warm (best) / pinned H2D", warm_best["median_gbps"] / pinned if pinned else float("nan"), warm_best["io_requested"]))
    ratio_line("cold_vs_odirect", "cold (auto) / raw O_DIRECT read",
               cold_auto and cold_auto.get("median_gbps"), raw,
               "  [%s GB/s vs %s]" % (fmt(cold_auto and cold_auto.get("median_gbps")), fmt(raw)))
    b = tim.get("bin") or {}
    for temp in ("cold", "warm"):
        m = b.get(temp) or {}
        if m.get("bin") and m.get("safetensors"):
            say("  %-44s %.2f  (goal <= 1.10)  %s" % ("load .bin / .safetensors time, %s" % temp, m["bin"] / m["safetensors"],
                                                    "MET" if m["bin"] / m["safetensors"] <= 1.10 else "NOT MET"))
        else:
            say("  %-44s NOT MEASURED" % ("load .bin / .safetensors time, %s" % temp))
    ker = conv.get("ncu_kernels") or {}
    krows = [r for r in (kern.get("rows") or []) if r.get("source_mib", 0) >= 64 and r.get("ratio_to_copy")]
    kfailed = sorted({r["kernel"] for r in (kern.get("rows") or []) if r.get("error")})
    if kfailed:
        say("  kernels.py: %d kernel(s) FAILED to launch: %s" % (len(kfailed), ", ".join(kfailed)))
    if krows:
        worst = min(krows, key=lambda r: r["ratio_to_copy"])
        ratio_line("convert_vs_d2d", "slowest convert kernel / D2D (read+written)",
                   worst["gbps_rw"], worst["copy_gbps_rw"],
                   "  [%s at %d MiB: %.0f GB/s vs %.0f; kernels.py, device-resident]" % (
                       worst["kernel"], worst["source_mib"], worst["gbps_rw"], worst["copy_gbps_rw"]))
        below = sorted({r["kernel"] for r in krows if r["ratio_to_copy"] < GOALS["convert_vs_d2d"]})
        if below:
            say("    below the goal: %s" % ", ".join(below))
    elif ker:
        worst = min((v for v in ker.values() if v.get("gbps_logical")), key=lambda v: v["gbps_logical"], default=None)
        name = next((k for k, v in ker.items() if v is worst), "?")
        ratio_line("convert_vs_d2d", "slowest convert kernel / D2D (read+written)",
                   worst and worst["gbps_logical"], d2d_rw,
                   "  [%s: %s GB/s vs %s; ncu kernel time, logical bytes]" % (name, fmt(worst and worst["gbps_logical"]), fmt(d2d_rw)))
        for k, v in sorted(ker.items()):
            say("    %-28s %s GB/s (%d launches)" % (k, fmt(v.get("gbps_logical")), v["launches"]))
    else:
        why = kern.get("skipped") or (("kernels.py failed: %s" % (kern["error"].strip().splitlines() or ["?"])[-1][-160:])
                                      if kern.get("error") else "the kernels step did not run")
        ratio_line("convert_vs_d2d", "convert kernel / D2D (read+written)", None, d2d_rw, " (%s)" % why)
    e2e = conv.get("end_to_end") or {}
    if e2e.get("none") and e2e["none"].get("median_seconds"):
        base = e2e["none"]["median_seconds"]
        say("  end-to-end warm load of large.safetensors, time with --dtype / without: " + ", ".join(
            "%s %.2fx" % (k, v["median_seconds"] / base) for k, v in e2e.items() if k != "none" and v.get("median_seconds")))
    failed = [k for k, v in verdicts.items() if v is False and k in ("tests", "fixtures")]
    say()
    if failed:
        verdict = "FAILED (%s)" % ", ".join(failed)
    elif diff.get("ok") and diff.get("cuda") == "yes":
        verdict = "ok (CPU and CUDA agree with each other and with the references)"
    elif diff.get("ok"):
        verdict = "CPU path agrees with the references; CUDA NOT CHECKED (%s)" % (diff.get("cuda_reason") or "no GPU")
    else:
        verdict = "not established"
    say("correctness: %s" % verdict)
    text = "\n".join(lines)
    print(text, flush=True)
    dump(a.out, {"env": env, "tests": tests, "diff": diff, "kernels": kern, "timing": tim, "verdicts": verdicts, "summary": lines})
    return 1 if failed else 0


def fmt(x):
    return "n/a" if x is None else "%.2f" % x


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("env")
    p.add_argument("--out", required=True)
    p.add_argument("--probe-dir")
    p.set_defaults(fn=cmd_env)
    p = sub.add_parser("diff")
    p.add_argument("--bin", required=True)
    p.add_argument("--fixtures", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cuda", choices=["auto", "yes", "no"], default="auto")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--timeout", type=int, default=60, help="seconds per load")
    p.add_argument("--budget-s", type=int, default=240)
    p.set_defaults(fn=cmd_diff)
    p = sub.add_parser("kernels")
    p.add_argument("--out", required=True)
    p.add_argument("--cuda", choices=["yes", "no"], default="yes")
    p.add_argument("--ptx", help="default: the bundle's (or checkout's) kernels/convert.ptx")
    p.add_argument("--mib", default="64,256", help="source tensor sizes in MiB (kernels.py --mib)")
    p.add_argument("--timeout", type=int, default=60)
    p.set_defaults(fn=cmd_kernels)
    p = sub.add_parser("timing")
    p.add_argument("--bin", required=True)
    p.add_argument("--dir", required=True, help="scratch directory on a real disk")
    p.add_argument("--fixtures", help="fixture directory holding large.safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--size", default="8G")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cuda", choices=["yes", "no"], default="yes")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--budget-s", type=int, default=300)
    p.add_argument("--load-timeout", type=int, default=90)
    p.add_argument("--synth-timeout", type=int, default=150)
    p.set_defaults(fn=cmd_timing)
    p = sub.add_parser("summary")
    for k in ("env", "tests", "diff", "kernels", "timing"):
        p.add_argument("--" + k)
    p.add_argument("--smi", default="")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_summary)
    a = ap.parse_args(argv)
    a.bin = os.path.abspath(a.bin) if getattr(a, "bin", None) else None
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
