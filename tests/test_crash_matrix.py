"""The crash matrix: a fault on every side of a task's round trip, for Pool and executor.

Sides (in the order a task travels):

* ``task_pickle``     -- the parent pickles the argument
* ``task_unpickle``   -- the worker unpickles it
* ``run``             -- the worker runs the task
* ``result_pickle``   -- the worker pickles the result
* ``result_unpickle`` -- the parent unpickles the result

Faults (tests/crash_helpers.py): a raised error, ``sys.exit``, the C
library's ``exit()`` and a segmentation fault. Expected outcomes follow
CONTRACT.md ("Errors", "What fails when a worker dies"); each cell checks a
single task, a map of several items (``map`` raises the first failure) and
the lazy iterators (``imap``/``imap_unordered``/executor ``map``: every other
item is delivered, right), and then that the same pool serves a normal task.

Both pools are shared by every cell of the module (one per API), so the
matrix also checks that a pool survives all the faults one after the other.
Sharing them means crashed workers are replaced by new pids during a test,
which conftest's per-test "new child process" check would call a leak: this
module overrides that fixture with a check on the *number* of live children
(no more than the shared pools' workers), and checks at module end, after
terminating both pools, that no child at all is left.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import time

import psutil
import pytest

import crash_helpers as ch
from conftest import _children, leftover_children
from sharkcage import (
    Pool,
    ProcessPoolExecutor,
    RemoteError,
    SerializationError,
    WorkerCrashedError,
)

pytestmark = pytest.mark.timeout(30)

PROCESSES = 2
GET = 20  # seconds any single wait may take before the test calls it a hang

SIDES = ("task_pickle", "task_unpickle", "run", "result_pickle", "result_unpickle")

# Cells that are not generated, and why: the fault would hit the parent
# process itself, which cannot survive it (nor can pytest).
NOT_GENERATED = {
    ("task_pickle", "cexit"): "the parent pickles arguments: a C exit() there ends the caller's own process",
    ("task_pickle", "segv"): "the parent pickles arguments: a segfault there kills the caller's own process",
    ("result_unpickle", "cexit"): "the parent unpickles results: a C exit() there ends the caller's own process",
    ("result_unpickle", "segv"): "the parent unpickles results: a segfault there kills the caller's own process",
}

CELLS = [(side, kind) for side in SIDES for kind in ch.FAULTS if (side, kind) not in NOT_GENERATED]
APIS = ("pool", "executor")
CRASHES = ("cexit", "segv")

BAD = 4  # index of the faulty item in the multi-item calls
N_ITEMS = 8
CHUNK = 3  # the faulty item sits in the middle of the chunk [3, 4, 5]


def test_matrix_shape():
    """Every side x fault cell is either generated or excluded with a reason."""
    assert len(CELLS) + len(NOT_GENERATED) == len(SIDES) * len(ch.FAULTS)
    assert all(reason for reason in NOT_GENERATED.values())
    assert len(CELLS) == 16


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def pools():
    before = set(_children())
    pool = Pool(PROCESSES)
    ex = ProcessPoolExecutor(PROCESSES)
    try:
        yield {"pool": pool, "executor": ex}
    finally:
        pool.terminate()
        pool.join()
        ex.shutdown(wait=True, cancel_futures=True)
    left = leftover_children(before)
    assert not left, f"the shared pools left children behind: {[p.pid for p in left]}"


def _live_children() -> set[int]:
    out = set()
    for pid, p in _children().items():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.Error:
            pass
    return out


def stable_workers(expected: int = 2 * PROCESSES, wait: float = 10.0) -> set[int]:
    """The pids of the shared pools' workers, once there are exactly ``expected``."""
    deadline = time.monotonic() + wait
    while True:
        live = _live_children()
        if len(live) == expected:
            return live
        if time.monotonic() >= deadline:
            pytest.fail(f"the shared pools should run {expected} workers, found {len(live)}: {sorted(live)}")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def no_leftover_children(pools):
    """Overrides conftest's: with pools shared across tests, a crash replaces a
    worker by a new pid; a leak is then *more* live children than workers."""
    yield
    stable_workers()


# ---------------------------------------------------------------------------
# expected outcomes


def raised(fn):
    """The exception ``fn()`` raises (BaseException included); fails if none."""
    try:
        value = fn()
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - SystemExit is an outcome here
        return e
    pytest.fail(f"expected a failure, got the value {value!r}")


