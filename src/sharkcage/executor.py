"""``sharkcage.ProcessPoolExecutor``: ``concurrent.futures`` without the sharks.

Returns real ``concurrent.futures.Future`` objects (``as_completed``,
``wait`` and ``asyncio.wrap_future`` work). A crashed worker fails only its
own future — the stdlib's executor breaks as a whole — and
:meth:`ProcessPoolExecutor.cancel` can stop a running task.

>>> from sharkcage import ProcessPoolExecutor
>>> with ProcessPoolExecutor(max_workers=2) as ex:
...     ex.submit(pow, 2, 5).result(timeout=30), list(ex.map(abs, [-1, -2]))
(32, [1, 2])
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any, Callable, Iterable, Iterator

from sharkcage._engine import batching, serialize
from sharkcage._engine.worker import CALL, STARMAP
from sharkcage.backends import create_backend
from sharkcage.pool import _finalize_backend, _per_call
from sharkcage.results import AwaitableFuture, FutureJob, IMapIterator, force_cancel

import weakref


class ProcessPoolExecutor(concurrent.futures.Executor):
    """A process pool with the API of ``concurrent.futures.ProcessPoolExecutor``.

    ``max_workers``, ``mp_context``, ``initializer``, ``initargs`` and
    ``max_tasks_per_child`` mean what they mean in the stdlib; the keyword
    extras (``start_method``, ``task_timeout``, ``retries``, ...) are those
    of :class:`sharkcage.Pool`.

    >>> import concurrent.futures
    >>> from sharkcage import ProcessPoolExecutor
    >>> with ProcessPoolExecutor(2) as ex:
    ...     fs = [ex.submit(abs, -n) for n in range(3)]
    ...     sorted(f.result() for f in concurrent.futures.as_completed(fs, timeout=30))
    [0, 1, 2]
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context=None,
        initializer: Callable | None = None,
        initargs: Iterable = (),
        *,
        max_tasks_per_child: int | None = None,
        start_method: str | None = None,
        task_timeout: float | None = None,
        max_memory_per_worker: int | None = None,
        progress: bool = False,
        backend: str = "local",
        address=None,
        retries: int = 0,
        finalizer: Callable | None = None,
        allow_unsafe_fork: bool = False,
        warn_after: float | None = None,
        label_output: bool = False,
        record: bool = True,
        shm_threshold: int = 1 << 20,
    ):
        if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers <= 0):
            raise ValueError("max_workers must be greater than 0")
        self._shutdown = False
        self._futures: "weakref.WeakSet[concurrent.futures.Future]" = weakref.WeakSet()
        self._backend = create_backend(
            backend,
            processes=max_workers, initializer=initializer, initargs=initargs, finalizer=finalizer,
            maxtasksperchild=max_tasks_per_child, context=mp_context, start_method=start_method,
            task_timeout=task_timeout, max_memory_per_worker=max_memory_per_worker,
            retries=retries, allow_unsafe_fork=allow_unsafe_fork, address=address, warn_after=warn_after,
            label_output=label_output, record=record, shm_threshold=shm_threshold,
        )
        self._progress = progress
        self._max_workers = self._backend.config.processes
        # read once, as Pool does: submit() is a hot path
        self._inline = getattr(self._backend, "inline_items", False)
        self._arena = getattr(self._backend, "arena", None)
        self._finalizer = weakref.finalize(self, _finalize_backend, self._backend)

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def submit(self, fn: Callable, /, *args, **kwargs) -> concurrent.futures.Future:
        """Schedule ``fn(*args, **kwargs)``; returns a ``concurrent.futures.Future``.

        An argument that cannot be pickled raises :class:`SerializationError` here.
        """
        self._check_open()
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        fn_id = self._backend.register_function(fn, per_call=_per_call(fn))
        future: concurrent.futures.Future = AwaitableFuture()
        job = FutureJob(future, f"submit({serialize.callable_name(fn)})")
        future._sharkcage_job = job  # for cancel(); Future has a __dict__
        future._sharkcage_backend = self._backend
        item = (args, kwargs)
        self._backend.submit_call(job, fn_id, CALL, item,
                                  batching.call_payload(job, CALL, item, self._arena, self._inline))
        self._futures.add(future)
        return future

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int | None = None, progress=None) -> Iterator:
        """Lazy ``map(fn, *iterables)`` over the pool, results in order.

        Unlike the stdlib, the input is consumed lazily with a bounded number
        of tasks in flight, so an infinite iterable works. ``timeout`` counts
        from this call, as in the stdlib. Without ``chunksize``, chunks are
        sized from the measured task time; an explicit one is obeyed.
        """
        self._check_open()
        if chunksize is not None and (isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError("chunksize must be >= 1.")
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        deadline = None if timeout is None else time.monotonic() + timeout
        fn_id = self._backend.register_function(fn, per_call=_per_call(fn))
        job = IMapIterator(self._backend, f"map({serialize.callable_name(fn)})", True)
        progress = self._progress if progress is None else progress
        if progress:
            from sharkcage.observe.progress import ProgressBar

            sizes = [len(it) for it in iterables if hasattr(it, "__len__")]
            job.progress = ProgressBar(min(sizes) if len(sizes) == len(iterables) else None, desc=job.name,
                                       enabled=None if progress == "auto" else True)
        feeder = batching.Feeder(self._backend, job, zip(*iterables), fn_id, STARMAP, chunksize, self._max_workers)
        return _results(job, feeder, deadline, self._backend)

    def stats(self):
        """As :meth:`sharkcage.Pool.stats`."""
        return self._backend.recorder.stats()

    def timeline(self, path):
        """As :meth:`sharkcage.Pool.timeline`."""
        from sharkcage.observe.timeline import render_timeline

        return render_timeline(self._backend.recorder.events(), path)

    def dump_stacks(self, timeout: float = 2.0) -> dict:
        """As :meth:`sharkcage.Pool.dump_stacks`."""
        return self._backend.dump_stacks(timeout)

    def cancel(self, future: concurrent.futures.Future) -> bool:
        """Stop a future's task: pending ones are dropped, a running one's worker
        is killed and replaced. True when stopped, False if already finished."""
        job = getattr(future, "_sharkcage_job", None)
        if job is None:
            raise ValueError("this future was not created by this executor")
        if future.cancel():  # not started: dropped, or skipped by its worker
            return True
        job.cancel_requested = True
        if not force_cancel(future):
            return False  # already finished
        self._backend.cancel(job)  # running: kill and replace its worker
        return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As in the stdlib: no new work; optionally cancel pending futures; wait."""
        self._shutdown = True
        if cancel_futures:
            for fut in list(self._futures):
                fut.cancel()
        # The stdlib's map has submitted its whole input by now; ours is lazy,
        # so what it has not pulled yet is not "pending": it stops there.
        self._backend.stop_feeders("the executor was shut down")
        self._backend.close()
        if wait:
            self._backend.join()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C: stop now (guarantee 8), do not wait for running tasks.
            self._shutdown = True
            self._backend.terminate("the executor was stopped by KeyboardInterrupt")
            self._backend.join(2.0)
            return False
        self.shutdown(wait=True)
        return False

    def __reduce__(self):
        raise NotImplementedError("executor objects cannot be passed between processes or pickled")


def _results(job: IMapIterator, feeder, deadline, backend) -> Iterator[Any]:
    try:
        while True:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise TimeoutError()
            try:
                yield job.next(timeout)
            except StopIteration:
                return
            except concurrent.futures.TimeoutError:
                raise
            except Exception as e:
                import multiprocessing

                if isinstance(e, multiprocessing.TimeoutError):
                    raise TimeoutError() from None
                raise
    finally:
        # Like the stdlib, leaving the iterator early cancels what is left.
        feeder.stop()
        job.cancel_requested = True
        backend.cancel(job, running=False)
