"""stdlib compatibility of ``sharkcage.Pool`` and ``sharkcage.ProcessPoolExecutor``.

Each test checks one method or behaviour with the stdlib's signature and
semantics (CONTRACT.md "Drop-in pools"), plus sharkcage's additions (cancel,
per-future crashes, worker state, finalizer, max_memory_per_worker,
WorkerInitError). Where it is cheap, the same input also goes through
``multiprocessing.Pool`` / ``concurrent.futures.ProcessPoolExecutor`` and the
outputs must be equal.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import inspect
import logging
import multiprocessing
import multiprocessing.pool
import os
import threading
import time

import psutil
import pytest

import compat_helpers as h
import sharkcage
from sharkcage import (
    Pool,
    ProcessPoolExecutor,
    SerializationError,
    SharkcageError,
    WorkerCrashedError,
    WorkerInitError,
)

pytestmark = pytest.mark.timeout(30)

GET = 20  # seconds: any wait longer than this is a hang
# The reference pools start their workers from a forkserver too: forking the
# multi-threaded pytest process (the stdlib default on Linux) is what seed 000
# is about.
STD_CTX = multiprocessing.get_context("forkserver")


@pytest.fixture
def pool():
    p = Pool(2)
    try:
        yield p
    finally:
        p.terminate()
        p.join()


@pytest.fixture
def std_pool():
    p = multiprocessing.pool.Pool(2, context=STD_CTX)
    try:
        yield p
    finally:
        p.terminate()
        p.join()
        del p
        collect_semaphores()


def collect_semaphores():
    """The stdlib's locks made with a forkserver context keep a /dev/shm entry
    until they are garbage-collected; collect them now, or conftest's session
    check sees them."""
    gc.collect()


@pytest.fixture
def executor():
    ex = ProcessPoolExecutor(2)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def wait_for_file(path, timeout=GET) -> str:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            pytest.fail(f"{path} never appeared: the task did not start")
        time.sleep(0.01)
    with open(path) as f:
        return f.read()


class Records(logging.Handler):
    """Collects the records of one logger (no reliance on propagation)."""

    def __init__(self, name: str):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        self.logger.addHandler(self)
        self._level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.ERROR:
            self.logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)

    def errors(self):
        return [r for r in self.records if r.levelno >= logging.ERROR]


# ---------------------------------------------------------------------------
# signatures


def _params(fn):
    return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]


POOL_METHODS = ["apply", "apply_async", "map", "map_async", "imap", "imap_unordered",
                "starmap", "starmap_async", "close", "terminate", "join", "__enter__", "__exit__"]


@pytest.mark.parametrize("name", POOL_METHODS + ["__init__"])
def test_pool_signatures_start_like_the_stdlib(name):
    """Every call the stdlib accepts is accepted: same positional parameters in
    the same order, optional where the stdlib's are (sharkcage may spell a
    default as None, e.g. ``kwds=None`` for ``kwds={}``, or ``chunksize=None``
    for "choose for me"), and the stdlib's keyword-only ones too."""
    std = inspect.signature(getattr(multiprocessing.pool.Pool, name)).parameters
    ours = list(inspect.signature(getattr(Pool, name)).parameters.values())
    if name == "__exit__":
        # __exit__(self, exc_type, exc_val, exc_tb) may be spelled __exit__(self, *exc_info)
        assert len(ours) == 2 and ours[1].kind == inspect.Parameter.VAR_POSITIONAL or len(ours) >= 4
        return
    std_pos = [p for p in std.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for i, p in enumerate(std_pos):
        q = ours[i]
        assert q.name == p.name and q.kind == p.kind, f"{name}: parameter {i} is {q}, stdlib has {p}"
        if p.default is not p.empty:
            assert q.default is not q.empty, f"{name}: {p.name} is optional in the stdlib"
            if p.default not in ({}, (), 1) and p.default is not None:
                assert q.default == p.default, f"{name}: default of {p.name} is {q.default!r}, stdlib {p.default!r}"
            if p.default is None:
                assert q.default is None, f"{name}: default of {p.name} is {q.default!r}, stdlib None"
        else:
            assert q.default is q.empty, f"{name}: {p.name} is required in the stdlib"
    required = [q for q in ours[len(std_pos):] if q.default is q.empty
                and q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)]
    assert not required, f"{name}: extra required parameters {required}"


