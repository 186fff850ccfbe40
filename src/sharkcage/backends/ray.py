"""The Ray backend: ``Pool(backend="ray", address=...)``.

``address`` is what ``ray.init`` takes: ``"auto"``, ``"host:port"`` of a
running head, ``"ray://host:10001"`` (Ray Client), or None to start a local
Ray on this machine. If this process already called ``ray.init()``, the pool
uses that connection and never shuts it down; if sharkcage opened it, the
last sharkcage pool using it shuts it down at close/terminate. Importing this
module does not import Ray; building the backend does.

Each batch is one Ray task running ``remote_run`` (see ``backends/_cluster.py``
for the shared machinery and its data flow): ``worker.run_batch`` on the Ray
worker, its reply settled with ``replies.settle``, so errors map onto the
same classes as on the local engine. Ray can kill the worker running a task
(``ray.cancel(force=True)``), so:

* ``task_timeout`` is enforced: batches then run as streaming generators
  that announce each item's start; when one runs past the limit its worker
  is killed, that task fails with :class:`TaskTimeoutError`, and the rest of
  its batch runs again.
* ``AsyncResult.cancel()`` / ``executor.cancel(future)`` stop a running task.
* A worker that dies fails only its own task with
  :class:`WorkerCrashedError`; sharkcage, not Ray, does the ``retries``
  (Ray's own ``max_retries`` is 0), so a crash is counted the same way on
  every backend.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import queue
import threading

from sharkcage._engine import serialize, start
from sharkcage.backends._cluster import _OOB_BYTES, ClusterBackend, ClusterConfig, Flight, _Fn, check_options, \
    pack_call, remote_run, remote_run_pickled, remote_run_stream, take_all

log = logging.getLogger("sharkcage")

_ray_lock = threading.Lock()
_ray_users = 0  # sharkcage pools on the connection sharkcage opened
_ray_ours = False  # sharkcage called ray.init(), so sharkcage calls ray.shutdown()
_remote = None  # (plain, streaming) Ray remote functions, made once per process
_LINGER = 0.05  # seconds the collector may wait for more finished short calls to fetch together
_POLL = 0.02  # seconds between looks for new calls to watch while waiting


def remote_run_packed(args: tuple):
    """:func:`remote_run` with its arguments in one tuple: Ray serializes
    each argument of a task on its own, and one argument instead of four
    takes about a quarter off a tiny task's round trip."""
    return remote_run(*args)


def remote_run_stream_packed(args: tuple):
    """:func:`remote_run_stream` with its arguments in one tuple."""
    yield from remote_run_stream(*args)


def remote_run_stream_pickled(blob: bytes):
    """:func:`remote_run_stream` with its arguments as ``pack_call`` made them."""
    yield from remote_run_stream(*pickle.loads(blob))


def _remote_functions():
    global _remote
    if _remote is None:
        import ray

        # max_retries=0: a crash comes back to sharkcage, which reruns the
        # batch's other items and counts ``retries`` itself, as locally.
        def plain(fn):
            return ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False)(fn)

        def stream(fn):
            return ray.remote(num_cpus=1, max_retries=0, num_returns="streaming")(fn)

        # (spread: a published function's ObjectRef must be an argument of
        # its own for Ray to resolve it; packed: everything in one argument;
        # pickled: that argument one bytes object, see pack_call)
        _remote = {(False, "spread"): plain(remote_run), (False, "packed"): plain(remote_run_packed),
                   (False, "pickled"): plain(remote_run_pickled),
                   (True, "spread"): stream(remote_run_stream), (True, "packed"): stream(remote_run_stream_packed),
                   (True, "pickled"): stream(remote_run_stream_pickled)}
    return _remote


