"""One small adapter per pool library that ``sharkcage bench`` compares.

An adapter gives the workloads one vocabulary: ``open()``, ``map``,
``imap``, ``submit`` + ``result(handle, timeout)``, ``first`` (run one task
and wait), ``run_many`` (a few concurrent tasks), ``actor_call`` and
``close()``. Each uses its library the way that library's documentation
does, at its default settings (chunk sizes, start methods, batching); the
few departures are listed in :attr:`Peer.notes`.

The bench imports this module without importing any peer: the classes
name their import module and distribution, and every library is imported
inside the methods, in the sample's driver only.

>>> SELECTABLE[:3]
['sharkcage', 'stdlib-fork', 'stdlib-forkserver']
>>> PEERS["stdlib-fork"]().label
'multiprocessing.Pool (fork)'
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import warnings

from sharkcage.benchmarking.workloads import WORKERS, NotSupported, is_timeout

ALL_WORKLOADS = frozenset({
    "startup", "map_tiny", "imap_tiny", "submit_tiny", "roundtrip", "crash_recovery",
    "cpu_50ms", "array_100mb", "array_1gb",
})


class SampleTimeout(TimeoutError):
    """A peer's own timeout exception, normalised."""


class Peer:
    """Base adapter: ``submit``/``result`` and ``map``/``imap`` must be given;
    the rest is derived from them."""

    name = "?"
    label = "?"
    module = ""  # import name whose presence means "installed"
    dist = ""  # distribution name, for the version in the report
    workloads = ALL_WORKLOADS
    notes = ""
    # crash_recovery waits at least this long for the error: a cluster's
    # nanny or raylet takes seconds to notice a dead worker, not a hang.
    crash_wait_min = 0.0

    def __init__(self, backend: str | None = None, address: str | None = None):
        self.backend = backend
        self.address = address
        # The driver's __main__, holding the task functions (set by the driver).
        self.tasks = None

    # --- what the bench asks without importing the library -----------------
    @classmethod
    def installed(cls) -> bool:
        """Whether the library can be imported (checked without importing it)."""
        try:
            return importlib.util.find_spec(cls.module) is not None
        except (ImportError, ValueError):
            return False

    @classmethod
    def version(cls) -> str | None:
        """The installed distribution's version, if any."""
        try:
            return importlib.metadata.version(cls.dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    def supports(self, workload: str) -> bool:
        """Whether this peer has a way to run ``workload`` at all."""
        return workload in self.workloads

    # --- used by the workloads inside the driver ----------------------------
    def open(self) -> None:
        """Create the pool (timed by ``startup``)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the pool now; results are already in."""

    def map(self, fn, items: list) -> list:
        """The library's ``map``, default chunking."""
        raise NotSupported(f"{self.name} has no map")

    def imap(self, fn, items):
        """The library's lazy/ordered map, default chunking."""
        raise NotSupported(f"{self.name} has no imap")

    def submit(self, fn, *args):
        """Start one task; a handle for :meth:`result`."""
        raise NotSupported(f"{self.name} has no submit")

    def _get(self, handle, timeout: float):
        raise NotImplementedError

    def result(self, handle, timeout: float):
        """Wait for ``handle``; :class:`SampleTimeout` when ``timeout`` passes."""
        try:
            return self._get(handle, timeout)
        except Exception as exc:
            if is_timeout(exc):
                raise SampleTimeout(f"no result within {timeout:g} s") from exc
            raise

    def first(self, fn, *args, timeout: float):
        """Run one task and return its result."""
        return self.result(self.submit(fn, *args), timeout)

    def run_many(self, fn, args: list, timeout: float) -> list:
        """Run ``fn(a)`` for each ``a`` concurrently; their results in order."""
        handles = [self.submit(fn, a) for a in args]
        return [self.result(h, timeout) for h in handles]

    def warm(self, kind: str | None) -> None:
        """Run a first task or map so that workers exist before timing."""
        inc = self.tasks.inc
        if kind == "map":
            self.map(inc, list(range(4 * WORKERS)))
        elif kind == "imap":
            list(self.imap(inc, range(4 * WORKERS)))
        else:
            self.run_many(inc, list(range(2 * WORKERS)), timeout=60)

    def actor_call(self, cls, timeout: float):
        """A zero-argument function doing one round trip to a ``cls()`` actor."""
        raise NotSupported(f"{self.name} has no actors")


# ---------------------------------------------------------------------------


class Sharkcage(Peer):
    """``sharkcage.Pool(2)`` (default start method: forkserver), or against a
    cluster backend with ``backend=`` and ``address=``."""

    name = "sharkcage"
    module = dist = "sharkcage"
    workloads = ALL_WORKLOADS | {"actor_roundtrip"}

    @property
    def label(self):
        if self.backend:
            return f"sharkcage.Pool (backend={self.backend})"
        return "sharkcage.Pool"

    @property
    def crash_wait_min(self):
        return 10.0 if self.backend else 0.0

    def open(self):
        import sharkcage

        kwargs = {}
        if self.backend:
            kwargs = {"backend": self.backend, "address": self.address}
        self.pool = sharkcage.Pool(WORKERS, **kwargs)

    def close(self):
        if getattr(self, "pool", None) is not None:
            self.pool.terminate()

    def map(self, fn, items):
        return self.pool.map(fn, items)

    def imap(self, fn, items):
        return self.pool.imap(fn, items)

    def submit(self, fn, *args):
        return self.pool.apply_async(fn, args)

    def _get(self, handle, timeout):
        return handle.get(timeout)

    def actor_call(self, cls, timeout):
        if not hasattr(self.pool, "actor"):
            raise NotSupported("this sharkcage has no Pool.actor")
        proxy = self.pool.actor(cls)
        return lambda: proxy.incr(1)


class StdlibPool(Peer):
    """``multiprocessing.get_context(method).Pool(2)``."""

    method = "fork"
    module = "multiprocessing"
    dist = ""
    notes = "crash_recovery: the stdlib Pool never delivers the dead worker's task (hung)"

    @property
    def label(self):
        return f"multiprocessing.Pool ({self.method})"

    @classmethod
    def version(cls):
        import platform

        return "python " + platform.python_version()

    def _context(self):
        import multiprocessing

        return multiprocessing.get_context(self.method)

    def open(self):
        self.pool = self._context().Pool(WORKERS)

    def close(self):
        if getattr(self, "pool", None) is not None:
            self.pool.terminate()

    def map(self, fn, items):
        return self.pool.map(fn, items)

    def imap(self, fn, items):
        return self.pool.imap(fn, items)

    def submit(self, fn, *args):
        return self.pool.apply_async(fn, args)

    def _get(self, handle, timeout):
        return handle.get(timeout)


class StdlibFork(StdlibPool):
    name = "stdlib-fork"
    method = "fork"


class StdlibForkserver(StdlibPool):
    name = "stdlib-forkserver"
    method = "forkserver"


class StdlibSpawn(StdlibPool):
    name = "stdlib-spawn"
    method = "spawn"


class Multiprocess(StdlibPool):
    """``multiprocess.Pool(2)``: the dill-based fork of ``multiprocessing``."""

    name = "multiprocess"
    module = dist = "multiprocess"
    label = "multiprocess.Pool"
    notes = "crash_recovery: like the stdlib Pool (hung)"

    @classmethod
    def version(cls):
        return Peer.version.__func__(cls)

    def open(self):
        import multiprocess

        self.pool = multiprocess.Pool(WORKERS)


class _FuturesPeer(Peer):
    """Executors with ``submit``/``map`` returning ``concurrent.futures`` futures."""

    def map(self, fn, items):
        return list(self.executor.map(fn, items))

    def imap(self, fn, items):
        return self.executor.map(fn, items)

    def submit(self, fn, *args):
        return self.executor.submit(fn, *args)

    def _get(self, handle, timeout):
        return handle.result(timeout)


class StdlibExecutor(_FuturesPeer):
    """``concurrent.futures.ProcessPoolExecutor(2)``, default context."""

    name = "stdlib-ppe"
    label = "concurrent.futures.ProcessPoolExecutor"
    module = "concurrent.futures"
    workloads = ALL_WORKLOADS | {"actor_roundtrip"}
    notes = "actor_roundtrip: no actors, so submit-then-wait of the same call; crash_recovery: the executor breaks"

    version = StdlibPool.version

    def open(self):
        import concurrent.futures

        self.executor = concurrent.futures.ProcessPoolExecutor(WORKERS)

    def close(self):
        if getattr(self, "executor", None) is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)

    def actor_call(self, cls, timeout):
        ex, inc = self.executor, self.tasks.inc
        return lambda: ex.submit(inc, 1).result(timeout)


