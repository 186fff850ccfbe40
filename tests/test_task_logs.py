"""A cluster worker's log capture (``_cluster._capture_logs``): what each
task's own thread logs, and nothing else, goes back with that task.

The whole path (a record logged on a Dask or Ray worker reaching the parent's
handlers) runs against real clusters in test_backends_cluster.py; here, the
capture's own promises, which a worker process running several tasks at once
(Dask: one per thread) relies on.
"""

import logging
import pickle
import threading

import pytest

from sharkcage.backends._cluster import _capture_logs

pytestmark = pytest.mark.timeout(30)


def messages(capture) -> list[str]:
    return [pickle.loads(data)["msg"] for data in capture.records]


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.setLevel(level)
    root.handlers[:] = handlers


def test_each_thread_gets_its_own_records_at_its_level(root_logging):
    log = logging.getLogger("task_logs_test")
    captures = {}
    ready = threading.Barrier(2)

    def task(name, level):
        capture = _capture_logs(level)
        try:
            ready.wait(5)  # both capturing at once
            log.info("%s info", name)
            log.warning("%s warning", name)
            ready.wait(5)
        finally:
            capture.stop()
        captures[name] = capture

    threads = [threading.Thread(target=task, args=("a", logging.INFO)),
               threading.Thread(target=task, args=("b", logging.WARNING))]
    for t in threads:
        t.start()
    log.warning("not a task's")  # this thread runs no task: nobody's record
    for t in threads:
        t.join(10)
    assert messages(captures["a"]) == ["a info", "a warning"]
    assert messages(captures["b"]) == ["b warning"]


def test_a_stopped_capture_collects_nothing_more_and_an_inner_one_hands_back(root_logging):
    log = logging.getLogger("task_logs_test")
    outer = _capture_logs(logging.INFO)
    log.info("one")
    inner = _capture_logs(logging.INFO)  # a task run inside a task on the same thread
    log.info("two")
    inner.stop()
    log.info("three")
    outer.stop()
    log.info("four")
    assert messages(outer) == ["one", "three"]
    assert messages(inner) == ["two"]


def test_a_task_that_resets_logging_is_still_captured_next_time(root_logging):
    log = logging.getLogger("task_logs_test")
    first = _capture_logs(logging.INFO)
    logging.basicConfig(force=True)  # removes every root handler, ours included
    first.stop()
    second = _capture_logs(logging.INFO)
    log.info("after the reset")
    second.stop()
    assert messages(second) == ["after the reset"]
