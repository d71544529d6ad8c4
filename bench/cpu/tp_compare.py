"""One tensor-parallel rank's shard: tensorstream (`load --rows/--cols`) against Python
safetensors' `safe_open(...).get_slice`, the way inference servers load a rank's
shard. Side by side in one run, cold and warm, alternating.

    sudo bench/out/venv/bin/python bench/cpu/tp_compare.py CKPT [--rank 1] [--world 4]
        [--rounds 5] [--settle 5] [--ts target/release/tensorstream] [--out FILE.jsonl]
        [--device cpu|cuda]

On the CPU, safetensors returns numpy arrays, and numpy has no bfloat16, so CKPT must
be F16 there (`tensorstream synth --dtype F16`). With --device cuda (a machine with
PyTorch and a GPU), tensorstream loads with `--device cuda` and safetensors with
`framework="pt"`, each slice then copied with `.to("cuda")` and the device
synchronized before the clock stops (BF16, F16 or F32). CKPT is a Llama-layout
checkpoint. The rank keeps its rows of q/k/v, gate/up,
the embedding and lm_head, its columns of o_proj and down_proj, and the norms whole.

Before timing, both loaders' bytes are checked equal: tensorstream's `--digest` lines
against the SHA-256 of each array safetensors returns (C order). Each timed run is a
separate process under /usr/bin/time -v where the machine has it (peak RSS). Two
times are kept: the process's wall time (interpreter start-up and imports included
for Python), and the loader's own time: for Python from after the imports (and, on
CUDA, after its context exists) to the last slice in place; for tensorstream its
load's seconds less its device set-up (`device_init_seconds`). Cold: the checkpoint
alone evicted from the page cache (posix_fadvise DONTNEED after sync, checked with
fincore where present), so that neither side re-reads its own libraries. Warm: the
file read into the page cache first. Each run's line is appended to --out as it is
measured. Before each run
the script waits --settle seconds, so that memory the previous process freed has
settled (this VM reports free pages to its host, and touching them again is slow
for a while), as bench/cpu/compare.py does.
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

ROWS = ["*.q_proj.weight", "*.k_proj.weight", "*.v_proj.weight", "*.gate_proj.weight",
        "*.up_proj.weight", "*embed_tokens.weight", "lm_head.weight"]
COLS = ["*.o_proj.weight", "*.down_proj.weight"]

# The Python side of a run: `python tp_compare.py --child CKPT RANK WORLD [--digest]`.
CHILD = "--child"


def glob(pattern, name):
    import fnmatch
    return fnmatch.fnmatchcase(name, pattern)


def child(ckpt, rank, world, device, digest):
    t0 = time.perf_counter()
    from safetensors import safe_open
    if device == "cuda":
        import torch
        torch.zeros(1, device="cuda")  # the context, before the clock
    t1 = time.perf_counter()
    out = {}
    with safe_open(ckpt, framework="np" if device == "cpu" else "pt") as f:
        for name in f.keys():
            sl = f.get_slice(name)
            shape = sl.get_shape()
            if any(glob(p, name) for p in ROWS):
                n = shape[0] // world
                t = sl[rank * n:(rank + 1) * n]
            elif any(glob(p, name) for p in COLS):
                n = shape[1] // world
                t = sl[:, rank * n:(rank + 1) * n]
            else:
                t = f.get_tensor(name)
            out[name] = t if device == "cpu" else t.to("cuda")
    if device == "cuda":
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    if device == "cpu":
        nbytes = sum(int(v.nbytes) for v in out.values())
    else:
        nbytes = sum(v.numel() * v.element_size() for v in out.values())
    if digest:
        for name in sorted(out):
            a = out[name]
            if device == "cpu":
                import numpy as np
                b = np.ascontiguousarray(a).tobytes()
            else:
                b = a.contiguous().cpu().view(torch.uint8).numpy().tobytes()
            print(json.dumps({"name": name, "shape": list(a.shape),
                              "sha256": hashlib.sha256(b).hexdigest()}))
    else:
        print(json.dumps({"bytes": nbytes, "tensors": len(out), "load_seconds": t2 - t1,
                          "import_seconds": t1 - t0}))


def ts_args(ts, ckpt, rank, world, device):
    args = [ts, "load", ckpt, "--device", device]
    for p in ROWS:
        args += ["--rows", f"{p}={rank}/{world}"]
    for p in COLS:
        args += ["--cols", f"{p}={rank}/{world}"]
    return args


def timed(cmd):
    # Peak RSS from GNU time where the machine has it (0 where it has not).
    gnu_time = ["/usr/bin/time", "-v"] if os.path.exists("/usr/bin/time") else []
    t0 = time.perf_counter()
    r = subprocess.run(gnu_time + cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), r.stderr[-2000:]))
    rss = next((int(l.split(":")[1]) for l in r.stderr.splitlines()
                if "Maximum resident set size" in l), 0)
    return wall, rss * 1024, r


def evict(ckpt):
    """Drops the checkpoint's pages from the page cache; returns the share left."""
    subprocess.run(["sync"], check=True)
    fd = os.open(ckpt, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    try:
        out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", ckpt], capture_output=True,
                             text=True, check=True).stdout.split()
        return int(out[0]) / os.path.getsize(ckpt)
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return 0.0


