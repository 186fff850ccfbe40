"""The same API on the local engine, a real Dask cluster and a real Ray cluster.

Run with ``pytest -m cluster tests/test_backends_cluster.py``. The clusters
are real: a Dask scheduler and two single-threaded workers started with the
``dask`` CLI, a Ray head started with ``ray start --head`` (2 CPUs), all on
127.0.0.1, detached from this process and killed (every process of their
sessions) when the module's tests for that backend are done. See
tests/cluster_helpers.py.

Every test takes ``backend``: ``(name, address)`` for ``Pool(backend=name,
address=address)``; ``local`` runs the same assertions on the local engine.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import logging
import subprocess
import sys
import time

import pytest

import cluster_helpers as ch
from sharkcage import (
    Pool,
    ProcessPoolExecutor,
    RemoteError,
    SerializationError,
    SharkcageError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerInitError,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

BACKENDS = ["local", "dask", "ray"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    """One backend at a time (one cluster alive at a time on a 2-core box)."""
    name = request.param
    if name == "local":
        yield name, None
        return
    pytest.importorskip("distributed" if name == "dask" else "ray")
    cluster = ch.start_dask() if name == "dask" else ch.start_ray()
    try:
        if name == "ray":
            import ray

            # One connection for the module, owned by the test (the pools must
            # not shut it down); test_ray_connection_ownership covers the other case.
            ray.init(address=cluster.address, log_to_driver=False)
        yield name, cluster.address
    finally:
        if name == "ray":
            import ray

            ray.shutdown()
        left = cluster.stop()
        assert not left, f"{name} cluster processes survived teardown: {left}"


def pool(backend, processes=2, **kw) -> Pool:
    name, address = backend
    return Pool(processes, backend=name, address=address, **kw)


def executor(backend, workers=2, **kw) -> ProcessPoolExecutor:
    name, address = backend
    return ProcessPoolExecutor(workers, backend=name, address=address, **kw)


def outcomes(it, n: int, error: type, mark, timeout: float = 60) -> list:
    """The next ``n`` results of ``it`` (an imap), each failure of type
    ``error`` as ``mark`` (a value, or a function of the error)."""
    got = []
    for _ in range(n):
        try:
            got.append(it.next(timeout))
        except error as err:
            got.append(mark(err) if callable(mark) else mark)
    return got


# ---------------------------------------------------------------------------
# the API


def test_map_imap_starmap_keep_order(backend):
    with pool(backend) as p:
        assert p.map(ch.square, range(20)) == [x * x for x in range(20)]
        assert p.map(ch.square, range(20), chunksize=3) == [x * x for x in range(20)]
        delays = [0.05 * (i % 3) for i in range(12)]
        assert list(p.imap(ch.sleep_return, delays)) == delays
        assert list(p.imap(ch.square, range(30), 4)) == [x * x for x in range(30)]
        assert sorted(p.imap_unordered(ch.square, range(30), 2)) == [x * x for x in range(30)]
        assert p.starmap(pow, [(2, 3), (3, 2), (5, 0)]) == [8, 9, 1]
        assert p.apply(ch.square, (12,)) == 144
        assert p.map(lambda x: x + 1, [1, 2]) == [2, 3]  # by value
        add = ch.make_closure(10)  # a big closure: shipped once, not inline
        assert p.map(add, range(5)) == [10, 11, 12, 13, 14]


def test_big_arrays_travel_both_ways_as_writable_copies(backend):
    np = pytest.importorskip("numpy")
    big = np.arange(2_000_000, dtype=np.float64)  # 16 MB: past the out-of-band threshold
    with pool(backend) as p:
        back = p.apply(ch.add_one, (big,))
        assert back.dtype == big.dtype and np.array_equal(back, big + 1)
        back[0] = -1  # arrives writable, like a copy
        if backend[0] != "local":  # out of band (Ray's object store, Dask's frames), not pickled in-band
            assert p.stats().shm_bytes >= big.nbytes
        chunks = [np.full(300_000, i, dtype=np.float64) for i in range(4)]  # 2.4 MB each, one pickle per item
        out = p.map(ch.add_one, chunks, chunksize=2)
        assert [float(a[0]) for a in out] == [1.0, 2.0, 3.0, 4.0]


def test_a_task_may_write_to_its_big_argument_like_to_a_copy(backend, tmp_path):
    # Ray hands both ends read-only views of its store; sharkcage lets each
    # end write in place where the memory is that end's alone (_store_views)
    np = pytest.importorskip("numpy")
    big = np.arange(2_000_000, dtype=np.float64)
    with pool(backend, retries=1) as p:
        back = p.apply(ch.add_one_in_place, (big,))
        assert back.flags.writeable and np.array_equal(back, np.arange(2_000_000) + 1)
        assert big[0] == 0 and big[-1] == 1_999_999  # the caller's array is untouched
        back += 1  # the result is the caller's to change
        assert back[0] == 2 and back[-1] == 2_000_001
        if backend[0] == "ray":  # and neither end copied: both are views of Ray's store
            assert p.apply(ch.in_object_store, (big,)) is True
            assert ch.in_object_store(back)
        again = p.apply(ch.spoil_then_crash_once, (big, str(tmp_path / "crashed")))
        assert (tmp_path / "crashed").exists()
        assert again == float(big.sum())  # the rerun got the argument as sent, not as spoiled


def test_a_big_function_is_published_once_and_runs_everywhere(backend):
    # A callable whose pickle passes the 64 KiB inline limit is placed in the
    # cluster once (Dask: scattered, Ray: ray.put) and each call carries its
    # handle, which the engine resolves only as an argument of its own (Ray
    # otherwise gets the call's arguments packed into one); with task_timeout
    # the calls stream their items, another way in.
    table = bytes(range(256)) * 1024  # 256 KiB captured: the lambda is pickled by value
    fn = lambda i: table[i % 256] + len(table)  # noqa: E731
    # (Dask refuses task_timeout: test_refused_options_say_why)
    for kw in ({},) if backend[0] == "dask" else ({}, {"task_timeout": 60}):
        with pool(backend, **kw) as p:
            assert p.map(fn, [1, 2, 300], chunksize=1) == [1 + 262144, 2 + 262144, 44 + 262144]
            assert p.apply(fn, (5,)) == 5 + 262144
        with pool(backend, initializer=ch.init_state, initargs=("s",), **kw) as p:
            assert p.map(fn, range(4), chunksize=2) == [i + 262144 for i in range(4)]


def test_share_reaches_every_task_once_placed_and_is_released_with_the_pool(backend):
    # Local: shared memory; Dask: scattered; Ray: ray.put. The handle pickles
    # small, a task receives the object, a released handle fails only the
    # task that names it.
    np = pytest.importorskip("numpy")
    import pickle

    big = np.arange(1_000_000, dtype=np.float64)  # 8 MB
    with pool(backend) as p:
        h = p.share(big)
        assert len(pickle.dumps(h)) < 300
        assert p.starmap(ch.share_sum, [(h, i) for i in range(6)], chunksize=1) == [
            float(big.sum()) + i for i in range(6)]
        assert p.starmap(ch.share_sum, [(h, i) for i in range(4)], chunksize=4) == [
            float(big.sum()) + i for i in range(4)]
        small = p.share({"w": [1, 2, 3]})
        assert p.apply(ch.share_key_sum, (small, "w")) == 6
        assert np.array_equal(h.resolve(), big) and small.resolve() == {"w": [1, 2, 3]}
        never_used = p.share({"w": [4]})
        never_used.release()
        never_used.release()  # idempotent
        with pytest.raises(Exception, match="released"):
            p.apply(ch.share_key_sum, (never_used, "w"))
        assert p.apply(ch.share_key_sum, (small, "w")) == 6  # the pool goes on
    with pytest.raises(ValueError, match="not running"):
        p.share([1])
    if backend[0] != "local":
        assert p._backend._shares == {} and h.ref is None  # the cluster's copies dropped


def test_an_actor_keeps_its_state_and_its_call_order(backend, caplog):
    # Local: a process of its own; Dask: a Dask actor; Ray: a Ray actor.
    import os

    with pool(backend) as p:
        counter = p.actor(ch.Counter, 10)
        assert [counter.add(1) for _ in range(3)] == [11, 12, 13]
        futures = [counter.add.submit(2) for _ in range(5)]
        assert [f.result(60) for f in futures] == [15, 17, 19, 21, 23]
        with pytest.raises(ValueError, match="bad"):  # the method's own error, for that call only
            counter.fail("bad")
        with pytest.raises(SerializationError):
            counter.generator()
        with caplog.at_level(logging.WARNING, logger="sharkcage.test.actor"):
            assert counter.log("from the actor") == "from the actor"
        assert "from the actor" in caplog.text
        assert counter.add(0) == 23
        assert counter.pid() != os.getpid()
        counter.close()
        with pytest.raises(SharkcageError, match="closed"):
            counter.add(1)
        broken = p.actor(ch.Counter, fail=True)
        with pytest.raises(WorkerInitError, match="the constructor refused"):
            broken.add(1)
        broken.close()


def test_a_killed_actor_fails_its_calls_or_is_rebuilt_with_restart(backend):
    import os
    import signal
    import warnings

    with pool(backend) as p:
        counter = p.actor(ch.Counter)
        counter.add(5)
        os.kill(counter.pid(), signal.SIGKILL)
        with pytest.raises(WorkerCrashedError):
            counter.add(1)
        if backend[0] == "dask":
            with pytest.raises(ValueError, match="cannot rebuild an actor"):
                p.actor(ch.Counter, restart=True)
            return
        again = p.actor(ch.Counter, restart=True)
        again.add(5)
        os.kill(again.pid(), signal.SIGKILL)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            deadline = time.monotonic() + 60
            while True:  # the call in flight at the death may fail; then the rebuilt one answers
                try:
                    value = again.add(1)
                    break
                except WorkerCrashedError:
                    assert time.monotonic() < deadline
        assert value == 1  # rebuilt from the same arguments: its state starts afresh
        assert any(issubclass(w.category, RuntimeWarning) and "rebuilt" in str(w.message) for w in caught)


def test_terminate_fails_an_actors_outstanding_calls_at_once(backend):
    # Dask cannot stop the running call (it finishes on its worker): its
    # future fails at once all the same, as do the calls queued behind it.
    p = pool(backend)
    counter = p.actor(ch.Counter)
    assert counter.add(1) == 1
    running = counter.sleep.submit(20)
    queued = counter.add.submit(1)
    time.sleep(0.5)
    p.terminate()
    for future in (running, queued):
        with pytest.raises(SharkcageError, match="terminated"):
            future.result(10)
    with pytest.raises(SharkcageError, match="closed"):
        counter.add(1)


def test_an_actor_call_past_task_timeout_fails_alone(backend):
    if backend[0] == "dask":  # Dask cannot stop a running call: the pool refuses the option
        with pytest.raises(ValueError, match="task_timeout"):
            pool(backend, task_timeout=2)
        return
    with pool(backend, task_timeout=2) as p:
        counter = p.actor(ch.Counter, restart=True)
        assert counter.add(1) == 1
        with pytest.warns(RuntimeWarning, match="rebuilt"):
            with pytest.raises(TaskTimeoutError):
                counter.sleep(30)
            deadline = time.monotonic() + 60
            while True:
                try:
                    assert counter.add(1) == 1  # rebuilt after the kill: its state starts afresh
                    break
                except WorkerCrashedError:
                    assert time.monotonic() < deadline


def test_an_actors_construction_is_not_counted_in_its_first_calls_timeout(backend):
    """task_timeout is per call: an actor whose constructor takes longer than
    it still serves its first call (the clock starts once it is built)."""
    if backend[0] == "dask":  # refuses task_timeout (above)
        return
    with pool(backend, task_timeout=1.5) as p:
        counter = p.actor(ch.SlowCounter, 3)
        assert counter.add(2) == 2
        assert counter.add(1) == 3


def test_apply_async_and_map_async_callbacks(backend):
    got, errors = [], []
    with pool(backend) as p:
        r1 = p.apply_async(ch.square, (4,), callback=got.append)
        r2 = p.apply_async(ch.raise_value_error, ("boom",), error_callback=errors.append)
        r3 = p.map_async(ch.square, range(5), callback=got.append)
        assert r1.get(60) == 16
        with pytest.raises(ValueError, match="boom"):
            r2.get(60)
        assert r3.get(60) == [0, 1, 4, 9, 16]
        assert r1.successful() and not r2.successful()
    assert 16 in got and [0, 1, 4, 9, 16] in got
    assert len(errors) == 1 and isinstance(errors[0], ValueError)


def test_executor_submit_as_completed_and_map(backend):
    with executor(backend) as ex:
        futures = [ex.submit(ch.square, i) for i in range(10)]
        done = sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=60))
        assert done == [i * i for i in range(10)]
        assert list(ex.map(ch.square, range(7), timeout=60)) == [i * i for i in range(7)]
        bad = ex.submit(ch.raise_value_error, "from executor")
        with pytest.raises(ValueError, match="from executor"):
            bad.result(60)
        assert isinstance(futures[0], concurrent.futures.Future)


def test_imap_consumes_input_lazily(backend):
    pulled = itertools.count()

    def endless():
        for i in itertools.count():
            next(pulled)
            yield i

    with pool(backend) as p:
        it = p.imap(ch.square, endless(), 2)
        assert [next(it) for _ in range(20)] == [i * i for i in range(20)]
        time.sleep(0.5)  # let the feeder run ahead as far as it may
        assert next(pulled) < 60  # bounded: 2 chunks per worker (+ one item each) ahead of the consumer


def test_worker_logging_reaches_the_parent(backend, caplog):
    caplog.set_level(logging.INFO)
    with pool(backend) as p:  # the parent's level when the pool starts decides
        assert p.map(ch.log_and_return, range(3)) == [0, 1, 2]
    messages = [r.getMessage() for r in caplog.records if r.name == "cluster_helpers"]
    assert sorted(messages) == [f"task {i} says hello" for i in range(3)]


def test_a_task_may_create_a_pool(backend):
    with pool(backend) as p:  # guarantee 10, also inside Dask's daemonic worker processes
        assert p.apply(ch.nested_pool_sum, (5,)) == 15


def test_initializer_sets_worker_state(backend):
    with pool(backend, initializer=ch.init_state, initargs=("ready",)) as p:
        states = p.map(ch.read_state, range(4), chunksize=1)
    assert all(s["init"] == "ready" for s in states)


# ---------------------------------------------------------------------------
# errors map onto the same classes


def test_a_task_error_keeps_its_type_and_traceback(backend):
    with pool(backend) as p:
        with pytest.raises(ValueError, match="plain") as info:
            p.apply(ch.raise_value_error)
        assert "raise_value_error" in str(info.value.__cause__)  # the worker's traceback
        with pytest.raises(SystemExit) as exit_info:
            p.apply(ch.sys_exit, (3,))
        assert exit_info.value.code == 3  # Dask's tblib reducers must not eat `code`
        assert p.apply(ch.square, (3,)) == 9


def test_one_call_per_task_many_in_flight_each_outcome_its_own(backend):
    # chunksize=1: hundreds of remote calls, started in groups (Dask: one
    # client.map each) and collected in groups (one gather / one ray.get for
    # many); each outcome must still land on its own task, in order.
    n = 300
    with pool(backend) as p:
        assert p.map(ch.square, range(n), chunksize=1) == [x * x for x in range(n)]
        it = p.imap(functools.partial(ch.raise_mysql_at, bad=150), range(n), 1)
        out = outcomes(it, n, ch.MysqlStyleError, lambda err: err.errno)
        assert out == [x * x if x != 150 else 1150 for x in range(n)]
        with executor(backend) as ex:
            futures = [ex.submit(ch.square, x) for x in range(n)]
            assert [f.result(60) for f in futures] == [x * x for x in range(n)]


def test_short_calls_are_polled_and_a_crash_or_cancel_among_them_settles_alone(backend):
    # Once calls run short, the collectors poll them (Dask: future status,
    # Ray: ray.wait) instead of a callback each: a crashed call and a
    # cancelled one among them must still settle their own task, and only it.
    with pool(backend) as p:
        assert p.map(ch.square, range(200), chunksize=1) == [x * x for x in range(200)]
        if backend[0] != "local":
            assert p._backend._short_calls()  # what follows takes the polled path
        it = p.imap(functools.partial(ch.crash_at, bad=20), range(60), 1)
        got = outcomes(it, 60, WorkerCrashedError, "crash", timeout=120)
        assert got == [x * x if x != 20 else "crash" for x in range(60)]
        blocker = [p.apply_async(ch.sleep_return, (3.0, i)) for i in range(2)]
        queued = [p.apply_async(ch.square, (i,)) for i in range(6)]
        cancelled = [r for r in queued[3:] if r.cancel()]
        # (Dask's scheduler may start a queued task before the blockers, see
        # test_cancel_pending_tasks_never_kills_running_ones: not all of them)
        assert len(cancelled) == 3 or backend[0] == "dask" and cancelled
        for r in cancelled:
            with pytest.raises(concurrent.futures.CancelledError):
                r.get(30)
        assert [r.get(60) for r in blocker] == [0, 1]
        assert all(r.get(60) == i * i for i, r in enumerate(queued) if r not in cancelled)
        assert p.map(ch.square, range(50), chunksize=1) == [x * x for x in range(50)]


def test_exception_guard_leaves_tblib_to_other_threads():
    """Dask's workers pickle exceptions with tblib; sharkcage's tasks must
    not (SystemExit(3).code would arrive as None), and must not take tblib
    away from anything else running in the worker meanwhile."""
    pytest.importorskip("distributed")
    import copyreg
    import pickle
    import threading

    import distributed  # noqa: F401 - installs tblib's reducers for every exception class
    import tblib.pickling_support

    from sharkcage.backends._cluster import _exception_guard

    def reducer_module():
        return copyreg.dispatch_table[SystemExit](SystemExit(3))[0].__module__

    other = {}
    entered, checked = threading.Event(), threading.Event()

    def elsewhere():
        entered.wait(10)
        other["module"] = reducer_module()
        checked.set()

    t = threading.Thread(target=elsewhere)
    t.start()
    with _exception_guard():
        entered.set()
        assert pickle.loads(pickle.dumps(SystemExit(3))).code == 3
        assert checked.wait(10)
        # Dask registers tblib again for each exception it reports
        tblib.pickling_support.install(SystemExit)
        assert pickle.loads(pickle.dumps(SystemExit(3))).code == 3
    t.join(10)
    assert other["module"].startswith("tblib")  # another thread, at the same time: tblib's
    assert reducer_module().startswith("tblib")  # and this one, once the task is over


def test_seed_003_exception_is_a_remote_error_and_the_original_class(backend):
    with pool(backend) as p:
        with pytest.raises(ch.MysqlStyleError) as info:
            p.apply(ch.raise_mysql)
        e = info.value
        assert isinstance(e, RemoteError) and isinstance(e, SharkcageError)
        assert e.type_name == "cluster_helpers.MysqlStyleError"
        assert e.message == "2055: Lost connection to MySQL server"
        assert e.errno == 2055 and "raise_mysql" in e.remote_traceback
        it = p.imap(ch.raise_mysql_at, range(6), 2)
        out = outcomes(it, 6, RemoteError, lambda err: type(err).__mro__[1].__name__)
        assert out == [0, 1, "MysqlStyleError", 9, 16, 25]


def test_unpicklable_result_is_a_serialization_error(backend):
    with pool(backend) as p:
        with pytest.raises(SerializationError) as info:
            p.apply(ch.return_generator, (3,))
        assert info.value.direction == "result" and info.value.type_name == "generator"
        it = p.imap(ch.unpicklable_at, range(6), 3)
        got = outcomes(it, 6, SerializationError, "bad")
        assert got == [0, 1, 4, "bad", 16, 25]
        with pytest.raises(SerializationError, match="argument"):
            p.apply_async(ch.square, (threading_lock(),))


def threading_lock():
    import threading

    return threading.Lock()


def test_killed_worker_fails_only_its_task(backend):
    with pool(backend) as p:
        results = [p.apply_async(ch.crash_at, (x,)) for x in range(6)]
        out = []
        for r in results:
            try:
                out.append(r.get(100))
            except WorkerCrashedError as e:
                out.append("crash")
                assert "item" not in str(e) and "apply(crash_at)" in str(e)
        assert out == [0, 1, 4, "crash", 16, 25]
        it = p.imap(ch.crash_at, [0, 1, 2, 3, 4], 2)
        got = outcomes(it, 5, WorkerCrashedError, "crash", timeout=100)
        assert got == [0, 1, 4, "crash", 16]
        assert p.map(ch.square, range(4)) == [0, 1, 4, 9]  # the pool lives


def test_os_exit_mid_task_is_a_crash_even_with_status_0(backend):
    with executor(backend) as ex:
        bad = ex.submit(ch.crash_at, 3, 3, "os_exit")
        good = ex.submit(ch.square, 5)
        with pytest.raises(WorkerCrashedError):
            bad.result(100)
        assert good.result(100) == 25


# ---------------------------------------------------------------------------
# cancel, timeouts, lifecycle


def test_cancel_pending_tasks_never_kills_running_ones(backend):
    with pool(backend) as p:
        running = [p.apply_async(ch.sleep_return, (4.0, i)) for i in range(2)]
        time.sleep(1.5)  # both slots busy: what follows waits (in the pool, or queued on a worker)
        queued = [p.apply_async(ch.square, (i,)) for i in range(8)]
        time.sleep(0.3)
        name, _ = backend
        for k in (-1, 3):
            if queued[k].cancel():
                assert queued[k].cancelled()
                with pytest.raises(concurrent.futures.CancelledError):
                    queued[k].get(5)
            else:
                # Only Dask may already have run it: its scheduler sometimes
                # starts the long tasks late under load and runs a queued one
                # first. Then there was nothing to cancel — never a kill.
                assert name == "dask" and queued[k].ready() and queued[k].get(0) == k % 8 * (k % 8)
        assert [r.get(60) for r in running] == [0, 1]
        assert [queued[i].get(60) for i in (0, 1, 2, 4, 5, 6)] == [0, 1, 4, 16, 25, 36]


def test_cancel_running_task(backend):
    name, _ = backend
    with executor(backend) as ex:
        slow = ex.submit(ch.sleep_return, 15)
        time.sleep(3)  # surely running by now
        t0 = time.monotonic()
        assert ex.cancel(slow)
        with pytest.raises(concurrent.futures.CancelledError):
            slow.result(10)
        assert time.monotonic() - t0 < 10
        assert ex.submit(ch.square, 6).result(60) == 36
        # Dask cannot interrupt the running call (see docs/backends.md): the
        # result is cancelled at once and the call finishes in the background.


def test_task_timeout(backend):
    name, _ = backend
    if name == "dask":
        with pytest.raises(ValueError, match="task_timeout=2.*cannot be enforced with backend='dask'"):
            pool(backend, task_timeout=2)
        return
    with pool(backend, task_timeout=2) as p:
        slow = p.apply_async(ch.sleep_return, (60,))
        quick = [p.apply_async(ch.sleep_return, (0.2, i)) for i in range(3)]
        t0 = time.monotonic()
        with pytest.raises(TaskTimeoutError):
            slow.get(60)
        assert time.monotonic() - t0 < 30
        assert [r.get(60) for r in quick] == [0, 1, 2]
        # inside a chunk: only the slow item fails; the rest of its chunk reruns
        it = p.imap(ch.sleep_return, [0.1, 0.1, 30, 0.1], 4)
        got = outcomes(it, 4, TaskTimeoutError, "timeout")
        assert got == [0.1, 0.1, "timeout", 0.1]


def test_terminate_fails_outstanding_results(backend):
    p = pool(backend)
    slow = [p.apply_async(ch.sleep_return, (6,)) for _ in range(4)]
    time.sleep(1)
    t0 = time.monotonic()
    p.terminate()
    assert time.monotonic() - t0 < 10
    for r in slow:
        with pytest.raises(SharkcageError):
            r.get(10)
    with pytest.raises(ValueError):
        p.apply_async(ch.square, (1,))


def test_close_and_join_finish_the_work(backend):
    p = pool(backend)
    r = p.map_async(ch.sleep_return, [0.1] * 6)
    p.close()
    p.join()
    assert r.get(1) == [0.1] * 6


# ---------------------------------------------------------------------------
# cluster-only: options, connections, imports


def test_refused_options_say_why(backend):
    name, address = backend
    if name == "local":
        return
    for option in ({"finalizer": print}, {"maxtasksperchild": 3}, {"max_memory_per_worker": 10**9},
                   {"start_method": "spawn"}, {"warn_after": 5}):
        with pytest.raises(ValueError, match=f"backend={name!r}"):
            Pool(2, backend=name, address=address, **option)


def test_dask_client_passed_in_is_never_closed(backend):
    name, address = backend
    if name != "dask":
        return
    from distributed import Client

    client = Client(address, set_as_default=False)
    try:
        with Pool(backend="dask", address=client) as p:
            assert p.map(ch.square, range(3)) == [0, 1, 4]
            assert p._processes == 2  # read from the cluster
        assert client.status == "running"
        assert client.submit(ch.square, 9).result(60) == 81
    finally:
        client.close()


def test_ray_connection_ownership(backend):
    name, address = backend
    if name != "ray":
        return
    import ray

    # The module's connection belongs to the test: a pool leaves it alone.
    with Pool(backend="ray", address=address) as p:
        assert p.map(ch.square, range(3)) == [0, 1, 4]
    assert ray.is_initialized()
    # Without one, the pool opens it and its last user shuts it down.
    ray.shutdown()
    try:
        p1 = Pool(backend="ray", address=address)
        p2 = Pool(backend="ray", address=address)
        assert p1.map(ch.square, [2]) == [4]
        p1.close()
        p1.join()
        assert ray.is_initialized()  # p2 still uses it
        assert p2.map(ch.square, [3]) == [9]
        p2.terminate()
        assert not ray.is_initialized()
    finally:
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)


def test_cluster_backends_offer_what_the_local_engine_offers(backend):
    """The facades talk to every backend the same way: whatever public name
    the local engine grows, the cluster backends must have too."""
    name, _ = backend
    if name == "local":
        return
    from sharkcage._engine.supervisor import Supervisor
    from sharkcage.backends._cluster import ClusterBackend

    local_only = {"pending", "inflight", "workers", "selector", "state", "broken", "crashes", "restarts"}
    wanted = {n for n in dir(Supervisor) if not n.startswith("_")} - local_only
    assert wanted <= set(dir(ClusterBackend)), sorted(wanted - set(dir(ClusterBackend)))


def test_importing_sharkcage_imports_no_cluster_engine(backend):
    name, _ = backend
    if name != "local":
        return
    code = ("import sys, sharkcage, sharkcage.backends;"
            "bad = [m for m in ('dask', 'distributed', 'ray') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=ch.cluster_env())


def test_missing_extra_names_the_pip_install(backend, monkeypatch):
    name, _ = backend
    if name == "local":
        return
    module = "distributed" if name == "dask" else "ray"
    monkeypatch.setitem(sys.modules, module, None)  # "import distributed" now raises ImportError
    with pytest.raises(ImportError, match=rf"pip install 'sharkcage\[{name}\]'"):
        Pool(backend=name, address="127.0.0.1:1")
