"""Issue 5, actors (CONTRACT.md "Worker state and actors"; README "Stateful
workers and actors (seed 004)").

``pool.actor(cls, *args, **kwargs)`` builds one object in a dedicated worker
process: calls run there in call order, state persists, ``.submit`` returns
a real ``concurrent.futures.Future`` that is also awaitable. A crash fails
the pending and later calls with ``WorkerCrashedError`` unless
``restart=True`` (rebuilt from the same arguments, with a RuntimeWarning);
the pool's ``task_timeout`` applies per call; an actor never takes a slot
of the pool. Real processes, real ``os._exit``, no mocks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import time

import psutil
import pytest

import actor_helpers as h
from sharkcage import (
    Pool,
    SharkcageError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerInitError,
)

pytestmark = pytest.mark.timeout(60)

GET = 30  # seconds: a wait longer than this is a hang


def test_calls_run_in_call_order():
    with Pool(1) as pool:
        box = pool.actor(h.Box)
        futures = [box.append.submit(i) for i in range(200)]
        # each call saw the list as the calls before it left it
        assert [f.result(GET) for f in futures] == list(range(1, 201))
        assert box.get() == list(range(200))


def test_constructor_arguments_and_direct_calls():
    with Pool(1) as pool:
        box = pool.actor(h.Box, "a", "b", tag="t1")
        assert box.get() == ["a", "b"]
        assert box.get_tag() == "t1"
        assert box.append("c") == 3
        assert box.get() == ["a", "b", "c"]
        # the actor lives in a process of its own, not in the caller's
        actor_pid = box.get_pid()
        assert actor_pid != os.getpid()
        assert actor_pid != pool.apply(h.getpid)


def test_submit_returns_a_real_future_for_as_completed_and_await():
    with Pool(1) as pool:
        box = pool.actor(h.Box)
        futures = [box.append.submit(i) for i in range(10)]
        assert all(isinstance(f, concurrent.futures.Future) for f in futures)
        done = sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=GET))
        assert done == list(range(1, 11))
        finished, not_done = concurrent.futures.wait([box.get.submit()], timeout=GET)
        assert not not_done and next(iter(finished)).result() == list(range(10))

        async def main():
            one = await box.append.submit("x")
            both = await asyncio.gather(box.append.submit("y"), box.get.submit())
            return one, both

        one, both = asyncio.run(main())
        assert one == 11
        assert both == [12, list(range(10)) + ["x", "y"]]


def _seed_004_on_the_stdlib_pool(args):
    """Seed 004 as it ran: the stdlib pool (default start method, fork) over a
    bound method. Run before any sharkcage pool of the test, so no other thread
    runs while it forks; its pipes are closed here, whatever happens later."""
    my_obj = h.MyCls()
    std = multiprocessing.Pool(1)
    try:
        results = list(std.imap(my_obj.add, args))
        std.close()
        std.join()
    finally:
        std.terminate()
        std.join()
        std._inqueue.close()
        std._outqueue.close()
    return results, my_obj.count


def test_seed_004_actor_keeps_its_count_where_the_stdlib_pool_loses_it(capfd):
    args = [(1, 1), (2, 2), (3, 3)]
    # the stdlib: each task runs on a fresh copy; the parent's count stays 0
    assert _seed_004_on_the_stdlib_pool(args) == ([2, 4, 6], 0)
    assert capfd.readouterr().out.split("\n").count("count add to 1") == 3
    # sharkcage: one object in its own process, calls in order
    with Pool(1) as pool:
        counter = pool.actor(h.MyClsReadable)
        assert [counter.add(x) for x in args] == [2, 4, 6]
        assert counter.get_count() == 3
        assert counter.add.submit((4, 4)).result(GET) == 8
        assert counter.get_count() == 4
        # seed 004's class verbatim: its own prints show the count going up
        capfd.readouterr()
        plain = pool.actor(h.MyCls)
        assert [plain.add(x) for x in args] == [2, 4, 6]
        out = capfd.readouterr().out
    assert "count add to 1\ncount add to 2\ncount add to 3\n" in out, out


def test_state_is_per_actor():
    with Pool(1) as pool:
        a = pool.actor(h.Box, tag="a")
        b = pool.actor(h.Box, tag="b")
        a.append(1)
        a.append(2)
        b.append(3)
        assert a.get() == [1, 2] and b.get() == [3]
        assert a.get_pid() != b.get_pid()


def test_method_exception_comes_back_and_the_actor_lives_on():
    with Pool(1) as pool:
        box = pool.actor(h.Box)
        box.append(1)
        with pytest.raises(KeyError, match="actor method marker 41c2"):
            box.boom()
        fut = box.boom.submit()
        with pytest.raises(KeyError):
            fut.result(GET)
        assert box.get() == [1]


def test_unknown_method_is_an_attribute_error_in_the_parent():
    with Pool(1) as pool:
        box = pool.actor(h.Box)
        with pytest.raises(AttributeError, match="no_such_method"):
            box.no_such_method
        with pytest.raises(AttributeError):
            box.no_such_method.submit(1)
        assert box.append(1) == 1  # the actor is fine


def test_close_finishes_pending_calls_then_stops_the_process():
    with Pool(1) as pool:
        box = pool.actor(h.Box)
        pid = box.get_pid()
        proc = psutil.Process(pid)
        futures = [box.slow.submit(0.05) for _ in range(5)] + [box.append.submit("last")]
        box.close()
        assert [f.result(GET) for f in futures] == [0.05] * 5 + [1]
        proc.wait(GET)  # the actor's process is gone
        with pytest.raises(SharkcageError):
            box.append(1)
        # the pool is unaffected
        assert pool.apply(h.square, (7,)) == 49


def test_crash_fails_the_pending_calls_and_later_calls():
    with Pool(1) as pool:
        box = pool.actor(h.Box)
        box.append(1)
        pid = box.get_pid()
        f_die = box.die.submit()
        f2 = box.append.submit(2)
        f3 = box.append.submit(3)
        for f in (f_die, f2, f3):
            with pytest.raises(WorkerCrashedError):
                f.result(GET)
        assert f_die.exception().pid == pid
        with pytest.raises(WorkerCrashedError):
            box.append(4)
        with pytest.raises(WorkerCrashedError):
            box.get.submit().result(GET)
        # the pool itself keeps working
        assert pool.map(h.square, range(4)) == [0, 1, 4, 9]


def test_restart_rebuilds_from_the_same_arguments_with_a_warning():
    with Pool(1) as pool:
        box = pool.actor(h.Box, "seed", tag="r", restart=True)
        box.append("x")
        assert box.get() == ["seed", "x"]
        pid1 = box.get_pid()
        with pytest.warns(RuntimeWarning, match="rebuilt"):
            with pytest.raises(WorkerCrashedError):
                box.die()
            # the next call runs on the rebuilt object: fresh state, same arguments
            assert box.get() == ["seed"]
        assert box.get_tag() == "r"
        pid2 = box.get_pid()
        assert pid2 != pid1
        assert box.append("y") == 2
        assert box.get() == ["seed", "y"]


def test_actor_call_under_task_timeout_then_later_calls_fail():
    with Pool(1, task_timeout=1) as pool:
        box = pool.actor(h.Box)
        assert box.append(1) == 1
        t0 = time.monotonic()
        with pytest.raises(TaskTimeoutError):
            box.slow(30)
        assert time.monotonic() - t0 < 15, "the timeout must stop the call, not wait it out"
        with pytest.raises(WorkerCrashedError):
            box.append(2)
        assert pool.apply(h.square, (3,)) == 9


def test_actor_timeout_with_restart_gives_a_fresh_actor():
    with Pool(1, task_timeout=1) as pool:
        box = pool.actor(h.Box, tag="t", restart=True)
        box.append(1)
        with pytest.warns(RuntimeWarning):
            with pytest.raises(TaskTimeoutError):
                box.slow(30)
            assert box.get() == []
        assert box.append(2) == 1


def test_an_actor_does_not_take_a_slot_of_the_pool(tmp_path):
    marker = tmp_path / "running"
    with Pool(1) as pool:
        box = pool.actor(h.Box)
        busy = box.slow_marked.submit(20, str(marker))
        deadline = time.monotonic() + GET
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "the actor's call never started"
        # the pool's single worker is free: apply runs while the actor is busy
        assert pool.apply(h.square, (5,)) == 25
        assert pool.map(h.square, range(3)) == [0, 1, 4]
        assert not busy.done(), "apply must not have waited for the actor's call"


def test_constructor_that_raises_is_a_worker_init_error_after_one_attempt(tmp_path):
    log = str(tmp_path / "ctor.log")
    with Pool(1) as pool:
        broken = pool.actor(h.BrokenCtor, log)
        with pytest.raises(WorkerInitError) as ei:
            broken.ping()
        assert "constructor marker 9d0e" in ei.value.init_traceback
        assert "ValueError" in ei.value.init_traceback
        with pytest.raises(WorkerInitError):
            broken.ping.submit().result(GET)
        time.sleep(1.0)  # a retry loop would construct again meanwhile
        assert len(h.lines(log)) == 1, f"constructed {len(h.lines(log))} times, expected exactly once"
        assert pool.apply(h.square, (2,)) == 4


def test_pool_terminate_stops_its_actors():
    pool = Pool(1)
    try:
        box = pool.actor(h.Box)
        proc = psutil.Process(box.get_pid())
        fut = box.slow.submit(30)
    finally:
        pool.terminate()
        pool.join()
    proc.wait(GET)
    with pytest.raises(SharkcageError):
        fut.result(GET)


def test_pool_close_and_join_finish_actor_calls():
    pool = Pool(1)
    try:
        box = pool.actor(h.Box)
        futures = [box.append.submit(i) for i in range(5)]
        proc = psutil.Process(box.get_pid())
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    assert [f.result(GET) for f in futures] == [1, 2, 3, 4, 5]
    proc.wait(GET)


def test_async_method_runs_on_the_actors_own_loop():
    """An ``async def`` method is awaited in the actor's process; its state persists."""
    with Pool(1) as pool:
        counter = pool.actor(h.AsyncCounter)
        assert counter.add(2) == 2
        assert counter.add.submit(3).result(timeout=30) == 5

        async def main():
            return await counter.add.submit(5)

        assert asyncio.run(main()) == 10
