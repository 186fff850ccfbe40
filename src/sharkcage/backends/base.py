"""The interface every backend implements (the local engine, Dask, Ray)."""

from __future__ import annotations

import numbers
import threading
from typing import Callable, Protocol


def check_common(processes, initializer, retries, initargs) -> tuple:
    """The options every backend checks alike; ``initargs`` as a tuple.
    ``processes=None`` (the engine's default) passes.

    >>> check_common(2, None, 0, [1])
    (1,)
    """
    if processes is not None and (isinstance(processes, bool) or not isinstance(processes, numbers.Integral)
                                  or processes < 1):
        raise ValueError(f"Number of processes must be at least 1, not {processes!r}")
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    if isinstance(retries, bool) or not isinstance(retries, numbers.Integral) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, not {retries!r}")
    try:
        return tuple(initargs)
    except TypeError:
        raise TypeError(f"initargs must be a tuple of arguments, not {initargs!r}") from None


class Backend(Protocol):
    """What the facades need from an engine.

    * ``register_function(fn, per_call)`` -> an id; raises SerializationError.
    * ``submit(batches)``: hand over batches (see ``_engine.supervisor.Batch``);
      each item's outcome reaches its job through ``Job.deliver`` exactly once.
    * ``submit_call(job, fn_id, kind, item, payload)``: one call, unbatched
      (``batching.call_payload``); the engine may merge queued calls.
    * ``cancel(job)``: drop the job's pending items, stop its running ones.
    * ``close()`` (finish the work, then stop), ``terminate(reason)`` (stop
      now; outstanding items fail with SharkcageError), ``join(timeout)``.
    * ``share(obj)``: ``obj`` placed once where every worker can reach it
      (shared memory, or the cluster's object store); a handle that pickles
      small and unpickles in a task as the object (``pool.share``).
    * ``done``: set once the backend has stopped and settled every outcome.
    * ``callbacks``: runs user callbacks off the engine's own thread.
    """

    done: threading.Event
    config: object

    def register_function(self, fn: Callable, per_call: bool = False) -> int: ...
    def submit(self, batches: list) -> None: ...
    def submit_call(self, job, fn_id: int, kind: int, item, payload) -> None: ...
    def cancel(self, job) -> None: ...
    def close(self) -> None: ...
    def terminate(self, reason: str = ...) -> None: ...
    def join(self, timeout: float | None = None) -> bool: ...
    def share(self, obj) -> object: ...
    def alive(self) -> bool: ...

