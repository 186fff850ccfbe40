"""``sharkcage doctor [--json]`` and ``sharkcage doctor --pid PID [--json]``.

Without ``--pid``: a report of the hazards of this environment for process
pools, one line each with a verdict (``ok`` or ``warning``) and a hint: the
Python version, the default start method and what it risks, threads alive,
CUDA initialised, the size of ``/dev/shm``, the open-file limit, the cgroup's
CPU and memory limits against ``os.cpu_count()``, and OOM kills so far.
Thread and CUDA state belong to the process that runs the checks; to check
them inside your own program, call :func:`check_environment` there.

With ``--pid``: the process tree of a running program (that process and its
descendants), each process's command line, state, how it was started, what
each thread is blocked on in the kernel (``/proc/PID/task/TID/wchan`` and
``syscall``) and its Python stack through `py-spy <https://github.com/benfred/py-spy>`_
(optional: ``pip install py-spy``), then a diagnosis in plain words when a
known pattern shows, such as seed 000: a forked child waiting forever for a
lock that a thread of its parent held at the moment of the fork.

Exit status: 0 when the report or the diagnosis was printed (warnings
included: they describe the environment, they are not a failure of the
command), 2 for bad usage (no such process).

>>> import argparse
>>> p = argparse.ArgumentParser(); add_arguments(p)
>>> p.parse_args(["--pid", "4242", "--json"]).pid
4242
>>> sorted({c.verdict for c in check_environment()} - {"ok", "warning"})
[]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import linecache
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharkcage.observe.stats import format_bytes

SEED_000 = ("seed 000: fork copied a lock held by a thread that does not exist in the child; "
            "use sharkcage.Pool or a spawn/forkserver context")
PY_SPY_MISSING = ("py-spy is not installed, so Python stacks cannot be shown: `pip install py-spy` "
                  "(it attaches to a running process; in a container it may need --cap-add SYS_PTRACE)")

_PY_SPY_TIMEOUT = 20.0  # seconds per process: py-spy pauses the target briefly, never this long
_MAX_PROCESSES = 32  # stacks shown for at most this many processes of a tree
_SHM_SMALL = 256 * 2**20  # Docker's default /dev/shm is 64 MiB: too small for big arrays
_MEM_PER_WORKER_LOW = 512 * 2**20
_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


# ---------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sharkcage doctor``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("without --pid: this environment's hazards, each with a verdict and a hint.\n"
                     "with --pid: the process tree of a running program, its stacks (via py-spy),\n"
                     "what it is blocked on, and a diagnosis when a known pattern shows.\n"
                     "exit status: 0 report printed, 2 bad usage.")
    parser.add_argument("--pid", type=int, metavar="PID", help="diagnose this running process and its children")
    parser.add_argument("--json", action="store_true", help="print machine-readable output")


def run(args: argparse.Namespace) -> int:
    """Print the environment report, or the diagnosis of ``args.pid``."""
    if args.pid is None:
        checks = check_environment()
        if args.json:
            print(json.dumps({"pid": os.getpid(), "checks": [c.to_dict() for c in checks],
                              "warnings": sum(c.verdict == "warning" for c in checks)}, indent=2))
        else:
            sys.stdout.write(format_report(checks))
        return 0
    try:
        report = inspect_process(args.pid)
    except LookupError as exc:
        print(f"sharkcage doctor: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        sys.stdout.write(format_inspection(report))
    return 0


# ---------------------------------------------------------------------------
# Environment checks


@dataclass
class Check:
    """One line of the environment report.

    >>> print(Check("python", "ok", "CPython 3.12.1").line())
      ok       python          CPython 3.12.1
    """

    name: str
    verdict: str  # "ok" or "warning"
    value: str
    hint: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The check as report text: verdict, name, value, and the hint wrapped below."""
        text = f"  {self.verdict:<8} {self.name:<15} {self.value}"
        if self.hint:
            text += "\n" + textwrap.fill(self.hint, width=100, initial_indent=" " * 27 + "hint: ",
                                         subsequent_indent=" " * 33)
        return text

    def to_dict(self) -> dict[str, Any]:
        """The check as a JSON-ready dict (``data`` holds the raw numbers)."""
        return dataclasses.asdict(self)


