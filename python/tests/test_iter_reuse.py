"""``iter_tensors`` on the CPU reuses the memory of tensors the caller has dropped, and
never the memory of one it keeps (or of any view of it)."""

import hashlib

import numpy as np
import pytest

import tensorstream
from tensorstream.numpy import Recycler
from conftest import write_raw


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    """12 layers of three 1-3 MiB tensors each (sizes repeat, as a model's layers do),
    random bytes; and each tensor's SHA-256."""
    rng = np.random.default_rng(31)
    tensors, digests = {}, {}
    for i in range(12):
        for part, rows in (("q", 256), ("up", 768), ("down", 512)):
            raw = rng.integers(0, 256, rows * 1024 * 4, np.uint8).tobytes()
            tensors[f"l{i}.{part}"] = ("F32", (rows, 1024), raw)
            digests[f"l{i}.{part}"] = hashlib.sha256(raw).hexdigest()
    path = write_raw(tmp_path_factory.mktemp("reuse") / "layers.safetensors", tensors)
    return path, digests


def sha(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def address(a):
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("framework", ["np", "pt"])
def test_dropped_tensors_memory_is_reused(layers, framework):
    if framework == "pt":
        pytest.importorskip("torch")
    path, digests = layers
    seen = []
    for name, t in tensorstream.iter_tensors(path, framework=framework, batch_bytes=4 << 20):
        a = t if framework == "np" else t.numpy()
        assert sha(a) == digests[name], name
        seen.append(address(a))
        del a, t
    assert len(seen) == len(digests)
    # Without reuse every tensor would have memory of its own.
    assert len(set(seen)) < len(seen) // 2, (len(set(seen)), len(seen))


def test_kept_tensors_and_views_are_never_overwritten(layers):
    path, digests = layers
    kept, views = {}, {}
    for k, (name, a) in enumerate(tensorstream.iter_tensors(path, framework="np",
                                                            batch_bytes=4 << 20)):
        if k % 3 == 0:
            kept[name] = a
        elif k % 3 == 1:
            views[name] = (a[7:9].copy(), a[7:9])  # a view keeps the whole buffer
        del a
    assert kept and views
    for name, a in kept.items():
        assert sha(a) == digests[name], name
    for name, (want, view) in views.items():
        assert view.tobytes() == want.tobytes(), name


def test_the_recycler_keeps_only_the_most_recent_free_buffers():
    r = Recycler(keep_bytes=3 << 20)
    a = r.take(1 << 20)
    b = r.take(2 << 20)
    c = r.take(1 << 20)
    pa, pb, pc = address(a), address(b), address(c)
    assert len({pa, pb, pc}) == 3
    del a, b, c
    # All three are free; 4 MiB of them is over the 3 MiB kept: the oldest (a) goes.
    d = r.take(1 << 20)
    assert address(d) == pc
    e = r.take(2 << 20)
    assert address(e) == pb
    f = r.take(1 << 20)  # a was given back to the system: new memory
    assert address(f) not in (pb, pc)
    # A buffer in use is never handed out again.
    g = r.take(1 << 20)
    assert address(g) not in (address(d), address(e), address(f))
