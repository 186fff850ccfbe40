"""What every cluster backend (Dask, Ray) shares: the parent's dispatcher
(:class:`ClusterBackend`) and what runs on the cluster (:func:`remote_run`).

Data flow (one thread per pool owns the pool's state, as the local
supervisor does)::

    caller threads                dispatcher thread                     cluster worker
    --------------                -----------------                     --------------
    register_function(fn) -- cloudpickle once (SerializationError here)
    submit(batches) -----+
    cancel(job) ---------+--> events queue
    close()/terminate() -+        |
                                  v
                 pending batches -> 2 per cluster slot in flight (64 when
                   batches are short), single submits merged into one call:
                   one remote call per batch ----------------------------> remote_run(...)
                   (the function's bytes inline when small, else             loads the function once per
                    a cluster-side object made once per pool; big            process (LRU cache), runs the
                    pickles as zero-copy buffers, scattered on Dask;         initializer once, then
                    the arguments one bytes object when they can be:         worker.run_batch(...)
                    pack_call; calls started together: _launch_many)
                 "outcome" <- a collector thread gathers finished  <------  (reply, log records, stats)
                   calls, short ones in groups (so a slow transfer           as one bytes object when it
                   never stalls dispatch)                                    carries no big buffers
                   log records -> the parent's handlers, then
                   replies.settle(...) -> Job.deliver(index, ok, value)
                 worker lost -> the batch's items rerun one by one; a
                   single item that loses its worker again is that task's
                   WorkerCrashedError (after ``retries``)

Errors map onto the local engine's classes: the reply is the one
``worker.run_batch`` builds for a local worker, decoded by the same
``replies.settle``. The engines plug in through a handful of methods
(launch a call, stop it, read the cluster's size, publish an object);
``dask.py`` and ``ray.py`` are those. See docs/backends.md for every
guarantee per backend.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import logging
import numbers
import os
import pickle
import queue
import socket
import sys
import threading
import time
import traceback
import uuid
import weakref
from typing import Any, Callable

from sharkcage._engine import replies, serialize, start
from sharkcage.backends import _shares, _store_views
from sharkcage._engine import worker as worker_mod
from sharkcage._engine.jobs import CallbackRunner, Job
from sharkcage._engine.recorder import Recorder
from sharkcage._engine.feeders import FeederRegistry
from sharkcage._engine.supervisor import Batch, _parent_log_level
from sharkcage.backends.base import check_common
from sharkcage.errors import (
    SharkcageError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerInitError,
)

log = logging.getLogger("sharkcage")

_INLINE_LIMIT = 64 * 1024  # bytes of a pickled function sent with every batch; bigger ones once per worker
_DEPTH = 2  # batches in flight per cluster slot, so a worker never waits for the parent
_SHORT_DEPTH = 64  # ... when batches are short: enough to cover a remote call's latency, and to keep the
# engine's queue from running dry between calls (Ray hands a worker back when it does; 16 measured 1.18x
# native for one call per tiny task, 64 1.09x, 128 1.19x)
_SHORT_BATCH = 0.01  # seconds: a batch shorter than this is "short"
_REFRESH = 5.0  # seconds between re-reading the cluster's size (clusters grow and shrink)
_MAX_COALESCE = 64  # single-task submits merged into one remote call at most

_live: "weakref.WeakSet[ClusterBackend]" = weakref.WeakSet()


# ----------------------------------------------------------------------------
# Options


class ClusterConfig:
    """What the facades read from a backend (``processes``, ``name``, ...)."""

    def __init__(self, engine: str, processes: int, fixed: bool, *, task_timeout=None, retries=0,
                 initializer=None, initargs=(), name: str = "pool", record: bool = True):
        self.engine = engine
        self.processes = processes  # cluster slots at creation (the facades size chunks by it)
        self.fixed = fixed  # the user chose ``processes``: never use more slots than that
        self.task_timeout = task_timeout
        self.retries = retries
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.name = name
        self.record = record  # False: pool-wide counts only, no timeline (Pool(record=False))


_counter = 0
_counter_lock = threading.Lock()


def _facade_default(name: str):
    """The default of option ``name`` in the facades' signatures (a marker if none)."""
    import inspect

    from sharkcage.executor import ProcessPoolExecutor
    from sharkcage.pool import Pool

    for cls in (Pool, ProcessPoolExecutor):
        param = inspect.signature(cls.__init__).parameters.get(name)
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    return _NO_DEFAULT


_NO_DEFAULT = object()


def check_options(engine: str, *, processes=None, initializer=None, initargs=(), finalizer=None,
                  maxtasksperchild=None, context=None, start_method=None, task_timeout=None,
                  max_memory_per_worker=None, retries=0, allow_unsafe_fork=False, warn_after=None,
                  label_output=False, record=True, shm_threshold=None,
                  timeout_supported: bool, **other) -> ClusterConfig:
    """Validate the pool's options for a cluster; refuse what the engine cannot honour.

    Everything is checked before anything connects, so a refused option
    leaves nothing behind. ``allow_unsafe_fork`` is accepted and ignored:
    nothing forks the caller's process on a cluster.
    """
    global _counter
    initargs = check_common(processes, initializer, retries, initargs)
    refused = [
        ("finalizer", finalizer, "cluster workers outlive the pool, so there is no orderly exit to run it at; "
                                 "release resources at the end of each task instead"),
        ("maxtasksperchild", maxtasksperchild, "cluster workers are not the pool's to recycle; "
                                               f"configure restarts in {engine} itself"),
        ("max_memory_per_worker", max_memory_per_worker,
         "memory limits of cluster workers are set on the cluster ("
         + ("`dask worker --memory-limit`" if engine == "dask" else "Ray's memory monitor") + ")"),
        ("context", context, f"{engine} starts its own worker processes"),
        ("start_method", start_method, f"{engine} starts its own worker processes"),
        ("warn_after", warn_after, "sharkcage cannot read the stack of a task on a cluster worker; "
                                   + ("the Dask dashboard's call stacks show it" if engine == "dask"
                                      else "`ray stack` on the worker's node shows it")),
    ]
    if label_output:
        refused.append(("label_output", label_output, f"{engine} collects its workers' output itself"
                        + (" (the worker logs)" if engine == "dask" else " (log_to_driver=True in ray.init)")))
    if shm_threshold is not None and shm_threshold != _facade_default("shm_threshold"):
        refused.append(("shm_threshold", shm_threshold, f"data travels through {engine}'s own transport, "
                                                        "not this machine's shared memory"))
    # An option a newer facade passes that this backend does not know yet:
    # harmless at the facades' default, refused (loudly) otherwise.
    refused += [(k, v, "this backend does not know the option yet") for k, v in other.items()
                if v is not None and v != _facade_default(k)]
    for name, value, why in refused:
        if value is not None:
            raise ValueError(f"{name}={value!r} is not supported with backend={engine!r}: {why}")
    if task_timeout is not None:
        if isinstance(task_timeout, bool) or not isinstance(task_timeout, numbers.Real) or not task_timeout > 0:
            raise ValueError(f"task_timeout must be a positive number of seconds or None, not {task_timeout!r}")
        if not timeout_supported:
            raise ValueError(
                f"task_timeout={task_timeout!r} cannot be enforced with backend={engine!r}: {engine} has no way to "
                "stop a task once it runs (its worker threads cannot be killed), so the limit would be a lie. "
                "Enforce the limit inside the task (a timeout on whatever it waits for), or use backend='ray' "
                "(which kills the task's worker process) or backend='local'."
            )
    with _counter_lock:
        _counter += 1
        name = f"{engine}{_counter}"
    return ClusterConfig(engine, processes or 1, processes is not None, task_timeout=task_timeout,
                         retries=int(retries), initializer=initializer, initargs=initargs, name=name,
                         record=bool(record))


