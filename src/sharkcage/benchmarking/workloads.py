"""What ``sharkcage bench`` measures, and how (run inside each sample driver).

This module is imported by the bench (for the workload and metric tables) and
by every sample driver. The task functions the workers run are not here but
in the driver's ``__main__`` (:mod:`sharkcage.benchmarking.driver`), passed to
each measurement as ``tasks``: a worker that re-imports the main module
(spawn, forkserver) then pays for the driver's imports (numpy) and never
for sharkcage's own, which a peer's user would not import.

Each workload is a function ``measure(peer, params, tasks) -> {metric: value}``
run inside the driver. A value is a number in the metric's unit, or a
``{"status": ..., "detail": ...}`` dict when the peer could not produce it
(``hung``, ``broken``). Pools run :data:`WORKERS` workers; pool creation and
a warm-up task are kept out of every timing except ``startup``.

>>> sorted(WORKLOADS)[:3]
['actor_roundtrip', 'array_100mb', 'array_1gb']
>>> METRICS["map_tiny"].unit
'µs/item'
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

WORKERS = 2


# ---------------------------------------------------------------------------
# Tables


@dataclasses.dataclass(frozen=True)
class Metric:
    """One measured number: its key in the results, unit and direction."""

    key: str
    title: str
    unit: str
    better: str  # "lower" | "higher"


@dataclasses.dataclass(frozen=True)
class Workload:
    """A named measurement producing one or more :class:`Metric` values."""

    name: str
    description: str
    metrics: tuple[Metric, ...]
    baseline: str | None = None  # label of the baseline peer's reference row, if any


def _m(key, title, unit, better="lower"):
    return Metric(key, title, unit, better)


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("startup", "pool creation to first result, `import numpy` in the driver's __main__",
             (_m("startup", "startup: pool creation to first result", "s"),)),
    Workload("map_tiny", "`map` of x+1 over {map_n:,} ints, default settings",
             (_m("map_tiny", "map_tiny: map of x+1, per item", "µs/item"),)),
    Workload("imap_tiny", "`imap` of x+1 over {imap_n:,} ints, default settings",
             (_m("imap_tiny", "imap_tiny: imap of x+1, per item", "µs/item"),)),
    Workload("submit_tiny", "{submit_n:,} `apply_async`/`submit` of x+1, then wait for all",
             (_m("submit_tiny", "submit_tiny: submit then wait all, per call", "µs/call"),)),
    Workload("roundtrip", "{roundtrip_n:,} sequential submit-then-wait round trips",
             (_m("roundtrip", "roundtrip: sequential submit-then-wait", "µs"),),
             baseline="floor: multiprocessing.Pipe ping-pong"),
    Workload("crash_recovery", "a task SIGKILLs its own worker: time to its error, and until a new worker starts a task",
             (_m("crash_error", "crash_recovery: until the task's error is delivered", "s"),
              _m("crash_recover", "crash_recovery: until a new worker starts a task", "s"))),
    Workload("cpu_50ms", "{cpu_n} tasks of {cpu_ms} ms CPU on 2 workers: ideal time / measured",
             (_m("cpu_efficiency", "cpu_50ms: parallel efficiency", "%", "higher"),)),
    Workload("array_100mb", "100 MB float64 array to a worker (returns its sum) and back from one",
             (_m("array_100mb_send", "array_100mb: send to a worker", "GB/s", "higher"),
              _m("array_100mb_return", "array_100mb: return from a worker", "GB/s", "higher")),
             baseline="reference: numpy.copy in-process"),
    Workload("array_1gb", "1 GB float64 array to a worker (returns its sum) and back from one",
             (_m("array_1gb_send", "array_1gb: send to a worker", "GB/s", "higher"),
              _m("array_1gb_return", "array_1gb: return from a worker", "GB/s", "higher")),
             baseline="reference: numpy.copy in-process"),
    Workload("actor_roundtrip", "{actor_n:,} sequential calls to a tiny actor (ProcessPoolExecutor: submit)",
             (_m("actor_roundtrip", "actor_roundtrip: one actor call", "µs"),)),
)}

METRICS: dict[str, Metric] = {m.key: m for w in WORKLOADS.values() for m in w.metrics}

# Sizes. The sizes are the full ones; --quick shrinks what costs
# seconds per sample (map/imap at the executors' chunksize 1, the sequential
# loops, the CPU batch, the wait for a crash that the stdlib never reports)
# so that the whole quick run stays under a minute.
FULL = {
    "map_n": 100_000, "imap_n": 100_000, "submit_n": 10_000, "roundtrip_n": 2_000,
    "pipe_n": 20_000, "crash_wait": 10.0, "cpu_n": 40, "cpu_ms": 50, "array_k": 3,
    "array_1gb_k": 1, "actor_n": 2_000,
}
MARKER = "SHARKCAGE-BENCH "  # prefix of the driver's one result line

QUICK = {
    "map_n": 10_000, "imap_n": 10_000, "submit_n": 2_000, "roundtrip_n": 300,
    "pipe_n": 3_000, "crash_wait": 3.0, "cpu_n": 20, "cpu_ms": 50, "array_k": 1,
    "array_1gb_k": 1, "actor_n": 300,
}
ARRAY_BYTES = {"array_100mb": 100_000_000, "array_1gb": 1_000_000_000}


def describe(name: str, params: dict) -> str:
    """The workload's one-line description with this run's sizes filled in."""
    return WORKLOADS[name].description.format(**params)


# ---------------------------------------------------------------------------
# Measurements (run inside the driver)


class NotSupported(Exception):
    """The peer has no way to run this workload (reported as ``n/a``)."""


def _status(status: str, detail: str) -> dict:
    return {"status": status, "detail": detail}


def _open_warm(peer, fn=None) -> None:
    # Pool creation and first-task costs belong to `startup`, not here.
    peer.open()
    peer.warm(fn)


def measure_startup(peer, p: dict, tasks) -> dict:
    """t0 before the pool is created, t1 when its first result is in."""
    t0 = time.perf_counter()
    peer.open()
    result = peer.first(tasks.inc, 1, timeout=p["timeout"])
    t1 = time.perf_counter()
    assert result == 2, result
    return {"startup": t1 - t0}


def measure_map_tiny(peer, p: dict, tasks) -> dict:
    """``map(inc, range(n))`` with the peer's default chunking."""
    _open_warm(peer, "map")
    n = p["map_n"]
    items = list(range(n))
    t0 = time.perf_counter()
    out = peer.map(tasks.inc, items)
    dt = time.perf_counter() - t0
    _check_inc(out, n)
    return {"map_tiny": dt / n * 1e6}