def check_environment() -> list[Check]:
    """Run every environment check in this process and return them in report order.

    Call it inside your own program to see its threads and CUDA state:

    >>> for check in check_environment():   # doctest: +SKIP
    ...     print(check.line())
      ok       python          CPython 3.11.7 (/usr/bin/python3)
      warning  start method    fork (multiprocessing's default here)
    ...
    >>> [c.name for c in check_environment()][:3]
    ['python', 'start method', 'threads']
    """
    method = default_start_method()
    cgroup = read_cgroup()
    return [
        _check_python(),
        _check_start_method(method),
        _check_threads(method),
        _check_cuda(method),
        _check_shm(),
        _check_open_files(),
        _check_cpu(cgroup),
        _check_memory(cgroup),
        _check_oom(cgroup),
    ]


def format_report(checks: list[Check]) -> str:
    """The environment report as text, one check per line (hints below their check).

    >>> print(format_report([Check("python", "ok", "CPython 3.12.1")]), end="")  # doctest: +ELLIPSIS
    sharkcage doctor: ...
      ok       python          CPython 3.12.1
    <BLANKLINE>
    no warnings
    """
    warnings = sum(c.verdict == "warning" for c in checks)
    head = (f"sharkcage doctor: hazards of this environment for process pools "
            f"(threads and CUDA as seen by pid {os.getpid()}; call "
            f"sharkcage.cli.doctor.check_environment() inside your program to check its own)\n\n")
    tail = f"\n{warnings} warning{'s' if warnings != 1 else ''}" if warnings else "\nno warnings"
    return head + "\n".join(c.line() for c in checks) + "\n" + tail + "\n"


def default_start_method() -> str:
    """The start method ``multiprocessing`` uses when none is asked for, without fixing it.

    ``multiprocessing.get_start_method()`` would set the default for the rest
    of the process as a side effect; this reads it instead.

    >>> default_start_method() in ("fork", "spawn", "forkserver")
    True
    """
    return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]


def _check_python() -> Check:
    version = platform.python_version()
    value = f"{platform.python_implementation()} {version} ({sys.executable})"
    if sys.version_info < (3, 10):
        return Check("python", "warning", value, "sharkcage needs Python 3.10 or newer.")
    hint = ""
    if sys.version_info >= (3, 12) and sys.platform.startswith("linux"):
        hint = ("Python 3.12+ warns (DeprecationWarning) when a process with threads forks; "
                "3.14 makes forkserver the default start method on Linux.")
    return Check("python", "ok", value, hint, {"version": version})


def _check_start_method(method: str) -> Check:
    value = f"{method} (multiprocessing's default here)"
    if method == "fork":
        return Check("start method", "warning", value,
                     "fork copies the parent's memory, including every lock a thread holds at that moment, "
                     "but not the thread that would release it: a stdlib pool created while threads run "
                     "(logging, HTTP clients, BLAS, a QueueListener) can hang forever (seed 000). "
                     "sharkcage.Pool picks a safe start method by default; for the stdlib use "
                     "multiprocessing.get_context('forkserver') or get_context('spawn').",
                     {"method": method})
    return Check("start method", "ok", value,
                 "" if method == "forkserver" else
                 "spawn starts a fresh interpreter per worker: safe, slower to start; "
                 "tasks must be picklable (sharkcage ships functions by value).",
                 {"method": method})


def _os_thread_count() -> int | None:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _check_threads(method: str) -> Check:
    py_threads = threading.enumerate()
    native = _os_thread_count()
    names = ", ".join(t.name for t in py_threads[:6]) + (", ..." if len(py_threads) > 6 else "")
    count = max(len(py_threads), native or 0)
    value = f"{len(py_threads)} Python thread{'s' if len(py_threads) != 1 else ''} ({names})"
    if native is not None and native != len(py_threads):
        value += f", {native} OS threads"
    data = {"python_threads": len(py_threads), "os_threads": native}
    if count > 1 and method == "fork":
        return Check("threads", "warning", value,
                     "a fork now copies any lock these threads hold (seed 000); native threads "
                     "(OpenBLAS, gRPC, CUDA) count too. Use sharkcage.Pool or a spawn/forkserver context.",
                     data)
    return Check("threads", "ok", value, "", data)


