"""``sharkcage doctor``: the environment report, and the diagnosis of a real seed 000 hang.

The real one starts the seed 000 deadlock with the stdlib pool (a thread is
inside a lock when ``fork`` copies the process; the worker then waits for
that lock forever), points ``sharkcage doctor --pid`` at the stuck worker and
expects the lock wait and the seed 000 diagnosis. Every hung program runs in
its own session and its whole process group is killed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sharkcage.cli import doctor

pytestmark = pytest.mark.timeout(60)

CHECK_NAMES = ["python", "start method", "threads", "cuda", "/dev/shm", "open files",
               "cpu limit", "memory limit", "oom kills"]


def sharkcage(*args: str, timeout: float = 40) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sharkcage", "doctor", *args], capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------------------
# environment report


def test_doctor_text_report_has_every_section_with_a_verdict():
    proc = sharkcage()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name in CHECK_NAMES:
        line = next((ln for ln in lines if ln.split()[1:2] and ln[11:].startswith(name)), None)
        assert line is not None, f"no {name!r} line in:\n{proc.stdout}"
        assert line.split()[0] in ("ok", "warning"), line
    assert "Python" in proc.stdout or "CPython" in proc.stdout
    assert ("warning" in proc.stdout) == ("hint:" in proc.stdout)  # every warning says what to do
    assert lines[-1] in ("no warnings",) or lines[-1].endswith(("warning", "warnings"))


def test_doctor_json_report():
    proc = sharkcage("--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [c["name"] for c in report["checks"]] == CHECK_NAMES
    assert {c["verdict"] for c in report["checks"]} <= {"ok", "warning"}
    assert report["warnings"] == sum(c["verdict"] == "warning" for c in report["checks"])
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["open files"]["data"]["soft"] > 0
    assert by_name["start method"]["data"]["method"] in ("fork", "spawn", "forkserver")
    if by_name["start method"]["data"]["method"] == "fork":
        assert by_name["start method"]["verdict"] == "warning"
        assert "seed 000" in by_name["start method"]["hint"]


def test_check_environment_sees_threads_of_the_calling_program(monkeypatch):
    import threading

    monkeypatch.setattr(doctor, "default_start_method", lambda: "fork")
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="busy-logger", daemon=True)
    t.start()
    try:
        checks = {c.name: c for c in doctor.check_environment()}
    finally:
        stop.set()
        t.join(5)
    assert checks["threads"].verdict == "warning"
    assert "busy-logger" in checks["threads"].value
    assert checks["start method"].verdict == "warning"


def test_cuda_check_reads_sys_modules_only(monkeypatch):
    class FakeCuda:
        @staticmethod
        def is_initialized():
            return True

    class FakeTorch:
        cuda = FakeCuda

    monkeypatch.setitem(sys.modules, "torch", FakeTorch)
    assert doctor._check_cuda("fork").verdict == "warning"
    assert doctor._check_cuda("forkserver").verdict == "ok"
    monkeypatch.delitem(sys.modules, "torch")
    assert doctor._check_cuda("fork").value == "torch not imported"


# ---------------------------------------------------------------------------
# cgroups, from fake /proc and /sys trees


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_cgroup_v2_limits(tmp_path):
    mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    cg = "0::/user.slice/job\n"
    _write(tmp_path, "/sys/fs/cgroup/user.slice/job/cpu.max", "150000 100000\n")
    _write(tmp_path, "/sys/fs/cgroup/user.slice/cpu.max", "max 100000\n")
    _write(tmp_path, "/sys/fs/cgroup/user.slice/job/memory.max", "max\n")
    _write(tmp_path, "/sys/fs/cgroup/user.slice/memory.max", str(2**30) + "\n")  # the parent's limit binds
    _write(tmp_path, "/sys/fs/cgroup/user.slice/job/memory.current", str(2**29) + "\n")
    _write(tmp_path, "/sys/fs/cgroup/user.slice/job/memory.events",
           "low 0\nhigh 0\nmax 4\noom 3\noom_kill 3\n")
    info = doctor.read_cgroup(cg, mountinfo, prefix=str(tmp_path))
    assert info.version == 2
    assert info.cpu_quota == 1.5
    assert info.memory_max == 2**30 and info.memory_current == 2**29
    assert info.oom_kills == 3
    assert doctor._check_oom(info).verdict == "warning"
    cpu = doctor._check_cpu(info)
    assert "cgroup quota 1.5 CPUs" in cpu.value
    if (os.cpu_count() or 1) > 1.5:
        assert cpu.verdict == "warning" and "processes=1" in cpu.hint


def test_cgroup_v1_limits(tmp_path):
    mountinfo = textwrap.dedent("""\
        31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
        32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
        """)
    cg = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n"
    _write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "200000\n")
    _write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    _write(tmp_path, "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", str(512 * 2**20))
    _write(tmp_path, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712")
    _write(tmp_path, "/sys/fs/cgroup/memory/docker/abc/memory.oom_control",
           "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    (tmp_path / "sys/fs/cgroup/unified").mkdir(parents=True)  # v2 mounted, but with no controllers
    info = doctor.read_cgroup(cg, mountinfo, prefix=str(tmp_path))
    assert info.cpu_quota == 2.0
    assert info.memory_max == 512 * 2**20
    assert info.oom_kills == 0
    assert doctor._check_oom(info).verdict == "ok"
    mem = doctor._check_memory(info)
    assert "512 MiB" in mem.value
    if (os.cpu_count() or 1) > 1:
        assert mem.verdict == "warning" and "OOM" in mem.hint


def test_no_cgroup_at_all():
    info = doctor.read_cgroup("", "", prefix="/nonexistent")
    assert (info.version, info.cpu_quota, info.memory_max, info.oom_kills) == (None, None, None, None)
    assert doctor._check_oom(info).verdict == "ok"


# ---------------------------------------------------------------------------
# recognising a lock wait in a stack


def _frame(name, filename, line=1):
    return {"name": name, "filename": filename, "short_filename": os.path.basename(filename), "line": line}


STDLIB = os.path.dirname(os.__file__)


@pytest.mark.parametrize("frames, expected", [
    ([_frame("Condition.__enter__", f"{STDLIB}/threading.py", 272)], "Condition.__enter__ (threading.py:272)"),
    ([_frame("Handler.acquire", f"{STDLIB}/logging/__init__.py", 922)], "Handler.acquire (__init__.py:922)"),
    ([_frame("RLock._acquire_restore", f"{STDLIB}/threading.py", 1)], "RLock._acquire_restore (threading.py:1)"),
    # deliberate waits: a condition, a join, an idle stdlib worker on its queue's inter-process lock
    ([_frame("Condition.wait", f"{STDLIB}/threading.py", 327)], None),
    ([_frame("Thread._wait_for_tstate_lock", f"{STDLIB}/threading.py", 1132)], None),
    ([_frame("SimpleQueue.get", f"{STDLIB}/multiprocessing/queues.py", 364)], None),
    ([_frame("sleep", "/app/x.py", 1)], None),
    ([], None),
])
def test_lock_wait(frames, expected):
    assert doctor.lock_wait(frames) == expected


def test_lock_wait_in_user_code_by_its_source_line(tmp_path):
    src = tmp_path / "job.py"
    src.write_text("import threading\nlock = threading.Lock()\ndef f():\n    lock.acquire()\n"
                   "def g():\n    with self._lock:\n        pass\ndef h():\n    time.sleep(1)\n")
    assert doctor.lock_wait([_frame("f", str(src), 4)]).endswith("lock.acquire()")
    assert doctor.lock_wait([_frame("g", str(src), 6)]).endswith("with self._lock:")
    assert doctor.lock_wait([_frame("h", str(src), 9)]) is None


# ---------------------------------------------------------------------------
# --pid on real processes


SEED_000_QUEUE = """
import logging, multiprocessing, os, queue, threading, time
from logging.handlers import QueueHandler

