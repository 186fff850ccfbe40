"""Pool lifecycle: terminate() never leaves a waiter hanging, a forgotten pool
cleans up after itself, close()+join() waits for the work, and many short-lived
pools leave no process, fd or thread behind."""

from __future__ import annotations

import concurrent.futures
import gc
import os
import threading
import textwrap
import time

import psutil
import pytest

from sharkcage import Pool, ProcessPoolExecutor, SharkcageError

from . import helpers

pytestmark = pytest.mark.timeout(30)


def _sharkcage_threads():
    return [t for t in threading.enumerate() if t.name.startswith("sharkcage")]


def test_terminate_fails_outstanding_results_instead_of_hanging(tmp_path):
    pool = Pool(1)
    running = pool.apply_async(helpers.touch_and_sleep, (str(tmp_path), 30, "r"))
    queued = [pool.apply_async(helpers.square, (i,)) for i in range(3)]
    mapped = pool.map_async(helpers.sleep_return, [5, 5, 5])
    it = pool.imap(helpers.sleep_return, [5, 5])
    unordered = pool.imap_unordered(helpers.sleep_return, [5, 5])
    assert helpers.wait_for_files(str(tmp_path), "started-", 1, 10)
    t0 = time.monotonic()
    pool.terminate()
    for r in [running, *queued, mapped]:
        with pytest.raises(SharkcageError):
            r.get(5)
        assert r.ready() and not r.successful()
    for i in (it, unordered):
        with pytest.raises(SharkcageError):
            i.next(5)
    assert time.monotonic() - t0 < 5
    pool.join()
    # a terminated pool refuses new work (as the stdlib's)
    with pytest.raises(ValueError):
        pool.apply_async(helpers.square, (1,))


def test_results_waited_on_in_other_threads_are_released_by_terminate(tmp_path):
    pool = Pool(1)
    r = pool.apply_async(helpers.sleep_return, (30,))
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
    assert not t.is_alive(), "a get() without timeout still hangs after terminate()"
    assert len(outcome) == 1 and isinstance(outcome[0], SharkcageError)


def test_executor_shutdown_cancel_futures_releases_pending_futures(tmp_path):
    ex = ProcessPoolExecutor(1)
    running = ex.submit(helpers.touch_and_sleep, str(tmp_path), 0.8, "ran")
    assert helpers.wait_for_files(str(tmp_path), "started-", 1, 10), "the first task never started"
    pending = [ex.submit(helpers.sleep_return, 5) for _ in range(4)]
    t0 = time.monotonic()
    ex.shutdown(wait=False, cancel_futures=True)
    for f in pending:
        with pytest.raises((concurrent.futures.CancelledError, SharkcageError)):
            f.result(5)
    # a task already running is not cancelled by shutdown (stdlib meaning)
    assert running.result(5) == "ran"
    ex.shutdown(wait=True)
    assert time.monotonic() - t0 < 5


def _worker_pids(pool, n=2):
    return set(pool.map(helpers.sleep_pid, [0.1] * (2 * n), chunksize=1))


def test_garbage_collected_pool_workers_exit():
    pool = Pool(2)
    pids = _worker_pids(pool)
    assert pids
    del pool
    gc.collect()
    left = helpers.wait_gone(pids, 5)
    assert not left, "workers of a garbage-collected pool are still alive:\n" + helpers.describe(left)


def test_garbage_collected_busy_pool_workers_exit(tmp_path):
    pool = Pool(2)
    results = [pool.apply_async(helpers.touch_and_sleep, (str(tmp_path), 30, i)) for i in range(2)]
    names = helpers.wait_for_files(str(tmp_path), "started-", 2, 10)
    pids = {int(n.split("-")[1]) for n in names}
    del pool
    gc.collect()
    left = helpers.wait_gone(pids, 5)
    assert not left, helpers.describe(left)
    for r in results:
        with pytest.raises(SharkcageError):
            r.get(5)


def test_garbage_collected_executor_workers_exit():
    ex = ProcessPoolExecutor(2)
    pids = {f.result(15) for f in [ex.submit(helpers.sleep_pid, 0.1) for _ in range(4)]}
    del ex
    gc.collect()
    assert not helpers.wait_gone(pids, 5)


