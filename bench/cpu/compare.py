"""The measuring loop of bench/compare-cpu.sh: alternates every contender over N
rounds, cold (page cache dropped, and checked) and warm (file fully resident, and
checked), and writes one JSON line per run.

Run it through bench/compare-cpu.sh, which builds the binaries, the venv and the
checkpoints first. Usage:

    python compare.py --ts BIN --peers BIN --bf16 FILE --f16 FILE --out FILE.jsonl [--rounds 3]

One line per run, the schema shared with the GPU harness (bench/gpu/):

    {"loader", "temperature": "cold"|"warm", "run", "gbps", "seconds", "bytes",
     "peak_rss_bytes", "device": "cpu", ...}

Before each run the harness waits --settle seconds (default 5) after setting the
page-cache state, so that every contender starts from the same memory state: on a VM
whose balloon reports free memory to the host, memory freed by the previous process
is otherwise still host-backed for a second or two and the next process gets it
cheaply, by chance of timing (see touch.py).

plus, for the CPU: "round", "order" (position in its round), "file", "tensor_bytes",
"wall_seconds" (whole process, start-up included), "resident_before" (fraction of the
file's pages in the page cache just before the run) and "resident_after", "io" (the
path tensorstream reports), "role" ("limit" for fio cold and dd warm), "ok",
"user_seconds" and "sys_seconds" of the process, "loadavg1_before" and
"steal_fraction" (CPU time stolen by the hypervisor during the run, all CPUs),
"attempt", and "disturbed" when another process changed the page cache before or
during the run (such a run is recorded with "ok": false and measured again, up to
--attempts times).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def resident_bytes(path):
    """Bytes of `path` in the page cache, from util-linux fincore (mincore(2))."""
    out = sh(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", path])
    return int(out.split()[0])


def drop_caches(path, size):
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    return resident_bytes(path) / size


def warm_up_file(path, size):
    frac = resident_bytes(path) / size
    tries = 0
    while frac < 0.999 and tries < 3:
        with open(path, "rb", buffering=0) as f:
            while f.read(16 << 20):
                pass
        frac = resident_bytes(path) / size
        tries += 1
    return frac


def cpu_times():
    """(steal, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[7] if len(v) > 7 else 0, sum(v[:8])


def loadavg1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def parse_time_v(text):
    """Peak RSS (bytes), wall seconds, user and system CPU seconds from GNU time -v."""
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    sys_ = re.search(r"System time \(seconds\): ([\d.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    secs = None
    if wall:
        parts = [float(p) for p in wall.group(1).split(":")]
        secs = 0.0
        for p in parts:
            secs = secs * 60 + p
    return ((int(rss.group(1)) * 1024 if rss else None), secs,
            float(user.group(1)) if user else None, float(sys_.group(1)) if sys_ else None)


def parse_ts(out, err):
    v = json.loads(out.strip().splitlines()[-1])
    ios = sorted({f["io"] for f in v.get("files", [])})
    return {"bytes": v["bytes"], "seconds": v["seconds"], "io": ", ".join(ios),
            "io_reason": "; ".join(f.get("reason", "") for f in v.get("files", []))}


def parse_ts_bench(out, err):
    # `tensorstream bench --json`: one line per backend and temperature, the median of
    # its runs (after an untimed load that backs the memory pool).
    v = json.loads(out.strip().splitlines()[-1])
    if v.get("note"):
        raise ValueError(v["note"])
    return {"bytes": v["bytes"], "seconds": v["bytes"] / (v["median_gbps"] * 1e9), "io": v["io"],
            "runs_in_process": v["runs"]}


def parse_json_line(out, err):
    v = json.loads(out.strip().splitlines()[-1])
    return {"bytes": v["bytes"], "seconds": v["seconds"]}


def parse_fio(out, err):
    v = json.loads(out[out.index("{"):])
    r = v["jobs"][0]["read"]
    # bw_bytes is io_bytes over the job's run time, in bytes per second.
    return {"bytes": r["io_bytes"], "seconds": r["io_bytes"] / r["bw_bytes"]}


def parse_dd(out, err):
    m = re.search(r"^(\d+) bytes .* copied, ([\d.e+-]+) s", err, re.M)
    return {"bytes": int(m.group(1)), "seconds": float(m.group(2))}


def contenders(a):
    ts, peers, py = a.ts, a.peers, sys.executable
    bf16, f16 = a.bf16, a.f16
    c = []
    for io in ["auto", "direct", "buffered", "pread", "pread-direct"]:
        c.append(dict(loader=f"tensorstream-{io}", file=bf16, parse=parse_ts,
                      cmd=[ts, "load", bf16, "--device", "cpu", "--io", io, "--json"]))
    # Host memory reused between loads (HostPool), as a server switching models: three
    # timed loads in one process after an untimed one; the median is the figure.
    reuse = [ts, "bench", bf16, "--backends", "auto", "--runs", "3", "--reuse-memory", "--json"]
    c.append(dict(loader="tensorstream-auto-reuse", file=bf16, parse=parse_ts_bench,
                  cmd=reuse, cmd_for={"cold": reuse + ["--cold"], "warm": reuse + ["--warm"]}))
    c.append(dict(loader="fio", file=bf16, parse=parse_fio, temps=["cold"], role={"cold": "limit"},
                  cmd=["fio", "--name=seqread", f"--filename={bf16}", "--rw=read", "--bs=4M",
                       "--iodepth=16", "--ioengine=io_uring", "--direct=1", "--thread",
                       "--readonly", "--output-format=json"]))
    c.append(dict(loader="dd", file=bf16, parse=parse_dd, role={"warm": "limit"},
                  cmd=["dd", f"if={bf16}", "of=/dev/null", "bs=16M"]))
    c.append(dict(loader="python-safetensors", file=f16, parse=parse_json_line,
                  cmd=[py, os.path.join(HERE, "py_load.py"), f16]))
    c.append(dict(loader="python-safetensors-pread", file=f16, parse=parse_json_line,
                  cmd=[py, os.path.join(HERE, "py_load.py"), f16, "--backend", "pread"]))
    c.append(dict(loader="rust-safetensors", file=bf16, parse=parse_json_line,
                  cmd=[peers, "rust-safetensors", bf16]))
    c.append(dict(loader="candle", file=bf16, parse=parse_json_line,
                  cmd=[peers, "candle", bf16]))
    for spec in a.baseline:
        # Another build of tensorstream, side by side (e.g. the commit before a change).
        label, _, binary = spec.partition("=")
        c.append(dict(loader=f"tensorstream-auto@{label}", file=bf16, parse=parse_ts,
                      cmd=[binary, "load", bf16, "--device", "cpu", "--io", "auto", "--json"]))
    if a.diagnostics:
        # tensorstream with transparent huge pages disabled for the process: shows
        # what its MADV_HUGEPAGE destination buffers cost or save on this machine.
        for io in ["auto", "pread"]:
            c.append(dict(loader=f"tensorstream-{io}-nothp", file=bf16, parse=parse_ts,
                          cmd=[py, os.path.join(HERE, "nothp.py"), ts, "load", bf16, "--device", "cpu",
                               "--io", io, "--json"]))
    if a.only:
        keep = set(a.only.split(","))
        c = [x for x in c if x["loader"] in keep]
    return c


def tensor_bytes(ts, path):
    return json.loads(sh([ts, "inspect", path, "--json"]))["tensor_bytes"]


def run_one(con, temp, tmpdir, timeout):
    tfile = os.path.join(tmpdir, "time.txt")
    cmd = ["/usr/bin/time", "-v", "-o", tfile] + con.get("cmd_for", {}).get(temp, con["cmd"])
    load = loadavg1()
    st0, tot0 = cpu_times()
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = 124, e.stdout or "", (e.stderr or "") + f"\ntimed out after {timeout} s"
    outer = time.perf_counter() - t0
    st1, tot1 = cpu_times()
    rss, wall, user, sys_ = None, None, None, None
    if os.path.exists(tfile):
        with open(tfile) as f:
            rss, wall, user, sys_ = parse_time_v(f.read())
        os.remove(tfile)
    rec = {"peak_rss_bytes": rss, "wall_seconds": wall if wall is not None else outer, "rc": rc,
           "user_seconds": user, "sys_seconds": sys_, "loadavg1_before": load,
           "steal_fraction": round((st1 - st0) / max(1, tot1 - tot0), 4)}
    if rc == 0:
        try:
            rec.update(con["parse"](out, err))
            rec["gbps"] = rec["bytes"] / rec["seconds"] / 1e9
            rec["ok"] = True
        except Exception as e:  # a parse failure is a failed run, recorded as such
            rec.update(ok=False, error=f"could not parse output: {e!r}: {out[-300:]} {err[-300:]}")
    else:
        rec.update(ok=False, error=(err or out)[-500:].strip())
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ts", required=True)
    ap.add_argument("--peers", required=True)
    ap.add_argument("--bf16", required=True)
    ap.add_argument("--f16", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", help="comma-separated loaders to run (default: all)")
    ap.add_argument("--baseline", action="append", default=[], metavar="LABEL=BIN",
                    help="also run another tensorstream binary with --io auto, as tensorstream-auto@LABEL")
    ap.add_argument("--diagnostics", action="store_true",
                    help="also run tensorstream-{auto,pread}-nothp (huge pages disabled by prctl)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--attempts", type=int, default=3,
                    help="runs of one contender in one slot when another process disturbs the page cache")
    ap.add_argument("--settle", type=float, default=5,
                    help="seconds to wait after setting the page-cache state, before each run (default 5)")
    a = ap.parse_args()

    cons = contenders(a)
    sizes = {f: os.path.getsize(f) for f in {a.bf16, a.f16}}
    tbytes = {f: tensor_bytes(a.ts, f) for f in sizes}
    tmpdir = tempfile.mkdtemp(prefix="ts-compare-")
    log = lambda *x: print(*x, file=sys.stderr, flush=True)

    log(f"warm-up: every contender once, warm, not recorded")
    for con in cons:
        warm_up_file(con["file"], sizes[con["file"]])
        r = run_one(con, "warm", tmpdir, a.timeout)
        log(f"  {con['loader']:<26} {'ok' if r['ok'] else 'FAILED: ' + r.get('error', '')}")

    with open(a.out, "w") as out:
        for rnd in range(1, a.rounds + 1):
            for temp in ["cold", "warm"]:
                todo = [c for c in cons if temp in c.get("temps", ["cold", "warm"])]
                # Rotate the order every round so that no contender always runs first.
                k = (rnd - 1) % len(todo)
                todo = todo[k:] + todo[:k]
                for pos, con in enumerate(todo):
                    for attempt in range(1, a.attempts + 1):
                        rec = measure(a, con, temp, rnd, pos, sizes, tbytes, tmpdir)
                        rec["attempt"] = attempt
                        out.write(json.dumps(rec) + "\n")
                        out.flush()
                        f = con["file"]
                        g = f"{rec['gbps']:.3f} GB/s" if rec["gbps"] else "FAILED"
                        rss = f"{(rec['peak_rss_bytes'] or 0) / tbytes[f]:.2f}x" if rec["peak_rss_bytes"] else "?"
                        log(f"round {rnd} {temp} {con['loader']:<26} {g:>14}  rss {rss:>6}  "
                            f"resident {rec['resident_before']:.0%}  load {rec['loadavg1_before']:.1f}  "
                            f"{rec.get('io', '')} {rec.get('error', '')}")
                        # Another process changed the page cache under us: measure again.
                        if not rec.get("disturbed"):
                            break


def prepare(f, size, temp, settle, tries=3):
    """Sets the page-cache state of `f`, waits `settle` seconds, checks it; retries
    when something else on the machine changed it meanwhile."""
    for _ in range(tries):
        if temp == "cold":
            drop_caches(f, size)
        else:
            warm_up_file(f, size)
        # Every run starts from the same settled state (see --settle).
        time.sleep(settle)
        res = resident_bytes(f) / size
        if (res <= 0.01) if temp == "cold" else (res >= 0.99):
            return res, True
    return res, False


def measure(a, con, temp, rnd, pos, sizes, tbytes, tmpdir):
    f = con["file"]
    res, cache_ok = prepare(f, sizes[f], temp, a.settle)
    r = run_one(con, temp, tmpdir, a.timeout)
    after = resident_bytes(f) / sizes[f]
    rec = {
        "loader": con["loader"], "temperature": temp, "run": rnd,
        "gbps": r.get("gbps"), "seconds": r.get("seconds"), "bytes": r.get("bytes"),
        "peak_rss_bytes": r["peak_rss_bytes"], "device": "cpu",
        "round": rnd, "order": pos, "file": f, "tensor_bytes": tbytes[f],
        "wall_seconds": r["wall_seconds"], "resident_before": round(res, 4),
        "resident_after": round(after, 4),
        "cache_ok": cache_ok, "ok": r["ok"] and cache_ok,
        "user_seconds": r["user_seconds"], "sys_seconds": r["sys_seconds"],
        "loadavg1_before": r["loadavg1_before"], "steal_fraction": r["steal_fraction"],
    }
    role = con.get("role", {}).get(temp)
    if role:
        rec["role"] = role
    for k in ("io", "io_reason", "error", "rc"):
        if k in r and (k != "rc" or r[k] != 0):
            rec[k] = r[k]
    if not cache_ok:
        rec["error"] = (rec.get("error", "") + f" page cache {res:.1%} resident "
                        f"before a {temp} run").strip()
        rec["disturbed"] = True
    elif temp == "warm" and after < 0.99:
        # The file left the page cache during a warm run (another process dropped
        # caches): the figure is not a warm one.
        rec["ok"] = False
        rec["disturbed"] = True
        rec["error"] = (rec.get("error", "") + f" page cache fell to {after:.1%} during a warm run").strip()
    return rec

if __name__ == "__main__":
    main()