@pytest.mark.parametrize("name", ["submit", "map", "shutdown", "__init__"])
def test_executor_signatures_start_like_the_stdlib(name):
    ours = _params(getattr(ProcessPoolExecutor, name))
    std = _params(getattr(concurrent.futures.ProcessPoolExecutor, name))
    ours_names = [n for n, _ in ours]
    for n, kind in std:
        assert n in ours_names, f"{name}: stdlib parameter {n} is missing"
        assert dict(ours)[n] == kind, f"{name}: {n} is {dict(ours)[n]}, stdlib has {kind}"
    # positional parameters in the stdlib's order
    std_pos = [n for n, k in std if k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    assert ours_names[: len(std_pos)] == std_pos


def test_executor_is_an_executor():
    assert issubclass(ProcessPoolExecutor, concurrent.futures.Executor)


# ---------------------------------------------------------------------------
# Pool: apply / map family, compared with multiprocessing.Pool


def test_apply_and_map_family_match_the_stdlib(pool, std_pool):
    data = list(range(-7, 30))
    pairs = [(i, i % 4) for i in range(20)]
    ours = (
        pool.apply(h.power, (3,), {"exp": 4}),
        pool.apply(h.square, (9,)),
        pool.map(h.square, data),
        pool.map(h.square, data, 4),
        pool.map_async(h.square, data, chunksize=3).get(GET),
        pool.starmap(h.power, pairs),
        pool.starmap_async(h.power, pairs, 2).get(GET),
        list(pool.imap(h.square, data)),
        list(pool.imap(h.square, iter(data), chunksize=5)),
        sorted(pool.imap_unordered(h.square, data)),
        sorted(pool.imap_unordered(h.square, (x for x in data), 3)),
        pool.map(h.square, []),
        list(pool.imap(h.square, [])),
    )
    std = (
        std_pool.apply(h.power, (3,), {"exp": 4}),
        std_pool.apply(h.square, (9,)),
        std_pool.map(h.square, data),
        std_pool.map(h.square, data, 4),
        std_pool.map_async(h.square, data, chunksize=3).get(GET),
        std_pool.starmap(h.power, pairs),
        std_pool.starmap_async(h.power, pairs, 2).get(GET),
        list(std_pool.imap(h.square, data)),
        list(std_pool.imap(h.square, iter(data), chunksize=5)),
        sorted(std_pool.imap_unordered(h.square, data)),
        sorted(std_pool.imap_unordered(h.square, (x for x in data), 3)),
        std_pool.map(h.square, []),
        list(std_pool.imap(h.square, [])),
    )
    assert ours == std
    assert ours[2] == [x * x for x in data]


def test_apply_async_callbacks(pool):
    got, errs, threads = [], [], []

    def cb(value):
        threads.append(threading.current_thread())
        got.append(value)

    r = pool.apply_async(h.square, (12,), callback=cb, error_callback=errs.append)
    assert r.get(GET) == 144
    # as in the stdlib: the callback has run (once, in the parent) when get() returns
    assert got == [144] and errs == []
    assert threads[0] is not threading.main_thread()

    r = pool.apply_async(h.raise_value_error, ("nope",), callback=got.append, error_callback=errs.append)
    with pytest.raises(ValueError, match="nope"):
        r.get(GET)
    assert got == [144]
    assert len(errs) == 1 and isinstance(errs[0], ValueError) and str(errs[0]) == "nope"


def test_map_async_callbacks(pool):
    got, errs = [], []
    r = pool.map_async(h.square, range(10), callback=got.append, error_callback=errs.append)
    assert r.get(GET) == [i * i for i in range(10)]
    assert got == [[i * i for i in range(10)]] and errs == []

    r = pool.starmap_async(h.add, [(1, 2), (3, 4)], callback=got.append, error_callback=errs.append)
    assert r.get(GET) == [3, 7]
    assert got[-1] == [3, 7]

    r = pool.map_async(h.fail_on, range(8), 2, callback=got.append, error_callback=errs.append)
    with pytest.raises(ValueError, match="bad item 3"):
        r.get(GET)
    assert len(got) == 2 and len(errs) == 1 and "bad item 3" in str(errs[0])
    assert r.ready() and not r.successful()


def test_map_raises_the_first_failure_like_the_stdlib(pool, std_pool):
    for p in (pool, std_pool):
        with pytest.raises(ValueError, match="bad item 3"):
            p.map(h.fail_on, range(10))
    # the pool is still usable
    assert pool.map(h.square, range(4)) == [0, 1, 4, 9]


def test_imap_keeps_input_order(pool):
    # early items are the slow ones: they finish last, imap still yields in input order
    assert list(pool.imap(h.reverse_delay, range(6))) == list(range(6))
    assert list(pool.imap_unordered(h.reverse_delay, range(6))) != list(range(6))
    out = list(pool.imap(h.slow_square, range(20)))
    assert out == [i * i for i in range(20)]
    it = pool.imap(h.square, range(5))
    assert it.next(GET) == 0 and next(it) == 1
    assert list(it) == [4, 9, 16]


def test_imap_unordered_yields_in_completion_order(pool):
    out = list(pool.imap_unordered(h.sleep_first, range(6)))
    assert sorted(out) == list(range(6))
    assert out[0] != 0, "item 0 sleeps 0.8 s; the others should come first"
    assert out.index(0) >= 3, out


def test_imap_next_timeout(pool):
    it = pool.imap(h.sleep_first, [0])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(0.05)
    assert it.next(GET) == 0


def _pid_groups(pids, size):
    return [set(pids[i:i + size]) for i in range(0, len(pids), size)]


@pytest.mark.parametrize("method", ["map", "imap", "map_async"])
def test_chunksize_is_honoured(pool, std_pool, method):
    """Items of one chunk run one after the other in the same worker (as in the stdlib)."""
    n, size = 24, 6
    for p in (pool, std_pool):
        call = getattr(p, method)
        out = call(h.pid_after, [0.01] * n, size)
        pids = out.get(GET) if method == "map_async" else list(out)
        assert len(pids) == n
        for group in _pid_groups(pids, size):
            assert len(group) == 1, f"{p}: a chunk of {size} ran on several workers: {pids}"


def test_starmap_chunksize_is_honoured(pool):
    pids = pool.starmap(h.pid_after, [(0.01, i) for i in range(12)], 4)
    assert all(len(g) == 1 for g in _pid_groups(pids, 4))


def test_bad_chunksize(pool, std_pool):
    for call in (pool.map, pool.imap, pool.imap_unordered, pool.map_async, pool.starmap):
        with pytest.raises(ValueError):
            call(h.square, range(3), 0)
    with pytest.raises(ValueError):
        pool.map(h.square, range(3), -2)
    # the stdlib checks it in imap (its map with chunksize=0 silently returns Nones)
    with pytest.raises(ValueError):
        std_pool.imap(h.square, range(3), 0)


# ---------------------------------------------------------------------------
# Pool lifecycle


def test_pool_zero_processes_is_a_value_error():
    with pytest.raises(ValueError):
        multiprocessing.pool.Pool(0, context=STD_CTX)
    with pytest.raises(ValueError):
        Pool(0)
    with pytest.raises(ValueError):
        Pool(-1)
    with pytest.raises(ValueError):
        ProcessPoolExecutor(0)


def test_close_then_join_finishes_submitted_work():
    pool = Pool(2)
    try:
        rs = [pool.apply_async(h.slow_square, (i, 0.05)) for i in range(6)]
        m = pool.map_async(h.square, range(10))
        it = pool.imap(h.square, range(10))
        pool.close()
        t = time.monotonic()
        pool.join()
        assert time.monotonic() - t < GET
        assert [r.get(0) for r in rs] == [i * i for i in range(6)]
        assert m.get(0) == [i * i for i in range(10)]
        assert list(it) == [i * i for i in range(10)]
    finally:
        pool.terminate()


@pytest.mark.parametrize("stop", ["close", "terminate"])
def test_value_error_after_close(stop):
    for p in (Pool(1), multiprocessing.pool.Pool(1, context=STD_CTX)):
        try:
            getattr(p, stop)()
            calls = [
                lambda: p.apply(h.square, (1,)),
                lambda: p.apply_async(h.square, (1,)),
                lambda: p.map(h.square, [1]),
                lambda: p.map_async(h.square, [1]),
                lambda: p.starmap(h.add, [(1, 2)]),
                lambda: p.starmap_async(h.add, [(1, 2)]),
                lambda: p.imap(h.square, [1]),
                lambda: p.imap_unordered(h.square, [1]),
            ]
            for call in calls:
                with pytest.raises(ValueError):
                    call()
        finally:
            p.terminate()
            p.join()
    p = calls = None  # drop the stdlib pool before collecting
    collect_semaphores()


def test_join_before_close_is_a_value_error(pool, std_pool):
    for p in (pool, std_pool):
        with pytest.raises(ValueError):
            p.join()


def test_terminate_stops_running_tasks_and_fails_outstanding(tmp_path):
    pool = Pool(2)
    marker = tmp_path / "started"
    r = pool.apply_async(h.mark_and_sleep, (str(marker), 60))
    queued = [pool.apply_async(h.sleep_return, (60, i)) for i in range(4)]
    wait_for_file(str(marker))
    t = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - t < 5, "terminate() must not wait for running tasks"
    for res in [r] + queued:
        with pytest.raises(SharkcageError):
            res.get(5)


def test_context_manager_exit_terminates(tmp_path):
    marker = tmp_path / "started"
    t = None
    with Pool(2) as pool:
        assert isinstance(pool, Pool)
        assert pool.map(h.square, range(3)) == [0, 1, 4]
        r = pool.apply_async(h.mark_and_sleep, (str(marker), 60))
        wait_for_file(str(marker))
        t = time.monotonic()
    assert time.monotonic() - t < 5, "__exit__ terminates: it must not wait for the running task"
    with pytest.raises(SharkcageError):
        r.get(5)
    with pytest.raises(ValueError):
        pool.apply_async(h.square, (1,))
    pool.join()  # allowed after terminate, returns at once


def test_pool_cannot_be_pickled(pool):
    import pickle

    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


# ---------------------------------------------------------------------------
# workers: maxtasksperchild, initializer, worker state, finalizer, memory


def test_maxtasksperchild_recycles_workers():
    for p in (Pool(1, maxtasksperchild=1), multiprocessing.pool.Pool(1, maxtasksperchild=1, context=STD_CTX)):
        try:
            pids = [p.apply(h.getpid) for _ in range(4)]
            assert len(set(pids)) == 4, f"{p}: {pids}"
        finally:
            p.terminate()
            p.join()
    p = None
    collect_semaphores()
    with Pool(1, maxtasksperchild=2) as p:
        pids = [p.apply(h.getpid) for _ in range(6)]
        assert len(set(pids)) == 3 and pids[0] == pids[1] and pids[2] == pids[3] and pids[0] != pids[2]


def test_executor_max_tasks_per_child_recycles_workers():
    with ProcessPoolExecutor(1, max_tasks_per_child=1) as ex:
        pids = [ex.submit(h.getpid).result(GET) for _ in range(3)]
    assert len(set(pids)) == 3


def test_initializer_runs_once_per_worker(tmp_path):
    log = tmp_path / "init.log"
    with Pool(2, initializer=h.init_record, initargs=(str(log), "T")) as pool:
        results = [pool.apply_async(h.read_init) for _ in range(20)]
        seen = {}
        for r in results:
            count, tag, pid = r.get(GET)
            assert count == 1 and tag == "T"
            seen[pid] = count
        pool.close()
        pool.join()
    lines = log.read_text().split()
    assert len(lines) == 2 and len(set(lines)) == 2, lines
    assert set(seen) <= set(map(int, lines))


def test_initializer_runs_again_in_a_replacement_worker(tmp_path):
    log = tmp_path / "init.log"
    with Pool(1, initializer=h.init_record, initargs=(str(log), "T")) as pool:
        pid1 = pool.apply(h.getpid)
        with pytest.raises(WorkerCrashedError):
            pool.apply(h.kill_self)
        count, tag, pid2 = pool.apply(h.read_init)
        assert pid2 != pid1 and count == 1 and tag == "T"
    assert log.read_text().split() == [str(pid1), str(pid2)]


def test_executor_initializer(tmp_path):
    log = tmp_path / "init.log"
    with ProcessPoolExecutor(2, initializer=h.init_record, initargs=(str(log), "E")) as ex:
        outs = [f.result(GET) for f in [ex.submit(h.read_init) for _ in range(10)]]
    assert all(c == 1 and t == "E" for c, t, _ in outs)
    assert len(log.read_text().split()) == 2


def test_worker_state_and_info(tmp_path):
    assert sharkcage.worker_state() is None and sharkcage.worker_info() is None
    log = tmp_path / "init.log"
    with Pool(2, initializer=h.init_record, initargs=(str(log), "S")) as pool:
        outs = pool.map(h.state_and_info, range(20), 1)
    for state, info, pid in outs:
        assert state == {"tag": "S", "pid": pid}
        worker_id, info_pid, tasks_done = info
        assert worker_id in (0, 1) and info_pid == pid and isinstance(tasks_done, int) and tasks_done >= 0
    # a stable slot per worker: each pid keeps its own id
    ids = {}
    for _, (wid, pid, _), _ in outs:
        ids.setdefault(pid, set()).add(wid)
    assert all(len(v) == 1 for v in ids.values())
    # without an initializer there is no state, but there is info
    with Pool(1) as pool:
        state, info, pid = pool.apply(h.state_and_info)
    assert state is None and info[1] == pid
    with ProcessPoolExecutor(1, initializer=h.init_record, initargs=(str(log), "X")) as ex:
        state, info, pid = ex.submit(h.state_and_info).result(GET)
    assert state == {"tag": "X", "pid": pid} and info[0] == 0


def test_tasks_done_counts_up():
    with Pool(1) as pool:
        done = [pool.apply(h.state_and_info)[1][2] for _ in range(4)]
    assert done == sorted(done) and done[-1] > done[0]


def test_finalizer_runs_at_close(tmp_path):
    pool = Pool(2, initializer=h.init_state_dir, initargs=(str(tmp_path),), finalizer=h.finalize_to_file)
    try:
        pids = set(pool.map(h.pid_after, [0.05] * 8, 1))
        assert not list(tmp_path.glob("final-*")), "the finalizer must not run before close"
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    files = sorted(tmp_path.glob("final-*"))
    assert len(files) == 2, files
    assert pids <= {int(f.name.split("-")[1]) for f in files}
    assert all(f.read_text() == repr({"dir": str(tmp_path)}) for f in files)


def test_finalizer_runs_on_maxtasksperchild_recycling(tmp_path):
    with Pool(1, initializer=h.init_state_dir, initargs=(str(tmp_path),), finalizer=h.finalize_to_file,
              maxtasksperchild=1) as pool:
        pids = [pool.apply(h.getpid) for _ in range(3)]
        deadline = time.monotonic() + 5
        while len(list(tmp_path.glob("final-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        finals = {int(f.name.split("-")[1]) for f in tmp_path.glob("final-*")}
    assert set(pids[:2]) <= finals


def test_max_memory_per_worker_recycles_a_big_worker():
    limit = 200 * 1024 * 1024
    with Pool(1, max_memory_per_worker=limit) as pool:
        p1 = pool.apply(h.getpid)
        assert pool.apply(h.getpid) == p1, "a small worker is not recycled"
        assert pool.apply(h.hold_memory, (300,)) == p1
        p2 = pool.apply(h.getpid)
        assert p2 != p1, "a worker past max_memory_per_worker must be replaced after its task"
        assert pool.apply(h.getpid) == p2


def test_failing_initializer_gives_worker_init_error(tmp_path):
    log = tmp_path / "init.log"
    pool = Pool(2, initializer=h.init_raises, initargs=(str(log),))
    try:
        r = pool.apply_async(h.square, (3,))
        with pytest.raises(WorkerInitError) as ei:
            r.get(GET)
        text = str(ei.value) + getattr(ei.value, "init_traceback", "")
        assert "Traceback" in text and "no database here" in text and "RuntimeError" in text
        # later tasks fail the same way, at once
        r2 = pool.apply_async(h.square, (4,))
        with pytest.raises(WorkerInitError):
            r2.get(GET)
        with pytest.raises(WorkerInitError):
            pool.map(h.square, range(3))
        # no endless respawn loop: the count of initializer runs settles (a
        # worker already starting when the pool gave up may still run it once)
        time.sleep(1.0)
        starts = len(log.read_text().split())
        time.sleep(1.0)
        later = len(log.read_text().split())
        assert later == starts, f"workers keep being started: {starts} -> {later}"
        assert 3 <= starts <= 3 + 2, f"{starts} initializer runs for 3 failures in a row"
    finally:
        pool.terminate()
        pool.join()


def test_failing_initializer_executor(tmp_path):
    log = tmp_path / "init.log"
    ex = ProcessPoolExecutor(1, initializer=h.init_raises, initargs=(str(log),))
    try:
        fut = ex.submit(h.square, 2)
        with pytest.raises(WorkerInitError, match="no database here"):
            fut.result(GET)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------
# AsyncResult


def test_async_result_api(pool):
    r = pool.apply_async(h.sleep_return, (0.5, "v"))
    assert not r.ready()
    with pytest.raises(ValueError):
        r.successful()
    assert r.wait(0.05) is None
    assert not r.ready()
    with pytest.raises(multiprocessing.TimeoutError):
        r.get(0.05)
    assert r.get(GET) == "v"
    assert r.ready() and r.successful()
    r.wait()  # returns at once when ready

    bad = pool.apply_async(h.raise_value_error, ("x",))
    bad.wait(GET)
    assert bad.ready() and not bad.successful()
    with pytest.raises(ValueError, match="x"):
        bad.get(0)


def test_many_threads_waiting_on_one_result_all_get_it(pool):
    # The first thread that must wait makes the result's gate; the others
    # wait on the same gate, each letting the next through.
    r = pool.apply_async(h.sleep_return, (0.4, "v"))
    got, timeouts = [], []

    def waiter(k):
        if k % 2:
            try:
                r.get(0.05)  # gives up before the result is in
            except multiprocessing.TimeoutError:
                timeouts.append(k)
        got.append(r.get(GET))

    threads = [threading.Thread(target=waiter, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GET)
    assert got == ["v"] * 6 and sorted(timeouts) == [1, 3, 5]
    assert r.get(0) == "v" and r.ready()


def test_remote_traceback_is_attached(pool):
    with pytest.raises(ValueError) as ei:
        pool.apply(h.raise_value_error, ("tb",))
    assert ei.value.__cause__ is not None
    assert "raise_value_error" in str(ei.value.__cause__)


# ---------------------------------------------------------------------------
# executor


def test_executor_submit_and_map_match_the_stdlib(executor):
    std = concurrent.futures.ProcessPoolExecutor(2, mp_context=STD_CTX)
    try:
        for ex in (executor, std):
            assert ex.submit(h.power, 2, exp=5).result(GET) == 32
            assert ex.submit(h.add, 1, b=2).result(GET) == 3
        ours = [list(executor.map(h.square, range(30))),
                list(executor.map(pow, [2, 3, 4], [5, 2, 1])),
                list(executor.map(h.add, range(10), range(5), chunksize=3)),
                list(executor.map(h.square, []))]
        theirs = [list(std.map(h.square, range(30))),
                  list(std.map(pow, [2, 3, 4], [5, 2, 1])),
                  list(std.map(h.add, range(10), range(5), chunksize=3)),
                  list(std.map(h.square, []))]
        assert ours == theirs
    finally:
        std.shutdown(wait=True)
        del std
        collect_semaphores()


def test_executor_map_timeout(executor):
    it = executor.map(h.sleep_return, [1.0, 1.0], ["a", "b"], timeout=0.2)
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        list(it)
    assert time.monotonic() - t < 0.9
    assert list(executor.map(h.square, range(3), timeout=GET)) == [0, 1, 4]


def test_executor_map_chunksize_is_honoured(executor):
    pids = list(executor.map(h.pid_after, [0.01] * 24, chunksize=6))
    assert all(len(g) == 1 for g in _pid_groups(pids, 6)), pids
    with pytest.raises(ValueError):
        executor.map(h.square, range(3), chunksize=0)


def test_executor_map_raises_at_the_failure(executor):
    it = executor.map(h.fail_on, range(6))
    assert [next(it) for _ in range(3)] == [0, 1, 4]
    with pytest.raises(ValueError, match="bad item 3"):
        next(it)


def test_real_futures(executor):
    futs = [executor.submit(h.slow_square, i, 0.01 * (5 - i)) for i in range(5)]
    assert all(isinstance(f, concurrent.futures.Future) for f in futs)
    assert sorted(f.result() for f in concurrent.futures.as_completed(futs, timeout=GET)) == [0, 1, 4, 9, 16]
    done, not_done = concurrent.futures.wait(futs, timeout=GET)
    assert len(done) == 5 and not not_done
    f1 = executor.submit(h.sleep_return, 0.5, "slow")
    f2 = executor.submit(h.square, 3)
    done, not_done = concurrent.futures.wait([f1, f2], timeout=GET, return_when=concurrent.futures.FIRST_COMPLETED)
    assert f2 in done
    fe = executor.submit(h.raise_value_error, "e")
    done, _ = concurrent.futures.wait([fe, f1], timeout=GET, return_when=concurrent.futures.FIRST_EXCEPTION)
    assert fe in done and isinstance(fe.exception(), ValueError)

    async def main():
        a = asyncio.wrap_future(executor.submit(h.square, 6))
        b = asyncio.wrap_future(executor.submit(h.add, 2, 3))
        return await asyncio.wait_for(asyncio.gather(a, b), GET)

    assert asyncio.run(main()) == [36, 5]

    called = []
    f = executor.submit(h.square, 5)
    f.add_done_callback(lambda fut: called.append(fut.result()))
    f.result(GET)
    deadline = time.monotonic() + 5
    while not called and time.monotonic() < deadline:
        time.sleep(0.01)
    assert called == [25]


def test_executor_runtime_error_after_shutdown():
    ex = ProcessPoolExecutor(1)
    assert ex.submit(h.square, 2).result(GET) == 4
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(h.square, 2)
    with pytest.raises(RuntimeError):
        ex.map(h.square, [1])
    ex.shutdown()  # a second shutdown is harmless


def test_executor_context_manager_waits():
    with ProcessPoolExecutor(2) as ex:
        futs = [ex.submit(h.slow_square, i, 0.1) for i in range(4)]
    assert all(f.done() for f in futs)
    assert [f.result(0) for f in futs] == [0, 1, 4, 9]


def test_executor_shutdown_wait_false():
    ex = ProcessPoolExecutor(1)
    try:
        f = ex.submit(h.sleep_return, 0.4, "late")
        t = time.monotonic()
        ex.shutdown(wait=False)
        assert time.monotonic() - t < 0.3, "shutdown(wait=False) must return at once"
        assert f.result(GET) == "late", "submitted work still completes"
    finally:
        ex.shutdown(wait=True)


def test_executor_shutdown_cancel_futures(tmp_path):
    ex = ProcessPoolExecutor(1)
    marker = tmp_path / "started"
    first = ex.submit(h.mark_and_sleep, str(marker), 0.5, "first")
    rest = [ex.submit(h.square, i) for i in range(8)]
    wait_for_file(str(marker))
    t = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - t < GET
    assert first.result(0) == "first", "the running task is not cancelled"
    assert all(f.done() for f in rest), "shutdown(cancel_futures=True) left futures pending"
    cancelled = [f for f in rest if f.cancelled()]
    # as in the stdlib, a task already handed to the worker may still run; the
    # queued ones are cancelled
    assert len(cancelled) >= len(rest) - 2, f"only {len(cancelled)} of {len(rest)} were cancelled"
    for f in rest:
        if not f.cancelled():
            assert f.result(0) in [i * i for i in range(8)]


def test_crash_fails_only_its_own_future(executor):
    futs = [executor.submit(h.slow_square, i, 0.05) for i in range(6)]
    bad = executor.submit(h.kill_self)
    futs += [executor.submit(h.slow_square, i, 0.05) for i in range(6, 10)]
    with pytest.raises(WorkerCrashedError) as ei:
        bad.result(GET)
    assert ei.value.signal == 9 and ei.value.exitcode == -9
    assert [f.result(GET) for f in futs] == [i * i for i in range(10)]
    # unlike the stdlib's BrokenProcessPool: the executor is still usable
    assert executor.submit(h.square, 11).result(GET) == 121
    assert list(executor.map(h.square, range(5))) == [0, 1, 4, 9, 16]
    exit0 = executor.submit(h.exit_self, 0)
    with pytest.raises(WorkerCrashedError):
        exit0.result(GET)
    assert executor.submit(h.square, 12).result(GET) == 144


def test_crash_fails_only_its_own_pool_task(pool):
    rs = [pool.apply_async(h.slow_square, (i, 0.05)) for i in range(6)]
    bad = pool.apply_async(h.kill_self)
    with pytest.raises(WorkerCrashedError):
        bad.get(GET)
    assert [r.get(GET) for r in rs] == [i * i for i in range(6)]
    it = pool.imap(h.fail_on, range(6))
    assert [next(it) for _ in range(3)] == [0, 1, 4]
    with pytest.raises(ValueError, match="bad item 3"):
        next(it)
    assert list(it) == [16, 25], "imap goes on after a failed item"
    assert pool.apply(h.square, (5,)) == 25


# ---------------------------------------------------------------------------
# cancel


@pytest.mark.parametrize("same_fn", [False, True], ids=["other_fn", "same_fn"])
def test_async_result_cancel_pending_does_not_kill_running(tmp_path, same_fn):
    """Pending includes handed to the worker but not started (same_fn: possibly
    in the very batch of the running task)."""
    marker = tmp_path / "started"
    with Pool(1) as pool:
        running = pool.apply_async(h.mark_and_sleep, (str(marker), 0.6, "first"))
        if same_fn:
            pending = pool.apply_async(h.mark_and_sleep, (str(tmp_path / "second"), 0, "second"))
        else:
            pending = pool.apply_async(h.square, (5,))
        queued = [pool.apply_async(h.slow_square, (i, 0.0)) for i in range(3)]
        pid = int(wait_for_file(str(marker)))
        assert pending.cancel() is True
        assert pending.cancelled() is True
        with pytest.raises(concurrent.futures.CancelledError):
            pending.get(GET)
        assert pending.ready()
        assert running.get(GET) == "first", "cancelling a pending task must not touch the running one"
        assert not running.cancelled()
        assert [r.get(GET) for r in queued] == [0, 1, 4]
        assert pool.apply(h.getpid) == pid, "the worker was killed by a pending task's cancel"
        assert running.cancel() is False, "a finished task cannot be cancelled"
        assert running.cancelled() is False and running.get(0) == "first"


def test_async_result_cancel_running(tmp_path):
    marker = tmp_path / "started"
    with Pool(1) as pool:
        r = pool.apply_async(h.mark_and_sleep, (str(marker), 60))
        after = pool.apply_async(h.square, (4,))
        pid = int(wait_for_file(str(marker)))
        t = time.monotonic()
        assert r.cancel() is True
        assert r.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            r.get(GET)
        assert after.get(GET) == 16, "the task queued behind the cancelled one still runs"
        assert time.monotonic() - t < 5
        assert pool.apply(h.getpid) != pid, "the running task's worker is killed and replaced"
        assert pool.map(h.square, range(4)) == [0, 1, 4, 9]


@pytest.mark.parametrize("same_fn", [False, True], ids=["other_fn", "same_fn"])
def test_executor_cancel_pending_and_running(tmp_path, same_fn):
    marker = tmp_path / "started"
    with ProcessPoolExecutor(1) as ex:
        running = ex.submit(h.mark_and_sleep, str(marker), 60)
        if same_fn:
            pending = ex.submit(h.mark_and_sleep, str(tmp_path / "second"), 0, "second")
        else:
            pending = ex.submit(h.square, 5)
        later = [ex.submit(h.square, i) for i in range(3)]
        pid = int(wait_for_file(str(marker)))
        assert running.cancel() is False, "Future.cancel() keeps the stdlib meaning: pending only"
        assert ex.cancel(pending) is True
        assert pending.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            pending.result(GET)
        time.sleep(0.3)  # a wrongful kill would have settled the running future by now
        assert running.running() and not running.done(), "cancelling a pending task killed the running one"
        assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        assert ex.cancel(running) is True
        assert running.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            running.result(GET)
        assert [f.result(GET) for f in later] == [0, 1, 4]
        assert ex.submit(h.getpid).result(GET) != pid
        done = ex.submit(h.square, 2)
        assert done.result(GET) == 4
        assert ex.cancel(done) is False and not done.cancelled()


def test_cancel_is_seen_by_wait_and_as_completed(tmp_path):
    marker = tmp_path / "started"
    with ProcessPoolExecutor(1) as ex:
        running = ex.submit(h.mark_and_sleep, str(marker), 60)
        wait_for_file(str(marker))
        waiter = threading.Thread(target=lambda: concurrent.futures.wait([running], timeout=GET))
        waiter.start()
        time.sleep(0.1)
        assert ex.cancel(running)
        waiter.join(5)
        assert not waiter.is_alive(), "wait() did not wake up on a forced cancel"
        assert list(concurrent.futures.as_completed([running], timeout=5)) == [running]


# ---------------------------------------------------------------------------
# callbacks that raise


def _bad_callback(value):
    raise RuntimeError(f"callback failed on {value!r}")


def _exiting_callback(value):
    raise SystemExit(2)


@pytest.mark.parametrize("bad_cb", [_bad_callback, _exiting_callback], ids=["raises", "sys_exit"])
def test_raising_callback_is_logged_and_result_delivered(pool, bad_cb):
    with Records("sharkcage") as rec:
        r = pool.apply_async(h.square, (6,), callback=bad_cb)
        assert r.get(GET) == 36
        e = pool.apply_async(h.raise_value_error, ("E",), error_callback=bad_cb)
        with pytest.raises(ValueError, match="E"):
            e.get(GET)
        m = pool.map_async(h.square, range(3), callback=bad_cb)
        assert m.get(GET) == [0, 1, 4]
        deadline = time.monotonic() + 5
        while len(rec.errors()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(rec.errors()) >= 3, [r.getMessage() for r in rec.records]
    assert any(r.exc_info for r in rec.errors())
    # the pool carries on, callbacks included
    got = []
    assert pool.apply_async(h.square, (2,), callback=got.append).get(GET) == 4
    assert got == [4]


@pytest.mark.parametrize("bad_cb", [_bad_callback, _exiting_callback], ids=["raises", "sys_exit"])
def test_raising_done_callback_is_logged(executor, bad_cb):
    with Records("sharkcage") as rec:
        f = executor.submit(h.square, 7)
        f.add_done_callback(bad_cb)
        assert f.result(GET) == 49
        deadline = time.monotonic() + 5
        while not rec.errors() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert rec.errors(), "a raising done-callback must be logged on the 'sharkcage' logger"
    assert executor.submit(h.square, 3).result(GET) == 9


# ---------------------------------------------------------------------------
# serialization at submit time


def test_unpicklable_argument_fails_at_submit(pool, executor):
    lock = threading.Lock()
    with pytest.raises(SerializationError) as ei:
        pool.apply_async(h.square, (lock,))
    assert ei.value.direction == "argument"
    with pytest.raises(SerializationError):
        executor.submit(h.square, lock)
    assert pool.apply(h.square, (3,)) == 9