def _check_cuda(method: str) -> Check:
    # Only look at what is already imported: importing torch here would itself
    # start threads and take seconds, the very things this report warns about.
    torch = sys.modules.get("torch")
    if torch is None:
        return Check("cuda", "ok", "torch not imported", "", {"initialised": False})
    try:
        initialised = bool(torch.cuda.is_initialized())
    except Exception:  # a torch without CUDA support, or a half-imported one
        initialised = False
    if not initialised:
        return Check("cuda", "ok", "torch imported, CUDA not initialised", "", {"initialised": False})
    if method == "fork":
        return Check("cuda", "warning", "CUDA initialised in this process",
                     "a forked child cannot use CUDA ('Cannot re-initialize CUDA in forked subprocess') and "
                     "may hang; use sharkcage.Pool (safe start method) or get_context('spawn').",
                     {"initialised": True})
    return Check("cuda", "ok", "CUDA initialised in this process (children start fresh: fine)", "",
                 {"initialised": True})


def _check_shm() -> Check:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return Check("/dev/shm", "ok", "not present (not Linux): shared memory uses the system's default", "")
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    value = f"{format_bytes(size)}, {format_bytes(free)} free"
    data = {"size": size, "free": free}
    if size < _SHM_SMALL:
        return Check("/dev/shm", "warning", value,
                     "small: buffers of 1 MiB and more travel through /dev/shm, and a full one fails "
                     "with 'No space left on device' or a bus error. Docker's default is 64 MiB: run with "
                     "--shm-size=2g (Kubernetes: an emptyDir with medium: Memory on /dev/shm).", data)
    if free < size // 10:
        return Check("/dev/shm", "warning", value,
                     "almost full: look for leftover segments (ls -la /dev/shm) from programs killed "
                     "before they cleaned up.", data)
    return Check("/dev/shm", "ok", value, "", data)


def _check_open_files() -> Check:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return Check("open files", "ok", "no limit reported (no resource module)", "")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def fmt(n: int) -> str:
        return "unlimited" if n == resource.RLIM_INFINITY else str(n)

    value = f"soft {fmt(soft)}, hard {fmt(hard)}"
    # Each worker costs a few descriptors in the parent (its pipe, its
    # sentinel, shared-memory segments in flight) on top of the program's own.
    need = 256 + 8 * (os.cpu_count() or 1)
    data = {"soft": soft, "hard": hard, "suggested": need}
    if soft != resource.RLIM_INFINITY and soft < need:
        return Check("open files", "warning", value,
                     f"a pool of {os.cpu_count()} workers plus your own files may need about {need}: "
                     "raise it with `ulimit -n` (up to the hard limit) or "
                     "resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard)) at startup.", data)
    return Check("open files", "ok", value, "", data)


# --- cgroups ----------------------------------------------------------------


