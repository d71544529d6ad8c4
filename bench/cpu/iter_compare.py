"""An inference server's weight loading on the CPU, side by side: a model's parameters
exist (allocated and touched, as a model's constructor leaves them) and each loader
fills them from a safetensors file.

    python bench/cpu/iter_compare.py PATH [--rounds 5] [--cold] [--device cuda:0]   # needs torch

Loaders, each in a fresh Python process (torch and the model made before the clock):
- safetensors-iter: the loop of vLLM's safetensors weights iterator, `safe_open(PATH,
  "pt")` then `get_tensor(name)` for each key, each copied into its parameter with
  `param.copy_(tensor)` (with `--device cuda:N` the parameters are on that GPU and
  `safe_open` reads on the CPU, as vLLM's loop does);
- ts-iter: the same loop over `tensorstream.iter_tensors(PATH, device)`;
- ts-load_into: `tensorstream.torch.load_into(params, PATH)`, which reads into the
  parameters themselves.
After the clock, every parameter's bytes are hashed in the child and the parent
checks them against hashes of the file's own bytes, for every run of every loader.
Loaders rotate round by round after one warm-up run each. Prints one line per run and
a SUMMARY line: median seconds, GB/s, ratios to safetensors-iter, peak RSS over the
tensor bytes (the parameters themselves are 1.0x).
"""

import argparse
import hashlib
import json
import os
import resource
import statistics
import time

from py_compare import file_digests, run_child, timed_rounds

LOADERS = ["safetensors-iter", "ts-iter", "ts-load_into"]


def child(loader, path, device):
    import torch
    import tensorstream
    import tensorstream.torch as tst
    from safetensors import safe_open

    with safe_open(path, "pt") as f:  # the model: its shapes and dtypes, touched
        params = {}
        for name in f.keys():
            s = f.get_slice(name)
            dtype = tst.torch_dtype(path, name, s.get_dtype())
            params[name] = torch.zeros(s.get_shape(), dtype=dtype, device=device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if loader == "safetensors-iter":
        with safe_open(path, "pt") as f:
            for name in f.keys():
                params[name].copy_(f.get_tensor(name))
    elif loader == "ts-iter":
        for name, t in tensorstream.iter_tensors(path, device):
            params[name].copy_(t)
    else:
        tst.load_into(params, path)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    digests = {k: hashlib.sha256(v.reshape(-1).view(torch.uint8).cpu().numpy().tobytes()).hexdigest()
               for k, v in params.items()}
    nbytes = sum(v.nbytes for v in params.values())
    print(json.dumps({"loader": loader, "seconds": seconds, "bytes": nbytes,
                      "peak_rss": peak, "digests": digests}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--device", default="cpu", help="where the parameters live: cpu or cuda:N")
    ap.add_argument("--child", choices=LOADERS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.path, a.device)
    want = file_digests(a.path)
    print(f"{a.path}: {len(want)} tensors, {os.path.getsize(a.path) / 2**30:.2f} GiB, "
          f"{'cold' if a.cold else 'warm'}, to {a.device}, {a.rounds} rounds after a warm-up")
    results = timed_rounds(
        LOADERS, lambda k: run_child(__file__, [k, a.path, "--device", a.device], a.path, a.cold),
        want, a.rounds)
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in results.items()}
    nbytes = results[LOADERS[0]][0]["bytes"]
    print("SUMMARY " + json.dumps({
        "mode": "cold" if a.cold else "warm",
        "device": a.device,
        "tensor_bytes": nbytes,
        "median_s": med,
        "gbps": {k: nbytes / s / 1e9 for k, s in med.items()},
        "speedup_vs_safetensors_iter": {k: med["safetensors-iter"] / s for k, s in med.items()},
        "peak_rss_ratio": {k: max(x["peak_rss"] for x in v) / nbytes for k, v in results.items()},
    }))


if __name__ == "__main__":
    main()
