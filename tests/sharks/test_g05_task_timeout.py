"""Guarantee 5: task_timeout is enforced by killing the worker; others keep running."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time

import pytest

from sharkcage import Pool, ProcessPoolExecutor, SharkcageError, TaskTimeoutError

from . import helpers

pytestmark = pytest.mark.timeout(30)


def _started_pid(directory, value):
    names = helpers.wait_for_files(directory, "started-", 1, 0)
    for n in names:
        if n.endswith(f"-{value}"):
            return int(n.split("-")[1])
    return None


def test_apply_timeout_kills_only_that_worker(tmp_path):
    d = str(tmp_path)
    with Pool(2, task_timeout=0.6) as pool:
        t0 = time.monotonic()
        slow = pool.apply_async(helpers.touch_and_sleep, (d, 20, "slow"))
        fast = [pool.apply_async(helpers.sleep_return, (0.1, i)) for i in range(1, 9)]
        with pytest.raises(TaskTimeoutError) as info:
            slow.get(15)
        elapsed = time.monotonic() - t0
        e = info.value
        assert isinstance(e, TimeoutError) and isinstance(e, SharkcageError)
        assert 0.55 <= elapsed < 4, elapsed
        pid = _started_pid(d, "slow")
        assert pid is not None and e.pid == pid
        assert not helpers.wait_gone([pid], 2), "the timed-out worker was not killed"
        assert "touch_and_sleep" in str(e)
        assert [f.get(15) for f in fast] == list(range(1, 9))
        assert pool.map(helpers.square, range(8)) == [x * x for x in range(8)]


def test_imap_timeout_only_the_slow_item_others_succeed():
    delays = [0.05, 0.05, 10, 0.05, 0.05, 0.05, 0.05, 0.05]
    with Pool(2, task_timeout=0.6) as pool:
        t0 = time.monotonic()
        it = pool.imap(helpers.sleep_return, delays)
        out = []
        for _ in delays:
            try:
                out.append(it.next(15))
            except TaskTimeoutError as e:
                out.append(e)
        assert time.monotonic() - t0 < 5
        assert isinstance(out[2], TaskTimeoutError)
        assert out[:2] + out[3:] == delays[:2] + delays[3:]


def test_map_raises_task_timeout_and_the_pool_lives():
    with Pool(2, task_timeout=0.5) as pool:
        t0 = time.monotonic()
        with pytest.raises(TaskTimeoutError):
            pool.map(helpers.sleep_return, [0.05, 10, 0.05, 0.05])
        assert time.monotonic() - t0 < 5
        assert pool.map(helpers.sleep_return, [0.01] * 6) == [0.01] * 6


def test_timeout_inside_a_chunk_fails_only_that_task():
    """The clock is per task inside a chunk: the chunk's other tasks (before and
    after the slow one) are delivered."""
    delays = [0.05, 10, 0.05, 0.05]
    with Pool(1, task_timeout=0.6) as pool:
        it = pool.imap(helpers.sleep_return, delays, 4)
        out = []
        for _ in delays:
            try:
                out.append(it.next(15))
            except TaskTimeoutError as e:
                out.append("timeout")
        assert out == [0.05, "timeout", 0.05, 0.05]


def test_per_task_clock_in_a_chunk_whose_total_exceeds_the_timeout():
    with Pool(1, task_timeout=0.6) as pool:
        # 4 x 0.25 s = 1 s for the chunk, but each task is well under 0.6 s
        assert pool.map(helpers.sleep_return, [0.25] * 4, chunksize=4) == [0.25] * 4


def test_clock_starts_when_the_task_starts_not_when_submitted():
    with Pool(1, task_timeout=0.6) as pool:
        results = [pool.apply_async(helpers.sleep_return, (0.35, i)) for i in range(1, 4)]
        # the third task waits ~0.7 s in the queue: longer than task_timeout
        assert [r.get(15) for r in results] == [1, 2, 3]


def test_other_workers_long_tasks_are_not_disturbed():
    with Pool(2, task_timeout=1.0) as pool:
        steady = pool.apply_async(helpers.sleep_pid, (0.8,))
        slow = pool.apply_async(helpers.sleep_pid, (10,))
        with pytest.raises(TaskTimeoutError):
            slow.get(15)
        assert steady.get(15) > 0


def test_a_timed_out_task_is_not_retried(tmp_path):
    counter = str(tmp_path / "runs")
    with Pool(2, task_timeout=0.5, retries=2) as pool:
        with pytest.raises(TaskTimeoutError):
            pool.apply_async(_append_and_sleep, (counter, 10)).get(15)
        time.sleep(0.5)
        assert len(helpers.read_lines(counter)) == 1


def _append_and_sleep(path, seconds):
    helpers.append_line(path, os.getpid())
    time.sleep(seconds)


def test_get_timeout_is_multiprocessing_timeout_error_not_task_timeout():
    for kwargs in ({}, {"task_timeout": 10}):
        with Pool(1, **kwargs) as pool:
            r = pool.apply_async(helpers.sleep_return, (0.4, "done"))
            with pytest.raises(multiprocessing.TimeoutError) as info:
                r.get(0.1)
            assert not isinstance(info.value, TaskTimeoutError)
            assert not r.ready()
            assert r.get(10) == "done"  # the task was not disturbed
            it = pool.imap(helpers.sleep_return, [0.4])
            with pytest.raises(multiprocessing.TimeoutError) as info:
                it.next(0.1)
            assert not isinstance(info.value, TaskTimeoutError)
            assert it.next(10) == 0.4
            mr = pool.map_async(helpers.sleep_return, [0.2, 0.2])
            with pytest.raises(multiprocessing.TimeoutError):
                mr.get(0.05)
            assert mr.get(10) == [0.2, 0.2]


def test_executor_task_timeout():
    with ProcessPoolExecutor(2, task_timeout=0.6) as ex:
        slow = ex.submit(helpers.sleep_return, 10)
        fast = [ex.submit(helpers.sleep_return, 0.05, i) for i in range(1, 6)]
        e = slow.exception(15)
        assert isinstance(e, TaskTimeoutError) and isinstance(e, TimeoutError)
        assert [f.result(15) for f in fast] == [1, 2, 3, 4, 5]
        # waiting too long on a future is the stdlib's TimeoutError, not TaskTimeoutError
        f = ex.submit(helpers.sleep_return, 0.4, "ok")
        with pytest.raises(concurrent.futures.TimeoutError) as info:
            f.result(0.05)
        assert not isinstance(info.value, TaskTimeoutError)
        assert f.result(10) == "ok"
        results = ex.map(helpers.sleep_return, [0.05, 10, 0.05])
        assert next(results) == 0.05
        with pytest.raises(TaskTimeoutError):
            next(results)