# ----------------------------------------------------------------------------
# Worker side: runs inside a cluster worker process (imported there by reference,
# so the workers need sharkcage installed, but never Dask or Ray through it).

_remote_lock = threading.Lock()
_remote_fns: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
_remote_states: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
_REMOTE_FN_LIMIT = 128  # callables a worker process keeps before the oldest is forgotten
_REMOTE_STATE_LIMIT = 32  # pools whose initializer state a worker process keeps


def _remote_function(key: str, data: bytes):
    """The callable for ``key``, unpickled once per worker process."""
    with _remote_lock:
        entry = _remote_fns.get(key)
        if entry is None:
            entry = _remote_fns[key] = data
            while len(_remote_fns) > _REMOTE_FN_LIMIT:
                _remote_fns.popitem(last=False)
        else:
            _remote_fns.move_to_end(key)
            if not isinstance(entry, (bytes, worker_mod._Unloadable)):
                return entry  # loaded before
    one = {key: entry}
    try:
        return worker_mod.load_function(one, key)
    finally:
        with _remote_lock:
            if key in _remote_fns:
                _remote_fns[key] = one[key]  # the function, or the record of why it failed


def _remote_state(token: str, init_key: str, init_data: bytes) -> None:
    """Run the pool's initializer once in this worker process; ``worker_state()`` returns its value."""
    with _remote_lock:
        known = token in _remote_states
        state = _remote_states.get(token)
    if not known:
        initializer, initargs = _remote_function(init_key, init_data)
        state = initializer(*initargs)
        with _remote_lock:
            _remote_states[token] = state
            while len(_remote_states) > _REMOTE_STATE_LIMIT:
                _remote_states.popitem(last=False)
    # One module-level slot per process: a worker thread shared by two pools
    # with initializers sees the state of the pool whose task it runs now.
    worker_mod._state = state


class _TaskLogs(logging.Handler):
    """The one handler on a worker process's root logger that collects what
    each sharkcage task's own thread logs, for the parent's handlers.

    Several tasks share a Dask worker process (one per thread): each thread's
    records go to the task that thread runs. One handler for the process's
    life: a handler made, added and removed per task cost ~13 µs (a lock, a
    weak reference, three passes under logging's module lock).
    """

    def __init__(self):
        super().__init__(logging.NOTSET)
        self.tasks: dict[int, _Capture] = {}  # thread ident -> the capture of the task it runs

    def emit(self, record: logging.LogRecord) -> None:
        capture = self.tasks.get(record.thread)
        if capture is None or record.levelno < capture.level:
            return
        try:
            capture.records.append(worker_mod.record_bytes(record))
        except Exception:
            self.handleError(record)


_task_logs: _TaskLogs | None = None


class _Capture:
    """One task's log capture on its thread (:func:`_capture_logs`); ``stop()`` ends it."""

    __slots__ = ("level", "records", "thread", "outer")

    def __init__(self, level: int):
        self.level = level
        self.records: list[bytes] = []
        self.thread = threading.get_ident()
        self.outer = _task_logs.tasks.get(self.thread)  # a capture this one interrupts, if any
        _task_logs.tasks[self.thread] = self

    def stop(self) -> None:
        if self.outer is None:
            _task_logs.tasks.pop(self.thread, None)
        else:
            _task_logs.tasks[self.thread] = self.outer


def _capture_logs(level: int) -> _Capture:
    """Start collecting the records this thread logs at ``level`` or above."""
    global _task_logs
    root = logging.getLogger()
    # Records below the root's level are never created; lower it (never
    # raise it) so the parent's level decides, as with local workers.
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    if _task_logs is None or _task_logs not in root.handlers:  # (the task's code may have reset logging)
        with _remote_lock:
            if _task_logs is None:
                _task_logs = _TaskLogs()
            if _task_logs not in root.handlers:
                root.addHandler(_task_logs)
    return _Capture(level)


def _allow_children() -> None:
    """Let a task create a pool of its own (nested pools), as local workers do.

    Dask starts its worker processes as daemonic ``multiprocessing``
    children, and multiprocessing refuses children of a daemonic process.
    The flag only guards that refusal (the nanny, not this flag, ends the
    worker), so clearing it in the worker changes nothing else.
    """
    global _children_allowed
    if _children_allowed:
        return
    import multiprocessing.process as mpp

    config = mpp.current_process()._config
    if config.get("daemon"):
        config["daemon"] = False
    _children_allowed = True


_children_allowed = False  # this process's daemon flag was cleared (once is enough)


def _prepare(batch_id, token, init, fn_key, fn_data):
    """The task's function (initializer run first); or the reply that fails the batch."""
    _allow_children()
    if init is not None:
        try:
            _remote_state(token, *init)
        except BaseException as e:  # noqa: BLE001 - SystemExit from an initializer is a failure too
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            return None, ("fn_failed", batch_id, serialize.pack_exception(WorkerInitError(tb, attempts=1)))
    try:
        return _remote_function(fn_key, fn_data), None
    except BaseException as e:  # noqa: BLE001
        return None, ("fn_failed", batch_id, serialize.pack_exception(e))


def take_all(q: queue.SimpleQueue, timeout: float | None) -> list:
    """Everything ``q`` holds: waits up to ``timeout`` (None: for ever) for a
    first item, then takes what else is there without waiting, so one
    wake-up handles a burst. ``[]`` if nothing came in time.

    >>> q = queue.SimpleQueue(); q.put(1); q.put(2)
    >>> take_all(q, 0), take_all(q, 0)
    ([1, 2], [])
    """
    try:
        items = [q.get(timeout=timeout)]
    except queue.Empty:
        return []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items


_OOB_BYTES = 1 << 20  # pickles from this size travel out-of-band through the engine's transport


def _carrier(how: str):
    """How big pickles cross the engine: wrapped so its transport moves them
    without copying them into a message (they arrive as some buffer, which
    ``pickle.loads`` reads as it is).

    * ``"pickle5"`` (Ray): a ``PickleBuffer``, taken out-of-band by Ray's
      protocol-5 serializer into the object store.
    * ``"numpy"`` (Dask): a zero-copy ``uint8`` array view, which Dask sends
      as raw frames (its scheduler links pickle at protocol 4, so a
      PickleBuffer cannot cross them, and ``bytes`` move several times slower).
    """
    if how == "pickle5":
        return pickle.PickleBuffer
    if how == "numpy":
        try:
            import numpy
        except ImportError:
            return None
        return lambda b: numpy.frombuffer(b, dtype=numpy.uint8)
    return None


_OOB_TAG = "sharkcage-out-of-band"  # an OutOfBand taken apart for Dask: (tag, head, [uint8 arrays])


def oob(data, how: str | None):
    """``data`` (a pickle, an ``OutOfBand``, or a list of them) ready for the
    engine: big pickles wrapped by ``_carrier(how)``; for Dask an
    ``OutOfBand`` becomes a tuple holding its buffers as ``uint8`` views,
    which Dask finds in a task's arguments or result and moves as frames
    (its links pickle at protocol 4, so a PickleBuffer cannot cross them)."""
    wrap = _carrier(how) if how else None
    if wrap is None:
        return data
    if isinstance(data, bytes):
        return wrap(data) if len(data) >= _OOB_BYTES else data
    if isinstance(data, serialize.OutOfBand):
        if how != "numpy":
            return data
        return (_OOB_TAG, data.head, [wrap(b.raw() if isinstance(b, pickle.PickleBuffer) else b)
                                      for b in data.buffers])
    if isinstance(data, list) and any(isinstance(d, serialize.OutOfBand) or isinstance(d, bytes)
                                      and len(d) >= _OOB_BYTES for d in data):
        return [oob(d, how) for d in data]
    return data


