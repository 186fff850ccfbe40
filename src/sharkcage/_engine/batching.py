"""Turning calls into batches, in the caller's thread, and feeding lazy input.

Arguments are pickled here, before anything reaches the supervisor, so an
argument that cannot be pickled raises :class:`SerializationError` to the
caller at submit time, naming its task. A chunk is pickled as one unit (the
fast path); only when that fails is it pickled item by item to find the
culprit.

:class:`Feeder` consumes the input of ``imap``/``imap_unordered``/executor
``map`` lazily on its own thread, keeping at most ``limit`` tasks submitted
but not yet consumed, so an infinite generator runs in bounded memory
(guarantee 7). An input item that cannot be pickled, or an input iterator
that raises, fails at its own position.
"""

from __future__ import annotations

import itertools
import threading
import weakref

from sharkcage._engine import serialize
from sharkcage._engine.start import mark_own_thread
from sharkcage._engine.supervisor import Batch
from sharkcage._engine.worker import CALL


def pickle_chunk(items: list, job, first_index: int, fn_id: int, kind: int, raise_errors: bool, arena=None):
    """One batch for ``items``; returns (batch or None, [(index, error)])."""
    try:
        return Batch(fn_id, kind, None, items, serialize.dumps_data(items, arena, owned=True), False,
                     job=job, indices=range(first_index, first_index + len(items))), []
    except BaseException as e:  # noqa: BLE001 - SystemExit in __reduce__ included
        if isinstance(e, KeyboardInterrupt):
            raise
    payloads, indices, kept, errors = [], [], [], []
    for k, item in enumerate(items):
        try:
            payloads.append(serialize.dumps_data(item, arena, owned=True, task=job.describe(first_index + k),
                                                 direction="argument"))
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            if isinstance(e, serialize.SerializationError):
                err = e  # already names the task (a buffer too big for /dev/shm)
            else:
                err = serialize.serialization_error("argument", job.describe(first_index + k), item, e)
            if raise_errors:
                raise err from None
            errors.append((first_index + k, err))
            continue
        indices.append(first_index + k)
        kept.append(item)
    if not indices:
        return None, errors
    return Batch(fn_id, kind, None, kept, payloads, True, job=job, indices=indices), errors




def call_payload(job, kind: int, item, arena=None, inline: bool = False):
    """What a one-task batch sends for ``item``: its pickle, or (``inline``,
    the local engine) a call's ``(args, kwargs)`` of plain data as it is
    (``serialize.plainly_small``: it cannot fail to pickle), pickled with the
    message that carries it to a worker, one pickle for a whole batch of
    such calls instead of one per call. Raises SerializationError.

    >>> call_payload(None, CALL, ((1, "a"), {}), None) == __import__("pickle").dumps(((1, "a"), {}), 5)
    True
    """
    # Without an arena there is no shared memory to choose: a plain pickle.
    small = arena is None or serialize.plainly_small(item, arena.threshold)
    if inline and small and arena is not None and kind == CALL:
        return item
    try:
        if small:
            return serialize.dumps(item)  # no task description needed: nothing can go wrong here
        return serialize.dumps_data(item, arena, owned=True, task=job.describe(0), direction="argument")
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, (KeyboardInterrupt, serialize.SerializationError)):
            raise
        raise serialize.serialization_error("argument", job.describe(0), item, e) from None


def single(job, fn_id: int, kind: int, item, arena=None, inline: bool = False) -> Batch:
    """A batch of one task (an actor's call); raises SerializationError.
    ``apply_async``/``submit`` hand their calls to the engine unbatched
    (``submit_call``), which merges them (see :func:`call_payload`)."""
    return Batch.of_call(job, fn_id, kind, item, call_payload(job, kind, item, arena, inline))


def chunks(items: list, chunksize: int):
    for start in range(0, len(items), chunksize):
        yield start, items[start : start + chunksize]


_FEEDER_FACTOR = 2  # chunks per worker in flight beyond what the consumer took
TARGET_CHUNK_SECONDS = 0.005  # adaptive chunks aim at this much work each
MAX_ADAPTIVE_CHUNK = 4096


