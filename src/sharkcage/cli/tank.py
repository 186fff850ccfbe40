"""``sharkcage tank [--only NAME[,NAME...]] [--timeout S] [--json]``: the sharks, side by side.

Every scenario of :mod:`sharkcage.cli._scenarios` runs twice, as a
``python -c`` program in a child process of its own session: once with the
stdlib's ``multiprocessing.Pool``, once with ``sharkcage.Pool``. Each side is
bounded by ``--timeout``; a side that has not printed its result line by
then is shown as ``hung N s``, and its whole session (workers, forkserver,
everything it started) is killed, so nothing outlives the demo. The sharkcage side runs
in a child too, so a sharkcage bug can never hang the demo itself.

Exit status: 0 when every sharkcage row is clean (the outcome the
contract promises, the process exited and left no process behind), 1
otherwise, 2 for bad usage (an unknown scenario name, a bad timeout).

>>> import argparse
>>> p = argparse.ArgumentParser(); add_arguments(p)
>>> a = p.parse_args(["--only", "killed_worker,hung_task", "--timeout", "3"])
>>> select(a.only)
['killed_worker', 'hung_task']
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sharkcage.cli._scenarios import BY_NAME, MARKER, SCENARIOS, SHARKCAGE, SIDES, STDLIB, Scenario

DEFAULT_TIMEOUT = 5.0

# After its result line, a sharkcage child must also exit (pool teardown is
# part of the promise); it gets the rest of its timeout, and at least this.
_EXIT_GRACE = 2.0
# How long the stdlib child may take to exit after reporting: its teardown is
# not what the demo shows, so it is simply killed after this.
_STDLIB_EXIT_WAIT = 0.5
# Workers still alive this long after a clean sharkcage exit are a leak.
_LEFTOVER_WAIT = 2.0
_POLL = 0.05
# Set on Ctrl-C: every side stops waiting and kills its child at once.
_STOP = threading.Event()
# SHARKCAGE_TANK_KEEP=1 keeps each child's folder (stdout, stderr) for a bug report.
_KEEP = bool(os.environ.get("SHARKCAGE_TANK_KEEP"))
# A killed side's resource tracker gets this long to unlink its semaphores.
_TRACKER_WAIT = 2.0


@dataclasses.dataclass
class SideResult:
    """What one side of one scenario did, as the tank saw it."""

    outcome: str  # ok | error | wrong | hung | died
    exc: str | None = None
    types: list[str] = dataclasses.field(default_factory=list)
    detail: str = ""
    message: str = ""
    short: str = ""
    shown: str = ""
    elapsed: float = 0.0  # the scenario's own time (the timeout for a hang)
    wall: float = 0.0  # from process start to the result line (or the kill)
    exit_hung: bool = False
    leftovers: int = 0
    stderr: str = ""  # the last error-looking line on stderr, if any
    kept: str = ""  # with SHARKCAGE_TANK_KEEP=1: the folder with its stdout/stderr


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sharkcage tank``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "scenarios:\n" + "\n".join(
        f"  {s.name:<20} {('seed ' + s.seed) if s.seed else '':<13} {s.title}" for s in SCENARIOS
    ) + "\n\nexit status: 0 every sharkcage row clean, 1 otherwise, 2 bad usage."
    parser.add_argument("--only", metavar="NAME", help="run only these scenarios (comma-separated names)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
        help=f"seconds each side may take before it counts as hung (default: {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable results instead of the table")


def select(only: str | None) -> list[str]:
    """Scenario names to run, in the tank's order; ValueError names unknown ones.

    >>> select(None)[0], select("exit_in_task, killed_worker")
    ('fork_deadlock', ['killed_worker', 'exit_in_task'])
    """
    if not only:
        return [s.name for s in SCENARIOS]
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown or not wanted:
        raise ValueError(
            f"unknown scenario {', '.join(repr(n) for n in unknown) or repr(only)}; "
            f"choose from: {', '.join(BY_NAME)}"
        )
    return [s.name for s in SCENARIOS if s.name in wanted]


# ----------------------------------------------------------------------
# running one side


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child must import this very sharkcage, installed or not.
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONSTARTUP", None)
    return env


def _read_report(path: Path) -> dict | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    for raw in data.splitlines():
        line = raw.decode("utf-8", "replace")
        if line.startswith(MARKER):
            try:
                return json.loads(line[len(MARKER):])
            except ValueError:
                return None  # a half-written line: read again on the next poll
    return None


def _stderr_hint(path: Path) -> str:
    """The last line of stderr that names an exception (``AttributeError: ...``)."""
    try:
        lines = path.read_text("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        head = line.split(":", 1)[0].strip()
        if ":" in line and not line.startswith(" ") and head.replace(".", "").isidentifier() and (
            head.endswith(("Error", "Exception", "Exit", "Interrupt"))
        ):
            return line.strip()[:200]
    return ""


def _session_pids(sid: int) -> list[int]:
    """Every live process of session ``sid`` (Linux /proc; empty elsewhere).

    The child leads its own session, so this finds its workers even after
    the child exited and they were re-parented to init.
    """
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def _descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - best effort: the group kill does the rest
        return []


def _is_resource_tracker(pid: int) -> bool:
    try:
        return b"resource_tracker" in Path("/proc", str(pid), "cmdline").read_bytes()
    except OSError:
        return False


def _kill_all(proc: subprocess.Popen, known: list[int]) -> None:
    """Kill the child's process group and every process of its session.

    multiprocessing's resource tracker is spared for a moment: once every
    other process is gone it sees EOF and unlinks the named semaphores the
    killed pool left in /dev/shm. Killed with the rest, it would leak them.
    """
    if os.name != "posix":  # pragma: no cover - Windows: no groups; the tree via psutil
        for pid in known:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        proc.kill()
        proc.wait(5)
        return
    trackers: set[int] = set()
    for _ in range(3):  # a fork in flight can add a process: sweep again
        members = set(_session_pids(proc.pid)) | set(known)
        if _exit_code(proc) is None:
            members.add(proc.pid)
        trackers |= {pid for pid in members if _is_resource_tracker(pid)}
        for pid in members - trackers:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        known = []
    if not os.path.isdir("/proc"):  # pragma: no cover - no session scan: the group kill
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    until = time.monotonic() + _TRACKER_WAIT
    while any(_alive(pid) for pid in trackers) and time.monotonic() < until:
        time.sleep(_POLL)
    for pid in list(trackers) + _session_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(5)  # reaped last: until now its pid (the session id) stayed taken
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
        pass


def _alive(pid: int) -> bool:
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] != "Z"


def _exit_code(proc: subprocess.Popen) -> int | None:
    """The child's exit status (as ``Popen.returncode``), or None while it runs.

    On Linux it is read without reaping the child: the zombie keeps its pid,
    which is also the id of its session, from being reused by another
    process while the tank still scans and kills that session.
    """
    if proc.returncode is not None:
        return proc.returncode
    if hasattr(os, "waitid") and hasattr(os, "WNOWAIT"):
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return proc.poll()
        if info is None:
            return None
        return -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status
    return proc.poll()


def _wait_until(predicate, until: float) -> bool:
    """Poll ``predicate`` until it holds or ``until`` passes (or the tank is stopping)."""
    while not predicate():
        if time.monotonic() >= until or _STOP.is_set():
            return predicate()
        time.sleep(_POLL)
    return True


def run_side(scenario: Scenario, side: str, timeout: float) -> SideResult:
    """Run one side of ``scenario`` in a fresh session, bounded by ``timeout``.

    Returns what the child reported, or ``hung`` when no result line came in
    time; either way every process the child started is dead on return.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f"sharkcage-tank-{scenario.name}-{side}-"))
    out_path, err_path = tmp / "stdout", tmp / "stderr"
    kwargs: dict = {}
    if os.name == "posix":
        kwargs["start_new_session"] = True  # its own session and group: found and killed as one
    else:  # pragma: no cover
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    scan = os.path.isdir("/proc")
    known: list[int] = []
    try:
        # stdout and stderr go to files, not pipes: a hung worker holding a
        # pipe open can never block the tank.
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            start = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-c", scenario.program(side)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=tmp, env=_child_env(), **kwargs,
            )
        try:
            deadline = start + timeout
            box: dict = {}

            def reported_or_exited() -> bool:
                box["report"] = _read_report(out_path)
                if not scan:  # no session scan here: remember the tree to kill it
                    known[:] = _descendants(proc.pid) or known
                return box["report"] is not None or _exit_code(proc) is not None

            _wait_until(reported_or_exited, deadline)
            report = box["report"] if box["report"] is not None else _read_report(out_path)
            result = _classify(report, _exit_code(proc), timeout, time.monotonic() - start)
            if _STOP.is_set() and report is None:
                result.detail = "interrupted"
            if report is not None and _exit_code(proc) is None:
                # Reported, still running: sharkcage must also exit (its
                # teardown is part of the promise); the stdlib's teardown is
                # not what the demo shows.
                if side == SHARKCAGE:
                    grace = max(deadline, time.monotonic() + _EXIT_GRACE)
                    result.exit_hung = not _wait_until(lambda: _exit_code(proc) is not None, grace)
                else:
                    _wait_until(lambda: _exit_code(proc) is not None, time.monotonic() + _STDLIB_EXIT_WAIT)
            if side == SHARKCAGE and scan and _exit_code(proc) is not None:
                # Its workers must go with it (guarantees 8 and 9).
                _wait_until(lambda: not _session_pids(proc.pid), time.monotonic() + _LEFTOVER_WAIT)
                result.leftovers = len(_session_pids(proc.pid))
        finally:
            _kill_all(proc, known)
        result.stderr = _stderr_hint(err_path)
        if _KEEP:
            result.kept = str(tmp)
        return result
    finally:
        if not _KEEP:
            shutil.rmtree(tmp, ignore_errors=True)