def _nbytes(data) -> int:
    """Bytes of one pickle as ``oob`` left it (plain, wrapped, or taken apart)."""
    if isinstance(data, tuple) and len(data) == 3 and data[0] == _OOB_TAG:
        return len(data[1]) + sum(memoryview(b).nbytes for b in data[2])
    return memoryview(data).nbytes


def as_view(data):
    """What ``oob`` sent, as something ``pickle.loads`` and a byte check read
    (Ray delivers its own buffer type)."""
    if isinstance(data, serialize.OutOfBand):
        # Ray's buffers are read-only views of its store; where they are this
        # reader's alone, write in place instead of copying (_store_views)
        if any(memoryview(b).readonly for b in data.buffers):
            return serialize.OutOfBand(data.head, [_store_views.writable(b) for b in data.buffers])
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    if isinstance(data, tuple) and len(data) == 3 and data[0] == _OOB_TAG:
        return serialize.OutOfBand(data[1], list(data[2]))
    if isinstance(data, list):
        return [as_view(d) for d in data]
    return memoryview(data)


def map_reply(reply, fn):
    """``reply`` with ``fn`` applied to each of its pickles: a "done"
    reply's one, a "mixed" reply's one per item; other replies as they are.

    >>> map_reply(("mixed", 3, [(0, b"a"), (1, b"b")]), bytes.upper)
    ('mixed', 3, [(0, b'A'), (1, b'B')])
    """
    tag = reply[0]
    if tag == "done":
        return (tag, reply[1], fn(reply[2])) + tuple(reply[3:])
    if tag == "mixed":
        return (tag, reply[1], [(status, fn(p)) for status, p in reply[2]]) + tuple(reply[3:])
    return reply


def reply_pickles(reply) -> list:
    """The pickles of a reply, as :func:`map_reply` visits them (without
    building a new reply).

    >>> reply_pickles(("mixed", 3, [(0, b"a"), (1, b"b")])), reply_pickles(("fn_failed", 3, b"e"))
    ([b'a', b'b'], [])
    """
    tag = reply[0]
    if tag == "done":
        return [reply[2]]
    if tag == "mixed":
        return [p for _status, p in reply[2]]
    return []


def reply_views(reply):
    """``as_view`` over the pickles of a reply that crossed the engine."""
    return map_reply(reply, as_view)


def oob_reply(reply, how: str | None):
    """``oob`` over the pickles of a worker's reply tuple."""
    if not how:
        return reply
    if not any(isinstance(p, serialize.OutOfBand) or isinstance(p, bytes) and len(p) >= _OOB_BYTES
               for p in reply_pickles(reply)):
        return reply  # nothing big: no new reply
    return map_reply(reply, lambda p: oob(p, how))


def hoist_buffers(reply) -> tuple:
    """``(reply, arrays)``: the ``uint8`` arrays of a reply that ``oob`` made
    for Dask, moved to a list of their own (the reply keeps their indices).

    >>> reply, arrays = hoist_buffers(("mixed", 7, [(0, (_OOB_TAG, b"h", ["A", "B"])), (1, b"x")]))
    >>> reply, arrays
    (('mixed', 7, [(0, ('sharkcage-out-of-band', b'h', [0, 1])), (1, b'x')]), ['A', 'B'])
    >>> restore_buffers(reply, arrays)
    ('mixed', 7, [(0, ('sharkcage-out-of-band', b'h', ['A', 'B'])), (1, b'x')])

    Dask moves an array of a task's result as a raw frame only when it finds
    it near the top of the result; nested as deep as in a reply, it is
    pickled into the message (a 100 MB result cost 0.3 s more). The task
    returns the list beside the reply; :func:`restore_buffers` undoes it.
    """
    arrays: list = []

    def take(piece):
        if isinstance(piece, tuple) and len(piece) == 3 and piece[0] == _OOB_TAG:
            first = len(arrays)
            arrays.extend(piece[2])
            return (_OOB_TAG, piece[1], list(range(first, len(arrays))))
        if isinstance(piece, list):
            return [take(p) for p in piece]
        return piece

    reply = map_reply(reply, take)
    return reply, arrays


def restore_buffers(reply, arrays: list):
    """The reply :func:`hoist_buffers` took ``arrays`` out of, with them back in."""

    def put(piece):
        if isinstance(piece, tuple) and len(piece) == 3 and piece[0] == _OOB_TAG:
            return (_OOB_TAG, piece[1], [arrays[i] for i in piece[2]])
        if isinstance(piece, list):
            return [put(p) for p in piece]
        return piece

    return map_reply(reply, put)


_rss_read = (0.0, None)  # (when, value): the last reading


def _rss() -> int | None:
    """This worker's resident memory, read at most every 0.1 s (a read
    costs ~17 µs: much of a tiny task's time, for a statistic)."""
    global _rss_read
    now = time.monotonic()
    if now - _rss_read[0] < 0.1:
        return _rss_read[1]
    try:
        with open("/proc/self/statm") as f:
            value = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        value = None
    _rss_read = (now, value)
    return value


_HOST = socket.gethostname()


_plain = threading.local()  # .on > 0: this thread is running a sharkcage task (pickle exceptions plainly)
_plain_lock = threading.Lock()
_plain_seen = -1  # size of copyreg's table when it was last looked through
_plain_wrappers: dict = {}  # tblib's reducer -> its wrapper


def _plain_or(reducer):
    """``reducer`` (tblib's), except on a thread running a sharkcage task,
    where the exception pickles as it would anywhere else."""
    wrapper = _plain_wrappers.get(reducer)
    if wrapper is None:
        def wrapper(obj, *args, **kwargs):
            if getattr(_plain, "on", False):
                return obj.__reduce_ex__(serialize.PROTOCOL)  # what pickle does without a table entry
            return reducer(obj, *args, **kwargs)

        wrapper.__module__ = __name__
        wrapper.sharkcage_wraps = reducer
        _plain_wrappers[reducer] = wrapper
    return wrapper


class _PlainExceptionPickling:
    """Pickle exceptions without tblib's reducers while our tasks run.

    Dask workers install tblib's ``pickling_support`` for every exception
    class; its reducer rebuilds an exception with ``__new__`` and attribute
    copies, so ``SystemExit(3).code`` arrives as None, ``OSError.errno`` is
    lost, and an exception that cannot survive pickle (seed 003) seems to
    round-trip and never becomes a RemoteError. Each of tblib's entries in
    ``copyreg``'s table is wrapped once (and tblib's module function, which
    Dask registers again for the exceptions it reports): the wrapper defers
    to tblib except on a thread inside this guard, so Dask's own error
    reports and other tasks on the worker keep tblib's pickling, and
    entering the guard costs a flag, not a pass over the table (it was
    ~60 µs a task with the entries taken out and put back each time).
    """

    def __enter__(self):
        global _plain_seen
        import copyreg

        table = copyreg.dispatch_table
        if len(table) != _plain_seen:  # entries were added: wrap tblib's
            with _plain_lock:
                self._wrap_tblib(table)
                _plain_seen = len(table)
        _plain.on = getattr(_plain, "on", 0) + 1

    @staticmethod
    def _wrap_tblib(table) -> None:
        module = sys.modules.get("tblib.pickling_support")
        original = getattr(module, "pickle_exception", None)
        if callable(original) and getattr(original, "__module__", "").startswith("tblib"):
            module.pickle_exception = _plain_or(original)  # what tblib's install() registers from now on
        for cls, reducer in list(table.items()):
            if (isinstance(cls, type) and issubclass(cls, BaseException)
                    and getattr(reducer, "__module__", "").startswith("tblib")):
                table[cls] = _plain_or(reducer)

    def __exit__(self, *exc_info):
        _plain.on -= 1

