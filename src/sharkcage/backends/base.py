"""The interface every backend implements (the local engine, Dask, Ray)."""

from __future__ import annotations

import threading
from typing import Callable, Protocol


class Backend(Protocol):
    """What the facades need from an engine.

    * ``register_function(fn, per_call)`` -> an id; raises SerializationError.
    * ``submit(batches)``: hand over batches (see ``_engine.supervisor.Batch``);
      each item's outcome reaches its job through ``Job.deliver`` exactly once.
    * ``cancel(job)``: drop the job's pending items, stop its running ones.
    * ``close()`` (finish the work, then stop), ``terminate(reason)`` (stop
      now; outstanding items fail with SharkcageError), ``join(timeout)``.
    * ``done``: set once the backend has stopped and settled every outcome.
    * ``callbacks``: runs user callbacks off the engine's own thread.
    """

    done: threading.Event
    config: object

    def register_function(self, fn: Callable, per_call: bool = False) -> int: ...
    def submit(self, batches: list) -> None: ...
    def cancel(self, job) -> None: ...
    def close(self) -> None: ...
    def terminate(self, reason: str = ...) -> None: ...
    def join(self, timeout: float | None = None) -> bool: ...
    def alive(self) -> bool: ...

