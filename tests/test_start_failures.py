"""Workers that cannot even be started, and pools inside daemonic processes.

A worker whose ``Process.start()`` fails (no more processes, no memory) is
tried again, and after three failures in a row the pool fails its tasks with
WorkerInitError instead of waiting for a worker that will never come. A
daemonic process (a Dask worker, a stdlib ``daemon=True`` Process) may create
a sharkcage pool: its workers cannot outlive it.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import context as mp_context
from multiprocessing import popen_forkserver

import pytest

from sharkcage import Pool, WorkerInitError

pytestmark = pytest.mark.timeout(60)


class _RefusedPopen(popen_forkserver.Popen):
    def __init__(self, process_obj):
        raise OSError(11, "Resource temporarily unavailable (fork refused)")


class _RefusedProcess(mp_context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj):
        return _RefusedPopen(process_obj)


class RefusingContext(mp_context.ForkServerContext):
    """A real forkserver context whose process starts always fail, as under
    a process limit (ulimit -u) or with no memory left."""

    Process = _RefusedProcess


def test_workers_that_never_start_fail_the_tasks_instead_of_hanging():
    pool = Pool(2, context=RefusingContext())
    try:
        r = pool.apply_async(abs, (-1,))
        with pytest.raises(WorkerInitError) as info:
            r.get(20)
        assert "fork refused" in str(info.value)
        with pytest.raises(WorkerInitError):
            pool.map(abs, [1, 2, 3])
    finally:
        pool.terminate()
        pool.join()


def _pool_in_daemon(q):
    from sharkcage import Pool

    try:
        with Pool(2) as p:
            q.put(("ok", p.map(abs, [-1, -2, -3])))
    except BaseException as e:  # noqa: BLE001 - report whatever happened
        q.put(("error", f"{type(e).__name__}: {e}"))


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_a_daemonic_process_can_create_a_pool(method):
    ctx = multiprocessing.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=_pool_in_daemon, args=(q,), daemon=True)
    p.start()
    try:
        assert q.get(timeout=40) == ("ok", [1, 2, 3])
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()
        q.close()
        q.join_thread()