def _classify(report: dict | None, code: int | None, timeout: float, wall: float) -> SideResult:
    if report is None:
        if code is None:
            return SideResult("hung", elapsed=timeout, wall=wall, detail=f"no result in {timeout:g} s; killed")
        return SideResult("died", elapsed=wall, wall=wall, detail=f"exited with status {code} without a result")
    outcome = report.get("outcome")
    if outcome not in ("ok", "error", "wrong"):
        return SideResult("died", elapsed=wall, wall=wall, detail=f"bad report {report!r}")
    return SideResult(
        outcome,
        exc=report.get("exc"),
        types=list(report.get("types") or ([report["exc"]] if report.get("exc") else [])),
        detail=str(report.get("detail") or ""),
        message=str(report.get("message") or ""),
        short=str(report.get("short") or ""),
        shown=str(report.get("shown") or ""),
        elapsed=float(report.get("elapsed") or wall),
        wall=wall,
    )


# ----------------------------------------------------------------------
# judging and printing


def is_clean(scenario: Scenario, result: SideResult) -> bool:
    """Did sharkcage do what the contract promises for this scenario?"""
    if result.exit_hung or result.leftovers:
        return False
    if scenario.expect == "ok":
        return result.outcome == "ok"
    kind, _, exc = scenario.expect.partition(":")
    return result.outcome == kind and exc in result.types