def measure_imap_tiny(peer, p: dict, tasks) -> dict:
    """Iterate ``imap(inc, range(n))`` to the end, default chunking."""
    _open_warm(peer, "imap")
    n = p["imap_n"]
    t0 = time.perf_counter()
    out = list(peer.imap(tasks.inc, range(n)))
    dt = time.perf_counter() - t0
    _check_inc(out, n)
    return {"imap_tiny": dt / n * 1e6}


def measure_submit_tiny(peer, p: dict, tasks) -> dict:
    """Submit ``n`` tiny tasks at once, then wait for every one."""
    _open_warm(peer, "submit")
    n, timeout = p["submit_n"], p["timeout"]
    t0 = time.perf_counter()
    handles = [peer.submit(tasks.inc, i) for i in range(n)]
    out = [peer.result(h, timeout) for h in handles]
    dt = time.perf_counter() - t0
    _check_inc(out, n)
    return {"submit_tiny": dt / n * 1e6}


def measure_roundtrip(peer, p: dict, tasks) -> dict:
    """Submit one tiny task, wait for it, repeat: the per-call latency."""
    _open_warm(peer, "submit")
    n, timeout = p["roundtrip_n"], p["timeout"]
    t0 = time.perf_counter()
    for i in range(n):
        assert peer.result(peer.submit(tasks.inc, i), timeout) == i + 1
    return {"roundtrip": (time.perf_counter() - t0) / n * 1e6}


