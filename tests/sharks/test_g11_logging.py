"""Guarantee 11: worker logging records reach the parent's handlers, whatever the
start method, at the parent's effective level; the records a task logged are
handled before its result is delivered.

Seed 000 (second half): with fork, workers silently inherit the parent's
logging configuration; with spawn they lose it. sharkcage forwards records.
"""

from __future__ import annotations

import logging
import textwrap

import pytest

from sharkcage import Pool, ProcessPoolExecutor

from . import helpers

pytestmark = pytest.mark.timeout(30)

PARENT = "sharks.g11"  # the task logs on sharks.g11.task, which propagates here


@pytest.fixture
def collector():
    logger = logging.getLogger(PARENT)
    handler = helpers.ListHandler()
    logger.addHandler(handler)
    old_level = logger.level
    yield logger, handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def _records(handler, fragment):
    return [r for r in handler.records if fragment in r.getMessage()]


@pytest.mark.parametrize("method", helpers.START_METHODS)
def test_records_reach_parent_handlers_for_every_start_method(method, collector):
    logger, handler = collector
    logger.setLevel(logging.INFO)
    with Pool(2, start_method=method) as pool:
        assert pool.map(helpers.log_then_return, range(10), chunksize=1) == list(range(10))
        pids = set()
        for i in range(10):
            recs = _records(handler, f"record {i} at warning")
            assert len(recs) == 1, f"record {i}: {len(recs)} copies"
            r = recs[0]
            assert r.name == helpers.TASK_LOGGER
            assert r.levelno == logging.WARNING and r.levelname == "WARNING"
            assert r.getMessage() == f"record {i} at warning from {r.process}"
            pids.add(r.process)
        worker_pids = set(pool.map(helpers.sleep_pid, [0.05] * 6, chunksize=1))
        assert pids <= worker_pids and pids, (pids, worker_pids)


@pytest.mark.parametrize("method", helpers.START_METHODS)
def test_records_are_handled_before_the_result_is_delivered(method, collector):
    logger, handler = collector
    logger.setLevel(logging.INFO)
    with Pool(2, start_method=method) as pool:
        for i in range(5):
            assert pool.apply(helpers.log_then_return, (i,)) == i
            assert len(_records(handler, f"record {i} at warning")) == 1, "the result arrived before its log record"
        r = pool.apply_async(helpers.log_then_return, (100, ("info", "warning", "error")))
        assert r.get(15) == 100
        assert len(_records(handler, "record 100 at")) == 3
        for k, value in enumerate(pool.imap(helpers.log_then_return, range(200, 220))):
            assert value == 200 + k
            assert len(_records(handler, f"record {value} at warning")) == 1, f"item {value} before its record"
        for value in pool.imap_unordered(helpers.log_then_return, range(300, 320), 4):
            assert len(_records(handler, f"record {value} at warning")) == 1, f"item {value} before its record"


def test_executor_records_before_result(collector):
    logger, handler = collector
    logger.setLevel(logging.INFO)
    with ProcessPoolExecutor(2) as ex:
        for i in range(5):
            assert ex.submit(helpers.log_then_return, i).result(15) == i
            assert len(_records(handler, f"record {i} at warning")) == 1
        for value in ex.map(helpers.log_then_return, range(10, 20)):
            assert len(_records(handler, f"record {value} at warning")) == 1


def test_parent_at_warning_gets_no_debug_or_info(collector):
    logger, handler = collector
    root = logging.getLogger()
    old_root = root.level
    root.setLevel(logging.WARNING)
    logger.setLevel(logging.WARNING)
    try:
        with Pool(2) as pool:
            for i in range(4):
                pool.apply(helpers.log_then_return, (i, ("debug", "info", "warning", "error")))
        levels = sorted({r.levelname for r in handler.records if "record" in r.getMessage()})
        assert levels == ["ERROR", "WARNING"]
        assert len(_records(handler, "at warning")) == 4 and len(_records(handler, "at error")) == 4
    finally:
        root.setLevel(old_root)


def test_parent_at_debug_gets_debug(collector):
    logger, handler = collector
    logger.setLevel(logging.DEBUG)
    with Pool(2) as pool:
        for i in range(3):
            pool.apply(helpers.log_then_return, (i, ("debug", "info")))
    assert len(_records(handler, "at debug")) == 3
    assert len(_records(handler, "at info")) == 3


def test_exception_records_carry_the_traceback_text(collector):
    logger, handler = collector
    logger.setLevel(logging.INFO)
    with Pool(1) as pool:
        assert pool.apply(helpers.log_exception, (7,)) == 7
    recs = _records(handler, "failed 7")
    assert len(recs) == 1
    text = logging.Formatter().format(recs[0])
    assert "ZeroDivisionError" in text and "log_exception" in text


LEVEL_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from sharkcage import Pool
    from sharks import helpers

    if __name__ == "__main__":
        logging.basicConfig(level=getattr(logging, sys.argv[1]), format="%(levelname)s|%(name)s|%(message)s")
        with Pool(2, start_method=sys.argv[2]) as pool:
            print("ENABLED", pool.apply(helpers.worker_log_levels))
            pool.apply(helpers.log_then_return, (1, ("debug", "info", "warning")))
    """
)


@pytest.mark.parametrize("method", helpers.START_METHODS)
def test_worker_logs_at_the_parents_effective_level(method):
    """A parent configured at WARNING: DEBUG/INFO records are not even created
    (nor forwarded) in the worker; at DEBUG they are, and reach the parent's stderr."""
    proc = helpers.run_python(["-c", LEVEL_SCRIPT, "WARNING", method])
    assert proc.returncode == 0, proc.stderr
    assert f"ENABLED {{{logging.DEBUG}: False, {logging.INFO}: False, {logging.WARNING}: True}}" in proc.stdout
    assert f"WARNING|{helpers.TASK_LOGGER}|record 1 at warning" in proc.stderr
    assert "at debug" not in proc.stderr and "at info" not in proc.stderr
    proc = helpers.run_python(["-c", LEVEL_SCRIPT, "DEBUG", method])
    assert proc.returncode == 0, proc.stderr
    assert f"ENABLED {{{logging.DEBUG}: True, {logging.INFO}: True, {logging.WARNING}: True}}" in proc.stdout
    for level in ("debug", "info", "warning"):
        assert f"{level.upper()}|{helpers.TASK_LOGGER}|record 1 at {level}" in proc.stderr, proc.stderr
