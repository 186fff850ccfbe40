"""Result objects: the stdlib's ``AsyncResult``/``MapResult``/``IMapIterator``
with sharkcage's guarantees, and the sink that feeds ``concurrent.futures.Future``.

Every wait here has a way out: the outcome, the caller's timeout, or the
pool stopping (terminate, a broken pool, even a failed supervisor) — then the
wait raises :class:`SharkcageError` instead of blocking forever. Ctrl-C in a
wait stops the pool (guarantee 8) and re-raises ``KeyboardInterrupt``.

>>> from sharkcage import Pool
>>> with Pool(1) as pool:
...     r = pool.apply_async(pow, (2, 10))
...     r.get(timeout=30)
1024
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import multiprocessing
import threading
import time
from _thread import allocate_lock as _allocate_lock
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, FINISHED

from sharkcage._engine.jobs import Job
from sharkcage.errors import SharkcageError

_SLICE = 0.25  # seconds between checks that the pool is still there
_RESULTS_LOCK = threading.Lock()
_log = logging.getLogger("sharkcage")


def wait_for(is_set, wait, timeout: float | None, backend, job=None) -> bool:
    """Wait until ``is_set()``, sleeping in ``wait(seconds) -> bool``; False
    on timeout; SharkcageError if the pool is gone.

    ``job``: the task waited for; one the engine sent from the caller's
    thread is waited for by reading its worker's reply here.
    """
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    try:
        if job is not None and job.direct is not None and not is_set():
            backend.await_direct(job, is_set, timeout)
        while True:
            remaining = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            if remaining <= 0:
                return is_set()
            if wait(remaining):
                return True
            if backend.done.is_set() and not is_set():
                # The supervisor settles every outcome before it stops; give
                # the callback thread a moment, then say what happened.
                if wait(1.0):
                    return True
                raise SharkcageError("the pool stopped before this task finished")
    except KeyboardInterrupt:
        backend.terminate("the pool was stopped by KeyboardInterrupt")
        backend.join(2.0)
        raise


def wait_for_future(future: concurrent.futures.Future, backend, timeout: float | None = None):
    """``future.result(timeout)`` with the same ways out as :func:`wait_for`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            remaining = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            if remaining <= 0:
                return future.result(0)
            try:
                return future.result(remaining)
            except concurrent.futures.TimeoutError:
                if future.done():
                    raise  # the task's own TaskTimeoutError (a TimeoutError too)
                if backend.done.is_set():
                    try:
                        return future.result(1.0)
                    except concurrent.futures.TimeoutError:
                        raise SharkcageError("the pool stopped before this task finished") from None
    except KeyboardInterrupt:
        backend.terminate("the pool was stopped by KeyboardInterrupt")
        backend.join(2.0)
        raise