class Feeder:
    """Pulls a (possibly infinite) iterable into the pool, a chunk at a time."""

    def __init__(self, backend, job, iterable, fn_id: int, kind: int, chunksize: int | None, workers: int):
        """``chunksize=None`` adapts: chunks sized from the measured task time
        so each takes about ``TARGET_CHUNK_SECONDS`` (one item until the
        first measurement); in flight stay at most ``2 * workers`` chunks
        (plus ``workers`` items) beyond what the consumer has taken."""
        self.backend = backend
        self.adaptive = chunksize is None
        self.workers = workers
        self.job_ref = weakref.ref(job)  # the consumer dropping the iterator stops us
        self.iterator = iter(iterable)
        self.fn_id = fn_id
        self.kind = kind
        self.chunksize = chunksize or 1
        self.limit = self._limit()
        self.cond = threading.Condition()
        self.stopped = False
        self.stop_reason = None
        job._on_consume = self.wake
        backend.feeder_started(self)
        self.thread = mark_own_thread(threading.Thread(target=self._run, name="sharkcage-feeder", daemon=True))
        self.thread.start()

    def _limit(self) -> int:
        return _FEEDER_FACTOR * self.workers * self.chunksize + self.workers

    def _adapt(self) -> None:
        avg = self.backend.avg_task_seconds()
        if avg is None:
            return
        # A backend whose every call is slower (a cluster) may ask for bigger chunks.
        target = getattr(self.backend, "chunk_target_seconds", TARGET_CHUNK_SECONDS)
        size = int(target / max(avg, 1e-7))
        self.chunksize = max(1, min(MAX_ADAPTIVE_CHUNK, size))
        self.limit = self._limit()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify()

    def stop(self, reason: str | None = None) -> None:
        """Pull no more input. With ``reason``, the next position fails with
        a SharkcageError saying it (a shut-down executor), so the consumer
        learns where its results end instead of waiting."""
        self.stop_reason = reason
        self.stopped = True
        self.wake()

    def _run(self) -> None:
        index = 0
        it = self.iterator
        try:
            while True:
                job = self.job_ref()
                if job is not None and self.stop_reason is not None:
                    from sharkcage.errors import SharkcageError

                    job.deliver(index, False, SharkcageError(f"{self.stop_reason} before item {index} was submitted"))
                    job.set_total(index + 1)
                    return
                if job is None or self.stopped or job._feeder_stop or self.backend.done.is_set():
                    return
                if self.adaptive:
                    self._adapt()
                # Wait until the consumer has made room (bounded in-flight).
                with self.cond:
                    while index - job.consumed() >= self.limit and not self.backend.closing:
                        if self.stopped or job._feeder_stop or self.backend.done.is_set():
                            break
                        self.cond.wait(0.1)
                if self.stopped or job._feeder_stop or self.backend.done.is_set():
                    continue  # the top of the loop says how it ends
                room = max(self.chunksize, self.limit - (index - job.consumed()))
                items = []
                failure = None
                try:
                    for item in itertools.islice(it, min(self.chunksize, room)):
                        items.append(item)
                except BaseException as e:  # noqa: BLE001 - the input raised: fail at its position
                    failure = e
                if items:
                    batch, errors = pickle_chunk(items, job, index, self.fn_id, self.kind, raise_errors=False,
                                                 arena=getattr(self.backend, "arena", None))
                    for i, err in errors:
                        job.deliver(i, False, err)
                    if batch is not None:
                        try:
                            self.backend.submit([batch], from_feeder=True)
                        except ValueError:  # pool closed under us: those items fail, nothing hangs
                            for j, i in batch.targets:
                                j.deliver(i, False, _closed_error())
                    index += len(items)
                if failure is not None:
                    job.deliver(index, False, failure)
                    index += 1
                    job.set_total(index)
                    return
                if len(items) < min(self.chunksize, room):
                    job.set_total(index)
                    return
                del job
        except BaseException as e:  # noqa: BLE001 - never leave the consumer waiting
            job = self.job_ref()
            if job is not None:
                job.deliver(index, False, e)
                job.set_total(index + 1)
        finally:
            self.backend.feeder_finished()


def _closed_error():
    from sharkcage.errors import SharkcageError

    return SharkcageError("the pool was closed before this item could be submitted")