# Seed 000's program: logs go through a QueueHandler; a thread writes logs.
log_queue = queue.Queue()
logging.getLogger().addHandler(QueueHandler(log_queue))
held = threading.Event()

def write_logs():
    # The race made certain: this thread is inside the queue's lock when
    # the pool forks, and stays there (the seed hits this by chance).
    with log_queue.mutex:
        held.set()
        time.sleep(3600)

def runs_in_subprocess():
    print("child", os.getpid(), flush=True)
    logging.error("hello, I did something")
    print("...logged", flush=True)  # never printed: the child waits for the lock forever

if __name__ == "__main__":
    threading.Thread(target=write_logs, daemon=True).start()
    held.wait()
    pool = multiprocessing.get_context("fork").Pool(1)
    pool.apply(runs_in_subprocess)
"""

SEED_000_LOCK = """
import multiprocessing, os, threading, time

lock = threading.Lock()
held = threading.Event()

def holder():
    with lock:
        held.set()
        time.sleep(3600)

def runs_in_subprocess():
    print("child", os.getpid(), flush=True)
    lock.acquire()
    print("never", flush=True)

if __name__ == "__main__":
    threading.Thread(target=holder, daemon=True).start()
    held.wait()
    pool = multiprocessing.get_context("fork").Pool(1)
    pool.apply(runs_in_subprocess)
