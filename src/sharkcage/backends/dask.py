"""The Dask backend: ``Pool(backend="dask", address=...)``.

``address`` is a scheduler address (``"tcp://host:8786"``), a
``distributed.Client`` (used as is, never closed by sharkcage), or a Dask
cluster object (``LocalCluster``, ...). Importing this module does not import
Dask; building the backend does.

Each batch is one remote call of ``remote_run`` (``_cluster.py`` has the
shared machinery and its data flow); calls started together are one
``client.map``, and finished short calls share one ``gather``. A worker lost (``KilledWorker``)
reruns the batch's items one by one; a single item that gets KilledWorker
reruns alone (nothing else of the pool in flight), and only if it kills its
workers again is it that task's WorkerCrashedError (after ``retries``):
Dask also blames tasks merely queued on a dying worker, and those must not
fail.

What Dask cannot do is refused up front: ``task_timeout`` (Dask cannot stop
a running task), ``maxtasksperchild``, ``max_memory_per_worker``,
``finalizer``, start methods. Cancelling a running task settles it as
cancelled at once; the call itself finishes on its worker thread. See
docs/backends.md for every guarantee per backend.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from typing import Any

from sharkcage._engine import serialize, start
from sharkcage._engine.jobs import Job
from sharkcage.backends._cluster import (
    _OOB_BYTES,
    ClusterBackend,
    ClusterConfig,
    Flight,
    _Fn,
    _nbytes,
    check_options,
    pack_call,
    remote_run,
    remote_run_pickled,
    take_all,
)
log = logging.getLogger("sharkcage")

_SCATTER_BYTES = 1 << 20  # payloads from this size are scattered to a worker, not sent in the task
_LINGER = 0.05  # seconds the collector may wait for more finished short calls to gather together
_POLL = 0.01  # seconds between the collector's looks at the short calls in flight


def _call(args: tuple) -> tuple:
    """``(function, arguments)`` of the remote call for ``args``: one pickle
    where it can be (``pack_call``)."""
    blob = pack_call(args)
    return (remote_run, args) if blob is None else (remote_run_pickled, (blob,))


def _payload_bytes(payload) -> int:
    """Bytes of a call's payload (one pickle, or a list of them), as ``oob`` left it."""
    return sum(_nbytes(p) for p in (payload if isinstance(payload, list) else [payload]))


def _hold(data):
    """A cluster-side copy of a big pickled function: Dask keeps the result of
    this task on a worker, fetches it once per worker that needs it, and can
    recompute it if the worker holding it dies (scattered data would be lost)."""
    return data