@dataclass
class CgroupInfo:
    """Limits of the cgroup this process runs in (None: no limit, or not readable).

    ``cpu_quota`` is in CPUs (``cpu.max`` quota / period), ``memory_max``
    and ``memory_current`` in bytes, ``oom_kills`` counts processes the
    kernel's OOM killer ended in this cgroup. ``version`` is 1 or 2 (None:
    no cgroup found, e.g. not Linux).

    >>> CgroupInfo().cpu_quota is None
    True
    """

    version: int | None = None
    cpu_quota: float | None = None
    memory_max: int | None = None
    memory_current: int | None = None
    oom_kills: int | None = None
    sources: dict[str, str] = field(default_factory=dict)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount root, mount point, super options) of every cgroup mount."""
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        # mountinfo escapes spaces in paths as \040
        root, point = (f.replace("\\040", " ") for f in (fields[3], fields[4]))
        out.append((tail[0], root, point, set(tail[2].split(","))))
    return out


def _cgroup_dirs(controller: str, cgroup_text: str, mountinfo: str, prefix: str) -> list[tuple[int, list[Path]]]:
    """For each hierarchy holding ``controller``: (version, the process's cgroup dir and its ancestors).

    Limits nest, so the effective one is the tightest along the path up to
    the mount point; the list is innermost first.
    """
    paths: dict[str, str] = {}  # controller or "" (v2) -> path in the hierarchy
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for c in (controllers.split(",") if controllers else [""]):
            paths[c] = path
    found = []
    for fstype, root, point, options in _mounts(mountinfo):
        if fstype == "cgroup" and controller in options and controller in paths:
            version, path = 1, paths[controller]
        elif fstype == "cgroup2" and "" in paths:
            version, path = 2, paths[""]
        else:
            continue
        rel = os.path.relpath(path, root) if path.startswith(root) else "."
        base = Path(prefix + point)
        d = (base / rel).resolve() if rel != "." else base
        if not d.is_dir():  # a cgroup namespace hides the outer path: the mount is our cgroup
            d = base
        chain = [d]
        while chain[-1] != base and base in chain[-1].parents:
            chain.append(chain[-1].parent)
        found.append((version, chain))
    # cgroup v2 first: on a hybrid system its files exist only where controllers are enabled
    return sorted(found, key=lambda vc: -vc[0])


def read_cgroup(cgroup_text: str | None = None, mountinfo: str | None = None, prefix: str = "") -> CgroupInfo:
    """Read this process's cgroup limits (v2 ``cpu.max``/``memory.max``/``memory.events``, or v1 equivalents).

    The arguments let tests feed a fake ``/proc/self/cgroup``, ``mountinfo``
    and a directory standing in for ``/``.

    >>> info = read_cgroup()
    >>> info.version in (None, 1, 2)
    True
    """
    if cgroup_text is None:
        cgroup_text = _read(Path("/proc/self/cgroup")) or ""
    if mountinfo is None:
        mountinfo = _read(Path("/proc/self/mountinfo")) or ""
    info = CgroupInfo()
    for version, chain in _cgroup_dirs("cpu", cgroup_text, mountinfo, prefix):
        quotas = []
        for d in chain:
            if version == 2:
                text = _read(d / "cpu.max")
                if text and not text.startswith("max"):
                    quota, _, period = text.partition(" ")
                    quotas.append((int(quota) / int(period or 100000), str(d / "cpu.max")))
            else:
                quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                if quota and period and int(quota) > 0:
                    quotas.append((int(quota) / int(period), str(d / "cpu.cfs_quota_us")))
        if quotas:
            info.cpu_quota, info.sources["cpu"] = min(quotas)
            info.version = version
            break
    for version, chain in _cgroup_dirs("memory", cgroup_text, mountinfo, prefix):
        names = (("memory.max", "memory.current", "memory.events") if version == 2 else
                 ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.oom_control"))
        if not any((d / names[0]).exists() for d in chain):
            continue  # a v2 hierarchy without the memory controller (hybrid systems)
        info.version = info.version or version
        limits = []
        for d in chain:
            text = _read(d / names[0])
            if text and text != "max" and int(text) < _UNLIMITED:
                limits.append((int(text), str(d / names[0])))
        if limits:
            info.memory_max, info.sources["memory"] = min(limits)
        current = _read(chain[0] / names[1])
        info.memory_current = int(current) if current and current.isdigit() else None
        events = _read(chain[0] / names[2])
        if events is not None:
            for line in events.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit():
                    info.oom_kills = int(value)
                    info.sources["oom"] = str(chain[0] / names[2])
        break
    return info


def usable_cpus() -> int:
    """CPUs this process may run on (affinity), before any cgroup quota.

    >>> usable_cpus() >= 1
    True
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _check_cpu(cg: CgroupInfo) -> Check:
    total = os.cpu_count() or 1
    affinity = usable_cpus()
    limit = min(affinity, cg.cpu_quota) if cg.cpu_quota is not None else affinity
    parts = [f"os.cpu_count() = {total}"]
    if affinity != total:
        parts.append(f"affinity {affinity}")
    parts.append(f"cgroup quota {cg.cpu_quota:g} CPUs" if cg.cpu_quota is not None else "no cgroup quota")
    value = ", ".join(parts)
    data = {"cpu_count": total, "affinity": affinity, "cgroup_quota": cg.cpu_quota}
    if limit < total:
        usable = max(1, int(limit))
        return Check("cpu limit", "warning", value,
                     f"Pool() starts os.cpu_count() = {total} workers but this process may use only "
                     f"{limit:g} CPUs: the workers time-share them and every task runs slower. "
                     f"Pass processes={usable}.", data)
    return Check("cpu limit", "ok", value, "", data)


def _total_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # pragma: no cover - psutil is a dependency, but be robust
        return None


def _check_memory(cg: CgroupInfo) -> Check:
    ram = _total_memory()
    cpus = os.cpu_count() or 1
    ram_text = f"RAM {format_bytes(ram)}" if ram else "RAM unknown"
    data = {"memory_max": cg.memory_max, "memory_current": cg.memory_current, "ram": ram}
    if cg.memory_max is None or (ram and cg.memory_max >= ram):
        return Check("memory limit", "ok", f"no cgroup limit ({ram_text})", "", data)
    per = cg.memory_max // cpus
    used = f", {format_bytes(cg.memory_current)} in use" if cg.memory_current is not None else ""
    value = f"{format_bytes(cg.memory_max)}{used} ({ram_text}); {format_bytes(per)} per CPU"
    if per < _MEM_PER_WORKER_LOW:
        return Check("memory limit", "warning", value,
                     f"the parent and {cpus} workers share {format_bytes(cg.memory_max)}; when they exceed it "
                     "the kernel's OOM killer ends one of them with SIGKILL (a WorkerCrashedError with "
                     "exitcode -9). Use fewer processes, or max_memory_per_worker= to recycle a worker "
                     "before it grows too big.", data)
    return Check("memory limit", "ok", value, "", data)


def _check_oom(cg: CgroupInfo) -> Check:
    if cg.oom_kills is None:
        return Check("oom kills", "ok", "not reported by this system", "")
    data = {"oom_kills": cg.oom_kills, "source": cg.sources.get("oom")}
    if cg.oom_kills:
        return Check("oom kills", "warning", f"{cg.oom_kills} in this cgroup so far",
                     "the kernel's OOM killer has ended processes here: a worker that died with SIGKILL "
                     "(exitcode -9) was probably one. Lower the memory per task or the number of workers.",
                     data)
    return Check("oom kills", "ok", "0 in this cgroup so far", "", data)


# ---------------------------------------------------------------------------
# --pid: a running program


# Syscall numbers worth naming when a thread sits in one (x86_64, aarch64).
_SYSCALLS = {
    "x86_64": {0: "read", 1: "write", 7: "poll", 23: "select", 34: "pause", 35: "nanosleep", 43: "accept",
               45: "recvfrom", 47: "recvmsg", 61: "wait4", 202: "futex", 230: "clock_nanosleep",
               232: "epoll_wait", 270: "pselect6", 271: "ppoll", 281: "epoll_pwait", 288: "accept4",
               247: "waitid"},
    "aarch64": {63: "read", 64: "write", 73: "ppoll", 72: "pselect6", 22: "epoll_pwait", 98: "futex",
                101: "nanosleep", 115: "clock_nanosleep", 202: "accept", 242: "accept4", 207: "recvfrom",
                212: "recvmsg", 260: "wait4", 95: "waitid"},
}

# Where a thread waits on purpose: multiprocessing's inter-process primitives
# (an idle stdlib worker waits on its queue's lock) are not fork-copied locks.
_DELIBERATE_WAITS = (os.sep + "multiprocessing" + os.sep,)
_LOCK_FUNCS = {"acquire", "__enter__", "_acquireLock", "_acquire_restore"}
_STDLIB = re.compile(r"[\\/]lib[\\/]python3\.\d+[\\/](?!.*(site|dist)-packages)")
_LOCK_LINE = re.compile(r"\.acquire\(|^\s*(async\s+)?with\b[^#]*\b\w*(lock|mutex)\w*\b", re.IGNORECASE)


@dataclass
class ThreadState:
    """One thread of an inspected process: kernel wait and Python frames (innermost first)."""

    tid: int
    name: str = ""
    idle: bool | None = None
    wchan: str | None = None
    syscall: str | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)
    lock_wait: str | None = None  # "Condition.__enter__ (threading.py:272)" when waiting for a lock


