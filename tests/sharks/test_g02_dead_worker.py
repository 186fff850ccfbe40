"""Guarantee 2: a dead worker fails its own task with WorkerCrashedError,
never hangs the pool, never breaks the other tasks."""

from __future__ import annotations

import os
import signal

import pytest

from sharkcage import Pool, ProcessPoolExecutor, SharkcageError, WorkerCrashedError

from . import helpers

pytestmark = pytest.mark.timeout(30)

SQUARES = [x * x for x in range(12)]

CRASHES = {
    # kind: (exitcode, signal, words the message must contain)
    "os_exit": (3, None, ["3"]),
    "os_exit0": (0, None, ["0"]),
    "sigkill": (-signal.SIGKILL, signal.SIGKILL, ["SIGKILL"]),
    "segv": (-signal.SIGSEGV, signal.SIGSEGV, ["SIGSEGV", "native"]),
    "c_exit": (7, None, ["7"]),
    "abort": (-signal.SIGABRT, signal.SIGABRT, ["SIGABRT"]),
}


@pytest.mark.parametrize("kind", list(CRASHES))
def test_crash_fails_its_task_with_details_and_the_pool_lives(kind, tmp_path):
    pidfile = str(tmp_path / "pid")
    exitcode, signum, words = CRASHES[kind]
    with Pool(2) as pool:
        others = [pool.apply_async(helpers.sleep_return, (0.2, i)) for i in range(1, 5)]
        r = pool.apply_async(helpers.crash, (kind, pidfile))
        with pytest.raises(WorkerCrashedError) as info:
            r.get(15)
        e = info.value
        assert isinstance(e, SharkcageError)
        pid = int(open(pidfile).read())
        assert e.pid == pid
        assert e.exitcode == exitcode
        assert e.signal == signum
        for word in words:
            assert word in str(e), str(e)
        assert not helpers.alive(pid)
        assert r.ready() and not r.successful()
        # the other tasks were not affected, and the pool keeps serving
        assert [o.get(15) for o in others] == [1, 2, 3, 4]
        assert pool.map(helpers.square, range(12)) == SQUARES
        assert pool.apply(helpers.getpid) != pid


def test_sigkill_from_outside_while_running(tmp_path):
    with Pool(2) as pool:
        r = pool.apply_async(helpers.touch_and_sleep, (str(tmp_path), 20, "victim"))
        names = helpers.wait_for_files(str(tmp_path), "started-", 1, 10)
        assert names, "the task never started"
        pid = int(names[0].split("-")[1])
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError) as info:
            r.get(10)
        assert info.value.pid == pid
        assert info.value.signal == signal.SIGKILL and info.value.exitcode == -9
        assert "SIGKILL" in str(info.value)
        assert pool.map(helpers.square, range(12)) == SQUARES


@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_map_raises_the_crash_and_the_pool_stays_usable(chunksize):
    with Pool(2) as pool:
        with pytest.raises(WorkerCrashedError):
            pool.map(helpers.crash_at, range(12), chunksize)
        with pytest.raises(WorkerCrashedError):
            pool.starmap(helpers.crash_at, [(x, 5) for x in range(12)], chunksize)
        with pytest.raises(WorkerCrashedError):
            pool.map_async(helpers.crash_at, range(12), chunksize).get(15)
        assert pool.map(helpers.square, range(12), chunksize) == SQUARES


@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_delivers_every_other_item(chunksize):
    with Pool(2) as pool:
        it = pool.imap(helpers.crash_at, range(12), chunksize)
        outcomes = []
        for _ in range(12):
            try:
                outcomes.append(it.next(15))
            except WorkerCrashedError as e:
                outcomes.append(e)
        with pytest.raises(StopIteration):
            it.next(15)
        assert isinstance(outcomes[3], WorkerCrashedError)
        assert outcomes[:3] + outcomes[4:] == SQUARES[:3] + SQUARES[4:]
        assert pool.map(helpers.square, range(12)) == SQUARES


