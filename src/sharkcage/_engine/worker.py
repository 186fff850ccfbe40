"""The worker process: receive, run, reply — and die with the parent.

Messages from the parent (tuples; see supervisor.py for the other side)::

    ("fn", fn_id, bytes)        register a callable (pickled once per pool)
    ("forget", fn_id)           drop it
    ("run", batch_id, fn_id, kind, payload, split)
                                run a batch: payload is one pickle of the
                                item list, or (split) a list of per-item pickles
    ("cancel", batch_id)        skip that batch if it has not started
    ("cancel_items", batch_id, [index, ...])
                                skip those items of a (split) batch if they
                                have not started (cancelled futures)
    ("exit",)                   run the finalizer and leave

Messages to the parent::

    ("ready", pid) / ("init_failed", traceback_text)
    ("done", batch_id, results_pickle)          every item succeeded
    ("mixed", batch_id, [(status, bytes), ...]) per-item outcomes
    ("bad_chunk", batch_id, reason)             the batch as a whole failed to
                                                unpickle: the parent re-sends
                                                it item by item
    ("skipped", batch_id)                       cancelled before it started
    ("log", record_pickle)                      a forwarded logging record
    ("retire", [batch_id, ...], reason)         leaving (maxtasksperchild,
                                                max_memory_per_worker): those
                                                batches never started

The *slot* is a small shared array the parent reads without any message:
[batch id running, item index (-1 unpickling, -2 pickling results, -3
somewhere in a map chunk run at full speed), start time of the item
(time.monotonic, shared by all processes on Linux), items done]. It tells
the supervisor which task is running — hence exactly which task a crash or
a timeout belongs to — and when that task's clock started. A crash at -3
re-runs the chunk's items one by one, which names the culprit.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque

from sharkcage._engine import serialize
from sharkcage._engine.channel import ChannelClosed, WorkerEnd

# item status codes in a "mixed" reply
OK, RAISED, BAD_ARGUMENT, BAD_RESULT, SKIPPED = 0, 1, 2, 3, 4
# batch kinds: how an item is applied to the function
CALL, MAP, STARMAP = 0, 1, 2
# slot fields: int64 batch id, int64 item index, float64 start time, int64 items done
SLOT_BATCH, SLOT_ITEM, SLOT_START, SLOT_DONE = 0, 1, 2, 3
SLOT_SIZE = 4
SLOT_BYTES = 8 * SLOT_SIZE


class Slot:
    """Typed views over a worker's shared status array (see the module doc).

    Integer fields through ``q`` (int64), the start time through ``d``
    (float64); the worker writes, the supervisor only reads.
    """

    __slots__ = ("raw", "q", "d")

    def __init__(self, raw):
        self.raw = raw
        mem = memoryview(raw).cast("B")
        self.q = mem.cast("q")
        self.d = mem.cast("d")
        mem.release()

    def close(self) -> None:
        """Release the views and unmap (an mmap's fd closes with it)."""
        self.q.release()
        self.d.release()
        close = getattr(self.raw, "close", None)
        if close is not None:
            try:
                close()
            except (BufferError, ValueError):
                pass

ITEM_UNPICKLING, ITEM_PICKLING, ITEM_IN_CHUNK = -1, -2, -3


class WorkerInfo:
    """What a task can learn about the worker running it: ``worker_id`` (a
    stable small slot number), ``pid``, ``tasks_done``.

    >>> from sharkcage import worker_info
    >>> worker_info() is None   # outside a worker
    True
    >>> WorkerInfo(worker_id=0, pid=42, tasks_done=3)
    WorkerInfo(worker_id=0, pid=42, tasks_done=3)
    """

    __slots__ = ("worker_id", "pid", "tasks_done")

    def __init__(self, worker_id: int, pid: int, tasks_done: int):
        self.worker_id = worker_id
        self.pid = pid
        self.tasks_done = tasks_done

    def __repr__(self) -> str:
        return f"WorkerInfo(worker_id={self.worker_id}, pid={self.pid}, tasks_done={self.tasks_done})"

    def __eq__(self, other) -> bool:
        if not isinstance(other, WorkerInfo):
            return NotImplemented
        return (self.worker_id, self.pid, self.tasks_done) == (other.worker_id, other.pid, other.tasks_done)


_state = None
_info: WorkerInfo | None = None
_arena = None  # this worker's shared-memory arena for big results (None: plain pickles)


def worker_state():
    """The return value of the pool's ``initializer`` in this worker.

    None outside a worker, or when the pool has no initializer.

    >>> from sharkcage import worker_state
    >>> worker_state() is None
    True
    """
    return _state


def worker_info() -> WorkerInfo | None:
    """``worker_id`` (a stable small slot number), ``pid`` and ``tasks_done``, or None outside a worker."""
    return _info


class _ForwardHandler(logging.Handler):
    """Sends every record to the parent, on the same channel as the results,
    so the records a task logged are handled before its result arrives."""

    def __init__(self, chan: WorkerEnd, lock: threading.Lock):
        super().__init__(logging.NOTSET)
        self.chan = chan
        self.send_lock = lock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = record_bytes(record)
            with self.send_lock:
                self.chan.send(("log", data))
        except Exception:
            self.handleError(record)


def record_bytes(record: logging.LogRecord) -> bytes:
    """A log record as the parent rebuilds it (``logging.makeLogRecord``).

    Like ``QueueHandler.prepare``: the message is formatted here and the
    exception turned into text, so nothing that cannot pickle travels; any
    other attribute that cannot pickle travels as its ``repr``.
    """
    msg = record.getMessage()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    d = dict(record.__dict__)
    d.update(msg=msg, args=None, exc_info=None)
    d.pop("message", None)
    try:
        return pickle.dumps(d, 5)
    except Exception:
        d = {k: (v if isinstance(v, (str, int, float, type(None))) else repr(v)) for k, v in d.items()}
        return pickle.dumps(d, 5)


def handle_record_bytes(data: bytes) -> None:
    """The parent's half of :func:`record_bytes`: the record goes to the
    parent's handlers for its logger; a broken handler never raises here
    (it must not stop the pool)."""
    try:
        record = logging.makeLogRecord(pickle.loads(data))
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
    except BaseException:  # noqa: BLE001
        logging.getLogger("sharkcage").debug("could not handle a worker's log record", exc_info=True)


def _set_pdeathsig() -> None:
    """Ask Linux to SIGKILL us when our parent dies (belt to the watchdog's braces)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


def _watch_parent(sock: socket.socket) -> None:
    """Exit at once when the parent's end of the channel hangs up.

    The main thread may be deep in a long task and not reading; this thread
    only waits for the hang-up, so a SIGKILLed parent never leaves us behind.
    """
    poller = select.poll()
    mask = select.POLLHUP | getattr(select, "POLLRDHUP", 0)
    poller.register(sock.fileno(), mask)
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        except Exception:
            os._exit(70)
        for _fd, ev in events:
            if ev & (select.POLLHUP | getattr(select, "POLLRDHUP", 0) | select.POLLERR | select.POLLNVAL):
                os._exit(70)


_stack_file = None


def _register_stack_dump(path: str | None) -> None:
    """SIGUSR1 writes every thread's Python stack to ``path``.

    faulthandler dumps from its C signal handler, so this works even while
    the task is stuck in C code or holds the GIL (``pool.dump_stacks()``,
    ``warn_after=``). The file is opened for appending: the parent empties
    it before each request and the dump lands at its start.
    """
    global _stack_file
    if not path:
        return
    import faulthandler

    try:
        _stack_file = open(path, "a")
        faulthandler.register(signal.SIGUSR1, file=_stack_file, all_threads=True, chain=False)
    except (OSError, AttributeError, RuntimeError):
        _stack_file = None


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def main(sock: socket.socket, slot, config: bytes | None, streams=None) -> None:
    """Entry point of a worker process (the target of multiprocessing.Process).

    ``config`` is None for a worker forked by the zygote: the supervisor
    sends it as the first message on the channel instead.
    """
    global _state, _info
    _set_pdeathsig()
    if streams is not None:  # the supervisor's sockets (label_output) or the parent's fds 1/2
        from sharkcage._engine.output import adopt_worker_streams

        try:
            adopt_worker_streams(*streams)
        except Exception:  # output plumbing must never keep a worker from serving
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # Let a task create a pool of its own (nested pools): multiprocessing
    # refuses children of daemonic processes.
    import multiprocessing.process as mpp

    mpp.current_process()._config["daemon"] = False

    chan = WorkerEnd(sock)
    send_lock = threading.Lock()

    def send(message) -> None:
        with send_lock:
            chan.send(message)

    watchdog = threading.Thread(target=_watch_parent, args=(sock,), name="sharkcage-watchdog", daemon=True)
    watchdog._sharkcage_own = True  # not a "foreign" thread for fork checks
    watchdog.start()

    config_from_channel = config is None  # forked by the zygote
    if config is None:
        try:
            _, config = chan.recv()  # ("config", bytes): the supervisor's first message
        except (ChannelClosed, OSError):
            os._exit(0)
    cfg = pickle.loads(config)
    worker_id = cfg["worker_id"]
    global _arena
    if cfg.get("shm_root"):
        from sharkcage._engine import shm

        try:  # the pid keeps a replacement's segments apart from its predecessor's
            # A zygote's child already holds the tracker's pipe: probing it
            # now would start the tracker process for nothing.
            _arena = shm.SegmentArena(f"{cfg['shm_root']}w{os.getpid()}", cfg["shm_threshold"],
                                      start_tracker=config_from_channel is False)
        except Exception:
            _arena = None
    _register_stack_dump(cfg.get("stack_file"))
    _info = WorkerInfo(worker_id=worker_id, pid=os.getpid(), tasks_done=0)
    os.environ["SHARKCAGE_WORKER_ID"] = str(worker_id)
    slot_view = Slot(slot)
    slot_view.q[SLOT_BATCH] = -1

    # Handlers inherited through fork (the zygote, or start_method="fork") are
    # copies of the parent's: a worker must not write to the parent's log
    # files itself (seed 000's inherited logging config). Every record goes
    # to the parent instead, whose own handlers — per logger — deal with it.
    # Their levels are the parent's of that moment, too: reset to NOTSET, so
    # the root's level (the parent's lowest, now) lets a record be made and
    # the parent's own loggers — the authority — decide what to keep.
    root = logging.getLogger()
    for logger in [root] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        if logger is not root:
            logger.propagate = True
            logger.setLevel(logging.NOTSET)
            logger.disabled = False
    root.addHandler(_ForwardHandler(chan, send_lock))
    root.setLevel(cfg["log_level"])

    finalizer = None
    try:
        if cfg["finalizer"] is not None:
            finalizer = serialize.loads(cfg["finalizer"])
        if cfg["initializer"] is not None:
            initializer = serialize.loads(cfg["initializer"])
            initargs = serialize.loads(cfg["initargs"])
            _state = initializer(*initargs)
    except BaseException as e:  # noqa: BLE001 - SystemExit from an initializer is a failure too
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        try:
            send(("init_failed", tb))
        finally:
            os._exit(3)
    send(("ready", os.getpid()))

    try:
        _serve(chan, send, slot_view, cfg)
    except (ChannelClosed, OSError):
        os._exit(0)  # the parent is gone: nobody to finalize for
    if finalizer is not None:
        try:
            finalizer(_state)
        except BaseException:  # noqa: BLE001
            logging.getLogger("sharkcage").exception("the pool's finalizer raised in worker %s", worker_id)
    # Flush and leave without running atexit handlers inherited from the
    # forkserver's import of the parent's modules.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0)


_loop = None


def _run_coroutine(coro):
    """Coroutine functions are tasks too: run them on this worker's own loop."""
    global _loop
    import asyncio

    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(coro)


def _serve(chan: WorkerEnd, send, slot, cfg) -> str:
    functions: dict[int, object] = {}
    queue: deque = deque()
    cancelled: set[int] = set()
    cancelled_items: dict[int, set[int]] = {}
    stopping = []  # an "exit" read while draining control messages mid-batch
    batches_done = 0
    max_batches = cfg["maxtasksperchild"]
    max_memory = cfg["max_memory"]
    sock = chan.sock
    monotonic = time.monotonic
    timed = cfg["timed"]  # per-item start times only when a deadline or warning needs them

    def handle(msg) -> bool:
        tag = msg[0]
        if tag == "run":
            queue.append(msg)
        elif tag == "fn":
            functions[msg[1]] = msg[2]  # unpickled lazily, inside the task's guard
        elif tag == "forget":
            functions.pop(msg[1], None)
        elif tag == "cancel":
            cancelled.add(msg[1])
        elif tag == "cancel_items":
            cancelled_items.setdefault(msg[1], set()).update(msg[2])
        elif tag == "exit":
            stopping.append(True)
            return False
        return True

    def skip(batch_id: int, index: int) -> bool:
        """Between the items of a split batch: read control messages, then
        say whether this item was cancelled before it started. (Before the
        first item the loop below has just read them.)"""
        while chan.has_buffered() or (index and select.select([sock], [], [], 0)[0]):
            handle(chan.recv())
        items = cancelled_items.get(batch_id)
        return items is not None and index in items

    while True:
        if stopping:
            return "exit"
        # Block for work when idle; otherwise only drain what already arrived
        # (cancel requests, more work) before starting the next batch.
        if not queue:
            if not handle(chan.recv()):
                return "exit"
        while chan.has_buffered() or select.select([sock], [], [], 0)[0]:
            if not handle(chan.recv()):
                return "exit"
        if not queue:
            continue
        _tag, batch_id, fn_id, kind, payload, split = queue.popleft()
        if batch_id in cancelled:
            cancelled.discard(batch_id)
            send(("skipped", batch_id))
            continue
        slot.d[SLOT_START] = monotonic()
        slot.q[SLOT_ITEM] = ITEM_UNPICKLING
        slot.q[SLOT_BATCH] = batch_id
        try:
            fn = load_function(functions, fn_id)
        except BaseException as e:  # noqa: BLE001
            reply = ("fn_failed", batch_id, serialize.pack_exception(e))
        else:
            began = monotonic()
            try:
                reply = run_batch(batch_id, fn, kind, payload, split, slot, timed, skip if split else None)
                cancelled_items.pop(batch_id, None)
            except BaseException as e:  # noqa: BLE001 - a bug of ours fails the batch, not the worker
                reply = ("fn_failed", batch_id, serialize.pack_exception(e))
            # the measured run time rides along: adaptive chunk sizes need it
            reply = reply + (monotonic() - began,)
        slot.q[SLOT_BATCH] = -1
        send(reply)
        batches_done += 1
        _info.tasks_done = slot.q[SLOT_DONE]
        retire = None
        if max_batches and batches_done >= max_batches:
            retire = f"maxtasksperchild={max_batches} reached"
        elif max_memory and _rss_bytes() > max_memory:
            retire = f"RSS {_rss_bytes()} bytes passed max_memory_per_worker={max_memory}"
        if retire:
            send(("retire", [m[1] for m in queue], retire))
            return "retire"


def load_function(functions: dict, fn_id: int):
    """The callable for ``fn_id``, unpickled on first use; raises on failure."""
    fn = functions[fn_id]
    if isinstance(fn, bytes):
        try:
            fn = functions[fn_id] = serialize.loads(fn)
        except BaseException as e:  # noqa: BLE001
            # Remember the failure: every later batch of this function gets it too.
            fn = functions[fn_id] = _Unloadable(
                f"the task's function could not be unpickled in the worker: {serialize.describe_exception(e)}"
            )
    if isinstance(fn, _Unloadable):
        raise RuntimeError(fn.reason)
    return fn


class _Unloadable:
    def __init__(self, reason: str):
        self.reason = reason


def _caller(fn, kind: int):
    """A one-argument function that applies ``fn`` to an item of this kind."""
    if is_coroutine_function(fn):
        inner = _plain_caller(fn, kind)
        return lambda item: _run_coroutine(inner(item))
    return _plain_caller(fn, kind)


def is_coroutine_function(fn) -> bool:
    """``inspect.iscoroutinefunction`` without importing inspect (a worker
    starts faster without it): partials and bound methods unwrapped."""
    while True:
        inner = getattr(fn, "func", None) or getattr(fn, "__func__", None)
        if inner is None or inner is fn:
            break
        fn = inner
    code = getattr(fn, "__code__", None)
    return bool(code is not None and code.co_flags & 0x80)  # CO_COROUTINE


def _plain_caller(fn, kind: int):
    if kind == MAP:
        return fn
    if kind == STARMAP:
        return lambda item: fn(*item)
    return lambda item: fn(*item[0], **item[1])


def run_batch(batch_id: int, fn, kind: int, payload, split: bool, slot=None, timed: bool = True, skip=None,
              arena=None):
    """Run every item of a batch; the reply tuple for the parent.

    Shared by the local worker and the remote backends (Dask, Ray), so every
    engine reports outcomes the same way (see ``replies.settle``). The hot
    loop writes only the running item's index into the slot (and its start
    time when a deadline or a stuck-task warning needs it); the first failure
    switches to a per-item record of outcomes.
    """
    if slot is None:
        slot = Slot(bytearray(SLOT_BYTES))
    if arena is None:
        arena = _arena  # the local worker's shared-memory arena (None elsewhere)
    q, d = slot.q, slot.d
    if split:
        raw_items = payload  # per-item pickles: each unpickled in its own guard
        items = [None] * len(raw_items)
    else:
        try:
            items = serialize.loads_data(payload, consume=False)
        except BaseException as e:  # noqa: BLE001 - SystemExit in __setstate__ included
            return ("bad_chunk", batch_id, serialize.describe_exception(e))
    try:
        call = _caller(fn, kind)
    except BaseException as e:  # noqa: BLE001 - a broken callable fails its tasks, not the worker
        err = serialize.pack_exception(e)
        return ("mixed", batch_id, [(RAISED, err)] * len(items))
    monotonic = time.monotonic
    results: list = []
    append = results.append
    outcomes = None  # becomes a per-item list at the first failure
    n = len(items)
    i = 0
    while i < n:
        try:
            if split or outcomes is not None or timed:
                # careful path: one item at a time, everything recorded
                if timed:
                    d[SLOT_START] = monotonic()
                q[SLOT_ITEM] = i
                if skip is not None and skip(batch_id, i):
                    if outcomes is None:
                        outcomes = [(OK, r) for r in results]
                    outcomes.append((SKIPPED, b""))
                    append(None)
                    i += 1
                    continue
                if split:
                    item = raw_items[i]
                    # A tuple is a call's (args, kwargs) of plain data sent
                    # inline (batching.call_payload); anything else is a pickle.
                    if type(item) is not tuple:
                        try:
                            item = serialize.loads_data(item, consume=False)
                        except BaseException as e:  # noqa: BLE001
                            if outcomes is None:
                                outcomes = [(OK, r) for r in results]
                            outcomes.append((BAD_ARGUMENT, pickle.dumps((type(e).__qualname__,
                                                                         serialize.describe_exception(e)))))
                            append(None)
                            i += 1
                            continue
                else:
                    item = items[i]
                value = call(item)
                append(value)
                if outcomes is not None:
                    outcomes.append((OK, value))
                i += 1
            else:
                # Fast path: a chunk of plain items, no deadline to watch, run
                # by C's map like the stdlib's. The slot says only "in this
                # chunk": should the worker die here, the supervisor runs the
                # chunk's items again one by one, and the culprit is known
                # then (a crash whose culprit is unknown costs no retry).
                q[SLOT_ITEM] = ITEM_IN_CHUNK
                try:
                    results.extend(map(call, items[i:] if i else items))
                finally:
                    i = len(results)  # after an exception: the index of the failing item
                    if i < n:
                        q[SLOT_ITEM] = i
        except BaseException as e:  # noqa: BLE001 - SystemExit goes back to the caller too
            if outcomes is None:
                outcomes = [(OK, r) for r in results]
            outcomes.append((RAISED, serialize.pack_exception(e)))
            append(None)
            i += 1
    q[SLOT_DONE] += n
    q[SLOT_ITEM] = ITEM_PICKLING
    if outcomes is None:
        # One pickle for the whole batch only when no item can fail to
        # unpickle in the parent (builtin data all the way down, found out
        # while pickling it); otherwise one pickle per item, so such a
        # failure lands on its own task.
        whole = serialize.dumps_plain(results, arena)
        if whole is None and n > 1:
            # Anything else: one pickle too, when each result unpickles here.
            whole = serialize.dumps_checked(results, arena)
        if whole is not None:
            return ("done", batch_id, whole)
        outcomes = [(OK, r) for r in results]
    packed = []
    for status, value in outcomes:
        if status == OK:
            try:
                value = serialize.dumps_data(value, arena)
            except BaseException as e:  # noqa: BLE001
                status = BAD_RESULT
                value = pickle.dumps((serialize.failing_type(value, e), serialize.describe_exception(e)))
        packed.append((status, value))
    return ("mixed", batch_id, packed)
