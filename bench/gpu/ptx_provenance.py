#!/usr/bin/env python3
"""Which measured build each conversion kernel's PTX comes from.

    python3 bench/gpu/ptx_provenance.py NAME=COMMIT [NAME=COMMIT ...] [--ptx kernels/convert.ptx]

For every `convert_*` entry of the PTX file (default: the committed one), says which
of the named commits' kernels/convert.ptx holds a byte-identical entry. A kernel
whose PTX is identical to one timed on a GPU runs the same code: BENCHMARKS.md uses
this to quote, for each kernel, the run that measured exactly that code. Exit 1 if
some entry matches none of them.
"""

import argparse
import re
import subprocess
import sys

ENTRY = re.compile(r"\.visible \.entry (convert_\w+)\((.*?)\n\}\n", re.S)


def entries(text):
    return {m.group(1): m.group(0) for m in ENTRY.finditer(text)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", help="NAME=COMMIT: a run's name and the commit its bundle was built from")
    ap.add_argument("--ptx", default="kernels/convert.ptx")
    a = ap.parse_args()
    now = entries(open(a.ptx).read())
    runs = []
    for b in a.builds:
        name, _, commit = b.partition("=")
        text = subprocess.run(["git", "show", "%s:kernels/convert.ptx" % commit], check=True,
                              capture_output=True, text=True).stdout
        runs.append((name, entries(text)))
    missing = 0
    for k in sorted(now):
        same = [name for name, e in runs if e.get(k) == now[k]]
        missing += not same
        print("%-26s %s" % (k, ("identical to " + ", ".join(same)) if same else "MATCHES NO MEASURED BUILD"))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
