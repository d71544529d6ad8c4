#!/usr/bin/env python3
"""Finds import cycles between the library's modules: exit 0 and a one-line summary
when there are none, exit 1 and each cycle otherwise.

    python3 scripts/module_cycles.py [SRC_DIR]

Reads every file of the library under src/ (not main.rs or src/cli/, the binary),
leaves out `#[cfg(test)] mod tests` blocks, and takes the module each `crate::` or
`super::` path names. An edge between two files counts between their two modules just
below the nearest module holding both (sink::cuda::staging -> sink::host counts as
cuda -> host inside sink); a module using its own parent's or child's items is not an
edge. A cycle is a strongly connected group of two or more modules at one level.
"""
import os
import re
import sys


def module_of(path, src):
    rel = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return tuple(rel)


def strip_tests(text):
    m = re.search(r"#\[cfg\(test\)\]\s*mod tests\b", text)
    return text[: m.start()] if m else text


def resolve(words, modules):
    """The longest prefix of `words` that is a module."""
    for n in range(len(words), 0, -1):
        if tuple(words[:n]) in modules:
            return tuple(words[:n])
    return None


def edges(src):
    files = []
    for d, _, fs in os.walk(src):
        for f in fs:
            p = os.path.join(d, f)
            rel = os.path.relpath(p, src)
            if f.endswith(".rs") and rel != "main.rs" and not rel.startswith("cli" + os.sep):
                files.append(p)
    modules = {module_of(p, src) for p in files}
    # Modules declared inline or re-exported under another name at the crate root.
    aliases = {}
    lib = open(os.path.join(src, "lib.rs")).read()
    for m in re.finditer(r"use\s+(\w+)::\{([^}]*)\};", lib):
        for name in m.group(2).split(","):
            name = name.strip()
            if (m.group(1), name) in modules:
                aliases[name] = (m.group(1), name)
    out = set()
    for p in files:
        me = module_of(p, src)
        # Comments (doc links included) are not imports.
        text = re.sub(r"//[^\n]*", "", strip_tests(open(p).read()))
        for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
            words = m.group(2).strip(":").split("::")
            if m.group(1) == "crate":
                if words and words[0] in aliases:
                    words = list(aliases[words[0]]) + words[1:]
                base = []
            else:
                # super:: from a file module: its parent (from mod.rs: the parent's parent).
                is_mod = os.path.basename(p) == "mod.rs"
                base = list(me[:-1]) if not is_mod else list(me[:-1])
                while words and words[0] == "super":
                    base, words = base[:-1], words[1:]
            target = resolve(base + words, modules)
            if target is None or target == me:
                continue
            out.add((me, target))
    return out, modules


def level_edges(file_edges):
    """Each file edge as an edge between siblings below the nearest common module."""
    graph = {}
    for a, b in file_edges:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        if n == len(a) or n == len(b):
            continue  # one is the other's ancestor
        parent = a[:n]
        x, y = a[: n + 1], b[: n + 1]
        graph.setdefault(parent, {}).setdefault(x, set()).add(y)
    return graph


def cycles(adj):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in adj.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in list(adj):
        if v not in index:
            visit(v)
    return out


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
    file_edges, modules = edges(src)
    found = []
    for parent, adj in sorted(level_edges(file_edges).items()):
        for group in cycles(adj):
            found.append((parent, group))
    name = lambda m: "::".join(m) or "crate"
    if found:
        for parent, group in found:
            print("cycle in %s: %s" % (name(parent), " <-> ".join(name(m) for m in group)))
            for a, b in sorted(file_edges):
                if any(a[: len(g)] == g for g in group) and any(b[: len(g)] == g for g in group):
                    if a[: len(parent) + 1] != b[: len(parent) + 1]:
                        print("    %s uses %s" % (name(a), name(b)))
        return 1
    print("no module cycles among %d modules (%d imports between them)" % (len(modules), len(file_edges)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
