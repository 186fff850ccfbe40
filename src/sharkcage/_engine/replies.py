"""Decoding a worker's reply into per-task outcomes, inside a guard.

Shared by every backend: the local supervisor, and the remote engines that
run ``worker.run_batch`` on a cluster. Whatever the bytes hold, each target
gets exactly one outcome — a value, the task's own exception, or a
SerializationError / RemoteError naming that task — and nothing here raises.
"""

from __future__ import annotations

import pickle

from sharkcage._engine import serialize
from sharkcage._engine.worker import BAD_ARGUMENT, OK, RAISED, SKIPPED
from sharkcage.errors import SerializationError


def settle_batch(tag: str, data, batch, deliver, loads=serialize.loads) -> None:
    """:func:`settle` for a Batch; a chunk of one job that all succeeded is
    handed over in one call (``Job.deliver_range``), not item by item."""
    if tag == "done" and batch.job is not None:
        try:
            values = loads(data)
        except BaseException:  # noqa: BLE001 - the slow path names each failure
            values = None
        if values is not None and len(values) == len(batch.items):
            try:
                batch.job.deliver_range(batch.indices, values)
            except BaseException:  # noqa: BLE001 - a broken job must not stop the engine
                import logging

                logging.getLogger("sharkcage").exception("delivering %s failed", batch.job.name)
            return
    settle(tag, data, batch.targets, deliver, loads)


def settle(tag: str, data, targets: list, deliver, loads=serialize.loads) -> None:
    """Call ``deliver(job, index, ok, value)`` once for every (job, index) in targets."""
    if tag == "done":
        try:
            values = loads(data)
        except BaseException as e:  # noqa: BLE001 - SystemExit in __setstate__ included
            for job, index in targets:
                deliver(job, index, False, serialize.serialization_error("result", job.describe(index), None, e))
            return
        for (job, index), value in zip(targets, values):
            deliver(job, index, True, value)
    elif tag == "mixed":
        for (job, index), (status, payload) in zip(targets, data):
            deliver(job, index, *_decode_item(job.describe(index), status, payload, loads))
    elif tag == "fn_failed":
        for job, index in targets:
            try:
                exc = serialize.unpack_exception(data)
            except BaseException as e:  # noqa: BLE001
                exc = serialize.serialization_error("result", job.describe(index), None, e)
            deliver(job, index, False, exc)
    else:  # pragma: no cover - a protocol error is a bug; still settle every task
        err = RuntimeError(f"unknown reply {tag!r} from a worker")
        for job, index in targets:
            deliver(job, index, False, err)


def _decode_item(what: str, status: int, payload, loads=serialize.loads):
    if status == SKIPPED:  # cancelled before it started: the job already says so
        import concurrent.futures

        return False, concurrent.futures.CancelledError(f"{what} was cancelled")
    if status == OK:
        try:
            return True, loads(payload)
        except BaseException as e:  # noqa: BLE001
            return False, serialize.serialization_error("result", what, None, e)
    if status == RAISED:
        try:
            return False, serialize.unpack_exception(payload)
        except BaseException as e:  # noqa: BLE001
            return False, serialize.serialization_error("result", what, None, e)
    try:
        type_name, reason = pickle.loads(payload)
    except BaseException as e:  # noqa: BLE001
        type_name, reason = "?", serialize.describe_exception(e)
    if status == BAD_ARGUMENT:
        return False, SerializationError("argument", what, type_name, reason,
                                         "Pass picklable arguments (plain data, importable classes)")
    return False, SerializationError("result", what, type_name, reason,
                                     "Return picklable data from the task (convert generators to lists, drop open handles)")
