"""Guarantee 12 through the pools: big buffers in and out of tasks via shared memory.

Arguments and results of ``shm_threshold`` bytes or more travel through
/dev/shm, arrive writable and behave like copies (a retry after a crash sees
the original argument), ``pool.stats().shm_bytes`` counts them, and no
segment outlives its use: close, terminate, a worker crash mid-transfer, a
task timeout, a cancelled task, Ctrl-C and a SIGKILLed parent.
"""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import signal
import time

import numpy as np
import pytest

import shm_helpers as sh
from sharkcage import Pool, ProcessPoolExecutor, SerializationError, TaskTimeoutError, WorkerCrashedError
from sharkcage._engine import shm

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not shm.available(), reason="needs a tmpfs at /dev/shm"),
]

MB = 1 << 20


def entries(root: str) -> list[str]:
    return sh.worker_root_entries(root)


def wait_no_entries(root: str, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = entries(root)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture
def pool():
    p = Pool(2)
    root = p._backend.shm_root
    yield p
    p.terminate()
    p.join()
    assert wait_no_entries(root) == []


def test_big_arrays_in_and_out(pool):
    a = np.random.default_rng(0).random(4 * MB // 8)
    assert pool.apply(sh.total, (a,)) == pytest.approx(float(a.sum()))
    sums = pool.map(sh.total, [a * k for k in range(4)])
    assert sums == pytest.approx([float((a * k).sum()) for k in range(4)])
    out = pool.apply(sh.make_array, (2 * MB // 8, 3.0))
    assert type(out) is np.ndarray and out.flags.writeable and out.shape == (2 * MB // 8,)
    assert float(out.sum()) == 3.0 * out.size
    out[:] = 0  # ours now
    stats = pool.stats()
    assert stats.shm_bytes >= 5 * a.nbytes + out.nbytes


def test_big_results_of_one_chunk_each_go_through_shared_memory(pool):
    """A chunk whose results are big arrays is not sent as one in-band pickle
    (the batch pickle stops at the first big buffer): each array still
    travels through shared memory, and arrives writable."""
    before = pool.stats().shm_bytes
    outs = pool.starmap(sh.make_array, [(2 * MB // 8, float(k)) for k in range(3)], chunksize=3)
    assert [float(o[0]) for o in outs] == [0.0, 1.0, 2.0]
    assert all(o.flags.writeable for o in outs)
    assert pool.stats().shm_bytes - before >= 3 * 2 * MB


def test_what_a_task_receives(pool):
    sent = [np.ones(MB), bytes(2 * MB), bytearray(2 * MB), memoryview(np.ones((512, 512))),
            np.asfortranarray(np.ones((512, 512))), np.arange(4 * MB // 8.0)[::2]]
    got = pool.map(sh.describe, sent)
    assert got[0][:2] == ("ndarray", True) and got[0][2] is False  # a view of shared memory
    assert got[1][0] == "bytes" and got[2][0] == "bytearray"
    assert got[3][:2] == ("memoryview", True)
    assert got[4][:2] == ("ndarray", True) and got[5][4] == float(sent[5].sum())
    back = pool.map(sh.identity, sent[:4])
    for s, b in zip(sent, back):
        assert type(b) is type(s)
        assert bytes(memoryview(b).cast("B")) == bytes(memoryview(s).cast("B"))
    assert not memoryview(back[3]).readonly and back[2] == sent[2]


def test_big_bytes_and_str_results_go_through_shared_memory_too(pool):
    """Guarantee 12 for results that are builtin data: a big bytes, bytearray
    or str result is not sent in the pickle of its batch, alone or in a chunk."""
    sent = [bytes(2 * MB), bytearray(2 * MB), "s" * (2 * MB)]
    before = pool.stats().shm_bytes
    back = pool.map(sh.identity, sent, chunksize=3)  # one chunk, three big results
    assert back == sent and [type(b) for b in back] == [bytes, bytearray, str]
    one = pool.apply(sh.identity, (sent[0],))
    assert one == sent[0]
    moved = pool.stats().shm_bytes - before
    # arguments (2 MB x 4) and results (2 MB x 4) both
    assert moved >= 2 * 4 * 2 * MB, moved


def test_arguments_behave_like_copies(pool):
    a = np.ones(MB // 8)
    assert pool.apply(sh.scale_in_place, (a, 5.0)) == 5.0
    assert a[0] == 1.0


def test_a_retry_after_a_crash_sees_the_original_argument(tmp_path):
    a = np.full(MB // 8, 7.0)
    with Pool(1, retries=1) as p:
        root = p._backend.shm_root
        assert p.apply(sh.scribble_then_crash_once, (a, str(tmp_path / "crashed"))) == 7.0
        assert p.stats().crashes == 1
    assert wait_no_entries(root) == []


def test_worker_crash_mid_transfer_leaves_nothing():
    with Pool(1) as p:
        root = p._backend.shm_root
        with pytest.raises(WorkerCrashedError):
            p.apply(sh.die_while_returning, (MB,))
        # the result's array segment was written before the worker died: reaped
        assert entries(root) == []
        assert p.apply(sh.total, (np.ones(MB),)) == MB  # the pool goes on
    assert wait_no_entries(root) == []


def test_task_timeout_releases_its_arguments():
    with Pool(1, task_timeout=0.5) as p:
        root = p._backend.shm_root
        with pytest.raises(TaskTimeoutError):
            p.apply(sh.sleep_with, (np.ones(MB), 30))
        assert wait_no_entries(root) == []  # settled: its argument's segment is gone
        assert p.apply(sh.total, (np.ones(MB),)) == MB


def test_cancelled_task_releases_its_arguments():
    with Pool(1) as p:
        root = p._backend.shm_root
        blocker = p.apply_async(sh.sleep_with, (np.zeros(10), 1.0))
        pending = p.apply_async(sh.total, (np.ones(MB),))
        assert len(entries(root)) == 1
        assert pending.cancel()
        del pending
        blocker.get(10)
        assert wait_no_entries(root) == []


def test_close_and_join_leave_nothing():
    p = Pool(2)
    root = p._backend.shm_root
    results = [p.apply_async(sh.make_array, (MB // 8, float(i))) for i in range(6)]
    p.close()
    p.join()
    assert [r.get().sum() for r in results] == [float(i) * (MB // 8) for i in range(6)]
    assert wait_no_entries(root) == []


def test_terminate_with_transfers_in_flight_leaves_nothing():
    p = Pool(2)
    root = p._backend.shm_root
    results = [p.apply_async(sh.sleep_with, (np.ones(MB), 30)) for _ in range(4)]
    time.sleep(0.3)
    assert entries(root)
    p.terminate()
    p.join()
    for r in results:
        with pytest.raises(Exception):
            r.get(5)
    del results
    assert wait_no_entries(root) == []


def test_shm_threshold_is_the_pool_option():
    with Pool(1, shm_threshold=64 * 1024) as p:
        p.apply(sh.total, (np.ones(10_000),))  # 80 KB: through shared memory
        assert p.stats().shm_bytes == 80_000
    with Pool(1) as p:
        p.apply(sh.total, (np.ones(10_000),))  # below the default 1 MiB
        assert p.stats().shm_bytes == 0


def test_too_big_for_dev_shm_fails_at_submit():
    huge = np.broadcast_to(np.zeros(1), (shm.shm_free_bytes() // 8 + MB,))
    with Pool(1) as p:
        with pytest.raises(SerializationError, match="of shared memory but /dev/shm has only"):
            p.apply(sh.total, (huge,))
        assert p.apply(sh.total, (np.ones(3),)) == 3.0


def test_share_is_unpickled_at_most_once_per_worker():
    obj = sh.CountsLoads({"a": np.arange(MB // 8.0), "b": np.ones((300, 300))})
    expected = float(obj.payload["a"].sum() + obj.payload["b"].sum())
    with Pool(2) as p:
        root = p._backend.shm_root
        h = p.share(obj)
        assert len(pickle.dumps(h)) < 300
        reports = p.starmap(sh.share_report, [(h, i) for i in range(40)], chunksize=1)
        per_pid = {}
        for pid, loads_here, obj_id, readonly, total in reports:
            per_pid.setdefault(pid, set()).add((loads_here, obj_id))
            assert readonly and total == expected
        for pid, seen in per_pid.items():
            assert len(seen) == 1 and next(iter(seen))[0] == 1, (pid, seen)
    assert wait_no_entries(root) == []


def test_shared_array_through_the_pool_seed_002():
    from sharkcage import SharedArray

    with SharedArray(1, np.int64) as counter, Pool(2) as p:
        p.map(sh.add_100, [counter, counter], chunksize=1)
        assert counter[0] == 200


def test_executor_big_arrays():
    with ProcessPoolExecutor(2) as ex:
        root = ex._backend.shm_root
        futs = [ex.submit(sh.total, np.full(MB // 8, float(i))) for i in range(4)]
        concurrent.futures.wait(futs, 30)
        assert sorted(f.result() for f in futs) == [float(i) * (MB // 8) for i in range(4)]
        back = ex.submit(sh.make_array, MB // 8, 2.0).result(30)
        assert back.flags.writeable and back[0] == 2.0
    assert wait_no_entries(root) == []


def _stop(proc):
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait(10)
    proc.stdout.close()
    proc._sc_stderr.close()


def test_ctrl_c_leaves_nothing():
    proc, root, held = sh.start_pool_script()
    try:
        assert root and len(held) >= 2  # the share and the arguments in flight
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(10)
        assert proc.returncode != 0
    finally:
        _stop(proc)
    left = wait_no_entries(root)
    shm.unlink(left)
    assert not left


def test_parent_sigkill_leaves_nothing():
    proc, root, held = sh.start_pool_script()
    try:
        assert root and len(held) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        _stop(proc)
    left = wait_no_entries(root, timeout=5)
    shm.unlink(left)
    assert not left, f"segments outlived the SIGKILLed parent by 5 s: {left}"
