"""Times safetensors.numpy.load_file on one file; prints one JSON object.

    python py_load.py FILE [--backend mmap|pread]

The timed region is the load_file call alone (imports are done before the clock
starts); every array stays alive until after the clock stops.
"""

import argparse
import json
import time

import safetensors
from safetensors.numpy import load_file


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--backend", default=None, help="safetensors 0.8 backend (mmap, pread); default: the library's")
    a = ap.parse_args()
    kwargs = {} if a.backend is None else {"backend": a.backend}
    t0 = time.perf_counter()
    tensors = load_file(a.file, **kwargs)
    seconds = time.perf_counter() - t0
    nbytes = sum(int(v.nbytes) for v in tensors.values())
    print(json.dumps({
        "loader": "python-safetensors" + (f"-{a.backend}" if a.backend else ""),
        "bytes": nbytes,
        "tensors": len(tensors),
        "seconds": seconds,
        "gbps": nbytes / seconds / 1e9,
        "safetensors_version": safetensors.__version__,
    }))


if __name__ == "__main__":
    main()