class Loky(_FuturesPeer):
    """``loky.get_reusable_executor(max_workers=2)``."""

    name = "loky"
    label = "loky reusable executor"
    module = dist = "loky"

    def open(self):
        import loky

        self.executor = loky.get_reusable_executor(max_workers=WORKERS)

    def close(self):
        if getattr(self, "executor", None) is not None:
            self.executor.shutdown(wait=True, kill_workers=True)


class Pebble(Peer):
    """``pebble.ProcessPool(max_workers=2)``: ``schedule`` and ``map``."""

    name = "pebble"
    label = "pebble.ProcessPool"
    module = "pebble"
    dist = "Pebble"

    def open(self):
        import pebble

        self.pool = pebble.ProcessPool(max_workers=WORKERS)

    def close(self):
        if getattr(self, "pool", None) is not None:
            self.pool.stop()
            self.pool.join(5)

    def map(self, fn, items):
        return list(self.pool.map(fn, items).result())

    def imap(self, fn, items):
        return self.pool.map(fn, items).result()

    def submit(self, fn, *args):
        return self.pool.schedule(fn, args=args)

    def _get(self, handle, timeout):
        return handle.result(timeout)


class Mpire(Peer):
    """``mpire.WorkerPool(n_jobs=2)``: default ``keep_alive=False``, so a
    ``map`` starts its workers anew (that is mpire's default, and measured)."""

    name = "mpire"
    label = "mpire.WorkerPool"
    module = dist = "mpire"
    notes = "map/imap/cpu_50ms: keep_alive=False (the default) starts workers per map call"

    def open(self):
        import mpire

        self.pool = mpire.WorkerPool(n_jobs=WORKERS)

    def close(self):
        if getattr(self, "pool", None) is not None:
            self.pool.terminate()

    def map(self, fn, items):
        return self.pool.map(fn, items)

    def imap(self, fn, items):
        return self.pool.imap(fn, items)

    def submit(self, fn, *args):
        return self.pool.apply_async(fn, args)

    def _get(self, handle, timeout):
        return handle.get(timeout)