"""

HEALTHY = """
import os, time
print("child", os.getpid(), flush=True)
time.sleep(3600)
"""


class Program:
    """A Python program in its own session; the whole group is killed on exit."""

    def __init__(self, tmp_path: Path, source: str):
        script = tmp_path / "program.py"
        script.write_text(source)
        self.proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True, cwd=tmp_path)

    def __enter__(self) -> Program:
        return self

    def child_pid(self, timeout: float = 20) -> int:
        """The pid the program printed, once its process is asleep in the kernel."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError("the program printed nothing: " + self._stderr())
        line = self.proc.stdout.readline().decode().split()
        assert line[:1] == ["child"], line
        pid = int(line[1])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # let it reach the blocking call
            _, syscall = doctor._kernel_wait(pid, pid)
            if syscall not in (None, "running"):
                break
            time.sleep(0.05)
        time.sleep(0.2)
        return pid

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")

    def __exit__(self, *exc) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


def _require_py_spy(output: str) -> None:
    if doctor.find_py_spy() is None:
        pytest.skip("LOUD SKIP: py-spy is not installed (pip install py-spy): the Python-stack part of "
                    "`sharkcage doctor --pid` was not tested")
    if "no Python stack:" in output:
        reason = output.split("no Python stack:", 1)[1].splitlines()[0]
        pytest.skip(f"LOUD SKIP: py-spy cannot attach here ({reason.strip()}): the Python-stack part of "
                    "`sharkcage doctor --pid` was not tested")


@pytest.mark.parametrize("source, where", [
    (SEED_000_QUEUE, "Condition.__enter__"),
    (SEED_000_LOCK, "lock.acquire()"),
], ids=["queue-handler", "plain-lock"])
def test_doctor_pid_diagnoses_the_seed_000_deadlock(tmp_path, source, where):
    with Program(tmp_path, source) as program:
        pid = program.child_pid()
        proc = sharkcage("--pid", str(pid))
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        _require_py_spy(out)
        assert f"{pid}" in out and "process tree" in out
        assert "started by fork (no exec)" in out
        assert "in futex" in out or "wchan" in out  # the kernel's view of the wait
        assert "runs_in_subprocess (program.py:" in out  # the Python stack, down to the user's function
        assert "waiting for a lock: " in out and where in out
        assert doctor.SEED_000 in out
        assert out.index("diagnosis") < out.index(doctor.SEED_000)

        # the same, machine-readable, from the parent: the tree includes the stuck worker
        parent = sharkcage("--pid", str(program.proc.pid), "--json")
        report = json.loads(parent.stdout)
        assert [p["pid"] for p in report["processes"]][:1] == [program.proc.pid]
        assert pid in [p["pid"] for p in report["processes"]]
        assert [(d["pid"], d["seed"]) for d in report["diagnoses"]] == [(pid, "000")]
        assert report["diagnoses"][0]["advice"] == doctor.SEED_000


def test_doctor_pid_on_a_healthy_program_recognises_nothing(tmp_path):
    with Program(tmp_path, HEALTHY) as program:
        pid = program.child_pid()
        out = sharkcage("--pid", str(pid)).stdout
        _require_py_spy(out)
        assert "<module> (program.py:4)" in out
        assert "no known hazard pattern recognised" in out
        assert "seed 000" not in out


def test_doctor_pid_without_py_spy_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "find_py_spy", lambda: None)
    with Program(tmp_path, HEALTHY) as program:
        pid = program.child_pid()
        assert doctor.run(argparse.Namespace(pid=pid, json=False)) == 0
    out = capsys.readouterr().out
    assert "pip install py-spy" in out
    assert f"pid {pid}" in out and "thread" in out  # the kernel's view is still there
    assert "no known hazard pattern recognised" in out


def test_doctor_pid_that_does_not_exist():
    pid = 2**22 + 12345  # above the default pid_max of 4194304
    proc = sharkcage("--pid", str(pid))
    assert proc.returncode == 2
    assert f"no process with pid {pid}" in proc.stderr
