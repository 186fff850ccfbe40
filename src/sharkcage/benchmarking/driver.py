"""One benchmark sample: one peer, one workload, in a fresh interpreter.

    python .../sharkcage/benchmarking/driver.py --peer NAME --workload NAME \\
        [--params JSON] [--timeout S] [--backend dask|ray --address ADDR]

Prints exactly one line ``SHARKCAGE-BENCH {json}`` (``status`` ``ok`` with
``metrics``, ``n/a``, or ``error`` with the exception) and flushes it
*before* the pool is torn down, so a peer whose shutdown hangs still has its
numbers reported; a watchdog then ends the process if teardown takes longer
than :data:`CLOSE_GRACE` seconds. The bench kills the sample's whole
process group afterwards in any case.

The bench runs this file by path, as ``__main__``, and the task functions
the workers run are defined here, so they are pickled as ``__main__.inc``
and so on. That makes the main module exactly what a user's script is: a
worker that re-imports or preloads it (spawn, forkserver) pays for its
top-level imports — numpy on purpose, the premise of ``startup`` — and
nothing else. In particular no peer's worker ever imports sharkcage: the
harness itself is imported inside :func:`main` only, which a re-import as
``__mp_main__`` does not run.
"""

from __future__ import annotations

import os
import sys

# Run by path, Python puts this folder first on sys.path, which would make
# its siblings (peers.py, report.py, ...) importable as top-level modules in
# this process and its workers; the harness is imported through its package.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

try:  # the startup workload's premise: a __main__ that imports numpy
    import numpy  # noqa: F401
except ImportError:  # pragma: no cover - numpy is in the dev extra
    numpy = None

import signal
import time

# ---------------------------------------------------------------------------
# Task functions (run in the workers; pickled as __main__.<name>)


def inc(x):
    """``x + 1``: the tiny task of the overhead workloads."""
    return x + 1


def pid_after(delay):
    """Sleep ``delay`` seconds and return the worker's pid.

    The sleep keeps a worker busy long enough that concurrent probes land on
    different workers, which the crash workload needs to see a new pid.
    """
    time.sleep(delay)
    return os.getpid()


def pid_started(delay):
    """``(pid, when)``: the worker's pid and the moment (time.monotonic, one
    clock for every process of the machine) this task *started* on it, then
    sleep ``delay`` seconds so concurrent probes land on different workers."""
    started = time.monotonic()
    time.sleep(delay)
    return os.getpid(), started


def kill_self(_=None):
    """SIGKILL the worker running this task (the crash workload's task)."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached; keeps the worker busy if the signal is slow


def burn(seconds):
    """Spin for ``seconds`` of this process's CPU time.

    CPU time, not wall time, so every task does the same work whatever the
    machine's load; the load then shows in the efficiency, where it belongs.
    """
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return seconds


def array_sum(a):
    """``(a.sum(), seconds spent summing)``: the summing is subtracted from
    the send timing so that only the transfer is measured."""
    t0 = time.perf_counter()
    s = float(a.sum())
    return s, time.perf_counter() - t0


def array_make(n):
    """``(numpy.ones(n), seconds spent making it)``, for the return timing."""
    import numpy

    t0 = time.perf_counter()
    a = numpy.ones(n)
    return a, time.perf_counter() - t0


class Counter:
    """The actor of ``actor_roundtrip``: a tiny piece of state per call."""

    def __init__(self):
        self.n = 0

    def incr(self, k=1):
        """Add ``k`` and return the total."""
        self.n += k
        return self.n


def pipe_echo(conn):
    """Child side of the raw pipe floor: echo ``x + 1`` until ``None``."""
    while True:
        x = conn.recv()
        if x is None:
            return
        conn.send(x + 1)


CLOSE_GRACE = 10.0


def _emit(payload: dict) -> None:
    import json

    from sharkcage.benchmarking.workloads import MARKER

    sys.stdout.write(MARKER + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _arm_watchdog(seconds: float) -> None:
    import threading

    def fire():
        sys.stderr.write(f"sharkcage bench driver: teardown took over {seconds:g} s; exiting\n")
        sys.stderr.flush()
        os._exit(0)  # the result line is already out

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def run_sample(peer_name: str, workload: str, params: dict, backend=None, address=None) -> tuple[dict, object]:
    """Measure ``workload`` on ``peer_name`` in this process: the result dict
    and the peer adapter, left open for :func:`main` to close after the
    result is out."""
    import traceback

    from sharkcage.benchmarking import peers, workloads

    tasks = sys.modules[__name__]
    peer = peers.create(peer_name, backend=backend, address=address)
    peer.tasks = tasks
    params = dict(params, workload=workload)
    out: dict = {"peer": peer_name, "workload": workload, "pid": os.getpid(), "numpy": numpy is not None}
    try:
        if peer_name == "baseline":
            metrics = workloads.BASELINES[workload](params, tasks)
        else:
            if not peer.supports(workload):
                raise workloads.NotSupported(f"{peer_name} cannot run {workload}")
            metrics = workloads.MEASURES[workload](peer, params, tasks)
        out.update(status="ok", metrics=metrics)
    except workloads.NotSupported as exc:
        out.update(status="n/a", detail=str(exc))
    except Exception as exc:
        out.update(status="error", detail=f"{type(exc).__name__}: {exc}"[:500],
                   traceback=traceback.format_exc()[-4000:])
    return out, peer


def main(argv: list[str] | None = None) -> int:
    """Entry point of the sample subprocess."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="sharkcage/benchmarking/driver.py")
    parser.add_argument("--peer", required=True)
    parser.add_argument("--workload", required=True)
    parser.add_argument("--params", default="{}", help="workload sizes as JSON (default: the full sizes)")
    parser.add_argument("--timeout", type=float, default=60.0, help="longest wait for one result")
    parser.add_argument("--backend")
    parser.add_argument("--address")
    args = parser.parse_args(argv)

    from sharkcage.benchmarking import workloads

    params = dict(workloads.FULL, **json.loads(args.params), timeout=args.timeout)
    t0 = time.perf_counter()
    out, peer = run_sample(args.peer, args.workload, params, args.backend, args.address)
    out["elapsed"] = time.perf_counter() - t0
    _emit(out)
    _arm_watchdog(CLOSE_GRACE)
    try:
        peer.close()
    except Exception as exc:  # teardown is not measured; say so and go on
        sys.stderr.write(f"teardown of {args.peer} failed: {type(exc).__name__}: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
