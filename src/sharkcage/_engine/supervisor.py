"""The supervisor: one thread per pool that owns all pool state.

Data flow (every arrow that can fail has a named outcome for exactly one task)::

    caller threads                 supervisor thread                      worker processes
    --------------                 -----------------                      ----------------
    register_function(fn) -- cloudpickle once per pool (SerializationError here)
    submit(batches) ------+
    submit_call(call) ----+    (apply_async/submit: unbatched; the loop merges
    cancel(job) ----------+--> commands deque + wake pipe      each run of calls)
    close()/terminate() --+            |
                                       v
                          selector.select(timeout = nearest deadline) over
                            wake pipe, every worker's channel, every sentinel
                                       |
                 pending batches ---> dispatch: "fn" once per worker, "run" -->  run items, slot
                                       |  (non-blocking writes, queued           marks the running
                                       |   until the channel is writable)        item + its start
                 "done"/"mixed" <------+---------------------------------------  results
                   decode in a guard -> Job.deliver(index, ok, value)
                 "log"  -> the parent's logging handlers, before the next result
                 sentinel fires -> the slot names the task it ran: WorkerCrashedError
                   (or a retry); the other batches it held go back to pending;
                   a replacement starts in the same slot
                 deadline passes -> SIGKILL the worker -> TaskTimeoutError for that
                   task only (the clock started when the task did)

Public methods enqueue commands and wake the loop. The one exception is the
direct path, which exists because on two cores every thread hand-off costs
tens of µs: a single task submitted while the pool is idle is sent by the
caller's own thread straight to an idle worker, and a caller that then waits
for it borrows ("leases") that worker's channel from the poller and reads
the reply itself; the loop keeps watching the worker's sentinel. Both happen under ``_lock``, which the
loop holds for everything between two ``select()`` calls, and both run the
loop's own code (``_send_batch``, ``_read_worker``), so every outcome is
settled exactly as the loop would. A lease ends when the task's outcome is
in, after a short slice, when the worker dies (the supervisor reaps it) or
when the loop needs the channel back; the caller then waits as usual. A
reply the loop's poller reported before the lease began is left to the
holder; a holder that read replies wakes the loop when work is pending or
the pool is closing (the loop saw none of them). Every wait in the parent
has a way out: a sentinel, a deadline or shutdown.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import mmap
import os
import pickle
import select
import signal
import socket
import threading
import time
import traceback
from typing import Any, Callable

from sharkcage._engine import replies, serialize, shm, start, zygote
from sharkcage._engine.poller import READ, WRITE, Poller
from sharkcage._engine.channel import ChannelClosed, ParentEnd, encode
from sharkcage._engine.jobs import CallbackRunner, Job
from sharkcage._engine.feeders import FeederRegistry
from sharkcage._engine.output import LineWriter, OutputPipe, parent_stdio
from sharkcage._engine.recorder import Recorder
from sharkcage._engine.worker import (
    SLOT_BATCH,
    SLOT_ITEM,
    SLOT_SIZE,
    SLOT_START,
    Slot,
    handle_record_bytes,
)
from sharkcage.errors import (
    SharkcageError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerInitError,
)

log = logging.getLogger("sharkcage")

_MAX_FN_PER_WORKER = 128  # callables a worker keeps before the oldest is forgotten
_EOF_GRACE = 2.0  # seconds a worker may linger after closing its channel
_TERM_GRACE = 0.3  # seconds between SIGTERM and SIGKILL on terminate()
_INIT_FAILURES = 3  # start failures in a row that break the pool (WorkerInitError)
_TRACKED_KINDS = ("submit", "actor")  # jobs whose start is asked for by Future.cancel/running
_LEASE_SLICE = 0.25  # seconds a waiting caller reads a worker's replies itself before handing back
_LEASE_LOCK_WAIT = 0.005  # a loop turn that takes longer (a worker start) is not waited for


_FIRST = (0,)  # the indices of every one-call batch


class Batch:
    """Items of one or more jobs sent to a worker as one message.

    A batch of one job keeps ``job`` and ``indices`` (a range for a chunk),
    so the hot path never builds a per-item list; ``targets`` — one
    ``(job, index)`` per item — is made on demand, or given for a batch that
    coalesces several jobs (then ``job`` is None).
    """

    __slots__ = ("id", "fn_id", "kind", "job", "indices", "_targets", "items", "payload", "split", "attempts",
                 "sent_at")

    def __init__(self, fn_id: int, kind: int, targets: list | None, items: list, payload, split: bool,
                 attempts: int = 0, *, job=None, indices=None):
        self.id = 0
        self.fn_id = fn_id
        self.kind = kind
        self.job = job
        self.indices = indices
        self._targets = targets  # [(job, index)] one per item, or None: made from job + indices
        self.items = items  # the original argument items, to re-split after a crash
        self.payload = payload  # one pickle of items, or (split) a list of per-item pickles
        self.split = split
        self.attempts = attempts
        self.sent_at = 0.0

    @property
    def targets(self) -> list:
        if self._targets is None:
            self._targets = [(self.job, i) for i in self.indices]
        return self._targets

    @classmethod
    def of_call(cls, job, fn_id: int, kind: int, item, payload) -> "Batch":
        """The batch of one call; ``payload`` is ``item`` itself when it
        travels inline (``batching.call_payload``)."""
        if payload is item:
            one = (item,)  # one tuple for items and payload, a shared index: fewer objects per call
            return cls(fn_id, kind, None, one, one, True, job=job, indices=_FIRST)
        # A list of per-item pickles, as every engine expects a split payload.
        return cls(fn_id, kind, None, [item], [payload], True, job=job, indices=_FIRST)

    def merged_with(self, pending, share: int) -> "Batch":
        """This one-call batch, just taken from ``pending``, merged with the
        one-call batches of the same function queued right behind it, up to
        ``share`` calls in all (they leave ``pending``). Each call merged in is
        started (``Job.start``) and left out if cancelled meanwhile. Every
        engine coalesces single submits this one way."""
        fn_id, kind, attempts = self.fn_id, self.kind, self.attempts
        targets = [(self.job, self.indices[0]) if self.job is not None else self.targets[0]]
        items, payloads = [self.items[0]], [self.payload[0]]
        popleft = pending.popleft
        # One pass builds the three lists: this runs for every task of a burst.
        while pending and len(items) < share:
            nxt = pending[0]
            if not (nxt.split and nxt.fn_id == fn_id and nxt.kind == kind and nxt.attempts == attempts
                    and len(nxt.items) == 1):
                break
            popleft()
            job = nxt.job
            if job is not None:  # a single job's batch: no targets list to build
                target = (job, nxt.indices[0])
            else:
                target = nxt.targets[0]
                job = target[0]
            if job.start(target[1]):
                targets.append(target)
                items.append(nxt.items[0])
                payloads.append(nxt.payload[0])
        if len(items) == 1:
            return self
        merged = Batch(fn_id, kind, targets, items, payloads, True, attempts)
        merged.id = self.id
        return merged

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, keep: list[int], dumps, failed) -> "Batch | None":
        """A new batch (always split: one pickle per item) with the items at
        ``keep``; None when nothing is left. An item that cannot be pickled on
        its own (it could as part of its chunk) goes to ``failed(job, index,
        error)`` instead. Every engine re-splits batches this one way."""
        if self.split:
            payload = [self.payload[i] for i in keep]
        else:
            payload, kept = [], []
            for i in keep:
                try:
                    payload.append(dumps(self.items[i]))
                except BaseException as e:  # noqa: BLE001 - one item's failure is its own
                    job, index = self.targets[i]
                    failed(job, index, serialize.serialization_error("argument", job.describe(index), self.items[i], e))
                    continue
                kept.append(i)
            keep = kept
        if not keep:
            return None
        items = [self.items[i] for i in keep]
        if self.job is not None:
            return Batch(self.fn_id, self.kind, None, items, payload, True, self.attempts,
                         job=self.job, indices=[self.indices[i] for i in keep])
        return Batch(self.fn_id, self.kind, [self.targets[i] for i in keep], items, payload, True, self.attempts)

    def still_wanted(self, subset) -> "Batch | None":
        """This batch without the tasks cancelled while it waited (each job's
        ``start`` says), through ``subset(batch, keep)``; None if none is left."""
        if self.job is not None:
            return self if self.job.start_batch(self.indices) else None
        live = [k for k, (job, i) in enumerate(self.targets) if job.start(i)]
        if len(live) == len(self.targets):
            return self
        return subset(self, live) if live else None


class _Worker:
    """The supervisor's record of one worker process."""

    __slots__ = (
        "slot_id", "process", "pid", "end", "sentinel", "slot", "slot_view", "assigned", "fns",
        "state", "eof_deadline", "kill_reason", "started", "ever_ran", "tasks_done", "last_done", "streams",
        "lease", "writing",
    )

    def __init__(self, slot_id: int):
        self.slot_id = slot_id
        self.assigned: collections.deque[Batch] = collections.deque()
        self.fns: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.state = "starting"  # starting -> ready -> (retiring | exiting) -> dead
        self.eof_deadline = None
        self.kill_reason = None  # ("timeout"|"cancel", batch_id, item) when we killed it
        self.ever_ran = False
        self.tasks_done = 0
        self.last_done = 0.0
        self.streams = []
        self.lease = None  # a token while a caller thread reads this worker's channel (the direct path)
        self.writing = False  # the selector watches the channel for writability (output is queued)


