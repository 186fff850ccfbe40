"""Guarantee 1: no deadlock from fork-after-threads; the default start method is safe.

Seed 000: a parent thread logs in a loop through a QueueHandler while the
program creates pools; with ``fork`` a worker inherits a lock held by a thread
that does not exist in the child and hangs forever.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import time
from logging.handlers import QueueHandler, QueueListener

import pytest

import sharkcage
from sharkcage import Pool, ProcessPoolExecutor, UnsafeForkError, WorkerCrashedError

from . import helpers

pytestmark = pytest.mark.timeout(30)


class _BusyThread:
    """A foreign (non-sharkcage) thread, alive for the duration of a ``with``."""

    def __init__(self, target=None):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=target or self.stop.wait, name="foreign-test-thread", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


def test_seed000_logging_thread_and_queue_handler_many_pool_cycles():
    """The seed's program: a thread logging in a loop through a QueueHandler,
    while pools are created and apply() is called again and again: no hang."""
    log_queue: queue.Queue = queue.Queue()
    sink = helpers.ListHandler()
    listener = QueueListener(log_queue, sink)
    logger = logging.getLogger("sharks.seed000")
    handler = QueueHandler(log_queue)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.ERROR)
    listener.start()
    stop = threading.Event()
    logged = [0]

    def write_logs():
        while not stop.is_set():
            logger.error("hello, I just did something")
            logged[0] += 1

    t = threading.Thread(target=write_logs, name="seed000-logger")
    t.start()
    try:
        deadline = time.monotonic() + 20
        pids = set()
        for _ in range(15):
            with Pool(2) as pool:  # default start method
                pids.add(pool.apply(helpers.log_in_subprocess))
            assert time.monotonic() < deadline, "pool cycles are far too slow (a hang in the making)"
        assert len(pids) >= 2
        assert logged[0] > 0
    finally:
        stop.set()
        t.join(5)
        listener.stop()
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    # the workers' own records reached the parent's queue handler too
    worker_records = [r for r in sink.records if r.getMessage() == "hello, I did something"]
    assert len(worker_records) == 15


@pytest.mark.parametrize("api", ["pool", "executor"])
def test_default_start_method_does_not_inherit_locks_held_by_parent_threads(api):
    """A lock held by another parent thread at worker start is free in the worker
    with the default start method (with fork it would be held forever)."""
    release = threading.Event()
    acquired = threading.Event()

    def holder():
        with helpers.HELD_LOCK:
            acquired.set()
            release.wait(20)

    t = threading.Thread(target=holder, name="lock-holder")
    t.start()
    try:
        assert acquired.wait(5)
        if api == "pool":
            with Pool(2) as pool:
                results = [pool.apply_async(helpers.try_held_lock, (2.0,)) for _ in range(4)]
                assert [r.get(10) for r in results] == [True] * 4
        else:
            with ProcessPoolExecutor(2) as ex:
                assert [f.result(10) for f in [ex.submit(helpers.try_held_lock, 2.0) for _ in range(4)]] == [True] * 4
    finally:
        release.set()
        t.join(5)


def _sharkcage_threads():
    return {t for t in threading.enumerate() if t.name.startswith("sharkcage")}


def test_fork_with_foreign_thread_raises_unsafe_fork_error():
    threads_before = _sharkcage_threads()
    with _BusyThread():
        with pytest.raises(UnsafeForkError) as info:
            Pool(2, start_method="fork")
        assert isinstance(info.value, sharkcage.SharkcageError)
        with pytest.raises(UnsafeForkError):
            Pool(2, context=multiprocessing.get_context("fork"))
        with pytest.raises(UnsafeForkError):
            ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
        with pytest.raises(UnsafeForkError):
            ProcessPoolExecutor(2, start_method="fork")
    # a constructor that raised leaves no thread of its own behind
    deadline = time.monotonic() + 2
    while _sharkcage_threads() - threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _sharkcage_threads() - threads_before, sorted(t.name for t in _sharkcage_threads() - threads_before)


def test_fork_with_foreign_thread_allowed_when_forced():
    with _BusyThread():
        with Pool(2, start_method="fork", allow_unsafe_fork=True) as pool:
            assert pool.map(helpers.square, range(10)) == [x * x for x in range(10)]
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"), allow_unsafe_fork=True) as ex:
            assert list(ex.map(helpers.square, range(5))) == [0, 1, 4, 9, 16]


def test_fork_without_foreign_threads_is_accepted():
    others = [t for t in threading.enumerate() if t is not threading.current_thread()
              and not getattr(t, "_sharkcage_own", False)]
    assert not others, f"test precondition: no foreign threads, found {others}"
    with Pool(2, start_method="fork") as pool:
        assert pool.map(helpers.square, range(10)) == [x * x for x in range(10)]


def test_fork_safety_checked_again_when_a_worker_is_replaced():
    """A fork pool created while single-threaded must not fork a replacement
    worker once a foreign thread runs: the next task fails with UnsafeForkError
    instead of risking a deadlock; nothing hangs, terminate() is prompt and the
    pool's threads end."""
    threads_before = _sharkcage_threads()
    pool = Pool(1, start_method="fork")
    try:
        assert pool.apply(helpers.square, (3,)) == 9
        with _BusyThread():
            with pytest.raises(WorkerCrashedError):
                pool.apply_async(helpers.crash, ("os_exit",)).get(10)
            with pytest.raises(UnsafeForkError):
                pool.apply_async(helpers.square, (4,)).get(10)
    finally:
        t0 = time.monotonic()
        pool.terminate()
        elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"terminate() took {elapsed:.1f} s"
    deadline = time.monotonic() + 2
    while _sharkcage_threads() - threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _sharkcage_threads() - threads_before, sorted(t.name for t in _sharkcage_threads() - threads_before)
