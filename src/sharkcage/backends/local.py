"""The local backend: validate the pool's options and start a Supervisor."""

from __future__ import annotations

import atexit
import numbers
import os
import threading
import weakref

from sharkcage._engine import start, zygote
from sharkcage._engine.supervisor import PoolConfig, Supervisor
from sharkcage.backends.base import check_common

_live: "weakref.WeakSet[Supervisor]" = weakref.WeakSet()
_counter = 0
_counter_lock = threading.Lock()


def _positive_int(name: str, value, allow_none: bool = True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, not {value!r}")
    return int(value)


def _positive_number(name: str, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds/bytes or None, not {value!r}")
    return value


def make_local_backend(
    *,
    processes=None,
    initializer=None,
    initargs=(),
    finalizer=None,
    maxtasksperchild=None,
    context=None,
    start_method=None,
    task_timeout=None,
    max_memory_per_worker=None,
    retries=0,
    allow_unsafe_fork=False,
    name=None,
    restart_crashed=True,
    max_init_failures=3,
    on_restart=None,
    warn_after=None,
    label_output=False,
    record=True,
    shm_threshold=1 << 20,
) -> Supervisor:
    """Validate everything the user passed, then start the engine."""
    global _counter
    if processes is None:
        processes = os.cpu_count() or 1
    initargs = check_common(processes, initializer, retries, initargs)
    if finalizer is not None and not callable(finalizer):
        raise TypeError("finalizer must be a callable")
    context, method = start.resolve_context(start_method, context)
    with _counter_lock:
        _counter += 1
        name = f"{name or 'pool'}{_counter}"
    config = PoolConfig(
        int(processes), context, method,
        initializer=initializer, initargs=initargs, finalizer=finalizer,
        maxtasksperchild=_positive_int("maxtasksperchild", maxtasksperchild),
        task_timeout=_positive_number("task_timeout", task_timeout),
        max_memory_per_worker=_positive_number("max_memory_per_worker", max_memory_per_worker),
        retries=int(retries), allow_unsafe_fork=bool(allow_unsafe_fork), name=name,
        restart_crashed=restart_crashed, max_init_failures=max_init_failures, on_restart=on_restart,
        warn_after=_positive_number("warn_after", warn_after),
        label_output=bool(label_output), record=bool(record),
        shm_threshold=_positive_int("shm_threshold", shm_threshold, allow_none=False),
    )
    sup = Supervisor(config)
    _live.add(sup)
    return sup


@atexit.register
def _terminate_all() -> None:
    """At interpreter exit, stop every pool still running (before
    multiprocessing's own exit handler joins the children)."""
    sups = [s for s in list(_live) if not s.done.is_set()]
    for s in sups:
        s.terminate("the interpreter is exiting")
    for s in sups:
        s.join(2.0)
    zygote.close_at_exit()  # after the pools: their workers are the zygote's children