def warm(ckpt):
    with open(ckpt, "rb") as f:
        while f.read(64 << 20):
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--ts", default="target/release/tensorstream")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    a = ap.parse_args()
    py = [sys.executable, os.path.abspath(__file__), CHILD, a.ckpt, str(a.rank), str(a.world),
          a.device]
    ts = ts_args(a.ts, a.ckpt, a.rank, a.world, a.device)

    # The same bytes from both, first.
    got = subprocess.run(ts + ["--digest"], capture_output=True, text=True, check=True).stdout
    want = subprocess.run(py + ["--digest"], capture_output=True, text=True, check=True).stdout
    mine = {j["name"]: (j["shape"], j["sha256"]) for j in map(json.loads, got.splitlines())}
    theirs = {j["name"]: (j["shape"], j["sha256"]) for j in map(json.loads, want.splitlines())}
    if mine != theirs:
        bad = sorted(n for n in set(mine) | set(theirs) if mine.get(n) != theirs.get(n))
        sys.exit("tensorstream and safetensors differ on %d tensors, e.g. %s" % (len(bad), bad[:3]))
    print("both loaders give the same %d tensors (shapes and SHA-256)" % len(mine), flush=True)

    runs = []
    sink = open(a.out, "w") if a.out else None
    kinds = [("tensorstream", ts + ["--json"]), ("python-safetensors-get_slice", py)]
    for temp in ("cold", "warm"):
        if temp == "warm":
            warm(a.ckpt)
        for rnd in range(a.rounds):
            order = kinds if rnd % 2 == 0 else kinds[::-1]
            for name, cmd in order:
                if temp == "cold":
                    left = evict(a.ckpt)
                    if left > 0.05:
                        print("warning: %.0f%% of the checkpoint still cached" % (left * 100))
                time.sleep(a.settle)
                wall, rss, r = timed(cmd)
                line = [l for l in r.stdout.splitlines() + r.stderr.splitlines() if l.startswith("{")]
                info = json.loads(line[-1])
                if "seconds" in info:
                    inner = info["seconds"] - info.get("device_init_seconds", 0.0)
                else:
                    inner = info["load_seconds"]
                row = {"loader": name, "device": a.device, "temp": temp, "round": rnd,
                       "wall_seconds": wall,
                       "loader_seconds": inner, "peak_rss_bytes": rss,
                       "kept_bytes": info.get("output_bytes", info.get("bytes"))}
                runs.append(row)
                print(json.dumps(row), flush=True)
                if sink:
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
    for temp in ("cold", "warm"):
        med = {}
        for name, _ in kinds:
            xs = [r for r in runs if r["loader"] == name and r["temp"] == temp]
            med[name] = statistics.median(r["wall_seconds"] for r in xs)
            print("%s %-30s wall median %.3f s (range %.3f-%.3f), loader median %.3f s, "
                  "peak RSS median %.2f GB, kept %.2f GB" % (
                      temp, name, med[name], min(r["wall_seconds"] for r in xs),
                      max(r["wall_seconds"] for r in xs),
                      statistics.median(r["loader_seconds"] for r in xs),
                      statistics.median(r["peak_rss_bytes"] for r in xs) / 1e9,  # 0: no GNU time
                      xs[0]["kept_bytes"] / 1e9))
        own = {name: statistics.median(r["loader_seconds"] for r in runs
                                       if r["loader"] == name and r["temp"] == temp)
               for name, _ in kinds}
        print("%s: safetensors takes %.2fx tensorstream's wall time, %.2fx its loader time" % (
            temp, med["python-safetensors-get_slice"] / med["tensorstream"],
            own["python-safetensors-get_slice"] / own["tensorstream"]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], "--digest" in sys.argv)
    else:
        main()
