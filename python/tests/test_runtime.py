"""The GIL is released during loads, memory is freed with the arrays, and Ctrl-C
cancels a load cleanly."""

import _thread
import gc
import os
import threading
import time

import numpy as np
import pytest
from safetensors.numpy import load_file as ref_load_file

import tensorstream
import tensorstream.numpy as tsn
from conftest import rss

BIG = 256 << 20


def test_gil_is_released_while_loading(big_file):
    tsn.load_file(big_file)  # warm the page cache
    counts, stop = [0], threading.Event()

    def count():
        while not stop.is_set():
            counts[0] += 1

    t = threading.Thread(target=count)
    t.start()
    try:
        time.sleep(0.05)
        # A conversion keeps the load busy long enough to see the other thread run.
        before = counts[0]
        start = time.perf_counter()
        tsn.load_file(big_file, dtype="bf16")
        elapsed = time.perf_counter() - start
        during = counts[0] - before
    finally:
        stop.set()
        t.join()
    assert elapsed > 0.02
    # A thread that got no time while the load held the GIL would count almost nothing.
    assert during > 10_000 * elapsed, (during, elapsed)


def test_memory_is_freed_after_del(big_file):
    tsn.load_file(big_file)
    gc.collect()
    base = rss()
    tensors = tsn.load_file(big_file)
    loaded = rss()
    del tensors
    gc.collect()
    after = rss()
    # What del gave back is the tensors (other memory of the process may have been
    # given back while they loaded, so the growth itself is not compared).
    assert loaded - after > 0.9 * BIG, (base, loaded, after)
    assert after - base < 16 << 20, (base, loaded, after)


def test_memory_of_one_tensor_is_freed_with_it(big_file):
    gc.collect()
    base = rss()
    tensors = tsn.load_file(big_file)
    keep = tensors.pop("layer.3.weight")
    del tensors
    gc.collect()
    assert rss() - base < (16 << 20) + keep.nbytes
    assert keep.sum() != 0


@pytest.fixture
def sigint():
    """Python's own SIGINT handler for the test: a process started in the background
    by a shell inherits SIGINT ignored, and Python then keeps it ignored, so that
    neither a signal nor `_thread.interrupt_main` would reach the load."""
    import signal
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_keyboard_interrupt_cancels_the_load(big_file, sigint):
    tsn.load_file(big_file)
    gc.collect()
    base = rss()
    threads = len(os.listdir("/proc/self/task"))
    seen = []

    def interrupt(done, total):
        seen.append(done)
        if len(seen) == 1:
            _thread.interrupt_main()

    start = time.perf_counter()
    tsn.load_file(big_file, dtype="f16", io="pread")
    full = time.perf_counter() - start
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        tsn.load_file(big_file, dtype="f16", io="pread", progress=interrupt)
    # The interrupt came at the first progress report, well before the end, and the
    # load stopped there instead of running to its end.
    assert seen[0] < BIG
    assert time.perf_counter() - start < full / 2, (time.perf_counter() - start, full)
    # Every thread of the load has ended.
    assert len(os.listdir("/proc/self/task")) == threads
    del seen
    gc.collect()
    assert rss() - base < 32 << 20
    # The next load works and is right.
    ref = ref_load_file(big_file)
    got = tsn.load_file(big_file)
    for name in ref:
        assert got[name].tobytes() == ref[name].tobytes()


def test_keyboard_interrupt_from_a_signal(big_file, sigint):
    import signal
    main = threading.get_ident()
    timer = threading.Timer(0.03, lambda: signal.pthread_kill(main, signal.SIGINT))
    interrupted = False
    timer.start()
    try:
        for _ in range(200):  # until the signal lands in a load
            tsn.load_file(big_file, dtype="bf16")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        timer.cancel()
    assert interrupted
    assert tsn.load_file(big_file, only="layer.0.weight")["layer.0.weight"].shape == (1024, 4096)


def test_exception_in_progress_callback_cancels(big_file):
    def boom(done, total):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        tsn.load_file(big_file, progress=boom)


def test_iter_tensors_yields_before_the_end_and_bounds_memory(big_file):
    tsn.load_file(big_file)
    gc.collect()
    base = rss()
    peak, names = 0, []
    for name, arr in tensorstream.iter_tensors(big_file, framework="np", batch_bytes=32 << 20):
        names.append(name)
        assert arr.sum() != 0
        peak = max(peak, rss() - base)
        del arr
    assert len(names) == 16
    # Two 32 MiB batches in flight plus the one being yielded, far from the 256 MiB.
    assert peak < 112 << 20, peak


def test_threads_load_at_once(big_file):
    ref = ref_load_file(big_file)
    results, errors = {}, []

    def load(k):
        try:
            results[k] = tsn.load_file(big_file, only=f"layer.{k}.*")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in range(4):
        name = f"layer.{k}.weight"
        assert np.array_equal(results[k][name], ref[name])


@pytest.mark.parametrize("ahead", [1, 2])
def test_iterate_loads_at_most_ahead_batches_ahead(ahead):
    from tensorstream import _common
    calls = []

    def load(batch):
        calls.append([s[0] for s in batch])
        return [(s[0], s) for s in batch]

    specs = [(f"t{i}", "U8", "U8", [10], 10) for i in range(9)] + [("big", "U8", "U8", [50], 50)]
    seen = []
    for k, (name, _) in enumerate(_common.iterate(load, specs, 20, ahead)):
        seen.append(name)
        # While tensor k is yielded, its batch and at most `ahead` more were asked for.
        assert len(calls) <= k // 2 + 1 + ahead
    assert seen == [s[0] for s in specs]
    want = [["t0", "t1"], ["t2", "t3"], ["t4", "t5"], ["t6", "t7"], ["t8"], ["big"]]
    # Batches loading at once may start in either order.
    assert sorted(calls) == sorted(want) and (ahead > 1 or calls == want)