def measure_pipe_floor(p: dict, tasks) -> dict:
    """The floor of any round trip: ``multiprocessing.Pipe`` ping-pong
    between two processes, no pool, no scheduling."""
    import multiprocessing

    a, b = multiprocessing.Pipe()
    # fork where there is one: the quickest child to start, and start-up is not timed.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    child = multiprocessing.get_context(method).Process(target=tasks.pipe_echo, args=(b,), daemon=True)
    child.start()
    try:
        a.send(0)
        a.recv()  # the child is up and its loop warm
        n = p["pipe_n"]
        t0 = time.perf_counter()
        for i in range(n):
            a.send(i)
            a.recv()
        dt = time.perf_counter() - t0
    finally:
        a.send(None)
        child.join(5)
        if child.is_alive():
            child.kill()
    return {"roundtrip": dt / n * 1e6}


def measure_crash_recovery(peer, p: dict, tasks) -> dict:
    """A task SIGKILLs its own worker.

    ``crash_error``: from submitting it until its error is delivered.
    ``crash_recover``: from submitting it until a worker with a pid never seen
    before has started a task (the probe's own start time, read from the
    machine's monotonic clock, so the probes' sleep is not counted). No error within ``crash_wait`` s is ``hung``
    (the stdlib Pool's fate); a pool that refuses work after the crash is
    ``broken`` (the stdlib executor's).
    """
    _open_warm(peer, "submit")
    wait = max(p["crash_wait"], peer.crash_wait_min)
    # Concurrent sleepy probes, so that both workers' pids are seen.
    known = set(peer.run_many(tasks.pid_after, [0.05] * (2 * WORKERS), timeout=p["timeout"]))
    t0 = time.perf_counter()
    t0_clock = time.monotonic()  # the clock the probes report their start on
    handle = peer.submit(tasks.kill_self, 0)
    try:
        peer.result(handle, wait)
    except Exception as exc:  # the error we are timing, or a timeout
        if is_timeout(exc):
            why = f"no error within {wait:g} s"
            return {"crash_error": _status("hung", why), "crash_recover": _status("hung", why)}
        t_error = time.perf_counter() - t0
        error_type = type(exc).__name__
    else:
        raise RuntimeError("the task that kills its worker returned a result")
    deadline = t0 + wait + t_error
    while True:
        try:
            probes = peer.run_many(tasks.pid_started, [0.02] * WORKERS,
                                   timeout=max(0.1, deadline - time.perf_counter()))
        except Exception as exc:
            if is_timeout(exc):
                break
            return {"crash_error": t_error, "crash_recover": _status("broken", f"{type(exc).__name__} after {error_type}"),
                    "crash_error_type": error_type}
        fresh = [started for pid, started in probes if pid not in known]
        if fresh:
            recover = min(fresh) - t0_clock
            elapsed = time.perf_counter() - t0
            if not 0 <= recover <= elapsed:  # a worker on another machine: another clock
                recover = elapsed
            return {"crash_error": t_error, "crash_recover": recover, "crash_error_type": error_type}
        if time.perf_counter() >= deadline:
            break
    return {"crash_error": t_error, "crash_recover": _status("hung", f"no new worker within {wait:g} s of the error"),
            "crash_error_type": error_type}


def measure_cpu(peer, p: dict, tasks) -> dict:
    """``map(burn, [ms] * n)`` on 2 workers: efficiency = ideal / measured."""
    _open_warm(peer, "map")
    n, seconds = p["cpu_n"], p["cpu_ms"] / 1000
    t0 = time.perf_counter()
    out = peer.map(tasks.burn, [seconds] * n)
    dt = time.perf_counter() - t0
    assert len(out) == n
    ideal = n * seconds / WORKERS
    return {"cpu_efficiency": 100.0 * ideal / dt}