@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_unordered_delivers_every_other_item(chunksize):
    with Pool(2) as pool:
        it = pool.imap_unordered(helpers.crash_at, range(12), chunksize)
        values, errors = [], []
        for _ in range(12):
            try:
                values.append(it.next(15))
            except WorkerCrashedError as e:
                errors.append(e)
        with pytest.raises(StopIteration):
            it.next(15)
        assert len(errors) == 1
        assert sorted(values) == sorted(SQUARES[:3] + SQUARES[4:])


def test_single_worker_tasks_queued_behind_the_crash_still_run():
    with Pool(1) as pool:
        before = [pool.apply_async(helpers.square, (i,)) for i in range(5)]
        bad = pool.apply_async(helpers.crash, ("os_exit",))
        after = [pool.apply_async(helpers.square, (i,)) for i in range(5, 10)]
        with pytest.raises(WorkerCrashedError):
            bad.get(15)
        assert [r.get(15) for r in before + after] == [i * i for i in range(10)]


def test_executor_only_that_future_fails():
    with ProcessPoolExecutor(2) as ex:
        futures = [ex.submit(helpers.sleep_return, 0.1, i) for i in range(1, 6)]
        bad = ex.submit(helpers.crash, "sigkill")
        assert isinstance(bad.exception(15), WorkerCrashedError)
        assert bad.exception().signal == signal.SIGKILL
        assert [f.result(15) for f in futures] == [1, 2, 3, 4, 5]
        # unlike the stdlib's BrokenProcessPool, the executor keeps serving
        assert ex.submit(helpers.square, 7).result(15) == 49
        assert list(ex.map(helpers.square, range(12))) == SQUARES


def test_retries_reruns_a_crashing_once_task_on_another_worker(tmp_path):
    marker = str(tmp_path / "crashed-once")
    with Pool(2, retries=1) as pool:
        first_pid, pid = pool.apply(helpers.crash_once, (marker,))
        assert first_pid != pid
        assert not helpers.alive(first_pid)
    marker2 = str(tmp_path / "crashed-once-2")
    with Pool(2) as pool:  # retries=0 by default
        with pytest.raises(WorkerCrashedError):
            pool.apply_async(helpers.crash_once, (marker2,)).get(15)


def test_retries_in_map_and_executor(tmp_path):
    markers = [str(tmp_path / f"m{i}") for i in range(4)]
    with Pool(2, retries=1) as pool:
        results = pool.map(helpers.crash_once, markers, 2)
        assert all(first != pid for first, pid in results)
    markers = [str(tmp_path / f"e{i}") for i in range(3)]
    with ProcessPoolExecutor(2, retries=1) as ex:
        results = [f.result(15) for f in [ex.submit(helpers.crash_once, m) for m in markers]]
        assert all(first != pid for first, pid in results)


def test_retries_exhausted_raises_after_retries_plus_one_attempts(tmp_path):
    counter = str(tmp_path / "attempts")
    with Pool(2, retries=2) as pool:
        with pytest.raises(WorkerCrashedError):
            pool.apply_async(helpers.crash_always_counting, (counter,)).get(20)
        pids = helpers.read_lines(counter)
        assert len(pids) == 3, pids
        assert len(set(pids)) == 3, "each attempt runs on a fresh worker"
        assert pool.apply(helpers.square, (5,)) == 25


def test_a_crash_in_a_full_speed_chunk_is_pinned_on_its_item():
    """A map chunk runs at C speed, the slot saying only "in this chunk": a
    crash there re-runs the chunk's items one by one, so the error still
    names item 3 alone, every other item's result comes back, and the
    unattributed crash costs no retry."""
    with Pool(2, retries=1) as pool:
        it = pool.imap(helpers.crash_at, range(40), 20)
        outcomes = []
        for _ in range(40):
            try:
                outcomes.append(it.next(30))
            except WorkerCrashedError as e:
                outcomes.append(e)
        crashed = [k for k, o in enumerate(outcomes) if isinstance(o, WorkerCrashedError)]
        assert crashed == [3]
        assert "item 3 of imap(crash_at)" in str(outcomes[3]) and "after 2 attempts" in str(outcomes[3])
        assert [o for k, o in enumerate(outcomes) if k != 3] == [x * x for x in range(40) if x != 3]
        # one crash with the culprit unknown, then item 3 alone: run, retried once
        assert pool.stats().crashes == 3