class AsyncResult(Job):
    """The outcome of ``apply_async`` (and the base of ``MapResult``).

    Same API as ``multiprocessing.pool.AsyncResult``, plus :meth:`cancel`.

    >>> from sharkcage import Pool
    >>> with Pool(1) as pool:
    ...     r = pool.apply_async(divmod, (7, 2))
    ...     r.wait(30); r.ready(), r.successful(), r.get()
    (True, True, (3, 1))
    """

    __slots__ = ("_done", "_gate", "_ok", "_value", "_callback", "_error_callback", "_backend", "_lock",
                 "_done_callbacks")

    def __init__(self, backend, name: str, callback=None, error_callback=None, kind: str = "apply"):
        super().__init__(name, kind)
        self._backend = backend
        # Done when _done is True. _gate, a C lock held until then, is what
        # waiters sleep on (a threading.Event costs a Condition per result);
        # it is made by the first thread that has to wait: in a burst most
        # results are in before anyone asks, and a lock per result is one
        # more object for the cyclic collector to track.
        self._done = False
        self._gate = None
        self._ok = None
        self._value = None
        self._callback = callback
        self._error_callback = error_callback
        # One lock for every plain result: its sections are a few field
        # updates, never a wait, and a burst of apply_async keeps fewer
        # objects alive. (MapResult, updated by many replies, has its own.)
        self._lock = _RESULTS_LOCK
        self._done_callbacks: list | None = None

    # -- stdlib API ---------------------------------------------------------
    def ready(self) -> bool:
        return self._done

    def _is_done(self) -> bool:
        return self._done

    def _wait_done(self, timeout: float) -> bool:
        if self._done:
            return True
        with self._lock:
            if self._done:
                return True
            gate = self._gate
            if gate is None:
                gate = self._gate = _allocate_lock()
                gate.acquire()
        if gate.acquire(True, max(0.0, timeout)):
            gate.release()  # for the next waiter, if any
            return True
        return self._done

    def _set_done(self) -> None:
        # under self._lock: set once
        if not self._done:
            self._done = True
            if self._gate is not None:
                self._gate.release()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return bool(self._ok)

    def wait(self, timeout: float | None = None) -> None:
        wait_for(self._is_done, self._wait_done, timeout, self._backend, self)

    def get(self, timeout: float | None = None):
        if not self._done and not wait_for(self._is_done, self._wait_done, timeout, self._backend, self):
            raise multiprocessing.TimeoutError
        if self._ok:
            return self._value
        raise self._value

    # -- sharkcage ----------------------------------------------------------
    def cancel(self) -> bool:
        """Stop the task: drop it if pending, kill and replace its worker if running.

        Returns True when the task was stopped, False when it had already
        finished. Afterwards :meth:`cancelled` is True and :meth:`get` raises
        ``concurrent.futures.CancelledError``.
        """
        with self._lock:
            if self._done:
                return False
            self.cancel_requested = True
        self._settle(False, concurrent.futures.CancelledError(f"{self.describe(0)} was cancelled"))
        self._backend.cancel(self)
        return True

    def cancelled(self) -> bool:
        return self.cancel_requested

    def __await__(self):
        """``await result``: the value, or the task's exception, without
        blocking the event loop (no thread waits on it)."""
        import asyncio

        loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def wake():
            def settle():
                if waiter.done():
                    return
                if self._ok:
                    waiter.set_result(self._value)
                else:
                    waiter.set_exception(self._value)

            loop.call_soon_threadsafe(settle)

        self._on_done(wake)
        return waiter.__await__()

    def _on_done(self, fn) -> None:
        with self._lock:
            if not self._done:
                if self._done_callbacks is None:
                    self._done_callbacks = []
                self._done_callbacks.append(fn)
                return
        fn()

    def _mark_done(self) -> None:
        with self._lock:
            self._set_done()
            callbacks, self._done_callbacks = self._done_callbacks or (), None
        for fn in callbacks:
            try:
                fn()
            except Exception:  # a closed event loop: nobody is waiting any more
                pass

    # -- engine side ----------------------------------------------------------
    def deliver(self, index: int, ok: bool, value) -> None:
        with self._lock:
            if self._done or self._ok is not None:
                return  # first outcome wins (a cancel, a terminate)
            self._ok = ok
            if (self._callback if ok else self._error_callback) is None and self._done_callbacks is None:
                # Nobody to call (most results): done in this one section.
                self._value = value
                self._done = True
                if self._gate is not None:
                    self._gate.release()
                return
        self._settle(ok, value)

    def _settle(self, ok: bool, value) -> None:
        self._ok = ok
        self._value = value
        cb = self._callback if ok else self._error_callback
        if cb is not None and not isinstance(value, concurrent.futures.CancelledError):
            self._backend.callbacks.call(self._run_callback, cb, value)
        else:
            self._mark_done()

    def _run_callback(self, cb, value) -> None:
        try:
            cb(value)
        finally:
            self._mark_done()


# the stdlib's name for it
ApplyResult = AsyncResult


class MapResult(AsyncResult):
    """The outcome of ``map_async``/``starmap_async``: a list, or the first failure.

    As in the stdlib, the result is ready once every task has finished; then
    ``get()`` returns the list or raises the first failure.
    """

    __slots__ = ("_values", "_left", "_first_error")

    def __init__(self, backend, name: str, length: int, callback=None, error_callback=None):
        super().__init__(backend, name, callback, error_callback, kind="map")
        self._lock = threading.Lock()
        self._values = [None] * length
        self._left = length
        self._first_error = None
        if length == 0:
            self._ok = True
            self._settle(True, [])

    def deliver(self, index: int, ok: bool, value) -> None:
        with self._lock:
            if self._taken():
                return
            if ok:
                self._values[index] = value
            elif self._first_error is None:
                self._first_error = value
            outcome = self._count(1 if ok else 0, 0 if ok else 1)
        if outcome is not None:
            self._settle(*outcome)

    def deliver_range(self, indices, values) -> None:
        with self._lock:
            if self._taken():
                return
            if isinstance(indices, range) and indices.step == 1:
                self._values[indices.start:indices.stop] = values
            else:
                for i, v in zip(indices, values):
                    self._values[i] = v
            outcome = self._count(len(values), 0)
        if outcome is not None:
            self._settle(*outcome)

    def _taken(self) -> bool:
        return self._done or self._ok is not None or self._values is None

    def _count(self, ok: int, failed: int):
        """Under the lock: n more outcomes in; (ok, value) when the last is."""
        self._left -= ok + failed
        if self.progress is not None:
            if ok:
                self.progress.ok(ok)
            if failed:
                self.progress.error(failed)
            if not self._left:
                self.progress.close()
        if self._left:
            return None
        self._ok = self._first_error is None
        return self._ok, (self._values if self._ok else self._first_error)