def _exception_guard():
    """The guard above where tblib is loaded (Dask workers), nothing elsewhere."""
    return _PlainExceptionPickling() if "tblib.pickling_support" in sys.modules else _NO_GUARD


_NO_GUARD = contextlib.nullcontext()


def _result_arena(carrier: str | None):
    """How a cluster worker pickles results: with a carrier that moves
    PickleBuffers out of band (Ray's), big buffers leave the pickle
    (``serialize.OutOfBand``) and are copied once, into the engine's store."""
    return serialize.BufferArena(_OOB_BYTES) if carrier in ("pickle5", "numpy") else None


def remote_run(spec: tuple, fn_data, init_data, shares, payload):
    """One batch on a cluster worker: ``(reply, log records, (host, pid, seconds, rss))``,
    pickled into one bytes object unless the engine moves buffers of the
    reply out of band (then the tuple, on Dask with the reply's arrays as a
    fourth element: :func:`hoist_buffers`).

    ``spec`` is ``(token, fn_key, init_key, batch_id, kind, split, log_level,
    carrier)``; the function's (and initializer's) pickles come as their own
    arguments, so the engine can resolve a cluster-side copy in their place;
    ``shares`` are the shared objects the payload names (``_shares.stage``).
    The reply is exactly what a local worker sends (``worker.run_batch``),
    so the parent decodes it with ``replies.settle_batch`` and every error
    maps onto the same classes. Never raises: a failure to load the function
    or to run the initializer fails the batch's tasks with that error.
    """
    token, fn_key, init_key, batch_id, kind, split, log_level, carrier = spec
    init = None if init_key is None else (init_key, init_data)
    handler = _capture_logs(log_level)
    began = time.monotonic()
    payload = as_view(payload)
    try:
        with _exception_guard():
            fn, reply = _prepare(batch_id, token, init, fn_key, fn_data)
            if reply is None:
                _shares.stage(shares)
                reply = worker_mod.run_batch(batch_id, fn, kind, payload, split, timed=False,
                                             arena=_result_arena(carrier))
    finally:
        _shares.unstage()
        handler.stop()
    reply = oob_reply(reply, carrier)
    meta = (_HOST, os.getpid(), time.monotonic() - began, _rss())
    if carrier == "numpy":
        reply, arrays = hoist_buffers(reply)
        if arrays:
            return reply, handler.records, meta, arrays  # arrays near the top: Dask moves them as frames
    elif _carries_buffers(reply):
        return reply, handler.records, meta  # the engine takes the buffers out of band
    # One bytes object: both engines move bytes as they are, where they walk
    # a tuple and serialize it piece by piece (Dask: 160 µs against 55 for
    # bytes, paid by the worker that serves the result; Ray: 19 against 1).
    return pickle.dumps((reply, handler.records, meta), serialize.PROTOCOL)


def _carries_buffers(reply) -> bool:
    """Whether a reply holds pickles ``oob`` wrapped for the engine's transport."""
    return any(not isinstance(p, bytes) for p in reply_pickles(reply))


def pack_call(args: tuple) -> bytes | None:
    """A remote call's arguments (``spec, function, initializer, shares,
    payload``) pickled into one bytes object, or None when the engine must
    see one of them: a reference to resolve (a published function, a share,
    a scattered payload) or big buffers to move out of band. Both engines
    serialize a task's arguments piece by piece and move bytes as they are:
    Ray 19 µs against 2 for the same arguments; Dask pays per piece on the
    client, the scheduler and the worker.

    >>> pack_call(((1,), b"fn", None, None, [b"x"])) is not None
    True
    >>> pack_call(((1,), b"fn", None, ("ray", {"k": object()}), [b"x"])) is None
    True
    """
    _spec, fn_arg, init_arg, shares, payload = args
    if (shares is None and type(fn_arg) is bytes and (init_arg is None or type(init_arg) is bytes)
            and (type(payload) is bytes or type(payload) is list and all(type(p) is bytes for p in payload))):
        return pickle.dumps(args, serialize.PROTOCOL)
    return None


def remote_run_pickled(blob: bytes):
    """:func:`remote_run` with its arguments as :func:`pack_call` made them."""
    return remote_run(*pickle.loads(blob))


def remote_run_stream(spec: tuple, fn_data, init_data, shares, payload):
    """Like :func:`remote_run`, item by item, announcing each start (a generator).

    Used where the parent enforces ``task_timeout``: ``("start", i)`` tells
    it when item ``i`` started (its clock starts then), ``("item", i, reply,
    records, meta)`` settles it. ``payload`` is a list of per-item pickles.
    """
    token, fn_key, init_key, batch_id, kind, split, log_level, carrier = spec
    init = None if init_key is None else (init_key, init_data)
    me = (_HOST, os.getpid())
    payload = as_view(payload)
    with _exception_guard():
        fn, reply = _prepare(batch_id, token, init, fn_key, fn_data)
    if reply is not None:
        yield ("all", reply, [], me + (0.0, _rss()))
        return
    for i, item in enumerate(payload):
        yield ("start", i, me)
        handler = _capture_logs(log_level)
        began = time.monotonic()
        try:
            with _exception_guard():
                _shares.stage(shares)
                reply = worker_mod.run_batch(batch_id, fn, kind, [item], True, timed=False,
                                             arena=_result_arena(carrier))
        finally:
            _shares.unstage()
            handler.stop()
        yield ("item", i, oob_reply(reply, carrier), handler.records,
               me + (time.monotonic() - began, _rss()))


# ----------------------------------------------------------------------------
# Parent side, engine-neutral


class _Fn:
    """A registered callable: its bytes, and where the cluster finds them."""

    __slots__ = ("key", "data", "per_call", "remote")

    def __init__(self, key: str, data: bytes, per_call: bool):
        self.key = key  # the worker-side cache key
        self.data = data
        self.per_call = per_call
        self.remote = None  # the engine's handle on a copy kept in the cluster (big functions)


class Flight:
    """A batch running on the cluster as one remote call."""

    __slots__ = ("key", "batch", "handle", "kill", "running", "started_at", "settled", "stream", "slot", "pid",
                 "sent_at", "alone", "deps")

    def __init__(self, key: str, batch: Batch, stream: bool, alone: bool = False):
        self.key = key
        self.batch = batch
        self.handle = None  # the engine's future / object ref / generator
        self.kill = None  # ("timeout", item) | ("cancel", job) | ("terminate",): why we stopped it
        self.running = None  # item running now (streamed batches only)
        self.started_at = 0.0
        self.settled: set[int] = set()  # items already settled (streamed batches only)
        self.stream = stream
        self.slot = -1  # the recorder's slot of the worker running it, once known
        self.pid = None
        self.sent_at = time.monotonic()
        self.alone = alone  # a suspect of a crash, running with nothing else of the pool in flight
        self.deps = None  # engine objects the call needs alive (a scattered payload)


class ClusterRecorder(Recorder):
    """``pool.stats()``/``timeline()`` for a cluster: one slot per worker
    process seen (host, pid), its RSS as the worker itself reported it."""

    def __init__(self, enabled: bool = True):
        super().__init__(enabled)
        self._ids: dict[tuple, int] = {}

    def worker(self, host: str, pid: int) -> int:
        key = (host, pid)
        slot = self._ids.get(key)
        if slot is None:
            slot = self._ids[key] = len(self._ids)
            self.worker_started(slot, pid, replacement=False)
        return slot

    def remote_rss(self, slot_id: int, rss) -> None:
        if rss is None or not self.enabled:
            return
        with self._lock:
            s = self._slot(slot_id)
            if s.peak_rss is None or rss > s.peak_rss:
                s.peak_rss = rss

    def crashed(self) -> None:
        with self._lock:
            self.crashes += 1

    def _sample_rss(self, s) -> None:
        pass  # the pid belongs to a cluster worker, maybe on another host


