"""Issue 5, worker state (CONTRACT.md "Worker state and actors").

The initializer's return value is the worker's state, read inside tasks with
``sharkcage.worker_state()``; ``sharkcage.worker_info()`` tells the stable
slot, the pid and the tasks done; ``finalizer(state)`` runs on orderly exit
(close + join, and maxtasksperchild recycling); a replacement worker runs
the initializer again; an initializer that keeps raising gives
``WorkerInitError`` (with its traceback) after exactly three attempts, never
a respawn loop. Real processes; counters are lines in files.
"""

from __future__ import annotations

import time

import pytest

import actor_helpers as h
import sharkcage
from sharkcage import Pool, ProcessPoolExecutor, WorkerCrashedError, WorkerInitError

pytestmark = pytest.mark.timeout(60)

GET = 30  # seconds: a wait longer than this is a hang


def _wait_for_lines(path, n: int, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        got = h.lines(path)
        if len(got) >= n or time.monotonic() >= deadline:
            return got
        time.sleep(0.02)


def test_worker_state_and_info_are_none_outside_a_worker():
    assert sharkcage.worker_state() is None
    assert sharkcage.worker_info() is None


def test_state_is_the_initializer_return_value(tmp_path):
    log = str(tmp_path / "init.log")
    with Pool(2, initializer=h.init_state, initargs=(log, "S")) as pool:
        outs = pool.map(h.state_and_info, range(30), chunksize=1)
    for state, (worker_id, info_pid, tasks_done), pid in outs:
        # the dict the initializer returned in *this* worker
        assert state["tag"] == "S" and state["pid"] == pid and state["log"] == log
        assert info_pid == pid
        assert worker_id in (0, 1)
        assert isinstance(tasks_done, int) and tasks_done >= 0
    # the initializer ran once per worker, in the workers that ran the tasks
    init_pids = [int(p) for p in h.lines(log)]
    assert len(init_pids) == 2 and len(set(init_pids)) == 2
    assert {pid for *_, pid in outs} <= set(init_pids)


def test_state_is_one_object_per_worker_that_persists(tmp_path):
    log = str(tmp_path / "init.log")
    with Pool(1, initializer=h.init_state, initargs=(log, "P")) as pool:
        hits = [pool.apply(h.bump_state) for _ in range(5)]
    pids = {pid for pid, _ in hits}
    assert len(pids) == 1
    assert [n for _, n in hits] == [1, 2, 3, 4, 5]


def test_state_is_none_without_initializer_or_when_it_returns_none(tmp_path):
    with Pool(1) as pool:
        state, info, pid = pool.apply(h.state_and_info)
    assert state is None and info[1] == pid and info[0] == 0
    log = str(tmp_path / "init.log")
    with Pool(1, initializer=h.init_returns_none, initargs=(log,)) as pool:
        state, info, pid = pool.apply(h.state_and_info)
    assert state is None and h.lines(log) == [str(pid)]


def test_executor_initializer_state(tmp_path):
    log = str(tmp_path / "init.log")
    with ProcessPoolExecutor(1, initializer=h.init_state, initargs=(log, "X")) as ex:
        state, info, pid = ex.submit(h.state_and_info).result(GET)
    assert state["tag"] == "X" and state["pid"] == pid and info[0] == 0


def test_worker_info_slot_is_stable_and_tasks_done_increases():
    with Pool(2) as pool:
        outs = pool.map(h.state_and_info, range(40), chunksize=1)
    ids_by_pid: dict[int, set] = {}
    for _, (worker_id, info_pid, _), pid in outs:
        assert info_pid == pid
        ids_by_pid.setdefault(pid, set()).add(worker_id)
    assert all(len(ids) == 1 for ids in ids_by_pid.values()), ids_by_pid
    all_ids = set().union(*ids_by_pid.values())
    assert all_ids <= {0, 1}
    if len(ids_by_pid) == 2:  # both workers ran: two different small slots
        assert all_ids == {0, 1}
    # one worker, one task after the other: tasks_done goes up by one each time
    with Pool(1) as pool:
        done = [pool.apply(h.state_and_info)[1][2] for _ in range(6)]
    assert done == sorted(done) and len(set(done)) == 6, done
    assert all(b - a == 1 for a, b in zip(done, done[1:])), done


def test_worker_id_survives_a_crash_and_the_initializer_runs_again(tmp_path):
    log = str(tmp_path / "init.log")
    with Pool(1, initializer=h.init_state, initargs=(log, "R")) as pool:
        state1, info1, pid1 = pool.apply(h.state_and_info)
        assert pool.apply(h.bump_state) == (pid1, 1)
        with pytest.raises(WorkerCrashedError):
            pool.apply(h.crash)
        state2, info2, pid2 = pool.apply(h.state_and_info)
        # a fresh state, built by the initializer in the replacement
        assert pool.apply(h.bump_state) == (pid2, 1)
    assert pid2 != pid1
    assert state1["pid"] == pid1 and state2["pid"] == pid2 and state2["tag"] == "R"
    assert info1[0] == info2[0] == 0, "the replacement keeps the slot number"
    assert h.lines(log) == [str(pid1), str(pid2)]


def test_finalizer_runs_on_close_and_join(tmp_path):
    log = str(tmp_path / "init.log")
    final = log + ".final"
    pool = Pool(2, initializer=h.init_state, initargs=(log, "F"), finalizer=h.finalize_to_file)
    try:
        bumps = pool.map(h.bump_state, range(20), chunksize=1)
        assert h.lines(final) == [], "the finalizer must not run while the pool is open"
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    rows = [line.split(":") for line in h.lines(final)]
    assert len(rows) == 2, rows
    pids = {int(pid) for pid, _, _ in rows}
    assert pids == {int(p) for p in h.lines(log)}
    assert all(tag == "F" for _, tag, _ in rows)
    # finalizer(state) got the state the tasks mutated
    hits_by_pid = {}
    for pid, n in bumps:
        hits_by_pid[pid] = max(hits_by_pid.get(pid, 0), n)
    assert {int(pid): int(n) for pid, _, n in rows} == {pid: hits_by_pid.get(pid, 0) for pid in pids}
    assert sum(int(n) for _, _, n in rows) == 20


def test_finalizer_runs_on_maxtasksperchild_recycling(tmp_path):
    log = str(tmp_path / "init.log")
    final = log + ".final"
    pool = Pool(1, initializer=h.init_state, initargs=(log, "M"), finalizer=h.finalize_to_file,
                maxtasksperchild=2)
    try:
        pids = [pool.apply(h.bump_state)[0] for _ in range(6)]
        assert len(set(pids)) == 3 and pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]
        # the two recycled workers finalized while the pool is still open
        rows = [line.split(":") for line in _wait_for_lines(final, 2)]
        assert [int(pid) for pid, _, _ in rows[:2]] == [pids[0], pids[2]], rows
        assert all(n == "2" for _, _, n in rows[:2])
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    rows = [line.split(":") for line in h.lines(final)]
    assert [int(pid) for pid, _, _ in rows][:3] == [pids[0], pids[2], pids[4]]
    assert h.lines(log)[:3] == [str(pids[0]), str(pids[2]), str(pids[4])]
    # the third worker retired after its 2nd task too, so a fourth may have
    # started (and then left at close): every worker that started finalized
    assert sorted(pid for pid, _, _ in rows) == sorted(h.lines(log))