class IMapIterator(Job):
    """The iterator of ``imap``/``imap_unordered`` (and of executor ``map``).

    Results are delivered one by one; a failed item raises at its own
    position (``imap``) or when it arrives (``imap_unordered``), and
    iteration goes on after it. ``next(timeout)`` raises
    ``multiprocessing.TimeoutError`` like the stdlib.
    """

    __slots__ = ("_backend", "_cond", "_ordered", "_results", "_next_index", "_yielded", "_total",
                 "_arrived", "_feeder_stop", "_on_consume", "_async_wake", "_delivered")

    def __init__(self, backend, name: str, ordered: bool):
        super().__init__(name, kind="imap" if ordered else "imap_unordered")
        self._backend = backend
        self._cond = threading.Condition(threading.Lock())
        self._ordered = ordered
        self._results: dict[int, tuple[bool, object]] = {}
        self._arrived: collections.deque = collections.deque()
        self._next_index = 0
        self._yielded = 0
        self._total: int | None = None  # known once the input is exhausted
        self._feeder_stop = False
        self._on_consume = None
        self._async_wake = None  # set by AsyncIMapIterator: wakes an event loop
        self._delivered = 0

    # -- engine / feeder side ---------------------------------------------------
    def deliver(self, index: int, ok: bool, value) -> None:
        with self._cond:
            if self._ordered:
                if index in self._results or index < self._next_index:
                    return
                self._results[index] = (ok, value)
            else:
                self._arrived.append((ok, value))
            self._delivered += 1
            self._cond.notify_all()
        if self.progress is not None:
            self.progress.ok() if ok else self.progress.error()
            self._maybe_close_progress()
        if self._async_wake is not None:
            self._async_wake()

    def _maybe_close_progress(self) -> None:
        if self._total is not None and self._delivered >= self._total:
            self.progress.close()

    def deliver_range(self, indices, values) -> None:
        with self._cond:
            if self._ordered:
                results = self._results
                low = self._next_index
                for index, value in zip(indices, values):
                    if index >= low and index not in results:
                        results[index] = (True, value)
            else:
                self._arrived.extend((True, v) for v in values)
            self._delivered += len(values)
            self._cond.notify_all()
        if self.progress is not None:
            self.progress.ok(len(values))
            self._maybe_close_progress()
        if self._async_wake is not None:
            self._async_wake()

    def set_total(self, total: int) -> None:
        with self._cond:
            self._total = total
            self._cond.notify_all()
        if self.progress is not None:
            self.progress.set_total(total)
            self._maybe_close_progress()
        if self._async_wake is not None:
            self._async_wake()

    def consumed(self) -> int:
        return self._yielded

    # -- consumer side ---------------------------------------------------------
    def __iter__(self):
        return self

    def next(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        backend = self._backend
        with self._cond:
            while True:
                if self._ordered:
                    hit = self._results.pop(self._next_index, None)
                    if hit is not None:
                        self._next_index += 1
                        break
                elif self._arrived:
                    hit = self._arrived.popleft()
                    break
                if self._total is not None and self._yielded >= self._total:
                    raise StopIteration
                remaining = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
                if remaining <= 0:
                    raise multiprocessing.TimeoutError
                try:
                    self._cond.wait(remaining)
                except KeyboardInterrupt:
                    self._cond.release()
                    try:
                        backend.terminate("the pool was stopped by KeyboardInterrupt")
                        backend.join(2.0)
                    finally:
                        self._cond.acquire()
                    raise
                if backend.done.is_set() and not self._results and not self._arrived:
                    if self._total is not None and self._yielded >= self._total:
                        raise StopIteration
                    raise SharkcageError("the pool stopped before this iteration finished")
            self._yielded += 1
        if self._on_consume is not None:
            self._on_consume()
        ok, value = hit
        if ok:
            return value
        raise value

    __next__ = next

    def __del__(self):
        self._feeder_stop = True


class AsyncIMapIterator:
    """``async for`` over ``imap``/``imap_unordered`` (``pool.aimap`` and
    ``pool.aimap_unordered``): results as they come, and the event loop never
    blocks waiting for them.

    >>> import asyncio
    >>> from sharkcage import Pool
    >>> async def main(pool):
    ...     return [x async for x in pool.aimap(abs, [-1, -2, -3])]
    >>> with Pool(2) as pool:
    ...     asyncio.run(main(pool))
    [1, 2, 3]
    """

    def __init__(self, it: IMapIterator):
        self._it = it
        self._event = None
        self._loop = None

    def __aiter__(self):
        return self

    async def __anext__(self):
        import asyncio

        if self._event is None:
            self._loop = asyncio.get_running_loop()
            self._event = asyncio.Event()
            loop, event = self._loop, self._event

            def wake():
                try:
                    loop.call_soon_threadsafe(event.set)
                except RuntimeError:  # the loop is closed
                    pass

            self._it._async_wake = wake
        while True:
            self._event.clear()
            try:
                return self._it.next(timeout=0)
            except StopIteration:
                raise StopAsyncIteration from None
            except multiprocessing.TimeoutError:
                pass
            if self._it._backend.done.is_set():
                return self._it.next(timeout=1.0)  # settles, or raises SharkcageError
            try:
                await asyncio.wait_for(self._event.wait(), _SLICE)
            except asyncio.TimeoutError:
                pass


class AwaitableFuture(concurrent.futures.Future):
    """A real ``concurrent.futures.Future`` that ``await`` also accepts.

    >>> import asyncio
    >>> f = AwaitableFuture(); f.set_result(3)
    >>> async def main():
    ...     return await f
    >>> asyncio.run(main())
    3
    """

    def __await__(self):
        import asyncio

        return asyncio.wrap_future(self).__await__()

    def result(self, timeout: float | None = None):
        return super().result(self._await_direct(timeout))

    def exception(self, timeout: float | None = None):
        return super().exception(self._await_direct(timeout))

    def _await_direct(self, timeout: float | None) -> float | None:
        """A task the engine sent from the caller's thread: read its reply in
        this thread rather than wait for the pool's to hand it over. The
        time left of ``timeout``."""
        job = getattr(self, "_sharkcage_job", None)
        if job is None or job.direct is None or self.done():
            return timeout
        began = time.monotonic()
        self._sharkcage_backend.await_direct(job, self.done, timeout)
        return timeout if timeout is None else max(0.0, timeout - (time.monotonic() - began))

    def cancel(self) -> bool:
        """``Future.cancel()``, stdlib meaning: only a task that has not
        started can be cancelled — including one already handed to a worker,
        which then skips it."""
        job = getattr(self, "_sharkcage_job", None)
        backend = getattr(self, "_sharkcage_backend", None)
        if job is not None and backend is not None and backend.has_started(job):
            return False  # running: the stdlib's Future.cancel() refuses it too
        if not super().cancel():
            return False
        if job is not None and backend is not None:
            backend.cancel(job, running=False)
        return True

    def running(self) -> bool:
        if super().running():
            return True
        job = getattr(self, "_sharkcage_job", None)
        backend = getattr(self, "_sharkcage_backend", None)
        return bool(job is not None and backend is not None and not self.done() and backend.has_started(job))

    def _invoke_callbacks(self) -> None:
        # As the stdlib's, but a raising done-callback (sys.exit included)
        # is logged on the "sharkcage" logger and the others still run.
        for callback in self._done_callbacks:
            try:
                callback(self)
            except BaseException:  # noqa: BLE001
                _log.exception("a done-callback of %r raised; the result was still delivered", self)


class FutureJob(Job):
    """Feeds one ``concurrent.futures.Future`` (executor ``submit``)."""

    __slots__ = ("future", "where")

    def __init__(self, future: concurrent.futures.Future, name: str):
        super().__init__(name, kind="submit")
        self.future = future
        self.where = None  # (worker, batch id, item) once handed to a worker

    def is_cancelled(self, index: int) -> bool:
        return self.cancel_requested or self.future.cancelled()

    def start_batch(self, indices) -> bool:
        return self.start(0)

    def start(self, index: int) -> bool:
        # The future stays PENDING while it waits in a worker's queue, so
        # Future.cancel() can still stop it (the worker then skips it); it
        # goes straight to FINISHED when its outcome arrives.
        return not (self.cancel_requested or self.future.done())

    def deliver(self, index: int, ok: bool, value) -> None:
        fut = self.future
        if fut.done():
            return
        try:
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile: the first outcome wins


def force_cancel(future: concurrent.futures.Future) -> bool:
    """Cancel a future even if it is running (``executor.cancel``).

    ``Future.cancel()`` refuses running futures by design; this does what
    ``cancel()`` + ``set_running_or_notify_cancel()`` would, under the
    future's own condition, so waiters (``wait``, ``as_completed``) wake up.
    """
    with future._condition:
        if future._state == FINISHED:
            return False
        if future._state in ("CANCELLED", CANCELLED_AND_NOTIFIED):
            return True
        future._state = CANCELLED_AND_NOTIFIED
        for waiter in future._waiters:
            waiter.add_cancelled(future)
        future._condition.notify_all()
    future._invoke_callbacks()
    return True
