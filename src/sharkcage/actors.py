"""Actors: one object that lives in its own worker process and keeps its state.

Seed 004's shark: a bound method mapped over a pool runs on a fresh copy of
its object for every task, so the parent's counter stays at 0. An actor is
the pattern for state that must persist: ``pool.actor(cls, *args)`` builds
``cls(*args)`` once, in a dedicated worker; every ``proxy.method(...)`` runs
there, in call order, on that same object.

>>> from sharkcage import Pool
>>> class Counter:
...     def __init__(self):
...         self.count = 0
...     def add(self, n=1):
...         self.count += n
...         return self.count
>>> with Pool(1) as pool:                       # doctest: +SKIP
...     counter = pool.actor(Counter)
...     [counter.add() for _ in range(3)]
[1, 2, 3]

An actor takes a process of its own, *in addition to* the pool's
``processes`` workers: it never competes with map tasks for a slot.
"""

from __future__ import annotations

import concurrent.futures
import types
import warnings
from typing import Any

from sharkcage._engine import batching
from sharkcage._engine.worker import CALL, worker_state
from sharkcage.backends import create_backend
from sharkcage.errors import SharkcageError
from sharkcage.results import AwaitableFuture, FutureJob


def _build(cls, args, kwargs):
    """Runs in the actor's process, as its initializer: the state is the object."""
    return cls(*args, **kwargs)


def call_method(obj, name: str, args: tuple, kwargs: dict):
    """One method call on an actor's object, where it lives (an ``async
    def`` method runs to completion on the actor's own loop). Local and
    cluster actors both call this."""
    value = getattr(obj, name)(*args, **kwargs)
    if isinstance(value, types.CoroutineType):
        from sharkcage._engine.worker import _run_coroutine

        value = _run_coroutine(value)
    return value


def _call(name: str, args: tuple, kwargs: dict):
    """Runs in a local actor's process: its object is the worker's state."""
    return call_method(worker_state(), name, args, kwargs)


class ActorMethod:
    """``proxy.method(...)`` runs and waits; ``proxy.method.submit(...)`` returns a future."""

    __slots__ = ("_proxy", "_name")

    def __init__(self, proxy: "ActorProxy", name: str):
        self._proxy = proxy
        self._name = name

    def submit(self, *args, **kwargs) -> AwaitableFuture:
        """Queue the call; a ``concurrent.futures.Future`` (also awaitable)."""
        return self._proxy._submit(self._name, args, kwargs)

    def __call__(self, *args, **kwargs) -> Any:
        future = self.submit(*args, **kwargs)
        return self._proxy._wait(future)

    def __repr__(self) -> str:
        return f"<actor method {self._proxy._cls_name}.{self._name}>"


class ActorProxy:
    """The parent's handle on an actor (see :meth:`sharkcage.Pool.actor`).

    Calls run in the order they were made. If the actor's process dies,
    pending and later calls raise :class:`WorkerCrashedError` — unless it was
    created with ``restart=True``: then it is rebuilt from the same
    arguments (its state starts afresh) and a ``RuntimeWarning`` says so.
    """

    def __init__(self, cls: type, args: tuple, kwargs: dict, *, restart: bool, start_method=None, context=None,
                 task_timeout=None, allow_unsafe_fork: bool = False, cluster=None):
        if not isinstance(cls, type):
            raise TypeError(f"pool.actor() takes a class, not {cls!r}; wrap a function's state in a class")
        self._cls_name = cls.__qualname__
        self._methods = {name for name in dir(cls) if callable(getattr(cls, name, None)) and not name.startswith("__")}
        self._closed = False
        name = self._cls_name

        def restarted(pid, exitcode):
            how = "" if pid is None else f" (pid {pid}) died with exit code {exitcode}"
            warnings.warn(
                f"actor {name}{how or ' died'}; it was rebuilt from the "
                "same arguments (restart=True), so its state starts afresh",
                RuntimeWarning,
                stacklevel=1,
            )

        if cluster is not None:
            # An engine actor (Dask, Ray): backends/_actors.py
            self._backend = cluster.actor_backend(cls, tuple(args), dict(kwargs), restart=restart,
                                                  on_restart=restarted if restart else None)
            self._fn_id = 0
            return
        self._backend = create_backend(
            "local",
            processes=1,
            initializer=_build,
            initargs=(cls, tuple(args), dict(kwargs)),
            start_method=start_method,
            context=context,
            task_timeout=task_timeout,
            allow_unsafe_fork=allow_unsafe_fork,
            name=f"actor-{name}-",
            restart_crashed=restart,
            max_init_failures=1,  # the constructor raised: calling it again would only raise again
            on_restart=restarted if restart else None,
        )
        self._fn_id = self._backend.register_function(_call)

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._methods:
            raise AttributeError(f"{self._cls_name} has no method {name!r}")
        method = self.__dict__[name] = ActorMethod(self, name)  # found directly next time
        return method

    def _submit(self, name: str, args: tuple, kwargs: dict) -> AwaitableFuture:
        if self._closed:
            raise SharkcageError(f"actor {self._cls_name} is closed")
        future = AwaitableFuture()
        job = FutureJob(future, f"{self._cls_name}.{name}()")
        job.kind = "actor"
        future._sharkcage_job = job
        future._sharkcage_backend = self._backend
        batch = batching.single(job, self._fn_id, CALL, ((name, args, kwargs), {}), getattr(self._backend, "arena", None))
        self._backend.submit([batch])
        return future

    def _wait(self, future: concurrent.futures.Future):
        from sharkcage.results import wait_for_future

        return wait_for_future(future, self._backend)

    def close(self) -> None:
        """Finish the calls already made, then stop the actor's process."""
        if not self._closed:
            self._closed = True
            self._backend.close()
            self._backend.join(30)

    def terminate(self) -> None:
        """Stop the actor's process now; pending calls fail with SharkcageError."""
        self._closed = True
        self._backend.terminate("the actor was terminated")
        self._backend.join(5)

    def __enter__(self) -> "ActorProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):
        raise NotImplementedError("actor proxies cannot be passed to other processes")

    def __repr__(self) -> str:
        return f"<sharkcage actor {self._cls_name}{' closed' if self._closed else ''}>"


__all__ = ["ActorProxy", "ActorMethod", "AwaitableFuture"]