def test_close_join_waits_for_the_work(tmp_path):
    pool = Pool(2)
    pids = _worker_pids(pool)
    t0 = time.monotonic()
    results = [pool.apply_async(helpers.touch_and_sleep, (str(tmp_path), 0.4, i)) for i in range(4)]
    mapped = pool.map_async(helpers.sleep_return, [0.2] * 4, 1)
    pool.close()
    with pytest.raises(ValueError):
        pool.apply_async(helpers.square, (1,))
    pool.join()
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.8, f"join() returned after {elapsed:.2f} s, before the work was done"
    assert all(r.ready() and r.successful() for r in results)
    assert [r.get(0) for r in results] == [0, 1, 2, 3]
    assert mapped.get(0) == [0.2] * 4
    assert len(os.listdir(tmp_path)) == 4
    assert not helpers.wait_gone(pids, 3), "workers outlived close()+join()"


def test_join_while_running_is_an_error():
    with Pool(1) as pool:
        with pytest.raises(ValueError):
            pool.join()


def test_imap_started_before_close_finishes():
    pool = Pool(2)
    it = pool.imap(helpers.square, range(50))
    pool.close()
    assert list(it) == [x * x for x in range(50)]
    pool.join()


def _fd_count():
    return len(os.listdir("/proc/self/fd"))


def _children():
    """Live descendants, without the zygote's services (it, its spare and the
    resource tracker: one each per process, the spare renewed as it is used)."""
    from sharkcage._engine import zygote

    services = zygote.service_pids()
    me = psutil.Process()
    out = set()
    for p in me.children(recursive=True):
        try:
            if p.pid not in services and p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
        except psutil.Error:
            pass
    return out


def test_fifty_quick_cycles_leave_nothing_behind():
    def cycle(how):
        if how == 0:
            with Pool(2) as pool:
                assert pool.map(helpers.square, range(10)) == [x * x for x in range(10)]
        elif how == 1:
            pool = Pool(2)
            assert pool.map(helpers.square, range(10)) == [x * x for x in range(10)]
            pool.close()
            pool.join()
        else:
            with ProcessPoolExecutor(2) as ex:
                assert list(ex.map(helpers.square, range(10))) == [x * x for x in range(10)]

    for how in range(3):
        cycle(how)  # warm up: the forkserver and its pipes exist from here on
    gc.collect()
    time.sleep(0.2)
    fds, children, threads = _fd_count(), _children(), len(_sharkcage_threads())
    t0 = time.monotonic()
    for i in range(50):
        cycle(i % 3)
    assert time.monotonic() - t0 < 25
    gc.collect()
    deadline = time.monotonic() + 5
    while True:
        # One reading for the check and the message: the zygote's spare is
        # renewed at any moment, and is unnamed (not yet a "service") for
        # the first microseconds of its life.
        fds_now, left, threads_now = _fd_count(), _children() - children, _sharkcage_threads()
        if (fds_now <= fds and not left and len(threads_now) <= threads) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert fds_now <= fds, f"fds: {fds} before 50 cycles, {fds_now} after"
    assert not left, "processes left:\n" + helpers.describe(left)
    assert len(threads_now) <= threads, [t.name for t in threads_now]


JOIN_CTRL_C = textwrap.dedent(
    """
    import os, signal, threading, time
    from sharkcage import Pool

    if __name__ == "__main__":
        pool = Pool(2)
        pool.apply_async(time.sleep, (60,))
        pool.close()
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        t = time.monotonic()
        try:
            pool.join()          # waits for a 60 s task: Ctrl-C must get through
        except KeyboardInterrupt:
            print("INTERRUPTED %.2f" % (time.monotonic() - t), flush=True)
    """
)


def test_ctrl_c_during_join_stops_the_pool():
    """join() after close() waits for the work, but a Ctrl-C stops it at once."""
    proc = helpers.run_python(["-c", JOIN_CTRL_C], timeout=20)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("INTERRUPTED")]
    assert lines, proc.stdout + proc.stderr[-2000:]
    assert float(lines[0].split()[1]) < 1.0 + 2.0
    assert proc.returncode == 0, proc.stderr[-2000:]
