"""``pool.actor(cls, ...)`` on a cluster: the object lives in an engine actor.

Each engine has actors of its own, made for this: a Ray actor (a process of
its own, which Ray can rebuild from the same arguments) and a Dask actor (an
object held by one worker, whose methods run one at a time on that worker's
actor thread). :class:`ActorHost` is what lives there: it builds the user's
object and runs each call through ``worker.run_batch``, so a call's outcome,
its exception, a result that cannot be pickled and the records it logged
come back exactly as from a local actor's process.

Parent side, one :class:`ClusterActorBackend` per actor::

    proxy.method(...) -> submit(): the engine call is made at once, in call
                         order (Ray keeps that order; on Dask, which does
                         not, the call is only prepared), and queued
    collector thread  -> waits for the queued calls in order, replays their
                         log records, settles each future (replies.settle)
    the actor dies    -> that call and the later ones: WorkerCrashedError;
                         restart=True on Ray: Ray rebuilds it from the same
                         arguments, a RuntimeWarning says so; Dask calls
                         are made here, one at a time
    task_timeout (Ray)-> a call's clock starts when the call before it ended
                         (or the actor was built, after a start or rebuild)
                         (the actor runs one at a time); past the limit the
                         actor is killed, that call fails with TaskTimeoutError

Engines that cannot give a guarantee refuse it: Dask cannot rebuild an actor
whose worker died (``restart=True`` is refused) nor stop a running call
(Dask pools refuse ``task_timeout`` already).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback

from sharkcage._engine import replies, serialize, start
from sharkcage._engine import worker as worker_mod
from sharkcage._engine.worker import CALL
from sharkcage.actors import call_method
from sharkcage.backends._cluster import _capture_logs, _exception_guard
from sharkcage.errors import SharkcageError, TaskTimeoutError, WorkerCrashedError, WorkerInitError

log = logging.getLogger("sharkcage")


class ActorHost:
    """Lives in the engine's actor: the user's object, built once.

    A constructor that raises does not kill the actor: each call then fails
    with :class:`WorkerInitError` carrying its traceback, as a local actor's
    calls do.
    """

    def __init__(self, build_data: bytes):
        self._obj = None
        self._init_error = None
        try:
            cls, args, kwargs = serialize.loads(build_data)
            self._obj = cls(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - SystemExit in a constructor is a failure too
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            self._init_error = serialize.pack_exception(WorkerInitError(tb, attempts=1))

    def run(self, call_id: int, payload: list, log_level: int):
        """One method call: ``(reply, log records)`` (see ``remote_run``)."""
        if self._init_error is not None:
            return ("fn_failed", call_id, self._init_error), []
        obj = self._obj
        handler = _capture_logs(log_level)
        try:
            with _exception_guard():
                reply = worker_mod.run_batch(call_id, lambda name, args, kwargs: call_method(obj, name, args, kwargs),
                                             CALL, payload, True, timed=False)
        finally:
            handler.stop()
        return reply, handler.records


class ClusterActorBackend:
    """The parent's side of one actor on a cluster (what an ActorProxy talks to).

    ``engine`` makes the engine calls (``_RayActors``/``_DaskActors`` in
    ray.py/dask.py): ``start(build_data)``, ``call(handle, call_id, payload,
    log_level)``, ``wait(call, timeout)``, ``crash_cause(exc)`` (None when
    the exception is not the actor's death), ``kill(handle)``; with a
    task_timeout also ``ready(handle)`` (a call to wait for: the actor is built).
    """

    def __init__(self, engine, build_data: bytes, name: str, *, log_level: int, task_timeout=None,
                 on_restart=None):
        self.done = threading.Event()
        self._engine = engine
        self._name = name
        self._log_level = log_level
        self._task_timeout = task_timeout
        self._on_restart = on_restart
        self._lock = threading.Lock()  # call order: an id and the engine call under one lock
        self._state = "running"  # running -> closing; or terminating
        self._reason = ""
        self._next = 0
        self._calls: queue.SimpleQueue = queue.SimpleQueue()  # (job, engine call); None: no more
        self._current = None  # the job whose call the collector waits for
        self._handle = engine.start(build_data)
        # A call's task_timeout clock starts once the actor is built (as a
        # local actor's constructor runs before its first call's clock), not
        # while the engine starts its process: a probe queued ahead of every
        # call says when (again after each rebuild).
        self._ready = engine.ready(self._handle) if task_timeout is not None else None
        self._collector = start.mark_own_thread(threading.Thread(
            target=self._collect, name=f"sharkcage-actor-{name}", daemon=True))
        self._collector.start()

    # -- what ActorProxy and the futures use ----------------------------------
    def register_function(self, fn, per_call: bool = False) -> int:
        return 0  # one callable: the host's run()

    def submit(self, batches: list) -> None:
        for batch in batches:
            job = batch.job
            with self._lock:
                if self._state != "running":
                    err = SharkcageError(self._reason or f"actor {self._name} is closed")
                    job.deliver(0, False, err)
                    continue
                self._next += 1
                try:
                    call = self._engine.call(self._handle, self._next, batch.payload, self._log_level)
                except Exception as e:  # noqa: BLE001 - the engine refused the call: that call fails
                    err = SharkcageError(f"the cluster did not accept the call {job.describe(0)}: {e!r}")
                    err.__cause__ = e
                    job.deliver(0, False, err)
                    continue
                self._calls.put((job, call))

    def has_started(self, job) -> bool:
        return True  # handed to the engine at once: Future.cancel() refuses, as on the cluster pools

    def cancel(self, job, running: bool = True) -> None:
        pass  # never asked (has_started): an engine actor cannot drop one queued call

    def await_direct(self, job, is_done, timeout) -> None:
        pass

    def close(self) -> None:
        """The calls already made finish; then the actor goes."""
        with self._lock:
            if self._state != "running":
                return
            self._state = "closing"
            self._calls.put(None)

    def terminate(self, reason: str = "the actor was terminated") -> None:
        """Outstanding calls fail with SharkcageError; the actor is killed now."""
        with self._lock:
            if self._state == "terminating":
                return
            self._state, self._reason = "terminating", reason
        self._kill()
        # Fail every outstanding call now: a Dask call that is running goes
        # on (Dask cannot stop it) and the collector may wait on it a while.
        err = SharkcageError(f"{reason} before this call finished")
        current = self._current
        if current is not None:
            current.deliver(0, False, err)
        while True:
            try:
                item = self._calls.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].deliver(0, False, err)
        self._calls.put(None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the collector to finish; Ctrl-C stops the actor (``start.join_engine_thread``)."""
        return start.join_engine_thread(self._collector, timeout, self.terminate)

    # -- the collector thread ----------------------------------------------------
    def _kill(self) -> None:
        try:
            self._engine.kill(self._handle)
        except Exception:  # noqa: BLE001 - gone already, or the connection is
            log.debug("stopping actor %s failed", self._name, exc_info=True)

    def _collect(self) -> None:
        previous_end = time.monotonic()
        try:
            while True:
                item = self._calls.get()
                if item is None:
                    break
                job, call = item
                self._current = job
                previous_end = self._settle(job, call, previous_end)
                self._current = None
        finally:
            if self._state != "terminating":
                self._kill()
            self.done.set()

    def _settle(self, job, call, previous_end: float) -> float:
        """Wait for one call and deliver its outcome; when the next one's clock starts."""
        timeout = None
        if self._task_timeout is not None:
            if self._ready is not None:
                self._wait_built()
                previous_end = max(previous_end, time.monotonic())
            # One call at a time on the actor: this one started when the one
            # before it ended (never earlier than that).
            timeout = max(0.0, previous_end + self._task_timeout - time.monotonic())
        try:
            reply, records = self._engine.wait(call, timeout)
        except BaseException as e:  # noqa: BLE001 - whatever the engine raises settles this call
            self._failed(job, e)
            return time.monotonic()
        if self._state == "terminating":
            job.deliver(0, False, SharkcageError(f"{self._reason} before {job.describe(0)} finished"))
            return time.monotonic()
        for data in records or ():
            worker_mod.handle_record_bytes(data)  # before the result, as from a local actor
        replies.settle(reply[0], reply[2], [(job, 0)], lambda j, i, ok, v: j.deliver(i, ok, v))
        return time.monotonic()

    def _failed(self, job, e: BaseException) -> None:
        what = job.describe(0)
        if self._state == "terminating":
            err = SharkcageError(f"{self._reason} before {what} finished")
        elif self._engine.is_timeout(e):
            self._kill_for_timeout()
            err = TaskTimeoutError(self._task_timeout, task=what)
            self._rebuilding()  # killed here: rebuilt by the engine (restart=True)
        else:
            cause = self._engine.crash_cause(e)
            if cause is None:
                err = SharkcageError(f"the cluster could not run {what}: {e!r}")
                err.__cause__ = e
            else:
                err = WorkerCrashedError(task=what, cause=cause, replaced=self._engine.restarts)
                self._rebuilding()
        job.deliver(0, False, err)

    def _wait_built(self) -> None:
        probe, self._ready = self._ready, None
        for _ in range(3):
            try:
                self._engine.wait(probe, None)  # ends when it is built, or raises when it is gone
                return
            except BaseException as e:  # noqa: BLE001 - the call itself reports what happened
                # A probe sent as the old process was dying fails with it;
                # sent again, it waits for the rebuilt one.
                if not self._engine.restarts or self._state != "running" or self._engine.crash_cause(e) is None:
                    return
            try:
                probe = self._engine.ready(self._handle)
            except Exception:  # noqa: BLE001
                return

    def _rebuilding(self) -> None:
        """The actor died or was killed: with restart=True the engine rebuilds
        it; say so, and (with a task_timeout) probe for the rebuilt one."""
        if not self._engine.restarts:
            return
        if self._task_timeout is not None:
            # Queued before the caller hears of this failure, so ahead of the
            # next call it makes: that call's clock waits for the rebuild.
            try:
                self._ready = self._engine.ready(self._handle)
            except Exception:  # noqa: BLE001 - then the clock starts now, as before
                log.debug("probing actor %s failed", self._name, exc_info=True)
        if self._on_restart is not None:
            self._on_restart(None, None)

    def _kill_for_timeout(self) -> None:
        try:
            self._engine.kill_for_timeout(self._handle)
        except Exception:  # noqa: BLE001
            log.debug("stopping actor %s after a timeout failed", self._name, exc_info=True)
