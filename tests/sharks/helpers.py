"""Task functions and utilities for the guarantee tests (tests/sharks).

Everything a worker must run lives here, in an importable module, so that
every start method (forkserver, spawn, fork) finds it by reference.
Subprocess scripts get this directory's parent on PYTHONPATH (see
:func:`run_python`), so they can ``import sharks.helpers`` too.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import psutil

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC_DIR = os.path.join(os.path.dirname(TESTS_DIR), "src")
PYTHON = sys.executable
START_METHODS = ["forkserver", "spawn", "fork"]


# ---------------------------------------------------------------------------
# subprocess utilities


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([TESTS_DIR, SRC_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def run_python(args, *, input=None, timeout=20.0, cwd=None) -> subprocess.CompletedProcess:
    """Run ``python *args`` to completion; kill it (and its group) on timeout."""
    proc = subprocess.Popen(
        [PYTHON, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=child_env(), cwd=cwd, start_new_session=True,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"python {args[:1]} hung for {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant (test cleanup only)."""
    try:
        parent = psutil.Process(pid)
        procs = parent.children(recursive=True) + [parent]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def process_handles(pids) -> list:
    """psutil handles, taken now: killing them later cannot hit a reused pid."""
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.Error:
            pass
    return out


def kill_procs(handles) -> None:
    for p in handles:
        try:
            p.kill()  # psutil refuses if the pid was reused
        except psutil.Error:
            pass