class ClusterBackend(FeederRegistry):
    """The Backend protocol over a remote engine: one dispatcher thread per pool.

    Subclasses connect to their engine and implement ``_launch_remote``,
    ``_stop_remote``, ``_publish``, ``_cluster_slots`` and ``_disconnect``;
    they report each remote call's end by posting ``("outcome", key, kind,
    value)`` with kind ``"reply"`` (value: what :func:`remote_run` returned),
    ``"end"`` (a streamed batch finished), ``"crashed"`` (value: ``(pid,
    exitcode, cause)``), ``"cancelled"`` or ``"error"`` (value: the exception).
    """

    engine = "cluster"
    stream_items = False  # run batches through remote_run_stream (per-item starts)
    inline_items = False  # payloads stay pickles: the engine moves them and sizes them
    # Whether a crash report names only the task that was running (Ray: a
    # worker holds one task at a time) or may name tasks merely queued on the
    # dead worker too (Dask: every task "processing" there is suspected).
    exact_crashes = True
    carrier: str | None = None  # how big pickles cross the engine (see ``_carrier``)

    def __init__(self, config: ClusterConfig):
        self.config = config
        # Everything that can refuse comes first: a constructor that raises
        # leaves no thread behind.
        self._init_fn = None
        if config.initializer is not None:
            try:
                init_data = serialize.dumps_callable((config.initializer, config.initargs))
            except BaseException as e:  # noqa: BLE001
                if isinstance(e, KeyboardInterrupt):
                    raise
                raise serialize.serialization_error(
                    "argument", f"the initializer {serialize.callable_name(config.initializer)}",
                    config.initializer, e) from None
        self.done = threading.Event()
        self.recorder = ClusterRecorder(config.record)
        # stats().shm_bytes: the argument bytes that left their pickle for the
        # engine's own store (an engine whose carrier takes them: Ray).
        self.recorder.shm_source = getattr(self, "arena", None)
        self._token = uuid.uuid4().hex[:12]
        if config.initializer is not None:
            self._init_fn = _Fn(f"{self._token}:init", init_data, False)
        self._log_level = _parent_log_level()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._fn_cache: dict[int, tuple[int, Callable]] = {}
        self._fns: dict[int, _Fn] = {}
        self._next_fn = 0
        self._next_batch = 0
        self._pending: collections.deque[Batch] = collections.deque()
        self._inflight: dict[str, Flight] = {}
        self._suspects: set[int] = set()  # ids of pending one-task batches that must run alone
        self._shares: dict[str, _shares.ClusterShare] = {}  # pool.share(): key -> handle, while live
        self._shares_made = 0
        self._state = "running"  # running -> closing -> stopped; or terminating
        self._reason = ""
        self._init_feeders()
        self._slots = max(1, config.processes)
        self._slots_read = time.monotonic()
        self._avg_task = 0.0
        self._task_samples = 0
        self._avg_batch = 0.0  # EWMA of a whole remote call's run time on the worker
        self._batch_samples = 0
        self.callbacks = CallbackRunner(f"sharkcage-callbacks-{config.name}")
        self._thread = start.mark_own_thread(
            threading.Thread(target=self._run, name=f"sharkcage-{self.engine}-{config.name}", daemon=True)
        )
        _live.add(self)
        self._thread.start()

    # ------------------------------------------------------------------
    # The Backend protocol (caller threads: enqueue and return)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def register_function(self, fn: Callable, per_call: bool = False) -> int:
        """The id of ``fn``, pickled on first use (raises SerializationError).

        Plain functions are pickled once per pool; other callables per call,
        so the cluster sees their state as of that call.
        """
        with self._lock:
            hit = self._fn_cache.get(id(fn))
            if hit is not None and hit[1] is fn:
                return hit[0]
            data = serialize.dumps_task_function(fn)
            self._next_fn += 1
            fn_id = self._next_fn
            self._fns[fn_id] = _Fn(f"{self._token}:{fn_id}", data, per_call)
            if not per_call:
                self._fn_cache[id(fn)] = (fn_id, fn)
            return fn_id

    def submit(self, batches: list, from_feeder: bool = False) -> None:
        """Hand batches over; feeders of calls made before close() may go on after it."""
        with self._lock:
            state = self._state
        if state in ("terminating", "stopped") or self.done.is_set():
            err = SharkcageError(f"{self._reason or 'the pool was stopped'} before this task ran")
            for b in batches:
                self._fail_batch(b, err)
            return
        if state != "running" and not (from_feeder and state == "closing"):
            raise ValueError("Pool not running")
        self._events.put(("submit", batches))

    def submit_call(self, job: Job, fn_id: int, kind: int, item, payload) -> None:
        """One call (``apply_async``/``submit``); the dispatcher merges queued ones."""
        self.submit([Batch.of_call(job, fn_id, kind, item, payload)])

    def _feeders_changed(self) -> None:
        self._events.put(("wake",))

    def cancel(self, job: Job, running: bool = True) -> None:
        """Drop the job's pending tasks; with ``running``, also stop its running
        ones where the engine can (see ``_may_stop``)."""
        self._events.put(("cancel", job, running))

    def close(self) -> None:
        with self._lock:
            if self._state == "running":
                self._state = "closing"
        self._events.put(("wake",))

    def terminate(self, reason: str = "the pool was terminated") -> None:
        with self._lock:
            if self._state in ("terminating", "stopped"):
                return
            self._state = "terminating"
            self._reason = reason
        self._events.put(("terminate", reason))

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the dispatcher to finish; Ctrl-C stops the pool (``start.join_engine_thread``)."""
        return start.join_engine_thread(self._thread, timeout, self.terminate)

    @property
    def closing(self) -> bool:
        """close() was called: feeders of earlier calls feed the rest of their input unbounded."""
        return self._state == "closing"

    def await_direct(self, job: Job, is_done, timeout) -> None:
        """Nothing to read here: no task goes from a caller's thread straight to a
        worker on a cluster (the local engine's direct path), so waiters just wait."""

    def has_started(self, job: Job) -> bool:
        """Whether a single-task job (a future) has started (any thread may ask).

        A streamed batch says when each task starts; otherwise a task handed
        to the cluster counts as started, as the stdlib's executor counts a
        task moved to its call queue: ``Future.cancel()`` then refuses it.
        """
        for _ in range(3):
            try:
                flights = list(self._inflight.values())
                break
            except RuntimeError:  # the dispatcher changed the table under us
                continue
        else:
            return False
        for f in flights:
            for k, (j, _index) in enumerate(f.batch.targets):
                if j is job:
                    return not f.stream or k in f.settled or f.running == k
        return False

    def pending_count(self) -> int:
        return len(self._pending)

    def avg_task_seconds(self) -> float | None:
        """Measured run time of one item on the cluster (an average), or None before any."""
        return self._avg_task if self._task_samples else None

    def dump_stacks(self, timeout: float = 2.0) -> dict:
        """Stacks of the pool's running tasks, where the engine can tell them (see subclasses)."""
        return {}

    # ------------------------------------------------------------------
    # The dispatcher loop

    def _post(self, *event) -> None:
        self._events.put(event)

    def _run(self) -> None:
        try:
            while True:
                events = take_all(self._events, self._next_timeout())  # one dispatch per wake-up
                began = time.perf_counter()
                for ev in events:
                    self._handle(ev)
                self._check_deadlines()
                with self._lock:
                    state = self._state
                if state in ("running", "closing"):
                    self._dispatch()
                self.recorder.parent_seconds += time.perf_counter() - began
                if self._finished(state):
                    break
        except BaseException as e:  # noqa: BLE001 - never leave a waiter hanging
            tb = traceback.format_exc()
            log.critical("the %s pool's dispatcher failed; the pool is stopped:\n%s", self.engine, tb)
            self._fail_everything(SharkcageError(f"the pool's dispatcher failed: {e!r}\n{tb}"))
        finally:
            self._shutdown()

    def _handle(self, ev) -> None:
        tag = ev[0]
        if tag == "outcome":
            self._outcome(ev[1], ev[2], ev[3])
        elif tag == "stream":
            self._stream_event(ev[1], ev[2])
        elif tag == "submit":
            with self._lock:
                terminating = self._state == "terminating"
            if terminating:
                err = SharkcageError(f"{self._reason} before this task ran")
                for b in ev[1]:
                    self._fail_batch(b, err)
            else:
                self.recorder.submitted += sum(len(b) for b in ev[1])
                self._pending.extend(ev[1])
        elif tag == "cancel":
            self._cancel(ev[1], ev[2])
        elif tag == "terminate":
            self._terminate(ev[1])

    def _finished(self, state: str) -> bool:
        if state == "terminating":
            return True
        if state == "closing":
            return not self._pending and not self._inflight and not self.feeders_running()
        return False

    def _next_timeout(self) -> float | None:
        timeout = self.config.task_timeout
        if timeout is None:
            return None
        deadlines = [f.started_at + timeout for f in self._inflight.values() if f.running is not None and f.kill is None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _check_deadlines(self) -> None:
        timeout = self.config.task_timeout
        if timeout is None:
            return
        now = time.monotonic()
        for f in list(self._inflight.values()):
            if f.running is not None and f.kill is None and now - f.started_at >= timeout:
                f.kill = ("timeout", f.running)
                self._stop_remote(f, force=True)

    # ------------------------------------------------------------------
    # Dispatch

    def _limit(self) -> int:
        if not self.config.fixed and time.monotonic() - self._slots_read > _REFRESH:
            self._slots_read = time.monotonic()
            try:
                self._slots = max(1, int(self._cluster_slots()))
            except Exception:  # noqa: BLE001 - keep the last known size
                log.debug("could not read the %s cluster's size", self.engine, exc_info=True)
        # A remote call takes milliseconds to come back; with short batches,
        # two per slot would leave the workers idle most of the time.
        return self._slots * (_SHORT_DEPTH if self._short_calls() else _DEPTH)

    def _short_calls(self) -> bool:
        """Whether this pool's remote calls run short (under ``_SHORT_BATCH``
        on the worker, as measured so far): then what a call costs around
        the task (its latency, its messages) is what to save."""
        return bool(self._batch_samples) and self._avg_batch < _SHORT_BATCH

    def _dispatch(self) -> None:
        if self._suspects:
            self._dispatch_suspect()
            return
        limit = self._limit()
        group = []
        while self._pending and len(self._inflight) < limit:
            batch = self._take_batch()
            if batch is None:
                break
            launch = self._prepare_launch(batch)
            if launch is not None:
                group.append(launch)
        self._send(group)

    def _dispatch_suspect(self) -> None:
        """Run a crash suspect alone: once nothing else of this pool is in
        flight, so if its worker dies again it is the culprit for certain,
        and no innocent task queued beside it is blamed."""
        if self._inflight:
            return
        for b in self._pending:
            if id(b) in self._suspects:
                self._pending.remove(b)
                self._suspects.discard(id(b))
                job, index = b.targets[0]
                if job.start(index):
                    self._launch(b, alone=True)
                return
        self._suspects.clear()  # cancelled meanwhile

    def _take_batch(self) -> Batch | None:
        pending = self._pending
        while pending:
            b = pending.popleft()
            b = b.still_wanted(self._subset)
            if b is None:
                continue  # all cancelled while pending
            # Coalesce single-task submits into one remote call, up to a fair
            # share: a remote call costs far more than a local message.
            if b.split and len(b) == 1 and pending:
                b = b.merged_with(pending, max(1, min(_MAX_COALESCE, len(pending) // self._slots)))
            return b
        return None

    def _subset(self, b: Batch, keep: list[int]) -> Batch | None:
        """A new batch with only the items at ``keep``, one pickle per item (Batch.subset)."""
        return b.subset(keep, serialize.dumps, lambda job, index, err: self._deliver(job, index, False, err))

    def _launch(self, batch: Batch, alone: bool = False) -> None:
        launch = self._prepare_launch(batch, alone)
        if launch is not None:
            self._send([launch])

    def _prepare_launch(self, batch: Batch, alone: bool = False) -> tuple[Flight, tuple] | None:
        """The batch's flight (counted in flight from now on) and its remote call's arguments."""
        if self.stream_items and not batch.split:
            batch = self._subset(batch, list(range(len(batch))))  # per-item pickles to stream
            if batch is None:
                return None
        self._next_batch += 1
        batch.id = self._next_batch
        key = f"sharkcage-{self._token}-{batch.id}"
        flight = Flight(key, batch, self.stream_items, alone)
        with self._lock:
            fn = self._fns[batch.fn_id]
        try:
            init_key = init_arg = None
            if self._init_fn is not None:
                init_key, init_arg = self._init_fn.key, self._function_arg(self._init_fn)
            # Few arguments (Ray serializes each on its own, and packs these
            # into one when it can), the function's and initializer's among
            # them (top-level, so the engine resolves a cluster-side copy),
            # the payload last.
            spec = (self._token, fn.key, init_key, batch.id, batch.kind, batch.split, self._log_level, self.carrier)
            args = (spec, self._function_arg(fn), init_arg, self._shares_arg(batch.payload),
                    oob(batch.payload, self.carrier))
        except BaseException as e:  # noqa: BLE001 - publishing the function failed: fail this batch
            self._refused(flight, e)
            return None
        self._inflight[key] = flight
        return flight, args

    def _send(self, group: list) -> None:
        """Start the remote calls of ``group`` (``(flight, args)`` pairs):
        together where the engine takes many calls at once (``_launch_many``),
        else one by one; a call the cluster refuses fails its batch only."""
        if len(group) > 1:
            try:
                handles = self._launch_many(group)
            except Exception:  # noqa: BLE001 - one of them is refused: find out which, one by one
                log.debug("launching %d calls together failed", len(group), exc_info=True)
                handles = None
            if handles is not None:
                for (flight, _args), handle in zip(group, handles):
                    flight.handle = handle
                return
        for flight, args in group:
            try:
                flight.handle = self._launch_remote(flight, args)
            except BaseException as e:  # noqa: BLE001 - the cluster refused it: fail this batch, not the pool
                self._inflight.pop(flight.key, None)
                self._refused(flight, e)

    def _refused(self, flight: Flight, e: BaseException) -> None:
        if isinstance(e, KeyboardInterrupt):
            raise e
        err = SharkcageError(f"the {self.engine} cluster did not accept the task: {e!r}")
        err.__cause__ = e
        self._fail_batch(flight.batch, err)

    def _function_arg(self, fn: _Fn):
        """What the remote call receives for the function: its bytes, or the
        engine's handle on a copy made once in the cluster (big functions)."""
        if len(fn.data) <= _INLINE_LIMIT or fn.per_call:
            return fn.data
        if fn.remote is None:
            fn.remote = self._publish(fn)
        return fn.remote

    # ------------------------------------------------------------------
    # pool.share(): objects in the engine's object store (see _shares.py)

    def share(self, obj: Any) -> _shares.ClusterShare:
        """Place ``obj`` in the cluster's object store once; a handle for task arguments."""
        with self._lock:
            if self._state != "running":
                raise ValueError("Pool not running")
            self._shares_made += 1
            key = f"sharkcage-share-{self._token}-{self._shares_made}"
        try:
            ref = self._put_shared(obj)
        except BaseException as e:  # noqa: BLE001 - the engine's own pickling failed
            if isinstance(e, KeyboardInterrupt):
                raise
            raise serialize.serialization_error("argument", "pool.share()", obj, e) from None
        handle = _shares.ClusterShare(key, ref, getattr(obj, "nbytes", None), type(obj).__qualname__, self)
        self._shares[key] = handle
        return handle

    # ------------------------------------------------------------------
    # pool.actor(): an engine actor (see _actors.py)

    def actor_backend(self, cls: type, args: tuple, kwargs: dict, *, restart: bool, on_restart=None):
        """The parent's side of ``cls(*args, **kwargs)`` living in an engine actor."""
        from sharkcage.backends._actors import ClusterActorBackend

        with self._lock:
            if self._state != "running":
                raise ValueError("Pool not running")
        engine = self._actor_engine(restart)  # refuses what the engine cannot do
        try:
            build = serialize.dumps_callable((cls, args, kwargs))
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            raise serialize.serialization_error("argument", f"the actor {cls.__qualname__}", cls, e) from None
        return ClusterActorBackend(engine, build, cls.__qualname__, log_level=self._log_level,
                                   task_timeout=self.config.task_timeout, on_restart=on_restart)

    def _release_share(self, handle: _shares.ClusterShare) -> None:
        self._shares.pop(handle.key, None)
        ref, handle.ref = handle.ref, None
        if ref is not None:
            try:
                self._drop_shared(ref)
            except Exception:  # noqa: BLE001 - the connection is gone: so is the copy
                log.debug("releasing %s failed", handle.key, exc_info=True)

    def _shares_arg(self, payload):
        """The engine's references of the live shares this batch's pickles name."""
        keys = _shares.shares_in(payload, list(self._shares))
        if not keys:
            return None
        live = self._shares  # a handle may be released meanwhile (another thread): skip it then
        refs = {k: h.ref for k in keys if (h := live.get(k)) is not None and h.ref is not None}
        return (self.shares_how, refs) if refs else None

    # ------------------------------------------------------------------
    # Outcomes

    def _deliver(self, job: Job, index: int, ok: bool, value) -> None:
        try:
            job.deliver(index, ok, value)
        except BaseException:  # noqa: BLE001
            log.exception("delivering the outcome of %s failed", job.describe(index))

    def _fail_batch(self, batch: Batch, exc: BaseException, items=None) -> None:
        ks = range(len(batch)) if items is None else items
        self.recorder.failed_without_running(len(ks))
        targets = batch.targets
        for k in ks:
            job, index = targets[k]
            self._deliver(job, index, False, exc)

    def _handle_records(self, records) -> None:
        for data in records or ():
            worker_mod.handle_record_bytes(data)

    def _account(self, f: Flight, reply, meta, item: int | None = None) -> None:
        """Stats and the measured task time (adaptive chunks) for a finished
        call (or, streamed, one ``item`` of it). Never raises: statistics
        must not cost a result."""
        try:
            host, pid, seconds, rss = meta
            f.slot = self.recorder.worker(host, pid)
            f.pid = pid
            self.recorder.remote_rss(f.slot, rss)
            what = f.batch if item is None else Batch(f.batch.fn_id, f.batch.kind, [f.batch.targets[item]], [None],
                                                       None, True)
            n = len(what)
            tag = reply[0]
            failed = 0 if tag == "done" else sum(1 for status, _ in reply[2] if status) if tag == "mixed" else n
            self.recorder.batch_done(f.slot, pid, what, n, failed, seconds, time.monotonic())
            per_item = seconds / max(1, n)
            self._avg_task = per_item if not self._task_samples else 0.8 * self._avg_task + 0.2 * per_item
            self._task_samples += 1
            if item is None:
                self._avg_batch = seconds if not self._batch_samples else 0.8 * self._avg_batch + 0.2 * seconds
                self._batch_samples += 1
        except Exception:  # noqa: BLE001
            log.debug("recording a finished batch failed", exc_info=True)

    def _record_end(self, f: Flight, label: str, start: float, outcome: str, detail: str) -> None:
        try:
            self.recorder.task_ended(f.slot, f.pid, label, start, outcome, detail)
        except Exception:  # noqa: BLE001 - statistics must not cost a result
            log.debug("recording a task's end failed", exc_info=True)

    def _stream_event(self, key: str, value) -> None:
        f = self._inflight.get(key)
        if f is None:
            return
        if value[0] == "start":
            f.running = value[1]
            f.started_at = time.monotonic()  # when the parent hears of it: never early
            f.slot = self.recorder.worker(*value[2])
            f.pid = value[2][1]
        elif value[0] == "item":
            _tag, i, reply, records, meta = value
            reply = reply_views(reply)
            f.running = None
            f.settled.add(i)
            self._handle_records(records)
            self._account(f, reply, meta, i)
            if reply[0] == "bad_chunk":  # cannot happen for a single split item; settle it anyway
                self._fail_batch(f.batch, SharkcageError(f"the worker could not read the task: {reply[2]}"), [i])
            else:
                replies.settle(reply[0], reply[2], [f.batch.targets[i]], self._deliver, loads=serialize.loads_data)
        elif value[0] == "all":
            _tag, reply, records, meta = value
            reply = reply_views(reply)
            f.settled.update(range(len(f.batch)))
            self._account(f, reply, meta)
            replies.settle_batch(reply[0], reply[2], f.batch, self._deliver, loads=serialize.loads_data)

    def _outcome(self, key: str, kind: str, value) -> None:
        f = self._inflight.pop(key, None)
        if f is None:
            return  # stopped and settled already (terminate)
        batch = f.batch
        left = [k for k in range(len(batch)) if k not in f.settled]
        if kind == "reply":
            if isinstance(value, bytes):  # pickled by remote_run
                value = pickle.loads(value)
            reply, records, meta = value[:3]
            if len(value) > 3:
                reply = restore_buffers(reply, value[3])
            reply = reply_views(reply)
            self._handle_records(records)  # before the results, as on local workers
            if reply[0] == "bad_chunk":
                # The chunk as a whole failed to unpickle on the worker: re-send
                # it item by item so the failure lands on the right task(s).
                sub = self._subset(batch, list(range(len(batch))))
                if sub is not None:
                    self._pending.appendleft(sub)
            else:
                self._account(f, reply, meta)
                replies.settle_batch(reply[0], reply[2], batch, self._deliver, loads=serialize.loads_data)
        elif kind == "end":
            if left:
                self._fail_batch(batch, SharkcageError("the cluster ended the task without its result"), left)
        elif kind == "cancelled" and f.kill is not None:
            self._stopped(f, left)
        elif kind == "crashed":
            self._crashed(f, left, *value)
        elif f.deps is not None and batch.attempts <= self.config.retries:
            # Its data went with a worker before the call ran (a scattered
            # payload has no lineage to rebuild it from): send it again.
            self._requeue(batch, left, batch.attempts + 1)
        elif kind == "cancelled":
            err = SharkcageError(f"the {self.engine} cluster cancelled this task ({value!r}); "
                                 "was the cluster restarted or the connection lost?")
            self._fail_batch(batch, err, left)
        else:
            what = batch.targets[0][0].describe(batch.targets[0][1])
            err = SharkcageError(f"the {self.engine} cluster could not run {what}: {value!r}. Is the same "
                                 "sharkcage version installed on the cluster's workers?")
            err.__cause__ = value if isinstance(value, BaseException) else None
            self._fail_batch(batch, err, left)
        self._forget_function(batch.fn_id)

    def _requeue(self, batch: Batch, items: list[int], attempts: int | None = None, suspect: bool = False) -> None:
        if not items:
            return
        sub = self._subset(batch, items)
        if sub is not None:
            if attempts is not None:
                sub.attempts = attempts
            self._pending.appendleft(sub)
            if suspect:
                self._suspects.add(id(sub))

    def _stopped(self, f: Flight, left: list[int]) -> None:
        """We stopped the remote call: settle the item it was stopped for, rerun the others."""
        reason = f.kill
        batch = f.batch
        if reason[0] == "terminate":
            return  # terminate() already failed everything outstanding
        if reason[0] == "timeout":
            item = reason[1]
            if item in left:
                job, index = batch.targets[item]
                err = TaskTimeoutError(self.config.task_timeout, task=job.describe(index), pid=f.pid)
                self._record_end(f, job.describe(index), f.started_at, "timeout", str(err))
                self._deliver(job, index, False, err)
            self._requeue(batch, [k for k in left if k != item])
            return
        job = reason[1]
        mine = [k for k in left if batch.targets[k][0] is job]
        for k in mine:
            j, index = batch.targets[k]
            self._deliver(j, index, False, concurrent.futures.CancelledError(f"{j.describe(index)} was cancelled"))
        self._requeue(batch, [k for k in left if k not in mine])

    def _crashed(self, f: Flight, left: list[int], pid, exitcode, cause) -> None:
        """The worker running the batch died. Only the task that was running
        fails; when the engine cannot tell which one it was, the unfinished
        items rerun one by one, so the culprit is found and the others finish."""
        batch = f.batch
        self.recorder.crashed()
        if f.stream and f.running is not None:
            culprit = f.running
        else:
            culprit = left[0] if len(left) == 1 else None
        if culprit is None or culprit not in left:
            for k in reversed(left):
                self._requeue(batch, [k])
            return
        if not self.exact_crashes and not f.alone:
            # It may only have been queued on the dead worker: rerun it alone
            # before blaming it.
            self._requeue(batch, [culprit], suspect=True)
            return
        self._requeue(batch, [k for k in left if k != culprit])
        if batch.attempts < self.config.retries:
            self._requeue(batch, [culprit], batch.attempts + 1, suspect=not self.exact_crashes)
            return
        job, index = batch.targets[culprit]
        err = WorkerCrashedError(pid if pid is not None else f.pid, exitcode, task=job.describe(index), cause=cause,
                                 attempts=batch.attempts + 1)
        self._record_end(f, job.describe(index), f.started_at if f.stream else f.sent_at, "crash", str(err))
        self._deliver(job, index, False, err)

    def _forget_function(self, fn_id: int) -> None:
        """Drop a per-call callable once nothing can use it any more."""
        with self._lock:
            fn = self._fns.get(fn_id)
            if fn is None or not fn.per_call or self.feeders_running():
                return
        if any(b.fn_id == fn_id for b in self._pending) or any(f.batch.fn_id == fn_id for f in self._inflight.values()):
            return
        with self._lock:
            self._fns.pop(fn_id, None)

    # ------------------------------------------------------------------
    # Cancel, terminate, shutdown

    def _cancel(self, job: Job, running: bool) -> None:
        if any(j is job for b in self._pending for j, _ in ([(b.job, None)] if b.job is not None else b.targets)):
            kept: collections.deque = collections.deque()
            for b in self._pending:
                if b.job is not None:
                    if b.job is not job:
                        kept.append(b)
                    continue
                keep = [k for k, (j, _) in enumerate(b.targets) if j is not job]
                if len(keep) == len(b.targets):
                    kept.append(b)
                elif keep:
                    sub = self._subset(b, keep)
                    if sub is not None:
                        kept.append(sub)
            self._pending = kept
            self._suspects &= {id(b) for b in kept}  # a dropped batch's id may be reused
        for f in list(self._inflight.values()):
            if f.kill is not None or not self._holds(f.batch, job):
                continue
            if self._may_stop(f, job, running):
                f.kill = ("cancel", job)
                self._stop_remote(f, force=running)

    @staticmethod
    def _holds(batch: Batch, job: Job) -> bool:
        if batch.job is not None:
            return batch.job is job
        return any(j is job for j, _ in batch.targets)

    @staticmethod
    def _only(batch: Batch, job: Job) -> bool:
        if batch.job is not None:
            return batch.job is job
        return all(j is job for j, _ in batch.targets)

    def _may_stop(self, f: Flight, job: Job, running: bool) -> bool:
        """Whether stopping ``f``'s remote call is right for cancelling ``job``.

        Without per-item notices we cannot tell a queued call from a running
        one, and stopping a running one kills (Ray) or interrupts it: a
        pending-only cancel leaves it alone (its results are dropped on
        arrival). Subclasses refine this with what their engine can do.
        """
        if f.stream:
            # We know what runs: a pending-only cancel must not touch a started batch.
            return running or (f.running is None and not f.settled and self._only(f.batch, job))
        return running

    def _terminate(self, reason: str) -> None:
        self._fail_everything(SharkcageError(f"{reason} before this task finished"))

    def _fail_everything(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, collections.deque()
        self._suspects.clear()
        for b in pending:
            self._fail_batch(b, exc)
        flights = list(self._inflight.values())
        self._inflight.clear()
        for f in flights:
            left = [k for k in range(len(f.batch)) if k not in f.settled]
            self._fail_batch(f.batch, exc, left)
            f.kill = ("terminate",)
            if not left:
                # Every item is in (a streamed batch): only the call's return
                # is left to run. Cancelling a call as it ends races the
                # engine's own bookkeeping: Ray 2.x aborts the driver process
                # ("Tried to complete task that was not pending"), seen when a
                # pool left its `with` block right after an imap.
                continue
            try:
                self._stop_remote(f, force=True)
            except Exception:  # noqa: BLE001
                log.debug("could not stop a remote call", exc_info=True)

    def _shutdown(self) -> None:
        with self._lock:
            if self._state != "terminating":
                self._state = "stopped"
            fns = list(self._fns.values())
        for handle in list(self._shares.values()):
            handle.release()
        try:
            self._disconnect(fns + ([self._init_fn] if self._init_fn else []))
        except BaseException:  # noqa: BLE001
            log.warning("closing the %s connection failed", self.engine, exc_info=True)
        self.callbacks.stop()
        self.done.set()
        _live.discard(self)

    # ------------------------------------------------------------------
    # Engine hooks

    def _launch_remote(self, flight: Flight, args: tuple):  # pragma: no cover - abstract
        raise NotImplementedError

    def _launch_many(self, group: list) -> list | None:
        """The handles of ``group``'s remote calls started together, or None
        where the engine has no cheaper way than one call at a time."""
        return None

    def _stop_remote(self, flight: Flight, force: bool) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _publish(self, fn: _Fn):  # pragma: no cover - abstract
        raise NotImplementedError

    def _cluster_slots(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _disconnect(self, fns: list) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    shares_how: str | None = None  # how a worker resolves a share's reference (see _shares.stage)

    def _put_shared(self, obj: Any):  # pragma: no cover - abstract
        """The engine's reference on a copy of ``obj`` in its object store."""
        raise NotImplementedError

    def _get_shared(self, ref) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _drop_shared(self, ref) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _actor_engine(self, restart: bool):  # pragma: no cover - abstract
        """What ``_actors.ClusterActorBackend`` drives: this engine's actors."""
        raise NotImplementedError


@atexit.register
def _terminate_all() -> None:
    """At interpreter exit, stop every cluster pool still running, while the
    engine's connection is still up (their own exit handlers close it)."""
    backends = [b for b in list(_live) if not b.done.is_set()]
    for b in backends:
        b.terminate("the interpreter is exiting")
    for b in backends:
        b.join(2.0)