class PoolConfig:
    """Everything a supervisor needs to know, validated by the facade."""

    def __init__(
        self,
        processes: int,
        context,
        method: str,
        *,
        initializer=None,
        initargs=(),
        finalizer=None,
        maxtasksperchild=None,
        task_timeout=None,
        max_memory_per_worker=None,
        retries=0,
        allow_unsafe_fork=False,
        name="pool",
        restart_crashed=True,
        max_init_failures=_INIT_FAILURES,
        on_restart=None,
        warn_after=None,
        label_output=False,
        record=True,
        shm_threshold=shm.DEFAULT_THRESHOLD,
    ):
        self.processes = processes
        self.context = context
        self.method = method
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.finalizer = finalizer
        self.maxtasksperchild = maxtasksperchild
        self.task_timeout = task_timeout
        self.max_memory_per_worker = max_memory_per_worker
        self.retries = retries
        self.allow_unsafe_fork = allow_unsafe_fork
        self.name = name
        # Actors: a crashed worker is not replaced (restart_crashed=False) —
        # its pending and later calls fail — or is rebuilt and on_restart()
        # says so; one failed start (the constructor raised) is final.
        self.restart_crashed = restart_crashed
        self.max_init_failures = max_init_failures
        self.on_restart = on_restart
        self.warn_after = warn_after
        self.label_output = label_output
        self.record = record
        self.shm_threshold = shm_threshold
        self.use_zygote = start.uses_zygote(method, context)


def _parent_log_level() -> int:
    """The lowest level any configured logger of the parent would let through."""
    root = logging.getLogger()
    level = root.getEffectiveLevel()
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.level:
            level = min(level, logger.level)
    return level