def alive(pid: int) -> bool:
    """True if ``pid`` is a running (non-zombie) process."""
    try:
        p = psutil.Process(pid)
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(pids, timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def wait_for_files(directory: str, prefix: str, count: int, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        names = sorted(n for n in os.listdir(directory) if n.startswith(prefix))
        if len(names) >= count or time.monotonic() >= deadline:
            return names
        time.sleep(0.02)


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def describe(pids) -> str:
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            out.append(f"{pid} {p.status()} {' '.join(p.cmdline())[:150]}")
        except psutil.Error:
            out.append(f"{pid} (gone)")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# plain tasks


def square(x):
    return x * x


def ident(x):
    return x


def getpid(_=None):
    return os.getpid()


def sleep_return(seconds, value=None):
    time.sleep(seconds)
    return value if value is not None else seconds


def sleep_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def touch_and_sleep(directory, seconds, value=None):
    """Write ``started-<pid>-<value>`` then sleep: lets a test see the task run."""
    path = os.path.join(directory, f"started-{os.getpid()}-{value}")
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return value


def append_line(path, text):
    with open(path, "a") as f:
        f.write(f"{text}\n")
        f.flush()


def read_lines(path) -> list[str]:
    try:
        with open(path) as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except FileNotFoundError:
        return []


def ignore_sigterm_and_sleep(directory, seconds):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return touch_and_sleep(directory, seconds, "ignoring")


# ---------------------------------------------------------------------------
# crashes (guarantee 2)


def _no_core():
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except Exception:
        pass


def crash(kind, pidfile=None):
    """Kill the current worker in one of several ways, after writing its pid."""
    _no_core()
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(str(os.getpid()))
    sys.stdout.flush()
    sys.stderr.flush()
    if kind == "os_exit":
        os._exit(3)
    if kind == "os_exit0":
        os._exit(0)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "segv":
        import ctypes
        import faulthandler

        faulthandler.disable()
        ctypes.string_at(0)
    if kind == "c_exit":
        import ctypes

        ctypes.CDLL(None).exit(7)
    if kind == "abort":
        os.abort()
    time.sleep(5)
    raise AssertionError(f"crash({kind!r}) did not crash")


def crash_at(x, bad=3, kind="os_exit"):
    """A map task that kills its worker for item ``bad`` only."""
    if x == bad:
        crash(kind)
    return x * x


def crash_at_pair(args):
    x, bad = args
    return crash_at(x, bad)


def crash_once(marker):
    """Crash the first time (marker absent), succeed the next time: returns (first_pid, my_pid)."""
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        _no_core()
        os._exit(1)
    with open(marker) as f:
        first = int(f.read())
    return first, os.getpid()


def crash_always_counting(counter):
    append_line(counter, os.getpid())
    _no_core()
    os._exit(1)


# ---------------------------------------------------------------------------
# exceptions that do not round-trip (guarantee 3)


class MysqlStyleError(Exception):
    """Like mysql.connector.errors.Error (seed 003): ``self.args`` does not match
    ``__init__``'s parameters, so unpickling (which calls ``cls(*self.args)``)
    breaks inside ``__init__``."""

    def __init__(self, msg=None, errno=None, values=None, sqlstate=None):
        super().__init__()
        self.msg = msg
        self.errno = errno
        self.sqlstate = sqlstate
        # breaks when msg is an int, as it is when pickle calls cls(*self.args)
        self._full_msg = "{}: {}".format(errno, msg.strip())
        self.args = (self.errno, self._full_msg, self.sqlstate)

    def __str__(self):
        return self._full_msg


def raise_mysql(msg="Lost connection to MySQL server", errno=2055):
    raise MysqlStyleError(msg, errno)


def raise_mysql_at(x, bad=2):
    if x == bad:
        raise MysqlStyleError(f"item {x} failed", 1000 + x)
    return x * x


class LockHoldingError(Exception):
    """An exception carrying unpicklable state (a lock)."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()
        self.code = 42


def raise_lock_holding():
    raise LockHoldingError("holding a lock")


def raise_local_class():
    """Raises an exception whose class exists only inside this call."""

    class LocalOnlyError(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a}/{b}")

    raise LocalOnlyError("local", "only")


def raise_value_error(text="plain"):
    raise ValueError(text)


# ---------------------------------------------------------------------------
# results that cannot be pickled (guarantee 4)


class BadReduce:
    def __reduce__(self):
        raise RuntimeError("BadReduce refuses to be pickled")


def _explode_on_load():
    raise SystemExit("exploding while unpickled in the parent")


def _raise_on_load():
    raise ValueError("failing while unpickled in the parent")


class ExplodesOnLoad:
    """Pickles fine; unpickling raises SystemExit (seed 003's trap, made nastier)."""

    def __reduce__(self):
        return (_explode_on_load, ())


class RaisesOnLoad:
    def __reduce__(self):
        return (_raise_on_load, ())


def _fail_in_worker():
    from sharkcage import worker_info

    if worker_info() is not None:
        raise ValueError("this argument refuses to be unpickled in a worker")
    return FailsInWorker()


class FailsInWorker:
    """An argument that pickles in the parent but cannot be unpickled in a worker."""

    def __reduce__(self):
        return (_fail_in_worker, ())


def _gen():
    yield 1


def return_unpicklable(kind):
    if kind == "generator":
        return (i for i in range(3))
    if kind == "lock":
        return threading.Lock()
    if kind == "bad_reduce":
        return BadReduce()
    if kind == "nested_generator":
        return [1, 2, _gen()]
    if kind == "explodes_on_load":
        return ExplodesOnLoad()
    if kind == "raises_on_load":
        return RaisesOnLoad()
    raise AssertionError(kind)


UNPICKLABLE_TYPE = {
    "generator": "generator",
    "lock": "lock",
    "bad_reduce": "BadReduce",
    "nested_generator": "generator",
}


def unpicklable_at(x, bad=3, kind="generator"):
    if x == bad:
        return return_unpicklable(kind)
    return x * x


def return_lambda(k):
    return lambda x: x * k


# ---------------------------------------------------------------------------
# callables (guarantee 6)


def _load_counter(path):
    append_line(path, f"load {os.getpid()}")
    return ReduceCounter(path)


class ReduceCounter:
    """Counts its own picklings (``__reduce__``) and unpicklings in a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        append_line(self.path, f"dump {os.getpid()}")
        return (_load_counter, (self.path,))


class CountingCallable:
    """A callable object whose pickling is counted in a file."""

    def __init__(self, path, factor=2):
        self.path = path
        self.factor = factor

    def __call__(self, x):
        return x * self.factor

    def __reduce__(self):
        append_line(self.path, f"dump {os.getpid()}")
        return (_load_callable, (self.path, self.factor))


def _load_callable(path, factor):
    append_line(path, f"load {os.getpid()}")
    obj = CountingCallable.__new__(CountingCallable)
    obj.path, obj.factor = path, factor
    return obj


# ---------------------------------------------------------------------------
# nested pools (guarantee 10)


def nested_map(n, processes=2, start_method=None):
    import sharkcage

    with sharkcage.Pool(processes, start_method=start_method) as inner:
        values = inner.map(square, range(n))
        pids = set(inner.map(sleep_pid, [0.05] * (2 * processes), chunksize=1))
    return os.getpid(), values, sorted(pids)


def nested_imap(n):
    import sharkcage

    with sharkcage.Pool(2) as inner:
        return list(inner.imap(square, range(n)))


def nested_executor(n):
    import sharkcage

    with sharkcage.ProcessPoolExecutor(2) as ex:
        return list(ex.map(square, range(n)))


def nested_two_levels(n):
    import sharkcage

    with sharkcage.Pool(1) as inner:
        return inner.apply(nested_map, (n, 1))


def nested_pool_sleeping(directory, seconds):
    """Start an inner pool whose task sleeps; report the inner worker pids."""
    import sharkcage

    pool = sharkcage.Pool(1)
    r = pool.apply_async(touch_and_sleep, (directory, seconds, "inner"))
    touch_and_sleep(directory, seconds, "outer")
    return r.get()


# ---------------------------------------------------------------------------
# logging (guarantee 11)

TASK_LOGGER = "sharks.g11.task"


def log_then_return(i, levels=("warning",)):
    logger = logging.getLogger(TASK_LOGGER)
    for level in levels:
        getattr(logger, level)("record %s at %s from %d", i, level, os.getpid())
    return i


def log_exception(i):
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger(TASK_LOGGER).exception("failed %d", i)
    return i


def worker_log_levels():
    logger = logging.getLogger(TASK_LOGGER)
    return {lvl: logger.isEnabledFor(lvl) for lvl in (logging.DEBUG, logging.INFO, logging.WARNING)}


class ListHandler(logging.Handler):
    def __init__(self, level=logging.NOTSET):
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def messages(self):
        return [r.getMessage() for r in self.records]


# ---------------------------------------------------------------------------
# seed 000 (guarantee 1)

HELD_LOCK = threading.Lock()


def try_held_lock(timeout=1.0):
    """True if the module-level lock can be taken in this worker."""
    ok = HELD_LOCK.acquire(timeout=timeout)
    if ok:
        HELD_LOCK.release()
    return ok


def log_in_subprocess(_=None):
    logging.getLogger("sharks.seed000").error("hello, I did something")
    return os.getpid()


def sleep_then_touch(args):
    """Sleep ``seconds``, then create the file ``path``: a side effect that
    shows whether the task ran to its end."""
    seconds, path = args
    time.sleep(seconds)
    with open(path, "w"):
        pass
    return path