class Joblib(Peer):
    """``joblib.Parallel(n_jobs=2)`` (loky backend, automatic batching and
    memmapping). joblib has no submit: one task is a one-item ``Parallel``."""

    name = "joblib"
    label = "joblib.Parallel"
    module = dist = "joblib"
    workloads = ALL_WORKLOADS - {"submit_tiny", "roundtrip"}
    notes = "no submit API: submit_tiny/roundtrip n/a; single tasks run as one-item Parallel calls"

    def open(self):
        import joblib

        self.joblib = joblib

    def close(self):
        try:
            from joblib.externals.loky import get_reusable_executor

            get_reusable_executor().shutdown(wait=True, kill_workers=True)
        except Exception:
            pass

    def _parallel(self, **kwargs):
        return self.joblib.Parallel(n_jobs=WORKERS, **kwargs)

    def map(self, fn, items):
        delayed = self.joblib.delayed
        return self._parallel()(delayed(fn)(x) for x in items)

    def imap(self, fn, items):
        delayed = self.joblib.delayed
        return self._parallel(return_as="generator")(delayed(fn)(x) for x in items)

    def first(self, fn, *args, timeout):
        try:
            return self._parallel(timeout=timeout)([self.joblib.delayed(fn)(*args)])[0]
        except Exception as exc:
            if is_timeout(exc):
                raise SampleTimeout(f"no result within {timeout:g} s") from exc
            raise

    def run_many(self, fn, args, timeout):
        delayed = self.joblib.delayed
        try:
            return self._parallel(timeout=timeout)(delayed(fn)(a) for a in args)
        except Exception as exc:
            if is_timeout(exc):
                raise SampleTimeout(f"no result within {timeout:g} s") from exc
            raise

    def submit(self, fn, *args):
        # Deferred to result(): a Parallel call is the only way to run a task.
        return (fn, args)

    def _get(self, handle, timeout):
        fn, args = handle
        return self._parallel(timeout=timeout)([self.joblib.delayed(fn)(*args)])[0]

    def warm(self, kind):
        self.run_many(self.tasks.inc, list(range(2 * WORKERS)), timeout=60)


