"""``sharkcage.Pool``: ``multiprocessing.Pool`` without the sharks.

Same signature first, same methods, same semantics — plus a crash, a
timeout or an unpicklable result failing only its own task, with a clear
error, and a pool that never hangs.

>>> from sharkcage import Pool
>>> with Pool(2) as pool:
...     pool.map(abs, [-1, -2, 3])
[1, 2, 3]
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from pathlib import Path

from sharkcage._engine import batching, serialize
from sharkcage._engine.worker import CALL, MAP, STARMAP
from sharkcage.backends import create_backend
from sharkcage.results import AsyncIMapIterator, AsyncResult, IMapIterator, MapResult

_RUN = "RUN"
_NO_KWDS: dict = {}  # shared by every apply_async without keywords (never mutated)
_CLOSE = "CLOSE"
_TERMINATE = "TERMINATE"


def _fn_name(func) -> str:
    return serialize.callable_name(func)


def _apply_name(func) -> str:
    return f"apply({_fn_name(func)})"  # built once per plain function (Pool._apply_fns)


def _per_call(func) -> bool:
    """Plain functions are cached per pool; other callables per call (their
    state may change between calls)."""
    import types

    return not isinstance(func, (types.FunctionType, types.BuiltinFunctionType, type))


class Pool:
    """A process pool with the API of ``multiprocessing.Pool``.

    ``processes``, ``initializer``, ``initargs``, ``maxtasksperchild`` and
    ``context`` mean what they mean in the stdlib. Keyword-only extras:

    * ``start_method`` — ``"forkserver"`` (default where available: on
      Linux sharkcage's zygote, a clean single-threaded process forked from
      this one while it is single-threaded, else spawned with its imports
      preloaded; every worker is forked from it), ``"spawn"``, or
      ``"fork"`` (refused while other threads run: :class:`UnsafeForkError`,
      unless ``allow_unsafe_fork=True``).
    * ``task_timeout`` — seconds a task may run; past it the worker is killed
      and replaced and that task fails with :class:`TaskTimeoutError`.
    * ``max_memory_per_worker`` — bytes of RSS after which a worker is
      recycled (after its current task).
    * ``retries`` — fresh attempts for a task whose worker crashed.
    * ``finalizer`` — ``finalizer(state)`` runs on orderly worker exit.
    * ``progress`` — a progress bar on every map-like call (``True``; or
      ``"auto"``: only when stderr is a terminal or a notebook).
    * ``warn_after`` — log the stack of any task running longer (seconds).
    * ``label_output`` — worker stdout/stderr reach this process's streams
      line by line, prefixed ``[worker N]``.
    * ``record`` — keep the timeline and per-worker stats (default True;
      ``False`` keeps only pool-wide counts).
    * ``backend``/``address`` — run on a cluster engine instead of local
      processes (see docs/backends.md).

    >>> from sharkcage import Pool
    >>> with Pool(2, task_timeout=60) as pool:
    ...     pool.starmap(pow, [(2, 3), (3, 2)])
    [8, 9]
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable | None = None,
        initargs: Iterable = (),
        maxtasksperchild: int | None = None,
        context=None,
        *,
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
        self._state = _RUN
        self._progress = progress
        self._backend = create_backend(
            backend,
            processes=processes, initializer=initializer, initargs=initargs, finalizer=finalizer,
            maxtasksperchild=maxtasksperchild, context=context, start_method=start_method,
            task_timeout=task_timeout, max_memory_per_worker=max_memory_per_worker,
            retries=retries, allow_unsafe_fork=allow_unsafe_fork, address=address, warn_after=warn_after,
            label_output=label_output, record=record, shm_threshold=shm_threshold,
        )
        self._processes = self._backend.config.processes
        # id(func) -> (func, fn id, task name) of plain functions: apply_async
        # looks a function up once per call instead of three times.
        self._apply_fns: dict = {}
        self._inline = getattr(self._backend, "inline_items", False)
        self._arena = getattr(self._backend, "arena", None)
        self._actors: "weakref.WeakSet" = weakref.WeakSet()
        self._shares: list = []
        # A pool that is garbage-collected without close()/terminate() is
        # terminated, like the stdlib's, and never leaves workers behind.
        self._finalizer = weakref.finalize(self, _finalize_backend, self._backend)

    # ------------------------------------------------------------------
    def _check_running(self) -> None:
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def _fn(self, func) -> int:
        if not callable(func):
            raise TypeError(f"{func!r} is not callable")
        return self._backend.register_function(func, per_call=_per_call(func))

    def _chunksize(self, n: int, chunksize) -> int:
        if chunksize is None:
            chunksize, extra = divmod(n, self._processes * 4)
            if extra:
                chunksize += 1
            return max(1, chunksize)
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        return chunksize

    # ------------------------------------------------------------------
    # apply

    def apply(self, func: Callable, args: Iterable = (), kwds: dict | None = None) -> Any:
        """Call ``func(*args, **kwds)`` in a worker and return its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable, args: Iterable = (), kwds: dict | None = None,
                    callback: Callable | None = None, error_callback: Callable | None = None) -> AsyncResult:
        """Like ``apply`` but returns an :class:`AsyncResult` at once.

        An argument that cannot be pickled raises :class:`SerializationError` here.
        """
        if self._state != _RUN:
            raise ValueError("Pool not running")
        hit = self._apply_fns.get(id(func))
        if hit is None or hit[0] is not func:
            hit = (func, self._fn(func), _apply_name(func))
            if not _per_call(func) and len(self._apply_fns) < 4096:
                self._apply_fns[id(func)] = hit
        job = AsyncResult(self._backend, hit[2], callback, error_callback)
        # kwds snapshot: the task sees them as they were at this call
        item = (args if type(args) is tuple else tuple(args), dict(kwds) if kwds else _NO_KWDS)
        self._backend.submit_call(job, hit[1], CALL, item,
                                  batching.call_payload(job, CALL, item, self._arena, self._inline))
        return job

    # ------------------------------------------------------------------
    # map

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None, *, progress=None) -> list:
        """``list(map(func, iterable))``, in parallel; raises the first failure.

        ``progress=True`` shows a progress bar for this call.
        """
        return self._map_async(func, iterable, chunksize, MAP, "map", progress=progress).get()

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None, *, progress=None) -> list:
        """Like ``map`` with ``func(*item)`` for each item."""
        return self._map_async(func, iterable, chunksize, STARMAP, "starmap", progress=progress).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                  callback: Callable | None = None, error_callback: Callable | None = None,
                  *, progress=None) -> MapResult:
        """Like ``map`` but returns a :class:`MapResult` at once."""
        return self._map_async(func, iterable, chunksize, MAP, "map", callback, error_callback, progress)

    def starmap_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                      callback: Callable | None = None, error_callback: Callable | None = None,
                      *, progress=None) -> MapResult:
        """Like ``starmap`` but returns a :class:`MapResult` at once."""
        return self._map_async(func, iterable, chunksize, STARMAP, "starmap", callback, error_callback, progress)

    def _progress_bar(self, progress, total, desc):
        progress = self._progress if progress is None else progress
        if not progress:
            return None
        from sharkcage.observe.progress import ProgressBar

        return ProgressBar(total, desc=desc, enabled=None if progress == "auto" else True)

    def _map_async(self, func, iterable, chunksize, kind, verb, callback=None, error_callback=None,
                   progress=None) -> MapResult:
        self._check_running()
        fn_id = self._fn(func)
        items = iterable if isinstance(iterable, list) else list(iterable)
        size = self._chunksize(len(items), chunksize)
        job = MapResult(self._backend, f"{verb}({_fn_name(func)})", len(items), callback, error_callback)
        if items:
            job.progress = self._progress_bar(progress, len(items), job.name)
        # The first chunk goes out as soon as it is pickled, so the workers
        # start while the rest is pickled (as the stdlib's task thread does).
        # Should a later chunk fail to pickle, what was sent is cancelled.
        batches, sent = [], False
        try:
            for first, chunk in batching.chunks(items, size):
                batch, _ = batching.pickle_chunk(chunk, job, first, fn_id, kind, raise_errors=True,
                                                 arena=self._arena)
                batches.append(batch)
                if not sent:
                    self._backend.submit(batches)
                    batches, sent = [], True
        except BaseException:
            if sent:  # the call raises: its callbacks must not hear of it a second time
                job._callback = job._error_callback = None
                self._backend.cancel(job)
            raise
        if batches:
            self._backend.submit(batches)
        return job

    # ------------------------------------------------------------------
    # imap

    def imap(self, func: Callable, iterable: Iterable, chunksize: int | None = None, *, progress=None) -> IMapIterator:
        """Lazy ``map``: results in order, as they come; input consumed lazily.

        Without ``chunksize``, chunks are sized from the measured task time
        (the stdlib's default of 1 costs a round trip per item).
        """
        return self._imap(func, iterable, chunksize, True, progress=progress)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int | None = None, *,
                       progress=None) -> IMapIterator:
        """Lazy ``map``: results in completion order; input consumed lazily."""
        return self._imap(func, iterable, chunksize, False, progress=progress)

    def aimap(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> AsyncIMapIterator:
        """``async for`` over ``imap``: ordered results, the event loop never blocked."""
        return AsyncIMapIterator(self._imap(func, iterable, chunksize, True))

    def aimap_unordered(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> AsyncIMapIterator:
        """``async for`` over ``imap_unordered``: results in completion order."""
        return AsyncIMapIterator(self._imap(func, iterable, chunksize, False))

    def _imap(self, func, iterable, chunksize, ordered: bool, kind: int = MAP, progress=None) -> IMapIterator:
        self._check_running()
        fn_id = self._fn(func)
        size = None if chunksize is None else self._chunksize(0, chunksize)
        verb = "imap" if ordered else "imap_unordered"
        job = IMapIterator(self._backend, f"{verb}({_fn_name(func)})", ordered)
        total = len(iterable) if hasattr(iterable, "__len__") else None
        job.progress = self._progress_bar(progress, total, job.name)
        batching.Feeder(self._backend, job, iterable, fn_id, kind, size, self._processes)
        return job

    # ------------------------------------------------------------------
    # observability

    def stats(self):
        """Per-worker tasks, busy and idle time, crashes, restarts, peak RSS;
        pool-wide counts and the parent-side overhead per task.

        >>> from sharkcage import Pool
        >>> with Pool(1) as pool:
        ...     _ = pool.map(abs, range(10))
        ...     pool.stats().tasks_done
        10
        """
        return self._backend.recorder.stats()

    def timeline(self, path) -> "Path":
        """Write a self-contained HTML timeline: one lane per worker, one bar
        per task or chunk, coloured by outcome. Returns the path.

        >>> import os, tempfile
        >>> from sharkcage import Pool
        >>> with Pool(1) as pool:
        ...     _ = pool.map(abs, range(4))
        ...     path = pool.timeline(os.path.join(tempfile.mkdtemp(), "t.html"))
        >>> path.exists()
        True
        """
        from sharkcage.observe.timeline import render_timeline

        return render_timeline(self._backend.recorder.events(), path,
                               title=f"sharkcage timeline ({self._processes} workers)")

    def dump_stacks(self, timeout: float = 2.0) -> dict:
        """``{pid: Python stack}`` of each busy worker, even one stuck in C code."""
        return self._backend.dump_stacks(timeout)

    # ------------------------------------------------------------------
    # shared data

    def share(self, obj: Any):
        """Place a large read-only object in shared memory once; returns a handle.

        Pass the handle in task arguments: the task receives the object,
        materialised at most once per worker (numpy arrays as zero-copy
        read-only views). The memory is released when the pool ends. On a
        cluster backend the object goes to the engine's object store instead
        (Dask: scattered; Ray: ``ray.put``), see docs/backends.md.

        >>> import numpy as np
        >>> from sharkcage import Pool
        >>> with Pool(1) as pool:
        ...     h = pool.share(np.arange(10))
        ...     int(pool.apply(np.sum, (h,)))
        45
        """
        self._check_running()
        handle = self._backend.share(obj)
        self._shares.append(handle)
        return handle

    def _release_shares(self) -> None:
        shares, self._shares = self._shares, []
        for handle in shares:
            try:
                handle.release()
            except Exception:
                pass

    # ------------------------------------------------------------------
    # actors

    def actor(self, cls: type, *args, restart: bool = False, **kwargs):
        """``cls(*args, **kwargs)`` living in a dedicated worker process.

        ``proxy.method(*a, **kw)`` runs there in call order and returns the
        result; ``proxy.method.submit(...)`` returns a future (also
        awaitable); ``proxy.close()`` stops it. The actor's process is one
        more than ``processes`` (on a cluster: an engine actor that takes no
        task slot). If it dies, pending and later calls raise
        :class:`WorkerCrashedError`, unless ``restart=True`` (rebuilt from the
        same arguments, with a RuntimeWarning). The pool's ``task_timeout``
        applies to each call.

        >>> from sharkcage import Pool
        >>> with Pool(1) as pool:
        ...     box = pool.actor(list)
        ...     box.append(1); box.append(2); box.copy()
        [1, 2]
        """
        from sharkcage.actors import ActorProxy

        self._check_running()
        cfg = self._backend.config
        if not hasattr(cfg, "context"):  # a cluster backend: an engine actor (docs/backends.md)
            proxy = ActorProxy(cls, args, kwargs, restart=restart, cluster=self._backend)
        else:
            proxy = ActorProxy(
                cls, args, kwargs, restart=restart, start_method=None, context=cfg.context,
                task_timeout=cfg.task_timeout, allow_unsafe_fork=cfg.allow_unsafe_fork,
            )
        self._actors.add(proxy)
        return proxy

    # ------------------------------------------------------------------
    # lifecycle

    def close(self) -> None:
        """No more tasks; workers leave once the submitted ones are done."""
        if self._state == _RUN:
            self._state = _CLOSE
            self._backend.close()
            for proxy in list(self._actors):
                proxy._closed = True
                proxy._backend.close()

    def terminate(self) -> None:
        """Stop now: kill the workers; outstanding results fail with SharkcageError."""
        self._state = _TERMINATE
        self._backend.terminate()
        for proxy in list(self._actors):
            proxy._closed = True
            proxy._backend.terminate("the pool was terminated")
        self._backend.join(5.0)
        for proxy in list(self._actors):
            proxy._backend.join(5.0)
        self._release_shares()

    def join(self) -> None:
        """Wait for the workers to leave (after ``close()`` or ``terminate()``)."""
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        self._backend.join()
        for proxy in list(self._actors):
            proxy._backend.join()
        self._release_shares()

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc_info) -> None:
        self.terminate()

    def __reduce__(self):
        raise NotImplementedError(
            "pool objects cannot be passed between processes or pickled; "
            "create the pool inside the task instead (nested pools work)"
        )

    def __repr__(self) -> str:
        return f"<sharkcage.Pool state={self._state} processes={self._processes}>"


def _finalize_backend(backend) -> None:
    if not backend.done.is_set():
        backend.terminate("the pool was garbage-collected")