def check_outcome(exc: BaseException, side: str, kind: str, index: int | None = None) -> None:
    """``exc`` is what CONTRACT.md promises for a fault ``kind`` on ``side``."""
    if isinstance(exc, SerializationError) and index is not None:
        # "Its message names the task (its index in a map, or its call)"
        assert re.search(rf"\b{index}\b", str(exc)), f"the message should name task {index}: {exc}"
    if side == "task_pickle":
        assert isinstance(exc, SerializationError), repr(exc)
        assert exc.direction == "argument"
        assert "FaultAtPickle" in str(exc), str(exc)
        return
    if kind in CRASHES:  # task_unpickle, run, result_pickle: the worker died
        assert isinstance(exc, WorkerCrashedError), repr(exc)
        assert isinstance(exc.pid, int) and exc.pid != os.getpid()
        if kind == "segv":
            assert exc.exitcode == -signal.SIGSEGV and exc.signal == signal.SIGSEGV, (exc.exitcode, exc.signal)
            assert "SIGSEGV" in str(exc)
        else:
            assert exc.exitcode == 0 and exc.signal is None, (exc.exitcode, exc.signal)
        return
    if side == "task_unpickle":
        assert isinstance(exc, SerializationError), repr(exc)
        assert exc.direction == "argument", str(exc)
        return
    if side == "run":
        if kind == "error":
            assert type(exc) is ch.FaultError, repr(exc)
            assert "injected error while running" in str(exc)
            cause = exc.__cause__
            assert cause is not None, "the worker's traceback should be attached as __cause__"
            assert "Traceback" in str(cause) and "fault" in str(cause), str(cause)
        else:
            assert type(exc) is SystemExit, repr(exc)
            assert exc.code == ch.SYSEXIT_CODE
        return
    if side == "result_pickle":
        assert isinstance(exc, SerializationError), repr(exc)
        assert exc.direction == "result", str(exc)
        assert "FaultAtPickle" in str(exc), str(exc)
        return
    if side == "result_unpickle":
        assert isinstance(exc, (SerializationError, RemoteError)), repr(exc)
        if isinstance(exc, SerializationError):
            assert exc.direction == "result", str(exc)
        return
    raise AssertionError(side)


def items_with_fault(side: str, kind: str) -> list:
    items = list(range(N_ITEMS))
    items[BAD] = ch.bad_item(side, kind)
    return items


def expected_value(i: int) -> int:
    return i * i


# ---------------------------------------------------------------------------
# the cells


def run_pool_cell(pool: Pool, side: str, kind: str) -> None:
    bad = ch.bad_item(side, kind)
    # one task
    if side == "task_pickle":
        exc = raised(lambda: pool.apply_async(ch.task, (bad,)))
        check_outcome(exc, side, kind)
    else:
        r = pool.apply_async(ch.task, (bad,))
        exc = raised(lambda: r.get(GET))
        check_outcome(exc, side, kind)
        assert r.ready() and not r.successful()
    assert pool.apply(ch.square, (7,)) == 49

    # map: raises the (first and only) failure
    items = items_with_fault(side, kind)
    exc = raised(lambda: pool.map(ch.task, items, chunksize=CHUNK))
    check_outcome(exc, side, kind, BAD)
    # map_async with the same items: the failure, and the pool goes on
    if side != "task_pickle":
        mr = pool.map_async(ch.task, items, chunksize=CHUNK)
        check_outcome(raised(lambda: mr.get(GET)), side, kind, BAD)

    # imap: the failed item raises at its position, every other is delivered
    it = pool.imap(ch.task, iter(items), chunksize=CHUNK)  # lazy input
    for i in range(N_ITEMS):
        if i == BAD:
            check_outcome(raised(lambda: it.next(GET)), side, kind, BAD)  # named "item 4 of imap(...)"
        else:
            assert it.next(GET) == expected_value(i), f"item {i}"
    with pytest.raises(StopIteration):
        it.next(GET)

    # imap_unordered: the others in some order, and one failure
    values, errors = [], []
    it = pool.imap_unordered(ch.task, items, chunksize=CHUNK)
    for _ in range(N_ITEMS):
        try:
            values.append(it.next(GET))
        except StopIteration:
            pytest.fail("imap_unordered stopped early")
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    with pytest.raises(StopIteration):
        it.next(GET)
    assert sorted(values) == sorted(expected_value(i) for i in range(N_ITEMS) if i != BAD)
    assert len(errors) == 1
    check_outcome(errors[0], side, kind)

    # the same pool still serves normal work
    assert pool.map(ch.square, range(10), chunksize=2) == [i * i for i in range(10)]
    assert pool.apply(ch.square, (3,)) == 9