def cell(result: SideResult, expected_exc: str | None = None) -> str:
    """The table cell: ``hung 5 s``, ``error: Type``, ``wrong result: ...``, ``ok``."""
    if result.outcome == "hung":
        text = f"hung {result.elapsed:g} s"
    elif result.outcome == "died":
        text = "died: " + result.detail
    elif result.outcome == "error":
        name = result.exc or "?"
        if result.exc == "SystemExit" and result.shown:
            name = result.shown
        if expected_exc and expected_exc != result.exc and expected_exc in result.types:
            # A RemoteError rebuilt as a subclass of the task's own class.
            name = f"{expected_exc} (also {result.exc})"
        text = "error: " + name
    elif result.outcome == "wrong":
        text = "wrong result: " + (result.short or result.detail)
    else:
        text = "ok"
    if result.exit_hung:
        text += ", then hung at exit"
    if result.leftovers:
        text += f", left {result.leftovers} process(es)"
    return text


def _expected_exc(scenario: Scenario) -> str | None:
    kind, _, exc = scenario.expect.partition(":")
    return exc if kind == "error" else None


def _verdict(row: dict) -> str:
    return "caged" if row[SHARKCAGE]["clean"] else "BITES"


def _side_json(result: SideResult, text: str) -> dict:
    data = dataclasses.asdict(result)
    data["cell"] = text
    return data


def build_rows(names: list[str], results: dict[tuple[str, str], SideResult]) -> list[dict]:
    """One machine-readable row per scenario (the ``--json`` format)."""
    rows = []
    for name in names:
        s = BY_NAME[name]
        std, sk = results[(name, STDLIB)], results[(name, SHARKCAGE)]
        clean = is_clean(s, sk)
        row = {
            "name": name,
            "seed": s.seed,
            "title": s.title,
            "shows": s.shows,
            "expect": s.expect,
            STDLIB: _side_json(std, cell(std)),
            SHARKCAGE: dict(_side_json(sk, cell(sk, _expected_exc(s))), clean=clean),
        }
        row["verdict"] = _verdict(row)
        rows.append(row)
    return rows


_CELL = 48  # table cells are clipped here; the details below say it all


def _clip(text: str, width: int = 150) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.1f} s"