def test_finalizer_does_not_run_for_a_crashed_worker(tmp_path):
    log = str(tmp_path / "init.log")
    final = log + ".final"
    pool = Pool(1, initializer=h.init_state, initargs=(log, "C"), finalizer=h.finalize_to_file)
    try:
        pid1 = pool.apply(h.getpid)
        with pytest.raises(WorkerCrashedError):
            pool.apply(h.crash)
        pid2 = pool.apply(h.getpid)
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    assert [line.split(":")[0] for line in h.lines(final)] == [str(pid2)]
    assert pid1 != pid2


def _check_init_error(err: WorkerInitError) -> None:
    text = str(err) + err.init_traceback
    assert "Traceback" in err.init_traceback
    assert "RuntimeError" in err.init_traceback
    assert "no database here (initializer marker 7f3a)" in err.init_traceback
    assert "init_raises" in err.init_traceback, "the traceback names the initializer"
    assert "no database here" in str(err)
    assert text


def test_initializer_that_raises_gives_worker_init_error_after_exactly_three_attempts(tmp_path):
    log = str(tmp_path / "init.log")
    pool = Pool(1, initializer=h.init_raises, initargs=(log,))
    try:
        r = pool.apply_async(h.square, (3,))
        with pytest.raises(WorkerInitError) as ei:
            r.get(GET)
        _check_init_error(ei.value)
        # later tasks fail the same way, without new attempts
        with pytest.raises(WorkerInitError):
            pool.apply(h.square, (4,))
        with pytest.raises(WorkerInitError):
            pool.map(h.square, range(5))
        time.sleep(1.0)  # a respawn loop would add lines meanwhile
        attempts = h.lines(log)
        assert len(attempts) == 3, f"{len(attempts)} initializer attempts, expected exactly 3"
        assert len(set(attempts)) == 3, "each attempt is a new process"
    finally:
        pool.terminate()
        pool.join()
    assert len(h.lines(log)) == 3


def test_initializer_that_raises_with_two_workers_stops_respawning(tmp_path):
    log = str(tmp_path / "init.log")
    pool = Pool(2, initializer=h.init_raises, initargs=(log,))
    try:
        results = [pool.apply_async(h.square, (i,)) for i in range(4)]
        for r in results:
            with pytest.raises(WorkerInitError) as ei:
                r.get(GET)
            _check_init_error(ei.value)
        first = len(h.lines(log))
        time.sleep(1.0)
        assert len(h.lines(log)) == first, "workers keep being started after WorkerInitError"
        # three failures in a row; a second slot's start may already be under way
        assert 3 <= first <= 4, f"{first} initializer attempts"
    finally:
        pool.terminate()
        pool.join()