def _connect(address, num_cpus) -> bool:
    """Make sure this process is connected to Ray; True if sharkcage owns the connection."""
    global _ray_users, _ray_ours
    import ray

    with _ray_lock:
        if ray.is_initialized():
            if _ray_ours:
                _ray_users += 1
                return True
            return False  # the user's connection: never shut it down
        if address is not None and not isinstance(address, str):
            raise ValueError("the Ray context passed as address= is not connected (ray.is_initialized() is False)")
        kwargs = {"num_cpus": num_cpus} if address is None and num_cpus else {}
        ray.init(address=address, **kwargs)
        _ray_ours = True
        _ray_users = 1
        return True


def _release() -> None:
    global _ray_users, _ray_ours
    import ray

    with _ray_lock:
        _ray_users -= 1
        if _ray_users <= 0 and _ray_ours:
            _ray_ours = False
            _ray_users = 0
            ray.shutdown()


class RayBackend(ClusterBackend):
    """Runs a pool's tasks on a Ray cluster (``Pool(backend="ray", address=...)``).

    >>> from sharkcage import Pool
    >>> with Pool(backend="ray", address="auto", task_timeout=60) as pool:   # doctest: +SKIP
    ...     pool.map(abs, [-1, -2, 3])
    [1, 2, 3]
    """

    engine = "ray"
    carrier = "pickle5"

    def __init__(self, config: ClusterConfig, owns_connection: bool):
        import ray

        self._ray = ray
        self._owns = owns_connection
        # Per-item start notices cost a little per item: only when a timeout needs them.
        self.stream_items = config.task_timeout is not None
        if not config.fixed:
            config.processes = max(1, self._cluster_slots())
        self._remote_fns = _remote_functions()
        # Big buffers of arguments leave their pickle (serialize.OutOfBand):
        # Ray copies them once into its object store, as for its own tasks.
        self.arena = serialize.BufferArena(_OOB_BYTES)
        self._watch_q: queue.SimpleQueue = queue.SimpleQueue()  # (ObjectRef, flight key) to collect; None: stop
        self._collector = start.mark_own_thread(threading.Thread(
            target=self._collect_loop, name=f"sharkcage-ray-collect-{config.name}", daemon=True))
        self._collector.start()
        self._loop = None
        self._loop_thread = None
        if self.stream_items:
            self._loop = asyncio.new_event_loop()
            self._loop_thread = start.mark_own_thread(threading.Thread(
                target=self._loop.run_forever, name=f"sharkcage-ray-stream-{config.name}", daemon=True))
            self._loop_thread.start()
        super().__init__(config)

    def _cluster_slots(self) -> int:
        return int(self._ray.cluster_resources().get("CPU", 1))

    def _publish(self, fn: _Fn):
        return self._ray.put(fn.data)

    # pool.share(): Ray's object store; a worker fetches the object once
    # (numpy arrays as zero-copy read-only views of the store)
    shares_how = "ray"

    def _put_shared(self, obj):
        return self._ray.put(obj)

    def _get_shared(self, ref):
        return self._ray.get(ref)

    def _drop_shared(self, ref) -> None:
        pass  # Ray frees the object once no reference is left (running tasks hold theirs)

    def _actor_engine(self, restart: bool):
        return _RayActors(self._ray, restart)

    def _launch_remote(self, flight: Flight, args: tuple):
        # The function's and initializer's pickles are bytes unless published
        # (an ObjectRef): only then do the arguments stay spread out.
        blob = pack_call(args)
        if blob is not None:
            call = self._remote_fns[(flight.stream, "pickled")].remote(blob)
        elif not any(isinstance(a, self._ray.ObjectRef) for a in args[1:3]):
            call = self._remote_fns[(flight.stream, "packed")].remote(args)
        else:
            call = self._remote_fns[(flight.stream, "spread")].remote(*args)
        if flight.stream:
            asyncio.run_coroutine_threadsafe(self._consume(flight.key, call), self._loop)
            return call
        if self._short_calls():
            self._watch_q.put((call, flight.key))  # collected in groups (_collect_loop)
        else:
            call.future().add_done_callback(lambda fut, key=flight.key: self._done(key, fut))
        return call

    def _done(self, key: str, fut) -> None:
        """Ray's callback thread: report the outcome to the dispatcher."""
        try:
            exc = fut.exception()
            if exc is None:
                self._post("outcome", key, "reply", fut.result())
            else:
                self._post("outcome", key, *self._classify(exc))
        except BaseException as e:  # noqa: BLE001 - a cancelled concurrent future, ...
            self._post("outcome", key, *self._classify(e))

    def _collect_loop(self) -> None:
        """Collect short calls: wait for them with ``ray.wait`` and fetch the
        finished ones' results together with one ``ray.get``.

        Per-call delivery (``ref.future()`` callbacks, what longer calls use:
        no polling, no added latency) runs Python on Ray's io thread for
        every call, contending for the GIL with the dispatcher's submits;
        with one remote call per tiny task that cost the driver more than
        the calls themselves. Here it waits until half of the watched calls
        are done (or ``_LINGER``): the workers still have the other half.
        """
        watched: dict = {}  # ObjectRef -> flight key
        while True:
            for item in take_all(self._watch_q, None if not watched else 0):
                if item is None:
                    return
                watched[item[0]] = item[1]
            if not watched:
                continue
            refs = list(watched)
            want = max(1, len(refs) // 2) if self._short_calls() else 1
            try:
                ready, _rest = self._ray.wait(refs, num_returns=want, timeout=_LINGER if want > 1 else _POLL,
                                              fetch_local=True)
                if want > 1 and not ready:
                    ready, _rest = self._ray.wait(refs, num_returns=1, timeout=_POLL, fetch_local=True)
            except Exception as e:  # noqa: BLE001 - the connection is lost: each watched call fails with it
                log.debug("ray.wait failed", exc_info=True)
                for key in watched.values():
                    self._post("outcome", key, *self._classify(e))
                watched.clear()
                continue
            if not ready:
                continue
            try:
                values = self._ray.get(ready)
            except BaseException:  # noqa: BLE001 - one of them failed: take them one by one
                values = None
            for i, ref in enumerate(ready):
                key = watched.pop(ref)
                if values is not None:
                    self._post("outcome", key, "reply", values[i])
                    continue
                try:
                    self._post("outcome", key, "reply", self._ray.get(ref))
                except BaseException as e:  # noqa: BLE001 - the task's failure, however it came
                    self._post("outcome", key, *self._classify(e))

    async def _consume(self, key: str, gen) -> None:
        try:
            async for ref in gen:
                self._post("stream", key, await ref)
        except BaseException as e:  # noqa: BLE001 - the task's end, however it came
            self._post("outcome", key, *self._classify(e))
        else:
            self._post("outcome", key, "end", None)

    def _classify(self, e: BaseException):
        rex = self._ray.exceptions
        if isinstance(e, rex.TaskCancelledError):
            return "cancelled", e
        cause = getattr(e, "cause", None)
        if isinstance(e, rex.RayTaskError) and isinstance(cause, rex.RayError):
            e = cause  # a system failure surfaced through a task error
        if isinstance(e, rex.OutOfMemoryError):
            return "crashed", (None, None, "Ray's memory monitor killed the worker: its node ran low on memory")
        crash_types = (rex.WorkerCrashedError, rex.NodeDiedError, rex.LocalRayletDiedError, rex.ObjectLostError)
        if isinstance(e, crash_types):
            return "crashed", (None, None, f"Ray reported {type(e).__name__}: the worker process died "
                                           "(os._exit, a signal, a segfault or the OOM killer; see the raylet logs)")
        return "error", e

    def _stop_remote(self, flight: Flight, force: bool) -> None:
        if flight.handle is None:
            return
        try:
            # A call that has ended is not cancelled: a cancel that meets a
            # call's reply on the way can abort this process (a Ray check,
            # "Tried to complete task that was not pending"). This narrows
            # that race to a call ending at this very moment.
            ended = flight.handle.completed() if flight.stream else flight.handle
            ready, _ = self._ray.wait([ended], timeout=0, fetch_local=False)
            if ready:
                return
        except Exception:  # noqa: BLE001 - cannot tell: cancel as before
            log.debug("ray.wait before ray.cancel failed", exc_info=True)
        try:
            # force=True kills the worker process if the task runs; a queued
            # task is only dropped either way.
            self._ray.cancel(flight.handle, force=force, recursive=True)
        except Exception:  # noqa: BLE001 - finished meanwhile, or the connection is gone
            log.debug("ray.cancel failed", exc_info=True)

    def _disconnect(self, fns: list) -> None:
        for fn in fns:
            fn.remote = None  # the object refs: Ray frees what nothing references
        self._watch_q.put(None)
        if threading.current_thread() is not self._collector:
            self._collector.join(5.0)
        if self._loop is not None:
            loop = self._loop

            async def cancel_all():
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            try:
                asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(5.0)
            except Exception:  # noqa: BLE001
                log.debug("stopping the Ray stream consumers failed", exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
            self._loop_thread.join(5.0)
            if not self._loop_thread.is_alive():
                loop.close()
        if self._owns:
            _release()


_actor_host = None  # ActorHost as a Ray actor class, made once per process


class _RayActors:
    """Ray's actors for ``pool.actor()`` (driven by ``_actors.ClusterActorBackend``).

    An actor takes no CPU of the cluster (``num_cpus=0``), as a local actor
    takes none of the pool's ``processes``. ``restart=True`` is Ray's own
    ``max_restarts``: Ray rebuilds the actor from the same arguments.
    """

    def __init__(self, ray, restart: bool):
        self._ray = ray
        self.restarts = restart

    def start(self, build_data: bytes):
        global _actor_host
        if _actor_host is None:
            from sharkcage.backends._actors import ActorHost

            _actor_host = self._ray.remote(ActorHost)
        # max_task_retries=0: a call is never run twice behind the caller's back
        return _actor_host.options(num_cpus=0, max_restarts=-1 if self.restarts else 0,
                                   max_task_retries=0).remote(build_data)

    def call(self, handle, call_id: int, payload: list, log_level: int):
        return handle.run.remote(call_id, payload, log_level)

    def wait(self, ref, timeout):
        return self._ray.get(ref, timeout=timeout)

    def ready(self, handle):
        return handle.__ray_ready__.remote()  # an actor task: runs once the constructor has

    def is_timeout(self, e: BaseException) -> bool:
        return isinstance(e, self._ray.exceptions.GetTimeoutError)

    def crash_cause(self, e: BaseException) -> str | None:
        rex = self._ray.exceptions
        if isinstance(e, (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError,
                          rex.LocalRayletDiedError)):
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return (f"Ray reported {type(e).__name__}: the actor's process died (os._exit, a signal, a segfault "
                    f"or the OOM killer){': ' + first if first else ''}")
        return None

    def kill(self, handle) -> None:
        self._ray.kill(handle, no_restart=True)

    def kill_for_timeout(self, handle) -> None:
        self._ray.kill(handle, no_restart=not self.restarts)


def make_ray_backend(*, address=None, **options) -> RayBackend:
    """Connect to Ray (or reuse this process's connection) and start a backend on it."""
    try:
        import ray  # noqa: F401
    except ImportError as e:
        raise ImportError("backend='ray' needs Ray, which is not installed: pip install 'sharkcage[ray]'") from e
    config = check_options("ray", timeout_supported=True, **options)
    if address is not None and not isinstance(address, str) and not type(address).__name__.endswith("Context"):
        raise TypeError(f"address= must be a Ray address ('auto', 'host:port', 'ray://host:port'), a Ray context "
                        f"or None, not {type(address).__name__}")
    owns = _connect(address, config.processes if config.fixed else None)
    try:
        return RayBackend(config, owns)
    except BaseException:
        if owns:
            _release()
        raise