def format_table(rows: list[dict], timeout: float, total: float) -> str:
    """The human table, then one line of detail per side, then the summary."""
    head = ("scenario", "stdlib", "time", "sharkcage", "time", "verdict")
    body = [
        (
            r["name"],
            _clip(r[STDLIB]["cell"], _CELL),
            _fmt_time(r[STDLIB]["elapsed"]),
            _clip(r[SHARKCAGE]["cell"], _CELL),
            _fmt_time(r[SHARKCAGE]["elapsed"]),
            r["verdict"],
        )
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(len(head))]
    right = {2, 4}  # times line up on the right

    def fmt(line) -> str:
        parts = [str(v).rjust(w) if i in right else str(v).ljust(w) for i, (v, w) in enumerate(zip(line, widths))]
        return "  ".join(parts).rstrip()

    out = [fmt(head), fmt(tuple("-" * w for w in widths)), *(fmt(line) for line in body), ""]
    out.append("details:")
    for r in rows:
        seed = f" (seed {r['seed']})" if r["seed"] else ""
        out.append(f"  {r['name']}{seed}: {r['title']}")
        for side in SIDES:
            d = r[side]
            text = d["detail"]
            message = d["shown"] if d["exc"] == "SystemExit" else d["message"]
            if d["outcome"] == "error" and message and message != text:
                text = f"{text}: {_clip(message)}" if text else _clip(message)
            if d["stderr"] and (d["outcome"] in ("hung", "died") or not d.get("clean", True)):
                text += f"; its stderr: {d['stderr']}"
            if d["kept"]:
                text += f" [{d['kept']}]"
            out.append(f"    {side:<9} {text}")
    caged = sum(r[SHARKCAGE]["clean"] for r in rows)
    kinds = {"hung": "hung", "error": "error", "wrong": "wrong result", "died": "died", "ok": "ok"}
    tally = {k: sum(r[STDLIB]["outcome"] == k for r in rows) for k in kinds}
    stdlib = ", ".join(f"{n} {kinds[k]}" for k, n in tally.items() if n)
    out.append("")
    out.append(
        f"stdlib: {stdlib}. sharkcage: clean in {caged}/{len(rows)}"
        + f"; timeout {timeout:g} s per side; {total:.1f} s in all."
    )
    out.append("What each scenario shows: docs/tank.md")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------


def _parallelism() -> dict[str, int]:
    """How many children of each side run at once.

    The stdlib sides mostly sit in their hang, so they all start at once and
    their timeouts overlap. The sharkcage sides do real work (a forkserver,
    workers), so they get the cores that are free right now (at least one):
    on a machine already busy with other work they run one at a time rather
    than crawl towards the timeout together.
    """
    cores = os.cpu_count() or 2
    try:
        free = cores - os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - no load average (Windows)
        free = cores
    return {STDLIB: 10, SHARKCAGE: max(1, min(6, cores, round(free)))}


def run_all(names: list[str], timeout: float, progress=None) -> dict[tuple[str, str], SideResult]:
    """Run both sides of every named scenario, many of them at the same time."""
    results: dict[tuple[str, str], SideResult] = {}
    lock = threading.Lock()
    slots = _parallelism()
    executors = {
        side: concurrent.futures.ThreadPoolExecutor(slots[side], thread_name_prefix=f"tank-{side}")
        for side in SIDES
    }
    try:
        futures = {
            executors[side].submit(run_side, BY_NAME[name], side, timeout): (name, side)
            for side in SIDES for name in names
        }
        for fut in concurrent.futures.as_completed(futures):
            key = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 - a tank failure shows in its row
                res = SideResult("died", detail=f"the tank could not run it: {exc!r}")
            with lock:
                results[key] = res
            if progress is not None:
                progress(key, res, len(results), len(futures))
    except BaseException:
        # Ctrl-C: every running side kills its child now, none starts.
        _STOP.set()
        for ex in executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        for ex in executors.values():
            ex.shutdown(wait=True)
    return results


def _progress_printer(timeout: float):
    if not sys.stderr.isatty():
        return None

    def show(key, res, done, total):
        name, side = key
        sys.stderr.write(f"\r\033[K  [{done}/{total}] {name} / {side}: {cell(res, _expected_exc(BY_NAME[name]))}")
        if done == total:
            sys.stderr.write("\r\033[K")
        sys.stderr.flush()

    sys.stderr.write(f"Running the sharks (up to {timeout:g} s per side)...\n")
    return show


def run(args: argparse.Namespace) -> int:
    """Run the tank; 0 if every sharkcage row is clean, 1 if not, 2 on bad usage."""
    try:
        names = select(args.only)
    except ValueError as exc:
        print(f"sharkcage tank: error: {exc}", file=sys.stderr)
        return 2
    if not args.timeout > 0:
        print(f"sharkcage tank: error: --timeout must be positive, not {args.timeout:g}", file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        results = run_all(names, args.timeout, None if args.json else _progress_printer(args.timeout))
    except KeyboardInterrupt:
        print("\nsharkcage tank: interrupted; every child process was killed", file=sys.stderr)
        return 130
    total = time.monotonic() - start
    rows = build_rows(names, results)
    ok = all(r[SHARKCAGE]["clean"] for r in rows)
    if args.json:
        json.dump(
            {"timeout": args.timeout, "elapsed": round(total, 3), "clean": ok, "python": sys.version.split()[0],
             "scenarios": rows},
            sys.stdout, indent=2,
        )
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_table(rows, args.timeout, total))
    return 0 if ok else 1