def measure_array(peer, p: dict, tasks) -> dict:
    """Send a float64 array to a worker (it returns the sum) and have a
    worker return one; GB/s of the transfer alone (the worker's own summing
    or allocating time is subtracted). Median of ``array_k`` transfers
    (``array_1gb_k`` for the 1 GB array)."""
    import numpy

    name = p["workload"]
    nbytes = ARRAY_BYTES[name]
    n = nbytes // 8
    _open_warm(peer, "submit")
    timeout = p["timeout"]
    # Not all-equal, so no one can cheat on constant data; built in place
    # so the 1 GB case does not need 3 GB of temporaries.
    a = numpy.arange(n, dtype=numpy.float64)
    numpy.remainder(a, 7, out=a)
    expected = float(a.sum())
    sends, returns = [], []
    # One 1 GB transfer already takes seconds with a pickling peer; three
    # would not fit the sample timeout, and the noise is small at that size.
    for _ in range(p["array_k"] if name == "array_100mb" else p["array_1gb_k"]):
        t0 = time.perf_counter()
        total, inside = peer.first(tasks.array_sum, a, timeout=timeout)
        sends.append(time.perf_counter() - t0 - inside)
        assert abs(total - expected) <= 1e-6 * abs(expected), (total, expected)
        t0 = time.perf_counter()
        b, inside = peer.first(tasks.array_make, n, timeout=timeout)
        returns.append(time.perf_counter() - t0 - inside)
        assert b.nbytes == nbytes and b[-1] == 1.0
        del b
    return {f"{name}_send": nbytes / statistics.median(sends) / 1e9,
            f"{name}_return": nbytes / statistics.median(returns) / 1e9}


def measure_array_copy(p: dict, tasks) -> dict:
    """The in-process reference: ``numpy.copy`` of the same array, GB/s."""
    import numpy

    name = p["workload"]
    nbytes = ARRAY_BYTES[name]
    a = numpy.ones(nbytes // 8)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        b = numpy.copy(a)
        times.append(time.perf_counter() - t0)
        del b
    rate = nbytes / statistics.median(times) / 1e9
    return {f"{name}_send": rate, f"{name}_return": rate}


def measure_actor(peer, p: dict, tasks) -> dict:
    """Sequential calls of ``Counter.incr`` on an actor (or, for a peer
    without actors, submit-then-wait of the same work)."""
    peer.open()
    call = peer.actor_call(tasks.Counter, timeout=p["timeout"])
    call()  # warm: the actor exists and its first call is done
    n = p["actor_n"]
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    return {"actor_roundtrip": (time.perf_counter() - t0) / n * 1e6}


MEASURES: dict[str, Callable] = {
    "startup": measure_startup,
    "map_tiny": measure_map_tiny,
    "imap_tiny": measure_imap_tiny,
    "submit_tiny": measure_submit_tiny,
    "roundtrip": measure_roundtrip,
    "crash_recovery": measure_crash_recovery,
    "cpu_50ms": measure_cpu,
    "array_100mb": measure_array,
    "array_1gb": measure_array,
    "actor_roundtrip": measure_actor,
}

# What the baseline pseudo-peer measures for the workloads that have a reference row.
BASELINES: dict[str, Callable] = {
    "roundtrip": measure_pipe_floor,
    "array_100mb": measure_array_copy,
    "array_1gb": measure_array_copy,
}


def is_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` means "waited too long" in any peer's dialect."""
    import multiprocessing

    if isinstance(exc, (TimeoutError, multiprocessing.TimeoutError)):
        return True
    # Ray's GetTimeoutError and friends, without importing them here.
    return "Timeout" in type(exc).__name__ and "Task" not in type(exc).__name__


def _check_inc(out, n: int) -> None:
    # A wrong adapter must fail loudly rather than time the wrong thing.
    out = list(out)
    if len(out) != n or out[0] != 1 or out[-1] != n or sum(out) != n * (n + 1) // 2:
        raise AssertionError(f"wrong results: {len(out)} items, first {out[:3]}, last {out[-3:]}")
