"""``sharkcage bench [--quick] [--peers NAMES] [--workloads NAMES] [--out DIR]``.

CLI glue only: arguments, the plan, progress lines and the exit code. The
measuring is :mod:`sharkcage.benchmarking`. Every sample runs in a fresh
interpreter with a timeout and is killed with its process group, so a peer
that hangs shows as ``hung`` and never hangs the bench.

Exit status: 0 the report was written; 1 sharkcage itself failed (its
cluster backend could not start, or one of its samples errored, hung or
broke: the report is still written);
2 bad usage (an unknown peer or workload name, ``--address`` without
``--backend``).

>>> import argparse
>>> p = argparse.ArgumentParser(); add_arguments(p)
>>> a = p.parse_args(["--quick", "--peers", "stdlib-fork,loky", "--workloads", "map_tiny"])
>>> a.quick, a.peers, a.workloads
(True, 'stdlib-fork,loky', 'map_tiny')
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

from sharkcage.benchmarking import peers as peers_mod
from sharkcage.benchmarking import report, runner
from sharkcage.benchmarking import workloads as wl

# --quick: one repeat of the smaller sizes, a short sample timeout, and a
# time budget for all samples (what does not fit is reported as skipped)
# that leaves room for the report, so the whole run stays under 60 s.
QUICK_REPEATS, FULL_REPEATS = 1, 5
QUICK_TIMEOUT, FULL_TIMEOUT = 15.0, 120.0
QUICK_BUDGET = 45.0
QUICK_SKIPS = {"array_1gb"}
PREFLIGHT_TIMEOUT = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sharkcage bench``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "peers:     " + ", ".join(peers_mod.SELECTABLE) + " (groups: "
        + ", ".join(f"{k}={'+'.join(v) if k != 'all' else 'every peer'}" for k, v in peers_mod.GROUPS.items()) + ")\n"
        "workloads: " + ", ".join(wl.WORKLOADS) + "\n\n"
        "sharkcage always runs: the ratios are to it. A selected peer that is not\n"
        "installed is reported as skipped. Outputs in --out: bench.json, bench.md, bench.png.\n"
        "exit status: 0 report written, 1 sharkcage itself failed, 2 bad usage."
    )
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes, 1 repeat, fewer peers by default: under a minute")
    parser.add_argument("--peers", metavar="NAMES",
                        help="comma-separated peers (default: every installed peer; "
                             f"with --quick: {','.join(peers_mod.QUICK_PEERS)})")
    parser.add_argument("--workloads", metavar="NAMES",
                        help="comma-separated workloads (default: all; with --quick all but array_1gb)")
    parser.add_argument("--out", metavar="DIR", default="bench-out", help="output folder (default: ./bench-out)")
    parser.add_argument("--repeats", type=int, metavar="N",
                        help=f"repeats of every sample (default {FULL_REPEATS}; --quick {QUICK_REPEATS})")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help=f"seconds one sample may take before it is 'hung' and killed "
                             f"(default {FULL_TIMEOUT:g}; --quick {QUICK_TIMEOUT:g})")
    parser.add_argument("--backend", choices=("dask", "ray"),
                        help="run sharkcage's workloads on this cluster backend (Pool(backend=...))")
    parser.add_argument("--address", metavar="ADDR", help="the cluster's address, for --backend")


def _error(message: str) -> int:
    print(f"sharkcage bench: error: {message}", file=sys.stderr)
    return 2


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def parse_workloads(text: str | None, quick: bool) -> list[str]:
    """The selected workloads in canonical order; ValueError on an unknown name.

    >>> parse_workloads("roundtrip,map_tiny", quick=True)
    ['map_tiny', 'roundtrip']
    """
    if text is None:
        return [w for w in wl.WORKLOADS if not (quick and w in QUICK_SKIPS)]
    names = {n.strip().lower() for n in text.split(",") if n.strip()}
    unknown = sorted(names - set(wl.WORKLOADS))
    if unknown:
        raise ValueError(f"unknown workload(s): {', '.join(unknown)}; choose from {', '.join(wl.WORKLOADS)}")
    if not names:
        raise ValueError("--workloads names no workload")
    return [w for w in wl.WORKLOADS if w in names]


def make_plan(args: argparse.Namespace) -> runner.Plan:
    """Turn the arguments into a :class:`runner.Plan`; ValueError for bad usage."""
    if args.address and not args.backend:
        raise ValueError("--address needs --backend dask or --backend ray")
    if args.repeats is not None and args.repeats < 1:
        raise ValueError("--repeats must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError("--timeout must be positive")
    workloads = parse_workloads(args.workloads, args.quick)
    if args.peers is not None:
        selected = peers_mod.parse_names(args.peers)
    elif args.backend:
        # Against a cluster: sharkcage and the same cluster's own client.
        selected = ["sharkcage", args.backend]
    elif args.quick:
        selected = list(peers_mod.QUICK_PEERS)
    else:
        selected = list(peers_mod.SELECTABLE)
    skipped = {}
    ran = []
    for name in selected:
        if peers_mod.PEERS[name].installed():
            ran.append(name)
        else:
            skipped[name] = "not installed"
    if "actor_roundtrip" in workloads and not _has_actors():
        workloads.remove("actor_roundtrip")
        skipped_workload = "actor_roundtrip"
        print(f"sharkcage bench: {skipped_workload} skipped: this sharkcage has no Pool.actor", file=sys.stderr)
    if any(wl.WORKLOADS[w].baseline for w in workloads):
        # Right after sharkcage: cheap, and the reference rows should not
        # be what a time budget cuts.
        ran.insert(1 if ran and ran[0] == "sharkcage" else 0, "baseline")
    params = dict(wl.QUICK if args.quick else wl.FULL)
    return runner.Plan(
        peers=ran, skipped=skipped, workloads=workloads,
        repeats=args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS),
        params=params, timeout=args.timeout or (QUICK_TIMEOUT if args.quick else FULL_TIMEOUT),
        budget=QUICK_BUDGET if args.quick else None, backend=args.backend, address=args.address,
    )


def _has_actors() -> bool:
    import sharkcage

    return hasattr(sharkcage.Pool, "actor")


def _preflight(plan: runner.Plan) -> str | None:
    """With --backend: one sharkcage startup sample on it first, so that a
    backend that cannot start is one clear message instead of a table of
    errors. None when it works, else the error."""
    # Connecting may retry for tens of seconds before it gives its error,
    # and that error is what this check is for: wait for it.
    timeout = max(plan.timeout, PREFLIGHT_TIMEOUT)
    result = runner.run_sample("sharkcage", "startup", plan.params, timeout, plan.backend, plan.address)
    if result["status"] == "ok":
        return None
    return result.get("detail") or result["status"]


def run(args: argparse.Namespace) -> int:
    """Run the bench; see the module docstring for the exit status."""
    try:
        plan = make_plan(args)
    except ValueError as exc:
        return _error(str(exc))
    for name, why in plan.skipped.items():
        _progress(f"sharkcage bench: {name} skipped ({why})")
    t0 = time.monotonic()
    if plan.backend:
        _progress(f"sharkcage bench: checking backend={plan.backend} at {plan.address} ...")
        failure = _preflight(plan)
        if failure:
            print(f"sharkcage bench: sharkcage.Pool(backend={plan.backend!r}, address={plan.address!r}) "
                  f"failed: {failure}", file=sys.stderr)
            return 1
        if plan.budget is not None:  # the budget is for the whole run
            plan.budget = max(0.0, plan.budget - (time.monotonic() - t0))
    env = report.environment()
    if env["loadavg"] and env["loadavg"][0] > 0.5 * (env["cpus"] or 1):
        _progress(f"sharkcage bench: load average {env['loadavg'][0]:g} on {env['cpus']} CPUs: "
                  "the machine is busy, the numbers will be noisy")
    started = _now()
    samples = runner.run(plan, progress=_progress)
    doc = report.build(plan, samples, started, _now(), env, args.quick)
    paths = report.write(doc, Path(args.out))
    _progress(f"sharkcage bench: {len(samples)} samples in {time.monotonic() - t0:.1f} s")
    md = paths["markdown"].read_text(encoding="utf-8")
    overview = md.split("## Overview", 1)[1].split("## Details", 1)[0].strip()
    print("## Overview\n\n" + overview + "\n")
    for kind in ("json", "markdown", "png"):
        where = paths[kind]
        print(f"{kind}: {where}" if isinstance(where, Path) else f"{kind}: not written ({where})")
    failures = _own_failures(samples)
    for line in failures:
        print(f"sharkcage bench: sharkcage {line}", file=sys.stderr)
    return 1 if failures else 0


def _own_failures(samples: list[dict]) -> list[str]:
    """sharkcage's samples (or single metrics) that errored, hung or broke:
    the contract says it never does, so they fail the run."""
    out = []
    for s in samples:
        if s["peer"] != "sharkcage":
            continue
        if s["status"] in ("error", "hung"):
            out.append(f"{s['workload']} {s['status']}: {s.get('detail', '')}")
            continue
        for key, value in (s.get("metrics") or {}).items():
            if isinstance(value, dict) and value.get("status") in ("error", "hung", "broken"):
                out.append(f"{s['workload']} {key} {value['status']}: {value.get('detail', '')}")
    return out


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")
