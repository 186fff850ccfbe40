"""Shared data: SharedArray (+ its lock) and shares, across real processes.

CONTRACT.md, "Shared data": a SharedArray is writable shared memory seen by
the parent and every worker, with a process-safe lock (seed 002's counter:
two processes adding 100 each under the lock give 200); ``pool.share``'s
machinery places an object in shared memory once and each process rebuilds
it at most once.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import shm_helpers as sh
from sharkcage._engine import shm
from sharkcage.shared import SharedArray, ShareHandle, forget, make_share, resolve

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not shm.available(), reason="needs a tmpfs at /dev/shm"),
]

CTX = multiprocessing.get_context("forkserver")


@pytest.fixture(scope="module", autouse=True)
def forkserver_like_the_pool():
    shm._ensure_tracker()
    from sharkcage._engine import start

    start.ensure_forkserver(CTX)


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(shm.SHM_DIR, name))


def run(target, *args, ctx=CTX, timeout=30):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"{target.__name__} did not finish in {timeout} s")
    assert p.exitcode == 0, f"{target.__name__} exited with {p.exitcode}"


def in_child(target, *args, ctx=CTX):
    """Run ``target(conn, *args)`` in a child; what it sent, in order."""
    parent, child = ctx.Pipe()
    p = ctx.Process(target=target, args=(child, *args))
    p.start()
    child.close()
    out = []
    try:
        while True:
            if not parent.poll(30):
                break
            try:
                out.append(parent.recv())
            except EOFError:
                break
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()
        parent.close()
    return out


# -- SharedArray -----------------------------------------------------------------


def test_seed_002_counter_is_200_with_the_lock():
    with SharedArray(1, np.int64) as counter:
        procs = [CTX.Process(target=sh.add_100, args=(counter, 0.0002)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        assert counter[0] == 200


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_counter_with_other_start_methods(method):
    ctx = multiprocessing.get_context(method)
    with SharedArray(1, np.int64) as counter:
        procs = [ctx.Process(target=sh.add_100, args=(counter,)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        assert counter[0] == 200


def test_pickles_as_a_handle_never_as_data():
    with SharedArray((1000, 1000)) as a:
        assert len(pickle.dumps(a)) < 500
        assert len(pickle.dumps(a[10:20, ::3])) < 500
        assert len(pickle.dumps(a.lock)) < 200


def test_writes_in_a_worker_reach_the_parent_and_back():
    with SharedArray((4, 6), np.float32) as a:
        run(sh.fill, a, 3.0)
        assert (a == 3.0).all()
        run(sh.fill, a[1:3, ::2], -1.0)  # a strided view: only those cells
        expected = np.full((4, 6), 3.0, np.float32)
        expected[1:3, ::2] = -1.0
        assert np.array_equal(a, expected)
        run(sh.fill, a[::-1, -1], 9.0)  # negative strides
        expected[:, -1] = 9.0
        assert np.array_equal(a, expected)
        a[0, 0] = 123.0  # parent -> child
        (seen, writable), = in_child(sh.report, a)
        assert np.array_equal(seen, a) and writable


def test_fortran_order_and_structured_dtypes():
    dt = np.dtype([("id", "i8"), ("score", "f4")])
    with SharedArray((3, 4), dt, order="F") as a:
        assert a.flags.f_contiguous
        run(sh.fill, a["score"], 0.5)  # a field view: itemsize != stride
        assert (a["score"] == 0.5).all() and (a["id"] == 0).all()


def test_zero_size_and_scalar_shapes():
    with SharedArray(0) as empty, SharedArray((), np.int32) as scalar:
        assert empty.shape == (0,) and pickle.loads(pickle.dumps(empty)).shape == (0,)
        scalar[()] = 5
        back = pickle.loads(pickle.dumps(scalar))
        assert back[()] == 5 and back.lock == scalar.lock


def test_computed_results_are_plain_arrays():
    with SharedArray(5) as a:
        a[:] = 1
        for result in (a + 1, a.copy(), np.sqrt(a), a * a):
            assert type(result) is np.ndarray
        total = a.sum()
        assert not isinstance(total, np.ndarray) and total == 5
        a += 1  # in place stays shared
        assert type(a).__name__ == "SharedArray" and a.shm_name is not None
        view = a[1:3]
        assert type(view).__name__ == "SharedArray" and view.lock == a.lock
        detached = a.reshape(5, 1).copy().view(type(a))
        with pytest.raises(ValueError, match="not in shared memory"):
            detached.lock
        assert type(pickle.loads(pickle.dumps(detached))) is np.ndarray  # travels as data


def test_lock_excludes_threads_of_one_process():
    with SharedArray(1, np.int64) as a:
        def work():
            for _ in range(200):
                with a.lock:
                    v = a[0]
                    time.sleep(0)
                    a[0] = v + 1

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert a[0] == 800


def test_lock_held_elsewhere_times_out_and_is_freed_when_its_holder_dies():
    with SharedArray(1) as a:
        parent, child = CTX.Pipe()
        p = CTX.Process(target=sh.hold_lock, args=(child, a))
        p.start()
        child.close()
        try:
            assert parent.recv() == "locked"
            t = time.monotonic()
            assert a.lock.acquire(timeout=0.3) is False
            assert 0.25 < time.monotonic() - t < 5
            assert a.lock.acquire(blocking=False) is False
            os.kill(p.pid, signal.SIGKILL)  # dies holding it
            p.join(10)
            assert a.lock.acquire(timeout=5) is True  # the kernel released it
            a.lock.release()
        finally:
            if p.is_alive():
                p.kill()
                p.join()
            parent.close()


def test_lock_misuse():
    with SharedArray(1) as a:
        with pytest.raises(RuntimeError):
            a.lock.release()
        with pytest.raises(ValueError):
            a.lock.acquire(False, 1.0)


def test_close_unlinks_but_attached_copies_stay_valid():
    a = SharedArray(8)
    name = a.shm_name
    parent, child = CTX.Pipe()
    p = CTX.Process(target=sh.attach_then_use, args=(child, a))
    p.start()
    child.close()
    try:
        assert parent.recv() == "attached"
        a.close()
        assert not exists(name)
        parent.send("closed")
        assert parent.recv() == 42.0  # the child wrote and read after the unlink
        assert a[0] == 42.0  # ... into the same memory
    finally:
        p.join(10)
        parent.close()
    (status, message), = in_child(sh.try_attach, pickle.dumps(a))
    assert status == "error" and "is gone" in message and "Keep the SharedArray alive" in message


def test_garbage_collection_unlinks_after_the_last_view():
    a = SharedArray(100)
    name = a.shm_name
    view = a[10:20]
    del a
    gc.collect()
    assert exists(name)
    view[:] = 1  # still fine
    del view
    gc.collect()
    assert not exists(name)


def test_context_manager_and_double_close():
    with SharedArray(3) as a:
        name = a.shm_name
        assert exists(name)
    assert not exists(name)
    a.close()
    a[0] = 1.0  # still mapped here


def test_a_child_never_unlinks_what_it_did_not_create():
    ctx = multiprocessing.get_context("fork")  # the child inherits the parent's objects
    with SharedArray(4) as a:
        run(sh.fill, a, 2.0, ctx=ctx)
        gc.collect()
        assert exists(a.shm_name) and (a == 2.0).all()


def test_refuses_object_dtype_and_negative_shapes():
    with pytest.raises(TypeError, match="Python objects"):
        SharedArray(3, object)
    with pytest.raises(ValueError):
        SharedArray((-1, 2))


def test_too_big_for_dev_shm():
    free = shm.shm_free_bytes()
    with pytest.raises(MemoryError, match="does not fit"):
        SharedArray(free // 8 + (1 << 20))


def test_importing_without_numpy():
    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "import sharkcage.shared as s\n"
        "h = s.make_share({'plain': [1, 2]})\n"
        "import pickle; assert pickle.loads(pickle.dumps(h)) == {'plain': [1, 2]}\n"
        "h.release()\n"
        "try:\n"
        "    s.SharedArray(3)\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'sharkcage[numpy]'" in out.stdout


# -- shares -------------------------------------------------------------------------


def test_share_is_resolved_once_per_process_as_read_only_views():
    obj = sh.CountsLoads({"a": np.arange(1_000_000.0), "b": np.ones((100, 100), order="F"),
                          "strided": np.arange(10_000.0)[::2]})
    with make_share(obj) as h:
        assert isinstance(h, ShareHandle)
        payload = pickle.dumps((h, 1))  # a task's arguments
        assert len(payload) < 300
        (report,) = in_child(sh.resolve_many, [payload, pickle.dumps((h, 2)), pickle.dumps((h, 3))])
        assert report["distinct_objects"] == 1
        assert report["loads_here"] == 1
        assert all(report["readonly"]) and len(report["readonly"]) == 3
        assert report["sums"] == [float(v.sum()) for v in obj.payload.values()]
        assert not any(report["owns_data"])  # views of the mapping, not copies
        assert exists(h.name)
    assert not exists(h.name)


def test_share_of_a_bare_array_and_resolve_in_the_creator():
    a = np.arange(100_000, dtype=np.int32).reshape(1000, 100)[:, ::2]  # non-contiguous
    h = make_share(a)
    try:
        r1 = h.resolve()
        r2 = pickle.loads(pickle.dumps(h))
        assert r1 is r2 and np.array_equal(r1, a) and not r1.flags.writeable
        with pytest.raises(ValueError):
            r1[0, 0] = 1
    finally:
        h.release()
        h.release()  # idempotent
    assert not exists(h.name)


def test_share_released_before_a_process_resolves_it():
    h = make_share([1, 2, 3])
    payload = pickle.dumps(h)
    h.release()
    (status, message), = in_child(sh.try_attach, payload)
    assert status == "error" and "was released" in message


def test_share_handle_collected_releases():
    h = make_share({"x": np.zeros(10)})
    name = h.name
    del h
    gc.collect()
    assert not exists(name)


def test_forget_drops_the_cached_object():
    with make_share({"k": 1}) as h:
        first = h.resolve()
        assert forget(h.name) is True
        again = resolve(h.name, h.size)
        assert again == first and again is not first


def test_share_with_a_lambda_falls_back_to_cloudpickle():
    with make_share({"f": lambda x: x * 2, "a": np.ones(5)}) as h:
        (status, kind), = in_child(sh.try_attach, pickle.dumps(h))
        assert (status, kind) == ("ok", "dict")


def test_share_prefix_names_the_segment():
    root = shm.pool_prefix()
    h = make_share(b"x" * 100, prefix=root)
    assert h.name.startswith(root)
    assert shm.sweep(root) == [h.name]
    h.release()  # already gone: fine


def test_creator_sigkilled_leaves_nothing():
    """SharedArray, share and arena segments of a SIGKILLed process are cleaned by the tracker."""
    proc, names = sh.start_doomed_sender()
    try:
        assert all(exists(n) for n in names)
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    left = sh.wait_gone(names, timeout=5)
    shm.unlink(left)
    assert not left