@dataclass
class ProcessState:
    """One process of an inspected tree."""

    pid: int
    ppid: int | None
    name: str
    cmdline: list[str]
    status: str
    depth: int
    num_threads: int | None = None
    started_by: str | None = None  # "fork (no exec)", "spawn", "forkserver", "exec"
    parent_threads: int | None = None
    threads: list[ThreadState] = field(default_factory=list)
    stack_error: str | None = None


@dataclass
class Diagnosis:
    """A recognised pattern: which process, which seed, and the explanation in plain words."""

    pid: int
    seed: str | None
    message: str
    advice: str = ""


@dataclass
class Inspection:
    """Everything ``sharkcage doctor --pid`` found; ``to_dict()`` is its ``--json`` output."""

    pid: int
    parent: str | None
    processes: list[ProcessState]
    diagnoses: list[Diagnosis]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole inspection."""
        return dataclasses.asdict(self)


def find_py_spy() -> str | None:
    """Path of the ``py-spy`` executable: on PATH, or next to this interpreter (a venv not activated).

    >>> find_py_spy() is None or find_py_spy().endswith("py-spy")
    True
    """
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / ("py-spy.exe" if os.name == "nt" else "py-spy")
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def py_spy_dump(pid: int, py_spy: str | None = None) -> list[dict[str, Any]]:
    """The Python stacks of every thread of ``pid`` via ``py-spy dump --json``.

    Raises ``FileNotFoundError`` when py-spy is not installed and
    ``RuntimeError`` (with py-spy's reason) when it cannot read the process.

    >>> import os
    >>> threads = py_spy_dump(os.getpid())  # doctest: +SKIP
    >>> threads[0]["frames"][0]["name"]     # doctest: +SKIP
    'py_spy_dump'
    """
    py_spy = py_spy or find_py_spy()
    if py_spy is None:
        raise FileNotFoundError(PY_SPY_MISSING)
    try:
        proc = subprocess.run([py_spy, "dump", "--pid", str(pid), "--json"], capture_output=True,
                              text=True, timeout=_PY_SPY_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"py-spy did not answer within {_PY_SPY_TIMEOUT:g} s") from None
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().splitlines()
        reason = next((line for line in reason if line.startswith("Error")), reason[0] if reason else "")
        if "ermission" in reason or "ptrace" in reason.lower():
            reason += " (py-spy needs ptrace rights: run as root or the same user with "
            reason += "kernel.yama.ptrace_scope=0; in Docker add --cap-add SYS_PTRACE)"
        raise RuntimeError(reason or f"py-spy exited with status {proc.returncode}")
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise RuntimeError("py-spy printed something that is not JSON") from None


def _kernel_wait(pid: int, tid: int) -> tuple[str | None, str | None]:
    """(wchan, syscall name) of a thread: where the kernel holds it, if it is asleep."""
    base = Path(f"/proc/{pid}/task/{tid}")
    wchan = _read(base / "wchan")
    wchan = None if wchan in (None, "", "0") else wchan
    syscall = _read(base / "syscall")
    name = None
    if syscall:
        first = syscall.split()[0]
        if first == "running":
            name = "running"
        elif first.lstrip("-").isdigit():
            number = int(first)
            name = _SYSCALLS.get(platform.machine(), {}).get(number, f"syscall {number}")
            if number < 0:
                name = "blocked outside a syscall"
    return wchan, name


def _frame_text(frame: dict[str, Any]) -> str:
    return f"{frame.get('name')} ({frame.get('short_filename') or frame.get('filename')}:{frame.get('line')})"


def lock_wait(frames: list[dict[str, Any]]) -> str | None:
    """Where a thread waits for a threading/logging lock, from its frames (innermost first), or None.

    Recognises the lock's own frames (``Lock``/``RLock``/``Condition``
    ``acquire``/``__enter__``, logging's ``Handler.acquire``) and, for a lock
    acquired in C from your code, the source line (``lock.acquire()``,
    ``with self.lock:``). Waits inside multiprocessing's inter-process
    primitives are deliberate and not reported.

    >>> lock_wait([{"name": "Condition.__enter__", "filename": "/usr/lib/python3.11/threading.py",
    ...             "short_filename": "threading.py", "line": 272}])
    'Condition.__enter__ (threading.py:272)'
    >>> lock_wait([{"name": "sleep", "filename": "x.py", "short_filename": "x.py", "line": 1}]) is None
    True
    """
    if not frames:
        return None
    top = frames[0]
    filename = str(top.get("filename") or "")
    if any(part in filename for part in _DELIBERATE_WAITS):
        return None
    func = str(top.get("name") or "").rsplit(".", 1)[-1]
    in_logging = f"{os.sep}logging{os.sep}" in filename
    if os.path.basename(filename) == "threading.py" or in_logging:
        if func in _LOCK_FUNCS:
            return _frame_text(top)
    if _STDLIB.search(filename) and not in_logging:
        # Only the lock's own frames count in the stdlib: its source lines
        # also hold Condition.wait's and Thread.join's deliberate waits.
        return None
    line = linecache.getline(filename, int(top.get("line") or 0)) if filename else ""
    if line and _LOCK_LINE.search(line):
        return f"{_frame_text(top)}: {line.strip()}"
    return None


def _started_by(cmdline: list[str], parent_cmdline: list[str] | None) -> str | None:
    joined = " ".join(cmdline)
    if "multiprocessing.spawn" in joined or "--multiprocessing-fork" in joined:
        return "spawn"
    if "multiprocessing.forkserver" in joined:
        return "forkserver (the server)" if cmdline != parent_cmdline else "forkserver"
    if "sharkcage._engine.zygote" in joined:
        return "spawn (sharkcage's zygote)"
    if parent_cmdline is not None and cmdline and cmdline == parent_cmdline:
        return "fork (no exec)"
    return "exec" if parent_cmdline is not None else None


def inspect_process(pid: int, py_spy: str | None = None, use_py_spy: bool = True) -> Inspection:
    """Inspect ``pid`` and its descendants: states, kernel waits, Python stacks, diagnoses.

    Raises ``LookupError`` when there is no such process.

    >>> import os
    >>> report = inspect_process(os.getpid(), use_py_spy=False)
    >>> report.processes[0].pid == os.getpid()
    True
    """
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [(root, 0)]
        depth = {pid: 0}
        for child in root.children(recursive=True):
            try:
                depth[child.pid] = depth.get(child.ppid(), 0) + 1
            except psutil.Error:
                depth[child.pid] = 1
            tree.append((child, depth[child.pid]))
    except psutil.NoSuchProcess:
        raise LookupError(f"no process with pid {pid}") from None
    except psutil.AccessDenied as exc:
        raise LookupError(f"cannot read process {pid}: {exc}") from None

    notes: list[str] = []
    parent = None
    try:
        pp = root.parent()
        if pp is not None:
            parent = f"{pp.pid} {' '.join(pp.cmdline())[:100] or pp.name()}"
    except psutil.Error:
        pass
    if use_py_spy:
        py_spy = py_spy or find_py_spy()
        if py_spy is None:
            notes.append(PY_SPY_MISSING)
    else:
        py_spy = None
    if len(tree) > _MAX_PROCESSES:
        notes.append(f"{len(tree)} processes: stacks shown for the first {_MAX_PROCESSES} only")

    processes = []
    for k, (proc, d) in enumerate(tree):
        state = _describe(proc, d, psutil)
        if state is None:
            continue
        if py_spy is not None and k < _MAX_PROCESSES:
            try:
                dumped = py_spy_dump(proc.pid, py_spy)
            except (RuntimeError, FileNotFoundError, OSError) as exc:
                state.stack_error = str(exc)
            else:
                by_tid = {t.tid: t for t in state.threads}
                for t in dumped:
                    tid = int(t.get("os_thread_id") or t.get("thread_id") or 0)
                    ts = by_tid.get(tid)
                    if ts is None:
                        ts = ThreadState(tid)
                        state.threads.append(ts)
                    ts.name = t.get("thread_name") or ts.name
                    ts.idle = not t.get("active", True)
                    ts.frames = [{k2: f.get(k2) for k2 in ("name", "filename", "short_filename", "line")}
                                 for f in t.get("frames", [])]
                    ts.lock_wait = lock_wait(ts.frames)
        processes.append(state)
    return Inspection(pid, parent, processes, diagnose(processes), notes)


def _describe(proc: Any, depth: int, psutil: Any) -> ProcessState | None:
    try:
        with proc.oneshot():
            cmdline = proc.cmdline()
            state = ProcessState(pid=proc.pid, ppid=proc.ppid(), name=proc.name(), cmdline=cmdline,
                                 status=proc.status(), depth=depth, num_threads=proc.num_threads())
    except psutil.NoSuchProcess:
        return None  # ended while we looked
    except psutil.AccessDenied:
        return ProcessState(pid=proc.pid, ppid=None, name="?", cmdline=[], status="access denied", depth=depth)
    try:
        pp = psutil.Process(state.ppid) if state.ppid else None
        parent_cmd = pp.cmdline() if pp else None
        state.parent_threads = pp.num_threads() if pp else None
    except psutil.Error:
        parent_cmd = None
    state.started_by = _started_by(cmdline, parent_cmd)
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{proc.pid}/task"))
    except OSError:
        tids = []
    for tid in tids:
        wchan, syscall = _kernel_wait(proc.pid, tid)
        state.threads.append(ThreadState(tid, wchan=wchan, syscall=syscall))
    return state


def diagnose(processes: list[ProcessState]) -> list[Diagnosis]:
    """Recognise known hang patterns in an inspected tree.

    Seed 000: a process started by fork (without exec) from a parent that
    runs other threads, with a thread blocked acquiring a threading or
    logging lock: the lock was copied held, and its owner thread was not.

    >>> t = ThreadState(11, idle=True, syscall="futex", lock_wait="Lock.acquire (x.py:3)")
    >>> p = ProcessState(11, 10, "python", ["python", "x.py"], "sleeping", 1, 1,
    ...                  "fork (no exec)", parent_threads=3, threads=[t])
    >>> diagnose([p])[0].seed
    '000'
    """
    found = []
    for p in processes:
        for t in p.threads:
            if not t.lock_wait or t.idle is False or t.syscall not in (None, "futex"):
                continue
            forked = p.started_by == "fork (no exec)"
            threaded_parent = (p.parent_threads or 0) > 1
            if forked and threaded_parent:
                found.append(Diagnosis(p.pid, "000",
                                       f"pid {p.pid} is blocked acquiring a lock in {t.lock_wait}; it was "
                                       f"started by fork from pid {p.ppid}, which runs {p.parent_threads} "
                                       "threads.", SEED_000))
            elif forked:
                # The parent has one thread now; it may have had more when it forked.
                found.append(Diagnosis(p.pid, "000",
                                       f"pid {p.pid} is blocked acquiring a lock in {t.lock_wait}; it was "
                                       f"started by fork from pid {p.ppid}. If that parent ran threads when "
                                       "it forked:", SEED_000))
            else:
                found.append(Diagnosis(p.pid, None,
                                       f"pid {p.pid} (thread {t.tid}) is blocked acquiring a lock in "
                                       f"{t.lock_wait}: look for the thread of this process that holds it "
                                       "(its stack is above) - a deadlock between two locks taken in "
                                       "opposite orders is the usual cause."))
            break  # one diagnosis per process is enough to act on
    return found


def _plural(n: int | None, word: str) -> str:
    return f"? {word}s" if n is None else f"{n} {word}{'s' if n != 1 else ''}"


def format_inspection(report: Inspection) -> str:
    """The ``--pid`` report as text: tree, per-process details, diagnosis."""
    out = [f"sharkcage doctor --pid {report.pid}", ""]
    if report.parent:
        out.append(f"parent of {report.pid}: {report.parent}")
    out.append("process tree")
    for p in report.processes:
        indent = "  " * p.depth + ("└─ " if p.depth else "")
        cmd = " ".join(p.cmdline) or p.name
        out.append(f"  {indent}{p.pid}  [{p.status}, {_plural(p.num_threads, 'thread')}]  {cmd[:110]}")
    for note in report.notes:
        out += ["", textwrap.fill(note, 100)]
    for p in report.processes:
        out += ["", f"pid {p.pid} ({p.name}): {p.status}" + (f", started by {p.started_by}" if p.started_by else "")
                + (f" from {p.ppid} ({_plural(p.parent_threads, 'thread')})" if p.started_by and p.ppid else "")]
        if p.stack_error:
            out.append(f"  no Python stack: {p.stack_error}")
        for t in p.threads:
            where = ", ".join(x for x in (f"in {t.syscall}" if t.syscall else "",
                                          f"wchan {t.wchan}" if t.wchan else "") if x)
            label = f"  thread {t.tid}" + (f' "{t.name}"' if t.name else "")
            label += " (idle)" if t.idle else (" (active)" if t.idle is False else "")
            out.append(label + (f": {where}" if where else ""))
            for f in t.frames:
                out.append(f"      {_frame_text(f)}")
            if t.lock_wait:
                out.append(f"    -> waiting for a lock: {t.lock_wait}")
    out += ["", "diagnosis"]
    if report.diagnoses:
        for d in report.diagnoses:
            out.append(textwrap.fill(d.message, 100, initial_indent="  ", subsequent_indent="    "))
            if d.advice:  # unwrapped: one line to grep for and to paste into an issue
                out.append("    " + d.advice)
    else:
        out.append("  no known hazard pattern recognised"
                   + ("" if any(t.frames for p in report.processes for t in p.threads)
                      else " (without Python stacks only the kernel's view was available)"))
    return "\n".join(out) + "\n"