def run_executor_cell(ex: ProcessPoolExecutor, side: str, kind: str) -> None:
    bad = ch.bad_item(side, kind)
    # one task
    if side == "task_pickle":
        check_outcome(raised(lambda: ex.submit(ch.task, bad)), side, kind)
    else:
        fut = ex.submit(ch.task, bad)
        exc = raised(lambda: fut.result(GET))
        check_outcome(exc, side, kind)
        assert fut.done() and not fut.cancelled()
        assert type(fut.exception(0)) is type(exc)
    assert ex.submit(ch.square, 7).result(GET) == 49

    # executor.map: the results before the fault, then the failure at its position
    items = items_with_fault(side, kind)
    got = []
    exc = None
    try:
        for value in ex.map(ch.task, iter(items), timeout=GET, chunksize=CHUNK):
            got.append(value)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001
        exc = e
    assert exc is not None, f"executor.map delivered {got} without the failure"
    if side == "task_pickle" and not got:
        pass  # raised at call time: also the contract's "at submit time"
    else:
        assert got == [expected_value(i) for i in range(BAD)]
    check_outcome(exc, side, kind, BAD)

    # several futures: only the faulty one fails
    futures = {}
    for i, item in enumerate(items):
        if i == BAD and side == "task_pickle":
            check_outcome(raised(lambda: ex.submit(ch.task, item)), side, kind)
            continue
        futures[ex.submit(ch.task, item)] = i
    done, not_done = concurrent.futures.wait(futures, timeout=GET)
    assert not not_done, f"{len(not_done)} futures never finished"
    for fut, i in futures.items():
        if i == BAD:
            check_outcome(raised(lambda: fut.result(0)), side, kind)
        else:
            assert fut.result(0) == expected_value(i), f"item {i}"

    # the same executor still serves normal work
    assert list(ex.map(ch.square, range(10), chunksize=2)) == [i * i for i in range(10)]
    assert ex.submit(ch.square, 3).result(GET) == 9


@pytest.mark.parametrize("side,kind", CELLS, ids=[f"{s}-{k}" for s, k in CELLS])
@pytest.mark.parametrize("api", APIS)
def test_cell(pools, api, side, kind):
    before = stable_workers()
    if api == "pool":
        run_pool_cell(pools["pool"], side, kind)
    else:
        run_executor_cell(pools["executor"], side, kind)
    after = stable_workers()
    if kind in CRASHES and side != "task_pickle":
        assert before - after, "a worker died: it should have been replaced by a new process"
    else:
        # raised errors, sys.exit and serialization failures never cost a worker
        assert after == before, f"workers replaced without a crash: {sorted(before - after)} -> {sorted(after - before)}"


@pytest.mark.parametrize("side", ["result_pickle", "result_unpickle"])
def test_a_faulty_result_nested_in_builtin_data_fails_only_its_own_task(pools, side):
    """A chunk whose results are tuples and lists travels as one pickle when
    every result is builtin data; one carrier nested inside them still fails
    only its own item (the chunk goes item by item), and the others arrive."""
    pool = pools["pool"]
    items = items_with_fault(side, "error")
    it = pool.imap(ch.task_in_pair, items, chunksize=N_ITEMS)  # one chunk: the fault among 7 plain results
    for i in range(N_ITEMS):
        if i == BAD:
            check_outcome(raised(lambda: it.next(GET)), side, "error", BAD)
        else:
            assert it.next(GET) == (i, [expected_value(i)]), f"item {i}"
    # All builtin: the whole chunk's results, nested, exactly as returned.
    assert pool.map(ch.task_in_pair, range(N_ITEMS), chunksize=N_ITEMS) == [
        (i, [expected_value(i)]) for i in range(N_ITEMS)
    ]


def test_a_batch_travels_as_one_pickle_unless_a_result_fails_to_unpickle():
    """The worker's reply format: ``done`` (one pickle for the batch) when
    every result is builtin data however nested, or unpickles in the worker;
    ``mixed`` (one pickle per item, so the culprit alone fails in the
    parent) as soon as one result cannot be unpickled."""
    import fractions
    import pickle

    from sharkcage._engine import serialize, worker

    plain = worker.run_batch(1, ch.task_in_pair, worker.MAP, serialize.dumps(list(range(5))), False)
    assert plain[0] == "done", plain[0]
    assert pickle.loads(plain[2]) == [(i, [i * i]) for i in range(5)]
    objects = worker.run_batch(2, fractions.Fraction, worker.MAP, serialize.dumps([1, 2, 3]), False)
    assert objects[0] == "done", objects[0]
    assert pickle.loads(objects[2]) == [fractions.Fraction(i) for i in (1, 2, 3)]
    items = [1, 2, ch.ReturnUnpickleFault("error")]
    other = worker.run_batch(3, ch.task_in_pair, worker.MAP, serialize.dumps(items), False)
    assert other[0] == "mixed", other[0]
    assert [status for status, _ in other[2]] == [worker.OK] * 3
    assert pickle.loads(other[2][0][1]) == (1, [1])


def test_sysexit_in_task_keeps_its_worker(pools):
    """A task calling sys.exit() re-raises SystemExit; its very worker lives on."""
    pool = pools["pool"]
    pids = set(pool.map(ch.getpid, range(40), chunksize=1))
    before = stable_workers()
    for _ in range(6):
        exc = raised(lambda: pool.apply(ch.task, (ch.RunFault("sysexit"),)))
        assert type(exc) is SystemExit
    assert stable_workers() == before
    assert pids <= before
