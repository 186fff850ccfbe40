"""Run the samples: one subprocess each, repeats outermost, peers rotated.

    for r in range(repeats):
        for peer in rotated(peers, r):
            for workload in workloads:
                sample(peer, workload)

Rotating the peer order per repeat spreads slow drifts of the machine
(thermal, other jobs) over every peer instead of always charging the peer
that runs last. Each sample runs in a new session (its own process group)
with stdout/stderr going to files, not pipes: a worker that inherited the
pipe and outlives the driver must not keep the bench waiting for EOF. When
its timeout passes the driver is SIGKILLed with its workers, and whatever
is left of its group (or escaped it) after a short drain is SIGKILLed too,
so nothing of one sample outlives it (see :func:`_reap`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from sharkcage.benchmarking import peers as peers_mod
from sharkcage.benchmarking import workloads as wl

# Run by path, not with -m: see the driver's docstring.
DRIVER = str(Path(__file__).with_name("driver.py"))

# Beyond the sample timeout, the driver's own teardown watchdog needs this
# long to report "teardown hung" itself before the bench kills it.
_KILL_WAIT = 2.0
# With a time budget, no sample starts with less than this left.
_MIN_SAMPLE = 3.0
# How long a sample's leftover processes may take to leave by themselves.
_DRAIN_WAIT = 2.0


@dataclasses.dataclass
class Plan:
    """Everything one ``sharkcage bench`` run will do."""

    peers: list[str]  # installed, selected peers, in bench order (baseline last if needed)
    skipped: dict[str, str]  # selected peers that will not run -> why
    workloads: list[str]
    repeats: int
    params: dict
    timeout: float
    budget: float | None = None  # seconds for all samples; what does not fit is skipped
    backend: str | None = None
    address: str | None = None


def rotated(items: list, r: int) -> list:
    """``items`` rotated left by ``r``.

    >>> rotated(["a", "b", "c"], 1)
    ['b', 'c', 'a']
    """
    if not items:
        return []
    k = r % len(items)
    return items[k:] + items[:k]


def schedule(plan: Plan) -> list[tuple[int, str, str]]:
    """The ``(repeat, peer, workload)`` samples, in run order, leaving out the
    pairs a peer cannot run (they are reported as n/a without a process)."""
    out = []
    for r in range(plan.repeats):
        for peer in rotated(plan.peers, r):
            adapter = peers_mod.create(peer, plan.backend, plan.address)
            for workload in plan.workloads:
                if adapter.supports(workload):
                    out.append((r, peer, workload))
    return out


def _descendants(pid: int) -> list:
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:
        return []


def _group(pgid: int) -> list:
    import psutil

    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                out.append(p)
        except (OSError, psutil.Error):
            continue
    return out


def _is_tracker(p) -> bool:
    try:
        return "resource_tracker" in " ".join(p.cmdline())
    except Exception:
        return False


def _group_gone(pgid: int, wait: float) -> bool:
    """Wait up to ``wait`` s for every process of the group to exit.

    Zombies count as gone: orphans are reaped by PID 1, which on some
    machines takes its time, and a zombie holds nothing but a pid.
    """
    import psutil

    deadline = time.monotonic() + wait
    while True:
        alive = []
        for p in _group(pgid):
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                pass
        if not alive:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _reap(proc: subprocess.Popen, stragglers: list, timed_out: bool) -> None:
    """Leave nothing of a sample behind.

    A driver that exited by itself gets :data:`_DRAIN_WAIT` seconds for its
    group to go (workers finishing their exit, resource trackers unlinking
    what a crash left). A hung one is SIGKILLed with its workers first, but
    not its resource trackers: they clean up when they see their clients
    gone, and only then is the rest of the group killed. Either way what is
    left is SIGKILLed, group and escaped descendants alike.
    """
    pgid = proc.pid  # the driver leads its own session and group
    if timed_out:
        try:
            members = _group(pgid)
        except Exception:
            members = []
        for p in members + stragglers:
            if not _is_tracker(p):
                try:
                    p.kill()
                except Exception:
                    pass
    proc.wait()  # a zombie driver would keep its group "alive"
    _group_gone(pgid, _DRAIN_WAIT)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in stragglers:  # descendants that started their own session
        try:
            p.kill()
        except Exception:
            pass


def run_sample(peer: str, workload: str, params: dict, timeout: float,
               backend: str | None = None, address: str | None = None) -> dict:
    """Run one sample in a fresh interpreter and return its result dict.

    ``status`` is ``ok`` (``metrics`` present), ``n/a``, ``error`` (with
    ``detail``) or ``hung`` (no result line within ``timeout`` seconds; the
    process group was killed).
    """
    cmd = [sys.executable, DRIVER, "--peer", peer, "--workload", workload,
           "--params", json.dumps(params), "--timeout", repr(float(timeout))]
    if backend:
        cmd += ["--backend", backend]
    if address:
        cmd += ["--address", address]
    env = dict(os.environ, PYTHONWARNINGS="ignore", TQDM_DISABLE="1", RAY_DEDUP_LOGS="0")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True, env=env)
        timed_out = False
        try:
            proc.wait(timeout + _KILL_WAIT)
        except subprocess.TimeoutExpired:
            timed_out = True
        # Descendants are found through the driver while it is alive;
        # after its exit only the process group still holds them together.
        stragglers = _descendants(proc.pid) if timed_out else []
        _reap(proc, stragglers, timed_out)
        wall = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = None
    for line in stdout.splitlines():
        if line.startswith(wl.MARKER):
            try:
                result = json.loads(line[len(wl.MARKER):])
            except ValueError:
                pass
    if result is None:
        if timed_out:
            result = {"status": "hung", "detail": f"no result within {timeout:g} s; process group killed"}
        else:
            tail = [ln for ln in stderr.strip().splitlines() if ln.strip()][-3:]
            result = {"status": "error",
                      "detail": f"driver exited {proc.returncode} without a result: " + " | ".join(tail)[-400:]}
    elif timed_out:
        result["teardown_hung"] = True
    result.update(peer=peer, workload=workload, wall=round(wall, 3))
    return result


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run(plan: Plan, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Run every sample of ``plan``; the list of sample dicts (with ``repeat``
    and the load average at its start)."""
    samples = []
    todo = schedule(plan)
    start = time.monotonic()
    for i, (r, peer, workload) in enumerate(todo, 1):
        timeout, capped = plan.timeout, False
        if plan.budget is not None:
            # A sample starts only with a useful time left, and may not run
            # past the budget: the budget is a promise (--quick: a minute).
            left = plan.budget - (time.monotonic() - start)
            capped = left < timeout
            timeout = min(timeout, left)
        if plan.budget is not None and timeout < _MIN_SAMPLE:
            result = {"peer": peer, "workload": workload, "status": "skipped",
                      "detail": f"time budget of {plan.budget:.0f} s used up"}
        else:
            load = _loadavg()
            result = run_sample(peer, workload, plan.params, timeout, plan.backend, plan.address)
            result["loadavg"] = load
            if capped and result["status"] == "hung":
                result.update(status="skipped", detail=f"cut at the time budget of {plan.budget:.0f} s")
        result["repeat"] = r
        samples.append(result)
        if progress:
            progress(f"[{i}/{len(todo)}] {peer:<17} {workload:<15} {_brief(result)}")
    return samples


def _brief(result: dict) -> str:
    status = result["status"]
    if status != "ok":
        return f"{status}: {result.get('detail', '')}"[:120]
    parts = []
    for key, value in result.get("metrics", {}).items():
        metric = wl.METRICS.get(key)
        if metric is None:
            continue
        if isinstance(value, dict):
            parts.append(f"{key} {value.get('status')}")
        else:
            parts.append(f"{key} {value:.4g} {metric.unit}")
    return ", ".join(parts) + f"  ({result.get('wall', 0):.1f} s)"
