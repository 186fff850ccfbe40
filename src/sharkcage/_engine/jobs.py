"""What the supervisor delivers outcomes to: one :class:`Job` per call.

A job is the parent-side sink of one ``apply_async``/``submit`` (one task) or
one ``map``-like call (many tasks). The supervisor thread calls
:meth:`Job.deliver` exactly once per task index — with the value, or with the
exception the caller will see — and never anything that can block on the
caller. User callbacks run on the pool's callback thread (see
:class:`CallbackRunner`), so a slow or blocking callback cannot stall the
supervisor, and a raising one is logged and forgotten.
"""

from __future__ import annotations

import logging
import queue
import threading

from sharkcage._engine.start import mark_own_thread

log = logging.getLogger("sharkcage")


def describe_task(kind: str, name: str, index: int) -> str:
    """How errors and the timeline name one task: ``apply(f)``, ``task 3 of map(f)``, ``item 3 of imap(f)``."""
    if kind in ("apply", "submit", "actor"):
        return name
    if kind in ("imap", "imap_unordered"):
        return f"item {index} of {name}"
    return f"task {index} of {name}"


class Job:
    """Base sink. Subclasses implement ``_deliver``; ``name`` reads like ``map(square)``."""

    __slots__ = ("name", "kind", "cancel_requested", "progress", "direct", "__weakref__")

    def __init__(self, name: str, kind: str = "apply"):
        self.name = name
        self.kind = kind
        self.cancel_requested = False  # a whole-job cancel (AsyncResult.cancel, executor.cancel)
        self.progress = None  # an observe.progress.ProgressBar for map-like calls
        self.direct = None  # the worker it was sent to by the caller's thread (the engine's direct path)

    def describe(self, index: int) -> str:
        return describe_task(self.kind, self.name, index)

    def is_cancelled(self, index: int) -> bool:
        return self.cancel_requested

    def start(self, index: int) -> bool:
        """Called when the task is handed to a worker; False drops it (cancelled)."""
        return not self.cancel_requested

    def start_batch(self, indices) -> bool:
        """``start`` for a chunk of this job: all or nothing."""
        if len(indices) == 1:
            return self.start(indices[0])
        return not self.cancel_requested

    def deliver_range(self, indices, values) -> None:
        """Successful values for several indices at once (a finished chunk)."""
        for index, value in zip(indices, values):
            self.deliver(index, True, value)

    def deliver(self, index: int, ok: bool, value) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class CallbackRunner:
    """One thread per pool that runs user callbacks in order.

    A callback that raises (or calls ``sys.exit``) is logged on the
    ``sharkcage`` logger and the pool carries on.
    """

    def __init__(self, name: str):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._name = name
        self._thread: threading.Thread | None = None  # started by the first callback
        self._start_lock = threading.Lock()
        self._stopped = False

    def call(self, fn, *args) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stopped:
                    thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    mark_own_thread(thread).start()
                    self._thread = thread
        self._queue.put((fn, args))

    def stop(self) -> None:
        with self._start_lock:
            self._stopped = True
        self._queue.put(None)

    def join(self, timeout: float | None) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - sys.exit in a callback included
                log.exception("a callback raised; the task's result was still delivered")
