"""sharkcage: Python process pools without the sharks.

Swap one import line and keep your code::

    from sharkcage import Pool          # instead of: from multiprocessing import Pool

    def square(x):
        return x * x

    if __name__ == "__main__":
        with Pool(2) as pool:
            print(pool.map(square, range(5)))   # [0, 1, 4, 9, 16]

A crash, a timeout or an unpicklable result fails only its own task, with a
clear error; the pool never hangs.
"""

from sharkcage.errors import (
    RemoteError,
    SerializationError,
    SharkcageError,
    TaskTimeoutError,
    UnsafeForkError,
    WorkerCrashedError,
    WorkerInitError,
)

from sharkcage._engine.worker import worker_info, worker_state
from sharkcage.executor import ProcessPoolExecutor
from sharkcage.pool import Pool
from sharkcage.actors import ActorProxy
from sharkcage.results import AsyncIMapIterator, AsyncResult, AwaitableFuture, IMapIterator, MapResult

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import sharkcage` never imports numpy; SharedArray needs it.
    if name in ("SharedArray", "ShareHandle"):
        from sharkcage import shared

        return getattr(shared, name)
    raise AttributeError(f"module 'sharkcage' has no attribute {name!r}")


__all__ = [
    "Pool",
    "ProcessPoolExecutor",
    "AsyncResult",
    "MapResult",
    "IMapIterator",
    "AsyncIMapIterator",
    "AwaitableFuture",
    "ActorProxy",
    "SharedArray",
    "ShareHandle",
    "worker_state",
    "worker_info",
    "SharkcageError",
    "WorkerCrashedError",
    "TaskTimeoutError",
    "RemoteError",
    "SerializationError",
    "WorkerInitError",
    "UnsafeForkError",
]
