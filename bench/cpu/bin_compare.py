#!/usr/bin/env python3
"""PyTorch `.bin` against safetensors on this machine, side by side in one run:
`tensorstream convert` of a `.bin` against `cp` of the same file, and
`tensorstream load` of the `.bin` against `load` of the safetensors file it was
written from, warm (file in the page cache) and cold (caches dropped).

    sudo python3 bench/cpu/bin_compare.py [--size 1G] [--rounds 5] [--bin target/release/tensorstream]

It writes (or reuses) bench/out/bin/: the synthetic Llama-layout BF16 checkpoint
(`tensorstream synth`) and the same tensors as pytorch_model.bin (bench/cpu/bin_write.py,
laid out as torch.save lays it out). After one warm-up of each, every round runs the
contenders alternately, in an order that turns each round, each as its own process
timed from start to exit; outputs are removed and `sync` run outside the timed region.
Prints the medians and ratios and appends one JSON line per run to
bench/out/bin/results.jsonl. Cold runs need root (echo 3 > /proc/sys/vm/drop_caches).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def warm(path):
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass


def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/tensorstream"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/out/bin"))
    a = ap.parse_args()
    ts, out = a.bin, a.out
    st = os.path.join(out, "model.safetensors")
    pt = os.path.join(out, "pytorch_model.bin")
    if not os.path.exists(st):
        subprocess.run([ts, "synth", out, "--size", a.size], check=True)
    if not os.path.exists(pt):
        subprocess.run([sys.executable, os.path.join(ROOT, "bench/cpu/bin_write.py"), st, pt], check=True)
    conv, copy = os.path.join(out, "converted"), os.path.join(out, "copy.bin")

    def clean():
        shutil.rmtree(conv, ignore_errors=True)
        if os.path.exists(copy):
            os.remove(copy)
        subprocess.run(["sync"], check=True)

    cold = os.geteuid() == 0
    runs = {
        "convert .bin": lambda: timed([ts, "convert", pt, conv]),
        "cp .bin": lambda: timed(["cp", pt, copy]),
        "load .bin warm": lambda: timed([ts, "load", pt]),
        "load .safetensors warm": lambda: timed([ts, "load", st]),
    }
    if cold:
        runs["load .bin cold"] = lambda: (drop_caches(), timed([ts, "load", pt]))[1]
        runs["load .safetensors cold"] = lambda: (drop_caches(), timed([ts, "load", st]))[1]
    sizes = {"convert .bin": os.path.getsize(pt), "cp .bin": os.path.getsize(pt)}
    tensor_bytes = json.loads(
        subprocess.run([ts, "inspect", st, "--json"], check=True, capture_output=True).stdout
    )["tensor_bytes"]
    names = list(runs)
    times = {n: [] for n in names}
    log = open(os.path.join(out, "results.jsonl"), "a")
    for r in range(a.rounds + 1):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            clean()
            if "warm" in n or n in sizes:
                warm(pt)
                warm(st)
            s = runs[n]()
            if r == 0:
                continue  # the warm-up
            times[n].append(s)
            log.write(json.dumps({"run": n, "round": r, "seconds": s, "size": a.size}) + "\n")
    clean()
    med = {n: statistics.median(v) for n, v in times.items()}
    print(f"{a.rounds} rounds, medians (seconds, GB/s of the bytes moved):")
    for n in names:
        b = sizes.get(n, tensor_bytes)
        print(f"  {n:24} {med[n]:7.3f} s  {b / med[n] / 1e9:6.2f} GB/s  (all: "
              + ", ".join(f"{x:.3f}" for x in times[n]) + ")")
    print(f"convert .bin / cp rate: {med['cp .bin'] / med['convert .bin']:.2f}x")
    for kind in ["warm", "cold"] if cold else ["warm"]:
        r = med[f"load .bin {kind}"] / med[f"load .safetensors {kind}"]
        print(f"load .bin / .safetensors time, {kind}: {r:.2f}")


if __name__ == "__main__":
    main()