class DaskBackend(ClusterBackend):
    """Runs a pool's tasks on a Dask cluster (``Pool(backend="dask", address=...)``).

    Every batch is one remote call of :func:`remote_run`. A task whose
    worker dies is rerun by the scheduler (``distributed.scheduler.allowed-failures``,
    default 3). Dask then reports ``KilledWorker`` for every task that was
    *processing* on the dying workers, queued ones included; so such a task
    reruns once more alone, and only if it kills its workers again does it
    fail with :class:`WorkerCrashedError` (after ``retries`` more attempts).

    >>> from distributed import Client                        # doctest: +SKIP
    >>> from sharkcage import Pool
    >>> client = Client("tcp://127.0.0.1:8786")               # doctest: +SKIP
    >>> with Pool(backend="dask", address=client) as pool:    # doctest: +SKIP
    ...     pool.map(abs, [-1, -2, 3])
    [1, 2, 3]
    """

    engine = "dask"
    exact_crashes = False
    carrier = "numpy"

    def __init__(self, config: ClusterConfig, client, owns_client: bool):
        self.client = client
        self._owns_client = owns_client
        if not config.fixed:
            config.processes = max(1, self._read_slots())
        self._collect_q: queue.SimpleQueue = queue.SimpleQueue()
        self._futures: dict[str, Any] = {}
        # Big buffers leave their pickle (serialize.OutOfBand); scattered, they
        # travel as Dask frames (its pickler takes PickleBuffers out of band).
        self.arena = serialize.BufferArena(_OOB_BYTES)
        super().__init__(config)
        self._collector = start.mark_own_thread(threading.Thread(
            target=self._collect_loop, name=f"sharkcage-dask-collect-{config.name}", daemon=True))
        self._collector.start()

    def _read_slots(self) -> int:
        return sum(self.client.nthreads().values())

    def _cluster_slots(self) -> int:
        return self._read_slots()

    def _publish(self, fn: _Fn):
        return self.client.submit(_hold, fn.data, key=f"sharkcage-fn-{fn.key.replace(':', '-')}", pure=False)

    # pool.share(): scattered to one worker, then moved by Dask to each
    # worker whose task needs it (once per worker); the task gets the object
    def _put_shared(self, obj):
        [future] = self.client.scatter([obj], hash=False)  # in a list: a list obj is not split up
        return future

    def _get_shared(self, ref):
        return ref.result()

    def _drop_shared(self, ref) -> None:
        ref.release()

    def _actor_engine(self, restart: bool):
        if restart:
            raise ValueError(
                "restart=True cannot be honoured with backend='dask': Dask cannot rebuild an actor whose "
                "worker died. Use backend='ray' (Ray rebuilds it from the same arguments) or the local backend"
            )
        return _DaskActors(self.client)

    def _launch_remote(self, flight: Flight, args: tuple):
        payload = args[-1]
        if _payload_bytes(payload) >= _SCATTER_BYTES:
            # Big data goes straight to a worker as frames (the scheduler's
            # links pickle task specs in-band, at protocol 4: copies), and the
            # task runs where it landed.
            [flight.deps] = self.client.scatter([payload], hash=False)
            args = args[:-1] + (flight.deps,)
        fn, args = _call(args)
        fut = self.client.submit(fn, *args, key=flight.key, pure=False, retries=0)
        self._watch(flight.key, fut)
        return fut

    def _launch_many(self, group: list) -> list | None:
        # One client.map: one graph update for all of them, where a submit
        # each costs the client and the scheduler a message and a graph
        # update per call (what one remote call per task spends most on).
        if any(_payload_bytes(a[-1]) >= _SCATTER_BYTES for _f, a in group):
            return None  # a big payload is scattered first: one by one
        calls = [_call(a) for _f, a in group]
        if any(fn is not calls[0][0] for fn, _a in calls):
            return None  # a mix: one by one
        futures = self.client.map(calls[0][0], *zip(*(a for _fn, a in calls)), key=[f.key for f, _a in group],
                                  pure=False, retries=0)
        for (f, _a), fut in zip(group, futures):
            self._watch(f.key, fut)
        return futures

    def _watch(self, key: str, fut) -> None:
        """Have the collector fetch ``fut``'s result once it is done.

        Short calls are polled by the collector (``_POLL``). A done callback
        each (what longer calls use: no polling, no added latency) costs the
        client's event loop a coroutine and a hop to Dask's callback thread
        per call: with one remote call per tiny task, client CPU 497 ms per
        1000 calls against 360 polled (native ``client.map``: 370).
        """
        if self._short_calls():
            self._collect_q.put(("watch", key, fut))
        else:
            fut.add_done_callback(lambda done: self._collect_q.put(("done", key, done)))

    def _may_stop(self, f: Flight, job: Job, running: bool) -> bool:
        # Dask cannot interrupt a running task, so cancelling its future only
        # drops it (if queued) or discards its result (if running): safe for
        # any cancel, but only when every item of the batch is the job's.
        return self._only(f.batch, job)

    def _stop_remote(self, flight: Flight, force: bool) -> None:
        if flight.handle is not None:
            self.client.cancel([flight.handle])

    def dump_stacks(self, timeout: float = 2.0) -> dict:
        """``{worker address: the Python stack of each of this pool's tasks running there}``.

        Dask's ``call_stack`` samples the worker threads, so it shows Python
        frames only: a task stuck inside C code shows the call into it.
        """
        for _ in range(3):
            try:
                keys = [f.key for f in self._inflight.values()]
                break
            except RuntimeError:  # the dispatcher changed the table under us
                continue
        else:
            keys = []
        if not keys:
            return {}
        stacks = self.client.call_stack(keys=keys)
        return {addr: "\n\n".join(f"{key}:\n" + "".join(lines) for key, lines in per_key.items())
                for addr, per_key in stacks.items() if per_key}

    def _collect_loop(self) -> None:
        """Fetch finished futures' results off the dispatcher thread, so a big
        transfer (or a recomputation) never stalls dispatch, cancel or terminate.

        Short calls (``_watch``) are looked at every ``_POLL`` and fetched
        together once half of them are done (the workers still have the other
        half to run) or the first done one waited ``_LINGER``: each gather
        costs the scheduler and a worker a round trip (the scheduler relays
        the data), which with one call per tiny task cost more than the tasks.
        """
        watched: dict = {}  # key -> future of a short call, polled
        done_since = None  # when the collector first saw a watched call done and not yet fetched
        while True:
            ready, end = [], False
            for item in take_all(self._collect_q, _POLL if watched else None):
                if item is None:
                    end = True
                elif item[0] == "watch":
                    watched[item[1]] = item[2]
                else:
                    ready.append(item[1:])
            done = [(k, f) for k, f in watched.items() if f.status != "pending"]
            if done and not ready and not end:
                now = time.monotonic()
                done_since = done_since or now
                if (len(done) < len(watched) // 2 and now - done_since < _LINGER
                        and self._short_calls()):
                    done = []  # wait for more to share the gather
            if done:
                done_since = None
                for k, _f in done:
                    del watched[k]
            self._fetch(ready + done)
            if end:
                return

    def _fetch(self, ready: list) -> None:
        """Post the outcomes of ``ready`` (``(key, future)`` pairs, done): the
        finished ones' results with one gather, the rest one by one."""
        finished = [(k, f) for k, f in ready if f.status == "finished"]
        others = [(k, f) for k, f in ready if f.status != "finished"]
        if len(finished) > 1:
            try:
                values = self.client.gather([f for _k, f in finished])  # one round trip for all
            except Exception:  # noqa: BLE001 - one of them went away: take them one by one
                others = finished + others
            else:
                for (k, _f), v in zip(finished, values):
                    self._post("outcome", k, "reply", v)
                finished = []
        for k, f in finished + others:
            self._collect_one(k, f)

    def _collect_one(self, key: str, fut) -> None:
        from distributed.scheduler import KilledWorker

        try:
            value = fut.result()
        except KilledWorker as e:
            worker = getattr(getattr(e, "last_worker", None), "address", "?")
            cause = (f"Dask's scheduler saw {getattr(e, 'allowed_failures', 0) + 1} workers die while running it "
                     f"(KilledWorker; the last one was {worker}): os._exit, a signal, a segfault or the OOM killer")
            self._post("outcome", key, "crashed", (None, None, cause))
        except concurrent.futures.CancelledError as e:
            self._post("outcome", key, "cancelled", e)
        except BaseException as e:  # noqa: BLE001 - a lost connection, a missing module on the worker...
            self._post("outcome", key, "error", e)
        else:
            self._post("outcome", key, "reply", value)

    def _disconnect(self, fns: list) -> None:
        for fn in fns:
            fn.remote = None  # drop the cluster-side copies (Dask releases unreferenced keys)
        self._collect_q.put(None)
        if self._owns_client:
            try:
                self.client.close(timeout=5)
            except Exception:  # noqa: BLE001
                log.debug("closing the Dask client failed", exc_info=True)
        if threading.current_thread() is not self._collector:
            self._collector.join(5.0)