class Dask(Peer):
    """``distributed.Client(LocalCluster(n_workers=2, threads_per_worker=1,
    processes=True))``; with ``--backend dask --address``, that cluster."""

    name = "dask"
    label = "dask.distributed (LocalCluster, processes)"
    module = "distributed"
    dist = "distributed"
    notes = "tasks submitted with pure=False (else identical calls are merged); crash_recovery: allowed-failures=0"
    crash_wait_min = 10.0

    def open(self):
        import dask
        import distributed

        for name in ("distributed", "tornado"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore")
        # One death fails the task, as in every other peer (dask's default
        # retries it on three workers first).
        dask.config.set({"distributed.scheduler.allowed-failures": 0})
        self.cluster = None
        if self.backend == "dask" and self.address:
            self.client = distributed.Client(self.address)
        else:
            self.cluster = distributed.LocalCluster(
                n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None)
            self.client = distributed.Client(self.cluster)

    def close(self):
        client = getattr(self, "client", None)
        if client is not None:
            client.close(timeout=10)
        if getattr(self, "cluster", None) is not None:
            self.cluster.close(timeout=10)

    def map(self, fn, items):
        return self.client.gather(self.client.map(fn, items, pure=False))

    def imap(self, fn, items):
        futures = self.client.map(fn, list(items), pure=False)
        return (f.result() for f in futures)

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def _get(self, handle, timeout):
        return handle.result(timeout=timeout)


class Ray(Peer):
    """Ray on a local instance with 2 CPUs: tasks (``max_retries=0``) for
    submit-like workloads and actors, ``ray.util.multiprocessing.Pool(2)``
    for map-like ones; with ``--backend ray --address``, that cluster."""

    name = "ray"
    label = "ray"
    module = dist = "ray"
    workloads = ALL_WORKLOADS | {"actor_roundtrip"}
    notes = "map/imap/cpu_50ms via ray.util.multiprocessing.Pool; tasks with max_retries=0"
    crash_wait_min = 10.0

    def open(self):
        import os

        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        import ray

        warnings.filterwarnings("ignore")
        if self.backend == "ray" and self.address:
            ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR)
        else:
            # "local": never attach to a cluster someone else started here.
            ray.init(address="local", num_cpus=WORKERS, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR)
        self.ray = ray
        self._remote = {}
        self._pool = None

    def close(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.terminate()
        if getattr(self, "ray", None) is not None:
            self.ray.shutdown()

    def _mp_pool(self):
        if self._pool is None:
            from ray.util.multiprocessing import Pool

            self._pool = Pool(WORKERS)
        return self._pool

    def map(self, fn, items):
        return self._mp_pool().map(fn, items)

    def imap(self, fn, items):
        return self._mp_pool().imap(fn, items)

    def submit(self, fn, *args):
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self.ray.remote(max_retries=0)(fn)
        return remote.remote(*args)

    def _get(self, handle, timeout):
        return self.ray.get(handle, timeout=timeout)

    def actor_call(self, cls, timeout):
        actor = self.ray.remote(cls).remote()
        ray = self.ray
        return lambda: ray.get(actor.incr.remote(1), timeout=timeout)


class Baseline(Peer):
    """Not a pool: the reference rows (the raw pipe floor of ``roundtrip``,
    in-process ``numpy.copy`` for the arrays). Runs whenever one of those
    workloads does."""

    name = "baseline"
    label = "baseline"
    module = "multiprocessing"
    workloads = frozenset({"roundtrip", "array_100mb", "array_1gb"})

    version = StdlibPool.version

    def open(self):
        pass


PEERS: dict[str, type[Peer]] = {cls.name: cls for cls in (
    Sharkcage, StdlibFork, StdlibForkserver, StdlibSpawn, StdlibExecutor, Loky, Mpire, Pebble,
    Joblib, Multiprocess, Dask, Ray, Baseline,
)}

# Names a user may pass to --peers (the baseline comes along by itself).
SELECTABLE = [n for n in PEERS if n != "baseline"]
GROUPS = {
    "all": SELECTABLE,
    "stdlib": ["stdlib-fork", "stdlib-forkserver", "stdlib-spawn", "stdlib-ppe"],
}
# --quick: the stdlib's fork Pool and its executor, the two everyone has;
# more peers, let alone the cluster ones (seconds of startup each), do not
# fit in a minute on 2 cores.
QUICK_PEERS = ["sharkcage", "stdlib-fork", "stdlib-ppe"]


def create(name: str, backend: str | None = None, address: str | None = None) -> Peer:
    """The adapter called ``name`` (KeyError for an unknown one)."""
    return PEERS[name](backend=backend, address=address)


def parse_names(text: str) -> list[str]:
    """``"stdlib,loky"`` -> the peer names, in the bench's order; sharkcage
    always included (it is what the ratios divide by). ValueError on an
    unknown name.

    >>> parse_names("loky,stdlib-fork")
    ['sharkcage', 'stdlib-fork', 'loky']
    """
    wanted: set[str] = set()
    unknown = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in SELECTABLE:
            wanted.add(name)
        else:
            unknown.append(raw.strip())
    if unknown:
        raise ValueError(
            f"unknown peer(s): {', '.join(unknown)}; choose from {', '.join(SELECTABLE)} "
            f"(or the groups {', '.join(GROUPS)})")
    wanted.add("sharkcage")
    return [n for n in SELECTABLE if n in wanted]
