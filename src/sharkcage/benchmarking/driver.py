"""One benchmark sample: one peer, one workload, in a fresh interpreter.

    python -m sharkcage.benchmarking.driver --peer NAME --workload NAME \\
        [--params JSON] [--timeout S] [--backend dask|ray --address ADDR]

Prints exactly one line ``SHARKCAGE-BENCH {json}`` (``status`` ``ok`` with
``metrics``, ``n/a``, or ``error`` with the exception) and flushes it
*before* the pool is torn down, so a peer whose shutdown hangs still has its
numbers reported; a watchdog then ends the process if teardown takes longer
than :data:`CLOSE_GRACE` seconds. The bench kills the sample's whole
process group afterwards in any case.

numpy is imported here at module level on purpose: ``startup`` measures what
a typical scientific ``__main__`` costs a pool whose workers re-import or
preload the main module (forkserver, spawn).
"""

from __future__ import annotations

try:  # the startup workload's premise: a __main__ that imports numpy
    import numpy  # noqa: F401
except ImportError:  # pragma: no cover - numpy is in the dev extra
    numpy = None

import argparse
import json
import os
import sys
import threading
import time
import traceback

MARKER = "SHARKCAGE-BENCH "
CLOSE_GRACE = 10.0


def _emit(payload: dict) -> None:
    sys.stdout.write(MARKER + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _arm_watchdog(seconds: float) -> None:
    def fire():
        sys.stderr.write(f"sharkcage bench driver: teardown took over {seconds:g} s; exiting\n")
        sys.stderr.flush()
        os._exit(0)  # the result line is already out

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def run_sample(peer_name: str, workload: str, params: dict, backend=None, address=None) -> dict:
    """Measure ``workload`` on ``peer_name`` in this process; the result dict
    (the peer is left open for :func:`main` to close)."""
    from sharkcage.benchmarking import peers, workloads

    peer = peers.create(peer_name, backend=backend, address=address)
    params = dict(params, workload=workload)
    out: dict = {"peer": peer_name, "workload": workload, "pid": os.getpid(), "numpy": numpy is not None}
    try:
        if peer_name == "baseline":
            metrics = workloads.BASELINES[workload](params)
        else:
            if not peer.supports(workload):
                raise workloads.NotSupported(f"{peer_name} cannot run {workload}")
            metrics = workloads.MEASURES[workload](peer, params)
        out.update(status="ok", metrics=metrics)
    except workloads.NotSupported as exc:
        out.update(status="n/a", detail=str(exc))
    except Exception as exc:
        out.update(status="error", detail=f"{type(exc).__name__}: {exc}"[:500],
                   traceback=traceback.format_exc()[-4000:])
    out["_peer"] = peer
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the sample subprocess."""
    parser = argparse.ArgumentParser(prog="python -m sharkcage.benchmarking.driver")
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
    out = run_sample(args.peer, args.workload, params, args.backend, args.address)
    peer = out.pop("_peer")
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