class Supervisor(FeederRegistry):
    """The local engine behind Pool and ProcessPoolExecutor (see the module doc)."""

    # One-task batches may carry a call's plain (args, kwargs) unpickled
    # (batching.call_payload): the run message pickles them; workers take tuples as is.
    inline_items = True

    def __init__(self, config: PoolConfig):
        self.config = config
        # Everything that can refuse comes before anything is allocated, so
        # a constructor that raises leaves no thread, pipe or process behind.
        if config.method == "fork":
            start.check_fork_safe(config.allow_unsafe_fork)
        init = serialize.dumps_callable(config.initializer) if config.initializer is not None else None
        fin = serialize.dumps_callable(config.finalizer) if config.finalizer is not None else None
        initargs = serialize.dumps_callable(config.initargs) if init is not None else None
        if config.use_zygote:
            zygote.ensure()  # now, while this thread may be the only one: a fork, not a spawn
        else:
            start.ensure_forkserver(config.context)
        self._commands: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_flag = False
        # Held by the loop between two select() calls; the direct path takes it too.
        self._lock = threading.Lock()
        # The thread that holds _lock while outcomes are delivered: a future's
        # done-callback runs there, and a submit() it makes must not wait
        # for a lock its own thread holds.
        self._holder = None
        self._stopped = False
        self._fn_lock = threading.Lock()
        self._fn_cache: dict[int, tuple[int, Any, bytes]] = {}
        self._fn_bytes: dict[int, bytes] = {}
        self._next_fn = 0
        self._init_feeders()
        self._next_batch = 0
        self.pending: collections.deque[Batch] = collections.deque()
        self.inflight: dict[int, tuple[_Worker, Batch]] = {}
        self.workers: dict[int, _Worker] = {}
        self.selector = Poller()
        self.selector.register(self._wake_r, READ, ("wake", None))
        self.state = "running"  # running -> closing -> (done) ; or terminating
        self.broken: BaseException | None = None
        self._init_failures = 0
        self._last_init_error = ""
        self._avg_task = 0.0  # EWMA of item run time, seconds (dispatch depth, adaptive chunks)
        self._task_samples = 0
        self.recorder = Recorder(config.record)
        # Big buffers through shared memory: the parent's arena for arguments;
        # each worker has its own under the same root (see shm.py).
        self.shm_root = shm.pool_prefix()
        self.arena = shm.SegmentArena(
            self.shm_root + "p", threshold=config.shm_threshold, start_tracker=not config.use_zygote
        )
        self.recorder.shm_source = self.arena
        self._stack_dir = _private_dir("sharkcage-stacks-")
        self._slots_used: set[int] = set()
        self._warned: set = set()  # (pid, batch id, item) already reported by warn_after
        self._stack_reads: list = []  # (when, worker, label, seconds): warn_after reads pending
        self.callbacks = CallbackRunner(f"sharkcage-callbacks-{config.name}")
        self._line_writer = LineWriter(f"sharkcage-output-{config.name}") if config.label_output else None
        self._worker_config = dict(
            initializer=init,
            initargs=initargs,
            finalizer=fin,
            maxtasksperchild=config.maxtasksperchild,
            max_memory=config.max_memory_per_worker,
            timed=config.task_timeout is not None or config.warn_after is not None,
            shm_root=self.shm_root if self.arena.enabled else None,
            shm_threshold=config.shm_threshold,
            log_level=_parent_log_level(),
        )
        _read_oom_baseline()
        self._term_deadline = 0.0
        self._to_start: list[int] = []
        self.done = threading.Event()
        self._thread = start.mark_own_thread(
            threading.Thread(target=self._run, name=f"sharkcage-supervisor-{config.name}", daemon=True)
        )
        self._thread.start()

    # ------------------------------------------------------------------
    # API for caller threads: enqueue and wake, nothing else.

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _command(self, *cmd) -> None:
        self._commands.append(cmd)
        if not self._wake_flag:
            self._wake_flag = True
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass

    def register_function(self, fn: Callable, per_call: bool = False) -> int:
        """The id of ``fn``, pickling it on first use (raises SerializationError).

        Plain functions are cached for the life of the pool; other callables
        (bound methods, callable objects) are pickled per call, so a worker
        sees their state as of that call.
        """
        key = id(fn)
        hit = self._fn_cache.get(key)  # the hot path takes no lock (dict reads are atomic)
        if hit is not None and hit[1] is fn:
            return hit[0]
        with self._fn_lock:
            hit = self._fn_cache.get(key)
            if hit is not None and hit[1] is fn:
                return hit[0]
            data = serialize.dumps_task_function(fn)
            self._next_fn += 1
            fn_id = self._next_fn
            self._fn_bytes[fn_id] = data
            if not per_call:
                self._fn_cache[key] = (fn_id, fn, data)
            return fn_id

    def submit(self, batches: list[Batch], from_feeder: bool = False) -> None:
        """Hand batches over. Feeders of calls made before close() may go on
        submitting after it, as the stdlib's imap does."""
        if self.broken is not None:
            for b in batches:
                for job, index in b.targets:
                    job.deliver(index, False, self.broken)
            return
        if self.state != "running" and not (from_feeder and self.state == "closing"):
            raise ValueError("Pool not running")
        if not self.inflight and len(batches) == 1 and not from_feeder and self._send_direct(batches[0]):
            return
        self._command("submit", batches)

    def submit_call(self, job: Job, fn_id: int, kind: int, item, payload) -> None:
        """Hand over one call (``apply_async``/``submit``; ``payload`` from
        ``batching.call_payload``). An idle pool sends it at once (the direct
        path); otherwise it is queued as it is and the loop merges each run of
        calls into batches (no batch object per call in a burst)."""
        if self.broken is not None:
            job.deliver(0, False, self.broken)
            return
        if self.state != "running":
            raise ValueError("Pool not running")
        if not self.inflight and not self._commands and self._send_direct(
                Batch.of_call(job, fn_id, kind, item, payload)):
            return
        self._command("call", job, fn_id, kind, item, payload)

    def _queue_calls(self, calls: list) -> None:
        """A run of ``("call", job, fn_id, kind, item, payload)`` commands into
        pending batches, in order. Known-tiny tasks are merged up to a fair
        share of the run per worker (at most 64 a message), as ``_take_batch``
        merges one-call batches; tasks of unknown or long duration go one by one."""
        share = self._merge_share(len(calls), self.config.processes) if len(calls) > 1 else 1
        next_id, pending, i, n = self._next_batch, self.pending, 0, len(calls)
        while i < n:
            c = calls[i]
            j = i + 1
            if share > 1:
                fn_id, kind = c[2], c[3]
                while j < n and j - i < share and calls[j][2] == fn_id and calls[j][3] == kind:
                    j += 1
            if j - i == 1:
                b = Batch.of_call(c[1], c[2], c[3], c[4], c[5])
            else:
                run = calls[i:j]
                b = Batch(c[2], c[3], [(x[1], 0) for x in run], [x[4] for x in run], [x[5] for x in run], True)
            next_id += 1
            b.id = next_id
            pending.append(b)
            i = j
        self._next_batch = next_id
        self.recorder.submitted += n

    # ------------------------------------------------------------------
    # The direct path (see the module doc)

    def _send_direct(self, batch: Batch) -> bool:
        """Send a one-task batch from the caller's thread to an idle worker;
        False (nothing done) unless the pool is idle and the loop not busy."""
        job = batch.job
        # Only when nothing at all is in flight (submit() checked inflight):
        # a task sent alone is the quickest round trip, but a burst of
        # submits goes faster through the loop, which merges them into one
        # message per worker. (Unlocked reads here are hints; they are
        # checked again under the lock.)
        if job is None or len(batch) != 1 or self._commands or self.pending:
            return False
        # No worker ready yet (a new pool): the loop's path, without waiting
        # for the lock while the loop starts workers. (list() of a dict is
        # atomic under the GIL.)
        if not any(w.state == "ready" for w in list(self.workers.values())):
            return False
        # A loop turn is a few µs; one that starts a worker is not waited for.
        if self._holder == threading.get_ident() or not self._lock.acquire(True, _LEASE_LOCK_WAIT):
            return False
        try:
            if (self.state != "running" or self.broken is not None or self.inflight or self._commands
                    or self.pending):
                return False
            for w in self.workers.values():
                if (w.state == "ready" and not w.assigned and w.lease is None and w.eof_deadline is None
                        and w.kill_reason is None):
                    break
            else:
                return False
            self._next_batch += 1
            batch.id = self._next_batch
            self.recorder.submitted += 1
            if batch.still_wanted(self._subset) is not None:
                self._send_batch(w, batch)
                job.direct = w
        finally:
            self._lock.release()
        if self.config.task_timeout is not None or self.config.warn_after is not None:
            self._command("wake")  # the loop's sleep must end by this task's deadline
        return True

    def await_direct(self, job: Job, is_done: Callable[[], bool], timeout: float | None) -> None:
        """Called by a thread about to wait for ``job``: if it was sent by the
        direct path, read the worker's replies here (for at most
        ``_LEASE_SLICE``) instead of waiting for the loop to hand them over.
        Returns when the outcome is in or the worker is handed back; the
        caller then waits as usual, for whatever time is left."""
        w = job.direct
        if w is None:
            return
        job.direct = None
        if self._holder == threading.get_ident() or not self._lock.acquire(True, _LEASE_LOCK_WAIT):
            return
        try:
            if (is_done() or self._stopped or w.lease is not None or w.state == "dead"
                    or w.eof_deadline is not None or not w.assigned or w.end.has_output()):
                return
            try:
                # Only the channel: the loop still watches the sentinel, and a
                # worker that dies is reaped by the loop, lease or not.
                self.selector.mute(w.end.fd)
            except (KeyError, OSError):
                return
            token = w.lease = object()
        finally:
            self._lock.release()
        handed_back = False
        try:
            # One per lease: a revoked holder may still be inside poll()
            # when the next lease begins. (select() refuses fds above 1023.)
            poller = select.poll()
            poller.register(w.end.fd, select.POLLIN)
            poller.register(w.sentinel, select.POLLIN)
            slice_ = _LEASE_SLICE if timeout is None else max(0.0, min(_LEASE_SLICE, timeout))
            until = time.monotonic() + slice_
            while not is_done():
                left = until - time.monotonic()
                if left <= 0:
                    break
                events = poller.poll(left * 1000.0)
                if not events:
                    break
                with self._lock:
                    if w.lease is not token:
                        return  # taken back by the loop (the worker died, or a write waits)
                    self._holder = threading.get_ident()
                    try:
                        self._read_worker(w)
                    finally:
                        self._holder = None
                    if w.eof_deadline is not None or w.state == "dead":
                        break
        finally:
            with self._lock:
                if w.lease is token:
                    self._end_lease(w)
                    handed_back = not is_done()
                # Deadlines and a dying worker are the loop's again; and a
                # reply read here may have freed the worker for tasks the loop
                # held back meanwhile, or ended the last task of a closing
                # pool: the loop must look (it saw none of these replies).
                wake = handed_back or bool(self.pending) or self.state != "running"
            if wake:
                self._command("wake")

    def _end_lease(self, w: _Worker) -> None:
        """The loop watches the worker again (under ``_lock``)."""
        w.lease = None
        if w.state != "dead" and not self._stopped:
            self._watch(w)

    def _watch(self, w: _Worker) -> None:
        if w.eof_deadline is not None:
            return  # the channel is closed (and unregistered): only the sentinel matters now
        w.writing = w.end.has_output()
        self.selector.modify(w.end.fd, READ | (WRITE if w.writing else 0))
        self.selector.unmute(w.end.fd)

    def _feeders_changed(self) -> None:
        self._command("wake")

    def share(self, obj: Any):
        """``pool.share(obj)``: ``obj`` in a shared-memory segment named under
        this pool's root, so the pool's shutdown sweep removes it too."""
        from sharkcage.shared import make_share

        return make_share(obj, prefix=self.shm_root)

    def cancel(self, job: Job, running: bool = True) -> None:
        """Drop the job's pending tasks; with ``running``, also kill (and
        replace) the workers running its tasks."""
        self._command("cancel", job, running)

    def close(self) -> None:
        self._command("close")

    def terminate(self, reason: str = "the pool was terminated") -> None:
        self._command("terminate", reason)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the supervisor to finish (after close/terminate); Ctrl-C
        stops the pool (``start.join_engine_thread``)."""
        return start.join_engine_thread(self._thread, timeout, self.terminate)

    def has_started(self, job: Job) -> bool:
        """Whether a single-task job (a future) has started running in a
        worker, read from that worker's slot (any thread may ask)."""
        where = getattr(job, "where", None)
        if where is None:
            return False
        w, batch_id, k = where
        if batch_id not in self.inflight or w.state == "dead":
            return False  # not handed over (or back in the queue after a crash)
        running = self._running_item(w)
        if running is None:
            return False
        return running[0] > batch_id or (running[0] == batch_id and running[1] >= k)

    @property
    def closing(self) -> bool:
        """close() was called: feeders of earlier calls feed the rest of their
        input without the in-flight bound (as the stdlib's imap does), so a
        join() waiting on them cannot wait on a consumer that is not there."""
        return self.state == "closing"

    def avg_task_seconds(self) -> float | None:
        """Measured run time of one item (an average), or None before any."""
        return self._avg_task if self._task_samples else None

    # ------------------------------------------------------------------
    # The loop

    def _run(self) -> None:
        try:
            # Workers start one per loop turn, so the first task goes to the
            # first worker while the others are still being started.
            self._to_start = list(range(self.config.processes))
            while not self._loop_once():
                pass
        except BaseException as e:  # noqa: BLE001 - never leave a waiter hanging
            tb = traceback.format_exc()
            log.critical("sharkcage supervisor failed; the pool is stopped:\n%s", tb)
            self._fail_everything(SharkcageError(f"the pool's supervisor failed: {e!r}\n{tb}"))
            self._kill_all()
        finally:
            self._shutdown_resources()

    def _loop_once(self) -> bool:
        with self._lock:
            timeout = 0 if self._to_start else self._next_timeout()
        events = self.selector.select(timeout)
        with self._lock:
            self._holder = threading.get_ident()
            try:
                return self._turn(events)
            finally:
                self._holder = None

    def _turn(self, events) -> bool:
        began = time.perf_counter()
        for (tag, w), mask in events:
            if tag == "chan" and w.lease is not None:
                # Reported before the lease muted the channel (a quick worker
                # answers before its caller starts to wait): the lease holder
                # polls the channel itself and reads it. Taking the channel
                # back here would hand every quick reply to this thread.
                continue
            if tag == "sentinel" and w.lease is not None:
                # The worker died: the loop takes the channel back and reaps
                # it; the caller finds the lease gone.
                self._end_lease(w)
            if tag == "wake":
                # Drain first, then clear the flag, then (below) take the
                # commands: a writer that saw the flag set has already
                # appended its command, and one that sees it clear writes a
                # fresh byte, so no command is ever left without a wake-up.
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                self._wake_flag = False
            elif tag == "chan":
                if mask & READ:
                    self._read_worker(w)
                if mask & WRITE and w.state != "dead":
                    self._flush(w)
            elif tag == "sentinel":
                self._reap(w)
            elif tag == "output":
                self._forward_output(*w)
        self._take_commands()
        self._check_deadlines()
        if self._to_start and self.state in ("running", "closing") and self.broken is None:
            self._start_worker(self._to_start.pop(0))
        if self.state in ("running", "closing") and self.broken is None:
            self._dispatch()
        self._maybe_retire_idle()
        self.recorder.parent_seconds += time.perf_counter() - began
        return self._finished()

    def _next_timeout(self) -> float | None:
        now = time.monotonic()
        deadlines = []
        timeout = self.config.task_timeout
        for w in self.workers.values():
            if w.eof_deadline is not None:
                deadlines.append(w.eof_deadline)
            if timeout is not None and w.state != "dead" and w.kill_reason is None and w.assigned:
                running = self._running_item(w)
                if running is not None and running[1] >= 0:
                    deadlines.append(running[2] + timeout)
                else:
                    # Handed over but not started yet: the worker sends no
                    # message when a task starts, so look again shortly.
                    deadlines.append(now + min(0.02, timeout / 4))
        if self.state == "terminating":
            deadlines.append(now + 0.05)
        warn = self.config.warn_after
        if warn is not None:
            for w in self.workers.values():
                if w.state != "dead" and w.assigned:
                    running = self._running_item(w)
                    if running is not None and running[1] >= 0:
                        if (w.pid, running[0], running[1]) not in self._warned:
                            deadlines.append(running[2] + warn)
                    else:
                        deadlines.append(now + 0.05)
            deadlines.extend(r[0] for r in self._stack_reads)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _running_item(self, w: _Worker):
        """(batch_id, item, start) of the item the worker runs now, or None."""
        try:
            q = w.slot_view.q
            batch_id = q[SLOT_BATCH]
            if batch_id < 0:
                return None
            item = q[SLOT_ITEM]
            started = w.slot_view.d[SLOT_START]
        except ValueError:  # released: the worker was reaped while a caller thread asked
            return None
        if q[SLOT_BATCH] != batch_id:  # torn read: the worker moved on
            return None
        return batch_id, item, started

    # ------------------------------------------------------------------
    # Commands

    def _take_commands(self) -> None:
        cmds = self._commands
        while cmds:
            cmd = cmds.popleft()
            tag = cmd[0]
            if tag == "submit":
                batches = cmd[1]
                if self.broken is not None:
                    for b in batches:
                        self._fail_batch(b, self.broken)
                elif self.state == "terminating":
                    for b in batches:
                        self._fail_batch(b, SharkcageError("the pool was terminated before this task ran"))
                else:
                    n, next_id = 0, self._next_batch
                    for b in batches:
                        next_id += 1
                        b.id = next_id
                        n += len(b.items)
                    self._next_batch = next_id
                    self.pending.extend(batches)
                    self.recorder.submitted += n
            elif tag == "call":
                calls = [cmd]
                while cmds and cmds[0][0] == "call":  # a burst: take the run at once
                    calls.append(cmds.popleft())
                if self.broken is not None or self.state == "terminating":
                    exc = self.broken or SharkcageError("the pool was terminated before this task ran")
                    self.recorder.failed_without_running(len(calls))
                    for c in calls:
                        self._deliver(c[1], 0, False, exc)
                else:
                    self._queue_calls(calls)
            elif tag == "cancel":
                self._cancel(cmd[1], cmd[2])
            elif tag == "close":
                if self.state == "running":
                    self.state = "closing"
            elif tag == "terminate":
                self._terminate(cmd[1])

    def _cancel(self, job: Job, running: bool) -> None:
        """Drop the job's pending items; kill the worker of a running one."""
        if any(job is j for b in self.pending for j, _ in b.targets):
            kept = collections.deque()
            for b in self.pending:
                if any(j is job for j, _ in b.targets):
                    b = self._without(b, job)
                    if b is None:
                        continue
                kept.append(b)
            self.pending = kept
        kill_running = running
        for w in list(self.workers.values()):
            if w.state == "dead":
                continue
            running = self._running_item(w)
            for b in list(w.assigned):
                if not any(j is job for j, _ in b.targets):
                    continue
                if running is not None and running[0] == b.id:
                    item = running[1]
                    if kill_running and 0 <= item < len(b.targets) and b.targets[item][0] is job:
                        if w.kill_reason is None:
                            w.kill_reason = ("cancel", b.id, item)
                            self._kill(w)
                        continue
                if all(j is job for j, _ in b.targets):
                    w.end.queue(encode(("cancel", b.id)))
                    self._want_write(w)
                elif b.split:
                    # a coalesced batch: skip this job's items that have not started
                    mine = [k for k, (j, _) in enumerate(b.targets) if j is job]
                    w.end.queue(encode(("cancel_items", b.id, mine)))
                    self._want_write(w)

    def _without(self, b: Batch, job: Job) -> Batch | None:
        keep = [i for i, (j, _) in enumerate(b.targets) if j is not job]
        if not keep:
            return None
        if len(keep) == len(b.targets):
            return b
        return self._subset(b, keep)

    def _subset(self, b: Batch, keep: list[int]) -> Batch | None:
        """A new batch with only the items at ``keep`` (see Batch.subset), with its own id."""
        nb = b.subset(keep, lambda item: serialize.dumps_data(item, self.arena, owned=True),
                      lambda job, index, err: self._deliver(job, index, False, err))
        if nb is not None:
            self._next_batch += 1
            nb.id = self._next_batch
        return nb

    # ------------------------------------------------------------------
    # Workers: start, read, write, reap

    def _start_worker(self, slot_id: int) -> None:
        cfg = self.config
        w = _Worker(slot_id)
        if cfg.method == "fork":
            try:
                start.check_fork_safe(cfg.allow_unsafe_fork)
            except SharkcageError as e:
                self._break(e)
                return
        parent_sock, child_sock = socket.socketpair()
        # Large buffers so a batch of small tasks or results fits in one write.
        for s in (parent_sock, child_sock):
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, 1 << 20)
                except OSError:
                    pass
        wcfg = dict(self._worker_config, worker_id=slot_id, stack_file=self._stack_path(slot_id))
        name = f"sharkcage-{cfg.name}-worker-{slot_id}"
        streams = None
        child_streams = None if cfg.method == "fork" else parent_stdio()
        if cfg.label_output:
            pairs = [socket.socketpair(), socket.socketpair()]
            child_streams = (pairs[0][1], pairs[1][1])
            streams = [OutputPipe(pairs[k][0], k + 1, f"[worker {slot_id}] ") for k in (0, 1)]
        try:
            if cfg.use_zygote:
                proc = self._fork_from_zygote(w, name, child_sock, child_streams)
            else:
                proc = self._start_from_context(w, name, child_sock, child_streams, wcfg)
        except BaseException as e:  # noqa: BLE001
            parent_sock.close()
            for pipe in streams or ():
                pipe.close()
            self._start_failed(f"could not start a worker process: {e!r}")
            if self.broken is None and self.state in ("running", "closing"):
                self._to_start.append(slot_id)  # try again next turn (three failures break the pool)
            return
        finally:
            child_sock.close()
            if cfg.label_output:
                for sock in child_streams:
                    sock.close()
        w.streams = streams or []
        for pipe in w.streams:
            self.selector.register(pipe.fd, READ, ("output", (w, pipe)))
        w.process = proc
        w.pid = proc.pid
        self.recorder.worker_started(slot_id, proc.pid, replacement=slot_id in self._slots_used)
        self._slots_used.add(slot_id)
        w.sentinel = proc.sentinel
        w.end = ParentEnd(parent_sock)
        w.started = time.monotonic()
        self.workers[slot_id] = w
        self.selector.register(w.end.fd, READ, ("chan", w))
        self.selector.register(w.sentinel, READ, ("sentinel", w))
        if cfg.use_zygote:  # its configuration is the first message it reads
            w.end.queue(encode(("config", pickle.dumps(wcfg, 5))))
            self._want_write(w)

    def _fork_from_zygote(self, w: _Worker, name: str, child_sock, child_streams):
        """Fork the worker from the zygote; its slot is a memfd both map."""
        fd = os.memfd_create("sharkcage-slot", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, SLOT_SIZE * 8)
            w.slot = mmap.mmap(fd, SLOT_SIZE * 8)
            w.slot_view = Slot(w.slot)
            w.slot_view.q[SLOT_BATCH] = -1
            fds = [child_sock.fileno(), fd]
            if child_streams is not None:
                fds += [s if isinstance(s, int) else s.fileno() for s in
                        (getattr(c, "fd", c) for c in child_streams)]
            try:
                return zygote.ensure().start(name, fds)
            except zygote.ZygoteError:
                # It died (killed, OOM): a fresh one, once, then give up on this start.
                return zygote.ensure().start(name, fds)
        finally:
            os.close(fd)

    def _start_from_context(self, w: _Worker, name: str, child_sock, child_streams, wcfg: dict):
        """Start the worker with the multiprocessing context the user chose."""
        from sharkcage._engine import worker as worker_mod

        cfg = self.config
        w.slot = cfg.context.RawArray("q", SLOT_SIZE)
        w.slot_view = Slot(w.slot)
        w.slot_view.q[SLOT_BATCH] = -1
        proc = cfg.context.Process(
            target=worker_mod.main,
            args=(child_sock, w.slot, pickle.dumps(wcfg, 5), child_streams),
            name=name,
            daemon=True,
        )
        _start_process(proc)
        return proc

    def _forward_output(self, w: _Worker, pipe: OutputPipe) -> None:
        lines, eof = pipe.read_lines()
        for line in lines:
            self._line_writer.put(pipe.stream, pipe.label, line)
        if eof:
            self._close_stream(w, pipe)

    def _close_stream(self, w: _Worker, pipe: OutputPipe) -> None:
        try:
            self.selector.unregister(pipe.fd)
        except (KeyError, ValueError):
            pass
        pipe.close()
        w.streams.remove(pipe)

    def _want_write(self, w: _Worker) -> None:
        if w.state == "dead" or w.eof_deadline is not None:
            return
        if not self._flush(w):
            if w.lease is not None:
                self._end_lease(w)  # the loop must finish the write: take the channel back
            elif not w.writing:
                self.selector.modify(w.end.fd, READ | WRITE)
                w.writing = True

    def _flush(self, w: _Worker) -> bool:
        try:
            done = w.end.flush()
        except ChannelClosed:
            self._channel_lost(w)
            return True
        if done and w.writing and w.lease is None:
            w.writing = False
            try:
                self.selector.modify(w.end.fd, READ)
            except (KeyError, ValueError):
                pass
        return done

    def _channel_lost(self, w: _Worker) -> None:
        """EOF or a broken pipe: the worker is dying; its sentinel will tell how."""
        if w.eof_deadline is None:
            w.eof_deadline = time.monotonic() + _EOF_GRACE
            try:
                self.selector.unregister(w.end.fd)
            except (KeyError, ValueError):
                pass

    def _read_worker(self, w: _Worker) -> None:
        try:
            messages = w.end.read_messages()
        except ChannelClosed:
            self._channel_lost(w)
            return
        for body in messages:
            try:
                msg = pickle.loads(body)
            except BaseException:  # noqa: BLE001 - a corrupt frame: treat the worker as crashed
                log.error("corrupt message from worker pid %s; killing it", w.pid)
                self._kill(w)
                return
            self._handle(w, msg)

    def _handle(self, w: _Worker, msg) -> None:
        tag = msg[0]
        if tag in ("done", "mixed", "fn_failed"):
            batch = self._finish_batch(w, msg[1])
            if batch is not None:
                self._init_failures = 0
                now = time.monotonic()
                elapsed = msg[3] if len(msg) > 3 else now - max(batch.sent_at, w.last_done)
                per_item = elapsed / max(1, len(batch))
                w.last_done = now
                w.tasks_done += len(batch)
                self._avg_task = per_item if not self._task_samples else 0.8 * self._avg_task + 0.2 * per_item
                self._task_samples += 1
                if tag == "done":
                    failed = 0
                elif tag == "mixed":
                    failed = sum(1 for status, _ in msg[2] if status)
                else:
                    failed = len(batch)
                self.recorder.batch_done(w.slot_id, w.pid, batch, len(batch), failed, elapsed, now)
                replies.settle_batch(tag, msg[2], batch, self._deliver, self._load_result)
        elif tag == "log":
            handle_record_bytes(msg[1])
        elif tag == "ready":
            if w.state == "starting":
                w.state = "ready"
            self._init_failures = 0
        elif tag == "init_failed":
            w.state = "init_failed"
            self._last_init_error = msg[1]
        elif tag == "bad_chunk":
            batch = self._finish_batch(w, msg[1])
            if batch is not None:
                # The whole chunk failed to unpickle: re-send it item by item so
                # the failure lands on the right task(s) and nothing else.
                again = self._subset(batch, list(range(len(batch.targets))))
                if again is not None:
                    self.pending.appendleft(again)
        elif tag == "skipped":
            # Cancelled before it started; the job already holds its outcome.
            self._finish_batch(w, msg[1])
        elif tag == "retire":
            never_started = set(msg[1])
            w.state = "retiring"
            back = [b for b in w.assigned if b.id in never_started]
            for b in reversed(back):
                w.assigned.remove(b)
                self.inflight.pop(b.id, None)
                self.pending.appendleft(b)

    def _finish_batch(self, w: _Worker, batch_id: int) -> Batch | None:
        entry = self.inflight.pop(batch_id, None)
        if entry is None:
            return None
        batch = entry[1]
        try:
            w.assigned.remove(batch)
        except ValueError:
            pass
        w.ever_ran = True
        if batch.job is not None:
            batch.job.direct = None  # answered: a result kept for long must not keep the worker record
        return batch

    def _load_result(self, data):
        # consume=True: this process owns the result's segments from now on
        return serialize.loads_data(data, self.arena, consume=True)

    # ------------------------------------------------------------------
    # Delivering outcomes

    def _deliver(self, job: Job, index: int, ok: bool, value) -> None:
        try:
            job.deliver(index, ok, value)
        except BaseException:  # noqa: BLE001
            log.exception("delivering the outcome of %s failed", job.describe(index))

    def _fail_batch(self, batch: Batch, exc: BaseException) -> None:
        self.recorder.failed_without_running(len(batch))
        for job, index in batch.targets:
            self._deliver(job, index, False, exc)

    # ------------------------------------------------------------------
    # Dispatch

    def _depth(self) -> int:
        # Keep a second batch queued in the worker when tasks are known to be
        # short, so it never waits on the parent; long tasks — and tasks of
        # unknown length, before the first has finished — go one at a time,
        # so no task waits behind a long one while another worker is idle.
        return 2 if self._task_samples and self._avg_task < 0.005 else 1

    def _dispatch(self) -> None:
        if not self.pending:
            return
        depth = self._depth()
        ready = [w for w in self.workers.values()
                 if w.state in ("starting", "ready") and w.eof_deadline is None and w.lease is None]
        if not ready:
            return
        max_batches = self.config.maxtasksperchild
        progress = True
        while self.pending and progress:
            progress = False
            for w in ready:
                if not self.pending:
                    break
                if len(w.assigned) >= depth:
                    continue
                if max_batches and w.state == "ready" and len(w.assigned) >= 1:
                    # A worker that retires after N batches must not hold
                    # more than it will run.
                    continue
                # the fair share counts every slot, also the workers still starting
                batch = self._take_batch(max(len(ready), self.config.processes))
                if batch is None:
                    continue
                self._send_batch(w, batch)
                progress = True

    def _take_batch(self, n_workers: int) -> Batch | None:
        pending = self.pending
        while pending:
            b = pending.popleft()
            b = b.still_wanted(self._subset)
            if b is None:
                continue  # all cancelled while pending
            # Coalesce single-task submits of known-tiny tasks into one
            # message, up to a fair share of what is pending.
            if b.split and len(b.items) == 1 and pending:
                share = self._merge_share(len(pending), n_workers)
                if share > 1:
                    b = b.merged_with(pending, share)
            return b
        return None

    def _merge_share(self, queued: int, n_workers: int) -> int:
        """How many single calls go in one message: a fair share of the
        ``queued`` ones per worker (at most 64), once tasks are known to be
        tiny; else 1 (a long task must not hold others back)."""
        if not (self._task_samples and self._avg_task < 0.001):
            return 1
        return max(1, min(64, queued // max(1, n_workers)))

    def _send_batch(self, w: _Worker, batch: Batch) -> None:
        if batch.fn_id not in w.fns:
            w.end.queue(encode(("fn", batch.fn_id, self._fn_bytes[batch.fn_id])))
            w.fns[batch.fn_id] = None
            if len(w.fns) > _MAX_FN_PER_WORKER:
                old, _ = w.fns.popitem(last=False)
                w.end.queue(encode(("forget", old)))
        else:
            w.fns.move_to_end(batch.fn_id)
        w.end.queue(encode(("run", batch.id, batch.fn_id, batch.kind, batch.payload, batch.split)))
        if batch.split:
            for k, (job, _) in enumerate(batch.targets):
                if job.kind in _TRACKED_KINDS:
                    job.where = (w, batch.id, k)  # for has_started(): futures stay PENDING until then
        w.assigned.append(batch)
        batch.sent_at = time.monotonic()
        self.inflight[batch.id] = (w, batch)
        self._want_write(w)

    # ------------------------------------------------------------------
    # Deaths, timeouts, replacement

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        timeout = self.config.task_timeout
        if self.state == "terminating" and now >= self._term_deadline:
            for w in self.workers.values():
                if w.state != "dead":
                    self._kill(w)
            self._term_deadline = now + 0.5
        self._check_warn_after(now)
        for w in list(self.workers.values()):
            if w.state == "dead":
                continue
            if w.eof_deadline is not None and now >= w.eof_deadline:
                w.eof_deadline = now + _EOF_GRACE
                self._kill(w)
            if timeout is not None and w.kill_reason is None:
                running = self._running_item(w)
                if running is not None and running[1] >= 0 and now - running[2] >= timeout:
                    w.kill_reason = ("timeout", running[0], running[1])
                    self._kill(w)

    # ------------------------------------------------------------------
    # Stacks of busy workers (dump_stacks, warn_after)

    def _stack_path(self, slot_id: int) -> str:
        return os.path.join(self._stack_dir, f"worker-{slot_id}.txt")

    def _request_stack(self, w: _Worker) -> bool:
        try:
            os.truncate(self._stack_path(w.slot_id), 0)
        except OSError:
            pass
        try:
            os.kill(w.pid, signal.SIGUSR1)
            return True
        except (ProcessLookupError, TypeError):
            return False

    def _read_stack(self, slot_id: int) -> str:
        try:
            with open(self._stack_path(slot_id)) as f:
                return f.read()
        except OSError:
            return ""

    def dump_stacks(self, timeout: float = 2.0) -> dict[int, str]:
        """{pid: Python stack} of every busy worker (called from any thread)."""
        for _ in range(3):
            try:
                workers = list(self.workers.values())
                break
            except RuntimeError:  # the table changed under us: read again
                continue
        else:
            workers = []
        busy = [w for w in workers if w.state != "dead" and self._running_item(w) is not None]
        asked = [w for w in busy if self._request_stack(w)]
        deadline = time.monotonic() + timeout
        sizes: dict[int, int] = {}
        stacks: dict[int, str] = {}
        while asked and time.monotonic() < deadline:
            time.sleep(0.02)
            for w in list(asked):
                try:
                    size = os.path.getsize(self._stack_path(w.slot_id))
                except OSError:
                    size = 0
                if size and sizes.get(w.pid) == size:  # written and settled
                    stacks[w.pid] = self._read_stack(w.slot_id)
                    asked.remove(w)
                sizes[w.pid] = size
        for w in asked:
            stacks[w.pid] = self._read_stack(w.slot_id) or "(no stack: the worker did not answer SIGUSR1 in time)"
        return stacks

    def _check_warn_after(self, now: float) -> None:
        limit = self.config.warn_after
        if limit is None:
            return
        for w in list(self.workers.values()):
            if w.state == "dead" or w.kill_reason is not None:
                continue
            running = self._running_item(w)
            if running is None or running[1] < 0 or now - running[2] < limit:
                continue
            key = (w.pid, running[0], running[1])
            if key in self._warned:
                continue
            self._warned.add(key)
            entry = self.inflight.get(running[0])
            label = "a task"
            if entry is not None and 0 <= running[1] < len(entry[1]):
                job, index = entry[1].targets[running[1]]
                label = job.describe(index)
            if self._request_stack(w):
                self._stack_reads.append((now + 0.2, w.slot_id, w.pid, label, now - running[2]))
        due = [r for r in self._stack_reads if r[0] <= now]
        if due:
            self._stack_reads = [r for r in self._stack_reads if r[0] > now]
            for _, slot_id, pid, label, seconds in due:
                log.warning("%s has been running for %.1f s on worker %s (pid %s); its stack:\n%s",
                            label, seconds, slot_id, pid, self._read_stack(slot_id).rstrip() or "(unavailable)")

    def _kill(self, w: _Worker, sig: int = signal.SIGKILL) -> None:
        try:
            os.kill(w.pid, sig)
        except (ProcessLookupError, PermissionError, TypeError):
            pass

    def _reap(self, w: _Worker) -> None:
        """The worker's sentinel fired: settle every batch it held."""
        if w.state == "dead":
            return
        # Read what it sent before dying: results delivered are not re-run.
        # Also after a failed write to it (eof_deadline set): what it sent
        # (an init failure's traceback, results) is still queued on our end.
        self._read_worker(w)
        previous_state = w.state
        w.state = "dead"
        w.process.join(1.0)  # the sentinel is ready: this only reads the status
        exitcode = w.process.exitcode
        self.selector.unregister(w.sentinel)
        if w.eof_deadline is None:
            try:
                self.selector.unregister(w.end.fd)
            except (KeyError, ValueError):
                pass
        running = self._running_item(w)
        w.end.close()
        # Results it sent were read above (their segments taken over); what
        # it was still writing, or sent and nobody will read, goes now.
        shm.cleanup_prefix(f"{self.shm_root}w{w.pid}")
        for pipe in list(w.streams):  # what it printed before dying still counts
            self._forward_output(w, pipe)
            if pipe in w.streams:
                self._close_stream(w, pipe)
        try:
            w.process.close()
        except ValueError:
            pass
        w.slot_view.close()  # its fd (a memfd or heap arena) goes now, not at some GC
        orderly = previous_state in ("exiting", "retiring") and exitcode == 0 and not w.assigned
        self.recorder.worker_ended(w.slot_id, crashed=not orderly and self.state != "terminating")
        requeue: list[Batch] = []
        for batch in w.assigned:
            self.inflight.pop(batch.id, None)
            if running is None or running[0] != batch.id:
                requeue.append(batch)
                continue
            item = running[1]
            n = len(batch.targets)
            if w.kill_reason is not None and w.kill_reason[1] == batch.id:
                item = w.kill_reason[2]
            if item < 0 and n > 1:
                # Died while (un)pickling the batch as a whole: the culprit is
                # unknown, so run its items one by one to find it.
                for k in range(n):
                    one = self._subset(batch, [k])
                    if one is not None:
                        requeue.append(one)
                continue
            item = max(item, 0)
            job, index = batch.targets[item]
            others = [k for k in range(n) if k != item]
            if others:
                rest = self._subset(batch, others)
                if rest is not None:
                    requeue.append(rest)
            self._settle_culprit(w, batch, item, exitcode, running[2])
        w.assigned.clear()
        for b in reversed(requeue):
            self.pending.appendleft(b)
        if previous_state in ("starting", "init_failed") and not w.ever_ran and self.state != "terminating":
            if previous_state == "init_failed" or exitcode != 0:
                reason = self._last_init_error if previous_state == "init_failed" else (
                    f"the worker (pid {w.pid}) died while starting, exit code {exitcode}")
                self._start_failed(reason)
        crashed = not orderly and previous_state not in ("starting", "init_failed", "exiting")
        if crashed and not self.config.restart_crashed and self.state in ("running", "closing") and self.broken is None:
            self._break(WorkerCrashedError(w.pid, exitcode, task="an earlier call", cause=_oom_hint(exitcode),
                                           replaced=False))
        if self.workers.get(w.slot_id) is w:
            # Gone from the table first: a replacement that is refused (a
            # broken pool, an unsafe fork) must not leave a dead record that
            # keeps the pool from finishing.
            del self.workers[w.slot_id]
            if self.state in ("running", "closing") and self.broken is None and previous_state != "exiting":
                if crashed and self.config.on_restart is not None:
                    try:
                        self.config.on_restart(w.pid, exitcode)
                    except Exception:
                        log.exception("on_restart hook failed")
                self._start_worker(w.slot_id)

    def _settle_culprit(self, w: _Worker, batch: Batch, item: int, exitcode, started) -> None:
        job, index = batch.targets[item]
        reason = w.kill_reason
        what = job.describe(index)
        if reason is not None and reason[0] == "timeout" and reason[1] == batch.id:
            err = TaskTimeoutError(self.config.task_timeout, task=what, pid=w.pid)
            self.recorder.task_ended(w.slot_id, w.pid, what, started, "timeout", str(err))
            self._deliver(job, index, False, err)
            return
        if reason is not None and reason[0] == "cancel" and reason[1] == batch.id:
            self.recorder.task_ended(w.slot_id, w.pid, what, started, "cancelled", "cancelled while running")
            self._deliver(job, index, False, concurrent.futures.CancelledError(f"{what} was cancelled while running"))
            return
        if self.state == "terminating":
            return  # _terminate already failed everything outstanding
        if batch.attempts < self.config.retries:
            retry = self._subset(batch, [item])
            if retry is not None:  # None: it cannot even be pickled alone (already settled)
                retry.attempts = batch.attempts + 1
                self.pending.appendleft(retry)
            return
        cause = _oom_hint(exitcode)
        err = WorkerCrashedError(w.pid, exitcode, task=what, cause=cause, attempts=batch.attempts + 1,
                                 replaced=self.config.restart_crashed)
        self.recorder.task_ended(w.slot_id, w.pid, what, started, "crash", str(err))
        self._deliver(job, index, False, err)

    def _start_failed(self, reason: str) -> None:
        self._init_failures += 1
        self._last_init_error = reason
        if self._init_failures >= self.config.max_init_failures:
            self._break(WorkerInitError(reason, attempts=self._init_failures))

    def _break(self, exc: BaseException) -> None:
        """Stop starting workers; pending and later tasks fail with ``exc``."""
        self.broken = exc
        pending, self.pending = self.pending, collections.deque()
        for b in pending:
            self._fail_batch(b, exc)
        # Nothing can run any more: workers still starting (or idle) would
        # only run a failing initializer again. Running tasks finish first.
        for w in list(self.workers.values()):
            if w.state != "dead" and not w.assigned:
                self._kill(w)

    def _maybe_retire_idle(self) -> None:
        """When closing and all work is done, ask the workers to leave in order."""
        if self.state != "closing" or self.pending or self.inflight or self.feeders_running():
            return
        for w in self.workers.values():
            if w.state in ("starting", "ready", "init_failed") and w.eof_deadline is None:
                w.state = "exiting"
                w.end.queue(encode(("exit",)))
                self._want_write(w)

    def _finished(self) -> bool:
        if self.state == "closing":
            if self.broken is not None and not self.inflight:
                # nothing can run any more: make the workers leave
                for w in self.workers.values():
                    if w.state != "dead":
                        self._kill(w)
            return not self.workers and not self.pending and not self.inflight and not self.feeders_running()
        if self.state == "terminating":
            return not self.workers
        return False

    # ------------------------------------------------------------------
    # Shutdown

    def _terminate(self, reason: str) -> None:
        if self.state == "terminating":
            return
        self.state = "terminating"
        self._fail_everything(SharkcageError(f"{reason} before this task finished"))
        for w in self.workers.values():
            if w.state != "dead":
                self._kill(w, signal.SIGTERM)
        # Workers that ignore SIGTERM get SIGKILL after a short grace period
        # (see _check_deadlines), so terminate() never waits on a task.
        self._term_deadline = time.monotonic() + _TERM_GRACE

    def _fail_everything(self, exc: BaseException) -> None:
        pending, self.pending = self.pending, collections.deque()
        for b in pending:
            self._fail_batch(b, exc)
        for _w, b in list(self.inflight.values()):
            self._fail_batch(b, exc)
        self.inflight.clear()
        for w in self.workers.values():
            w.assigned.clear()

    def _kill_all(self) -> None:
        for w in list(self.workers.values()):
            if w.state != "dead":
                self._kill(w)
                try:
                    w.process.join(2.0)
                except Exception:
                    pass

    def _shutdown_resources(self) -> None:
        with self._lock:
            # A caller still reading a worker's channel finds it taken back.
            self._stopped = True
            for w in self.workers.values():
                w.lease = None
        for w in list(self.workers.values()):
            try:
                w.end.close()
            except Exception:
                pass
            if getattr(w, "slot_view", None) is not None:
                w.slot_view.close()
            if getattr(w, "process", None) is not None:
                try:
                    w.process.close()
                except ValueError:
                    pass
            for pipe in list(w.streams):
                pipe.close()
        self.workers.clear()
        try:
            self.selector.close()
        except Exception:
            pass
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        _remove_dir(self._stack_dir)
        shm.sweep(self.shm_root)  # the parent's arena, every worker's, the pool's shares
        if self._line_writer is not None:
            self._line_writer.stop()
        self.callbacks.stop()
        self.done.set()


def _private_dir(prefix: str) -> str:
    """A new directory only we can use, like ``tempfile.mkdtemp`` — whose
    import (shutil, random, bz2...) cost a pool start more than the call."""
    bases = [os.environ.get(k) for k in ("TMPDIR", "TEMP", "TMP")] + ["/tmp", "/var/tmp", os.getcwd()]
    for base in filter(None, bases):
        for _ in range(10):
            path = os.path.join(base, f"{prefix}{os.getpid()}-{os.urandom(6).hex()}")
            try:
                os.mkdir(path, 0o700)  # fails if it exists: never someone else's directory
                return path
            except FileExistsError:
                continue
            except OSError:
                break
    import tempfile  # the stdlib's fallbacks, if none of ours was writable

    return tempfile.mkdtemp(prefix=prefix)


def _remove_dir(path: str) -> None:
    """Remove a directory made by _private_dir and the files in it."""
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(path, name))
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        import shutil  # something unexpected inside: the thorough way

        shutil.rmtree(path, ignore_errors=True)


def _start_process(proc) -> None:
    """``proc.start()``, also inside a daemonic process (a Dask worker, a
    stdlib daemon Process): multiprocessing refuses children there because
    they could outlive it, but sharkcage's workers cannot — each watches its
    channel and dies with its parent — so the flag is lifted for the start."""
    import multiprocessing.process as mpp

    config = mpp.current_process()._config
    if not config.get("daemon"):
        proc.start()
        return
    config["daemon"] = False
    try:
        proc.start()
    finally:
        config["daemon"] = True


def _oom_hint(exitcode) -> str | None:
    """A likely cause for a SIGKILL: the cgroup's OOM killer, when it says so."""
    if exitcode != -signal.SIGKILL:
        return None
    for path in _OOM_FILES:
        count = _oom_counts(path)
        if count is not None and count > _OOM_BASELINE.get(path, 0):
            _OOM_BASELINE[path] = count
            return "the kernel's OOM killer (the cgroup's memory.events counts a new oom_kill): the task used too much memory"
    return "SIGKILL from outside this pool (another process, or the OOM killer)"


_OOM_BASELINE: dict[str, int] = {}
_OOM_FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def _oom_counts(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in ("oom_kill",) and value.strip().isdigit():
            return int(value)
    return None


def _read_oom_baseline() -> None:
    """Remember the OOM-kill counters at pool start, so only new kills count."""
    for path in _OOM_FILES:
        if path not in _OOM_BASELINE:
            count = _oom_counts(path)
            if count is not None:
                _OOM_BASELINE[path] = count