class _DaskActors:
    """Dask's actors for ``pool.actor()`` (driven by ``_actors.ClusterActorBackend``):
    the object lives on one worker, its calls run one at a time on that
    worker's actor thread. Dask never rebuilds a lost actor."""

    restarts = False

    def __init__(self, client):
        self._client = client

    def start(self, build_data: bytes):
        from sharkcage.backends._actors import ActorHost

        future = self._client.submit(ActorHost, build_data, actor=True, pure=False)
        # Dask's actor proxy binds to the current client when it is made: the
        # pool's client is not the default one (set_as_default=False)
        with self._client.as_current():
            return future, future.result()

    def call(self, handle, call_id: int, payload: list, log_level: int):
        # Made later, by wait(): Dask does not keep the order of actor calls
        # in flight together (each is its own message), so the collector
        # makes them one at a time, in call order.
        return handle, call_id, payload, log_level

    def wait(self, call, timeout):
        handle, call_id, payload, log_level = call
        return handle[1].run(call_id, payload, log_level).result()  # (no task_timeout on Dask pools)

    def is_timeout(self, e: BaseException) -> bool:
        return False

    def crash_cause(self, e: BaseException) -> str | None:
        from distributed.comm.core import CommClosedError

        if isinstance(e, (OSError, CommClosedError)) or "lost" in str(e).lower():
            return f"Dask reported {type(e).__name__}: {e} (the worker holding the actor died or left)"
        return None

    def kill(self, handle) -> None:
        handle[0].release()  # the scheduler forgets the actor; its worker drops the object


def make_dask_backend(*, address=None, **options) -> DaskBackend:
    """Connect to a Dask cluster and start a backend on it.

    ``address``: a scheduler address string, a ``distributed.Client`` (never
    closed by sharkcage), a Dask cluster object, or None for the current
    default client (``distributed.get_client()``).
    """
    try:
        import distributed
    except ImportError as e:
        raise ImportError(
            "backend='dask' needs Dask's distributed scheduler, which is not installed: "
            "pip install 'sharkcage[dask]'"
        ) from e
    config = check_options("dask", timeout_supported=False, **options)
    if isinstance(address, distributed.Client):
        if address.asynchronous:
            raise ValueError("an asynchronous distributed.Client cannot drive a Pool; pass a synchronous Client")
        if address.status not in ("running", "connecting", "newly-created"):
            raise ValueError(f"the distributed.Client passed as address= is {address.status!r}, not running")
        return DaskBackend(config, address, owns_client=False)
    if address is None:
        try:
            client = distributed.get_client()
        except ValueError:
            raise ValueError(
                "backend='dask' needs address=: a scheduler address such as 'tcp://127.0.0.1:8786', "
                "a distributed.Client, or a Dask cluster object"
            ) from None
        return DaskBackend(config, client, owns_client=False)
    if not isinstance(address, str) and not hasattr(address, "scheduler_address"):
        raise TypeError(f"address= must be a scheduler address, a distributed.Client or a Dask cluster, "
                        f"not {type(address).__name__}")
    try:
        client = distributed.Client(address, set_as_default=False)
    except OSError as e:
        raise OSError(f"cannot reach the Dask scheduler at {address!r}: {e}") from e
    try:
        return DaskBackend(config, client, owns_client=True)
    except BaseException:
        client.close()
        raise
