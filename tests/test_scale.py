"""Scale and soak: many pools, many faults, nothing left behind, nothing lost.

* ``test_create_map_close_cycles`` -- create / map / close (or terminate, or an
  executor's shutdown) cycles leave no zombie, fd or thread behind.
* ``test_fault_injection_soak`` (slow) -- thousands of tasks with random
  SIGKILLs, exceptions, unpicklable results and task timeouts, through
  ``apply_async`` and ``imap`` at once: every task ends exactly once, with its
  right result or its right error.
"""

from __future__ import annotations

import os
import random
import threading
import time

import psutil
import pytest

import compat_helpers as h
from sharkcage import (
    Pool,
    ProcessPoolExecutor,
    SerializationError,
    TaskTimeoutError,
    WorkerCrashedError,
)

pytestmark = pytest.mark.timeout(30)

GET = 30


# ---------------------------------------------------------------------------
# (a) create / map / close cycles


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _zombies() -> list[int]:
    """Zombie processes among our descendants (and the forkserver's children)."""
    out = []
    try:
        from multiprocessing import forkserver

        roots = [psutil.Process()]
        fs_pid = forkserver._forkserver._forkserver_pid
        if fs_pid:
            roots.append(psutil.Process(fs_pid))
    except psutil.Error:
        roots = [psutil.Process()]
    for root in roots:
        try:
            for p in root.children(recursive=True):
                try:
                    if p.status() == psutil.STATUS_ZOMBIE:
                        out.append(p.pid)
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return out


def _settled(before_threads: int, wait: float = 5.0) -> int:
    deadline = time.monotonic() + wait
    while threading.active_count() > before_threads and time.monotonic() < deadline:
        time.sleep(0.02)
    return threading.active_count()


def _one_cycle(i: int) -> None:
    data = list(range(i % 7, i % 7 + 12))
    expected = [x * x for x in data]
    way = i % 4
    if way == 0:
        with Pool(2) as pool:  # __exit__ terminates
            assert pool.map(h.square, data) == expected
    elif way == 1:
        pool = Pool(2)
        assert pool.map(h.square, data, 3) == expected
        pool.close()
        pool.join()
    elif way == 2:
        with ProcessPoolExecutor(2) as ex:
            assert list(ex.map(h.square, data)) == expected
    else:
        pool = Pool(1)
        assert list(pool.imap_unordered(h.square, data)) != []
        pool.terminate()
        pool.join()


def _run_cycles(n: int) -> None:
    _one_cycle(0)  # warm up: the forkserver and resource tracker start once per interpreter
    fds = _fd_count()
    threads = threading.active_count()
    zombies = set(_zombies())
    t = time.monotonic()
    for i in range(n):
        _one_cycle(i)
    elapsed = time.monotonic() - t
    threads_after = _settled(threads)
    assert threads_after <= threads, (
        f"{threads_after - threads} threads left after {n} cycles: "
        f"{[th.name for th in threading.enumerate()]}")
    deadline = time.monotonic() + 5
    while (_fd_count() > fds or set(_zombies()) - zombies) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _fd_count() <= fds, f"fd leak: {fds} fds before {n} cycles, {_fd_count()} after"
    assert not set(_zombies()) - zombies, f"zombies left: {sorted(set(_zombies()) - zombies)}"
    print(f"{n} cycles in {elapsed:.1f} s ({1000 * elapsed / n:.0f} ms each)")


def test_create_map_close_cycles_50():
    _run_cycles(50)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_create_map_close_cycles_500():
    _run_cycles(500)


# ---------------------------------------------------------------------------
# (b) fault-injection soak

SEED = 20240613
SOAK_SECONDS = 60.0
TASK_TIMEOUT = 0.5
KINDS = (("ok", 0.86), ("raise", 0.05), ("kill", 0.04), ("unpicklable", 0.04), ("timeout", 0.01))


def _plan(rng: random.Random, first_id: int, n: int) -> list[tuple]:
    names = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    specs = []
    for task_id in range(first_id, first_id + n):
        kind = rng.choices(names, weights)[0]
        delay = rng.choice((0, 0, 0, 0.001, 0.003)) if kind != "timeout" else 0
        specs.append((task_id, kind, delay))
    return specs


def _check(spec, ok: bool, value) -> None:
    """One outcome is the right one for its task."""
    task_id, kind, _ = spec
    if kind == "ok":
        assert ok and value == (task_id, "ok"), (spec, value)
        return
    assert not ok, (spec, value)
    if kind == "raise":
        assert type(value) is ValueError and str(value) == f"soak task {task_id} raised", (spec, repr(value))
    elif kind == "kill":
        assert isinstance(value, WorkerCrashedError) and value.signal == 9, (spec, repr(value))
    elif kind == "unpicklable":
        assert isinstance(value, SerializationError) and value.direction == "result", (spec, repr(value))
    elif kind == "timeout":
        assert isinstance(value, TaskTimeoutError), (spec, repr(value))
    else:
        raise AssertionError(kind)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fault_injection_soak():
    outcomes: dict[int, list] = {}
    lock = threading.Lock()
    counts = dict.fromkeys((k for k, _ in KINDS), 0)
    next_id = 0
    rounds = 0
    start = time.monotonic()
    pool = Pool(3, task_timeout=TASK_TIMEOUT)
    try:
        while time.monotonic() - start < SOAK_SECONDS - 8:
            rng = random.Random(f"{SEED}-{rounds}")
            apply_specs = _plan(rng, next_id, 200)
            next_id += 200
            imap_specs = _plan(rng, next_id, 200)
            next_id += 200
            for spec in apply_specs + imap_specs:
                counts[spec[1]] += 1

            def record(spec, ok):
                def cb(value):
                    with lock:
                        outcomes.setdefault(spec[0], []).append((ok, value))
                return cb

            results = [
                (spec, pool.apply_async(h.soak_task, (spec,), callback=record(spec, True),
                                        error_callback=record(spec, False)))
                for spec in apply_specs
            ]
            # imap at the same time, in chunks of a random size
            it = pool.imap(h.soak_task, imap_specs, chunksize=rng.choice((1, 2, 4)))
            for spec in imap_specs:
                try:
                    value, ok = it.next(GET), True
                except StopIteration:
                    pytest.fail(f"imap stopped before task {spec[0]}")
                except Exception as e:  # noqa: BLE001
                    value, ok = e, False
                _check(spec, ok, value)
                with lock:
                    outcomes.setdefault(spec[0], []).append((ok, value))
            with pytest.raises(StopIteration):
                it.next(GET)
            for spec, r in results:
                try:
                    value, ok = r.get(GET), True
                except Exception as e:  # noqa: BLE001
                    value, ok = e, False
                _check(spec, ok, value)
            rounds += 1
        # callbacks have all run once get() returned; each task ended exactly once
        with lock:
            missing = [i for i in range(next_id) if i not in outcomes]
            twice = {i: v for i, v in outcomes.items() if len(v) != 1}
        assert not missing, f"{len(missing)} tasks never ended, e.g. {missing[:10]}"
        assert not twice, f"tasks that ended more than once: {list(twice.items())[:5]}"
        assert len(outcomes) == next_id
        assert next_id >= 2000, f"only {next_id} tasks in {SOAK_SECONDS} s"
        assert pool.map(h.square, range(10)) == [x * x for x in range(10)]
    finally:
        pool.terminate()
        pool.join()
    print(f"soak: {next_id} tasks in {rounds} rounds, {time.monotonic() - start:.1f} s: {counts}")
