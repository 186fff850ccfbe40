"""The engine's fast paths for single calls.

The direct path: a task submitted while the pool is idle is sent by the
caller's own thread, and the thread that waits for it reads the worker's
reply itself (src/sharkcage/_engine/supervisor.py, module doc). Each test
first checks that the task really took the direct path, then that every way
out a task has (a crash, a deadline, a get() timeout, terminate, logging,
many threads at once) behaves as on the loop's path.

Inline arguments: a call's plain ``(args, kwargs)`` travels unpickled to the
message that carries it (batching.single), next to calls whose arguments
were pickled.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import threading
import time

import pytest

from fractions import Fraction

from sharkcage import Pool, ProcessPoolExecutor, SerializationError, SharkcageError, TaskTimeoutError
from sharkcage import WorkerCrashedError
from sharkcage._engine import batching

from sharks import helpers

pytestmark = pytest.mark.timeout(60)


def _warm(pool: Pool) -> None:
    """Every worker started and idle, so the next task can go direct."""
    pool.map(helpers.square, range(8), chunksize=1)
    deadline = time.monotonic() + 10
    sup = pool._backend
    while time.monotonic() < deadline:
        if len(sup.workers) == pool._processes and all(w.state == "ready" for w in sup.workers.values()):
            return
        time.sleep(0.01)
    raise AssertionError("the workers never became ready")


def _direct(pool: Pool, func, args=()):
    r = pool.apply_async(func, args)
    assert r.direct is not None, "the task did not take the direct path"
    return r


def test_an_idle_pool_sends_and_reads_in_the_callers_thread():
    with Pool(2) as pool:
        _warm(pool)
        sup = pool._backend
        direct = 0
        for i in range(50):
            r = pool.apply_async(helpers.square, (i,))
            direct += r.direct is not None
            assert r.get(10) == i * i
            # the lease ended: the loop watches the worker again
            assert all(w.lease is None for w in sup.workers.values())
        assert direct >= 45, f"only {direct} of 50 tasks on an idle pool took the direct path"
        assert pool.stats().tasks_done >= 50


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_a_reply_the_loop_saw_first_is_left_to_the_lease_holder():
    # On one CPU a worker often answers before its caller has leased the
    # channel, so the loop's poller reports the reply although the lease has
    # begun since. The loop must leave it to the lease holder: taking the
    # channel back handed the reply to the loop thread and the caller waited
    # for a thread hand-off (a round trip of ~1 ms instead of ~80 µs).
    main = threading.get_ident()
    with Pool(1) as pool:
        _warm(pool)
        sup = pool._backend
        taken_back = []
        end_lease = sup._end_lease

        def counting(w):
            if threading.get_ident() != main:
                taken_back.append(w.pid)
            return end_lease(w)

        sup._end_lease = counting
        tids = [int(t) for t in os.listdir("/proc/self/task")]
        saved = {tid: os.sched_getaffinity(tid) for tid in tids + [w.pid for w in sup.workers.values()]}
        one = {min(os.sched_getaffinity(0))}
        try:
            for tid in saved:
                os.sched_setaffinity(tid, one)
            for i in range(300):
                assert _direct(pool, helpers.square, (i,)).get(10) == i * i
        finally:
            for tid, cpus in saved.items():
                try:
                    os.sched_setaffinity(tid, cpus)
                except OSError:
                    pass  # a thread that has ended
        # the worker neither died nor had a write waiting: no reason to take any lease back
        assert taken_back == []


def test_work_held_back_during_a_lease_is_dispatched_when_the_lease_ends():
    # While a caller thread leases the only worker, the loop holds new tasks
    # back. The holder that reads the last reply must wake the loop, or those
    # tasks wait forever (found as a hang of actor futures after sync calls).
    with Pool(1) as pool:
        _warm(pool)
        for _ in range(3):
            first = _direct(pool, helpers.sleep_return, (0.15, "first"))
            waiter = threading.Thread(target=first.get, args=(10,))
            waiter.start()
            time.sleep(0.05)  # the waiter now holds the lease
            later = [pool.apply_async(helpers.square, (i,)) for i in range(3)]
            waiter.join(10)
            assert first.get(0) == "first"
            assert [r.get(5) for r in later] == [0, 1, 4]


def test_close_then_join_while_a_leased_waiter_reads_the_last_reply():
    with Pool(1) as pool:
        _warm(pool)
        r = _direct(pool, helpers.sleep_return, (0.1, "last"))
        pool.close()
        assert r.get(10) == "last"  # read by this thread, under a lease
        done = threading.Event()
        threading.Thread(target=lambda: (pool.join(), done.set()), daemon=True).start()
        assert done.wait(10), "join() never returned: the loop did not see the pool finish"


def test_a_crash_during_a_leased_wait_fails_only_that_task_and_the_pool_goes_on(tmp_path):
    with Pool(1) as pool:
        _warm(pool)
        old = pool.apply(helpers.getpid)
        r = _direct(pool, helpers.crash, ("os_exit",))
        with pytest.raises(WorkerCrashedError):
            r.get(10)
        assert pool.apply(helpers.square, (7,)) == 49
        assert pool.apply(helpers.getpid) != old


def test_task_timeout_is_kept_for_a_direct_task():
    with Pool(1, task_timeout=0.5) as pool:
        _warm(pool)
        t0 = time.monotonic()
        r = _direct(pool, helpers.sleep_return, (20,))
        with pytest.raises(TaskTimeoutError):
            r.get(15)
        assert time.monotonic() - t0 < 3
        assert pool.apply(helpers.square, (3,)) == 9


def test_get_timeout_shorter_than_the_task_then_the_result_later():
    with Pool(1) as pool:
        _warm(pool)
        r = _direct(pool, helpers.sleep_return, (0.8, "late"))
        t0 = time.monotonic()
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(0.1)
        assert time.monotonic() - t0 < 0.6
        assert r.get(10) == "late"


def test_a_long_direct_task_is_handed_back_to_the_loop_and_still_delivered():
    # Longer than a lease slice: the caller hands the worker back and waits
    # as usual; the loop reads the reply.
    with Pool(1) as pool:
        _warm(pool)
        r = _direct(pool, helpers.sleep_return, (0.6, "done"))
        assert r.get(10) == "done"
        assert all(w.lease is None for w in pool._backend.workers.values())


def test_terminate_releases_a_thread_reading_a_leased_worker():
    pool = Pool(1)
    try:
        _warm(pool)
        r = _direct(pool, helpers.sleep_return, (30,))
        outcome = []

        def waiter():
            try:
                r.get()
            except BaseException as e:  # noqa: BLE001
                outcome.append(e)

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.3)
        pool.terminate()
        t.join(5)
        assert not t.is_alive(), "a get() on a leased worker still hangs after terminate()"
        assert len(outcome) == 1 and isinstance(outcome[0], SharkcageError)
    finally:
        pool.terminate()
        pool.join()


def test_log_records_of_a_direct_task_reach_the_parent(caplog):
    with Pool(1) as pool:
        _warm(pool)
        with caplog.at_level(logging.WARNING):
            r = _direct(pool, helpers.log_then_return, (5,))
            assert r.get(10) == 5
        assert any("5" in rec.getMessage() and rec.levelno == logging.WARNING for rec in caplog.records)


def test_many_threads_calling_apply_at_once_get_their_own_results():
    with Pool(2) as pool:
        _warm(pool)
        errors, results = [], {}

        def caller(k):
            try:
                results[k] = [pool.apply(helpers.square, (k * 1000 + i,)) for i in range(300)]
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(50)
        assert not any(t.is_alive() for t in threads), "a caller thread hangs"
        assert not errors
        for k in range(4):
            assert results[k] == [(k * 1000 + i) ** 2 for i in range(300)]
        assert all(w.lease is None for w in pool._backend.workers.values())


def test_executor_future_result_reads_the_reply_itself():
    with ProcessPoolExecutor(1) as ex:
        ex.submit(helpers.square, 2).result(10)
        sup = ex._backend
        deadline = time.monotonic() + 10
        while not all(w.state == "ready" and not w.assigned for w in sup.workers.values()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        f = ex.submit(helpers.square, 9)
        assert f._sharkcage_job.direct is not None
        assert f.result(10) == 81
        f = ex.submit(helpers.sleep_return, 5)
        with pytest.raises(concurrent.futures.TimeoutError):
            f.result(0.1)
        assert f.cancel() is False  # running: the stdlib refuses too
        g = ex.submit(helpers.square, 3)
        assert g._sharkcage_job.direct is None  # busy pool: the loop's path
        assert g.result(10) == 9


def test_busy_pool_keeps_the_loops_order():
    # Work already queued: a new task must not overtake it.
    with Pool(1) as pool:
        _warm(pool)
        first = pool.apply_async(helpers.sleep_return, (0.3, "first"))
        queued = [pool.apply_async(helpers.square, (i,)) for i in range(5)]
        assert all(r.direct is None for r in queued)
        assert first.get(10) == "first"
        assert [r.get(10) for r in queued] == [i * i for i in range(5)]
        assert os.getpid() != pool.apply(helpers.getpid)


def _echo(*args, **kwargs):
    return args, kwargs


def test_plain_arguments_travel_inline_and_others_are_pickled_at_the_call():
    with Pool(1) as pool:
        arena = pool._backend.arena
        r = pool.apply_async(helpers.square, (3,))
        plain = batching.single(r, 1, batching.CALL, ((1, "a", b"b", None, 2.5), {"k": 1}), arena, True)
        assert plain.payload[0] == ((1, "a", b"b", None, 2.5), {"k": 1})  # the item itself
        other = batching.single(r, 1, batching.CALL, ((Fraction(1, 3),), {}), arena, True)
        assert isinstance(other.payload[0], bytes)  # not plain data: pickled now
        with pytest.raises(SerializationError):
            pool.apply_async(helpers.square, ((x for x in ()),))  # a generator cannot be pickled
        assert r.get(10) == 9


def test_a_burst_of_inline_and_pickled_calls_gets_every_result_in_place():
    calls = []
    for i in range(3000):
        if i % 7 == 0:
            calls.append(((Fraction(i, 7),), {}))  # pickled at the call
        elif i % 5 == 0:
            calls.append((("s" * (i % 50), b"x" * 3, (i, None)), {"key": i, "flag": True}))
        else:
            calls.append(((i,), {}))
    with Pool(2) as pool:
        _warm(pool)
        results = [pool.apply_async(_echo, a, k) for a, k in calls]
        assert [r.get(30) for r in results] == [(tuple(a), k) for a, k in calls]


def test_a_crash_in_a_batch_of_inline_calls_fails_only_its_own_task():
    with Pool(2) as pool:
        _warm(pool)
        results = [pool.apply_async(helpers.crash_at, (i, 50)) for i in range(200)]
        outcomes = []
        for r in results:
            try:
                outcomes.append(r.get(30))
            except WorkerCrashedError:
                outcomes.append("crashed")
        assert outcomes == ["crashed" if i == 50 else i * i for i in range(200)]


def test_a_done_callback_that_submits_never_waits_for_the_lock_its_thread_holds(monkeypatch):
    # Future done-callbacks run where the outcome is delivered: in the loop's
    # thread or in a lease holder's, both holding the loop's lock. A submit
    # from there must not wait for that lock (here it would wait 10 s a link).
    from sharkcage._engine import supervisor

    monkeypatch.setattr(supervisor, "_LEASE_LOCK_WAIT", 10.0)
    with ProcessPoolExecutor(1) as ex:
        ex.submit(helpers.square, 1).result(10)
        done = threading.Event()
        seen = []

        def chain(f):
            seen.append(f.result())
            if len(seen) < 5:
                ex.submit(helpers.square, len(seen) + 1).add_done_callback(chain)
            else:
                done.set()

        t0 = time.monotonic()
        ex.submit(helpers.square, 1).add_done_callback(chain)
        assert done.wait(30), f"the chain stalled after {seen}"
        assert seen == [1, 4, 9, 16, 25]
        assert time.monotonic() - t0 < 9, "a link waited for the lock its own thread held"
