"""Tasks and throwaway clusters for tests/test_backends_cluster.py.

The tasks live in this importable module so every backend finds them by
reference: the local workers, and the Dask and Ray workers started by
:func:`start_dask` / :func:`start_ray`, which get this directory on their
``PYTHONPATH``.

Cluster processes are started *detached* (``setsid`` from a shell that exits
at once), so they are not children of the test process: a Dask nanny or a
raylet that starts a replacement worker during a test is not a "leftover
child" for conftest's per-test check. Each cluster process leads its own
session; :meth:`Cluster.stop` kills every process of those sessions (Ray's
workers change process group but stay in the head's session) and waits
until none is left.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SRC_DIR = os.path.join(os.path.dirname(TESTS_DIR), "src")
BIN = os.path.dirname(sys.executable)


# ---------------------------------------------------------------------------
# tasks


def square(x):
    return x * x


def add_one(x):
    return x + 1


def add_one_in_place(a):
    a += 1  # writes into the argument itself
    return a


def in_object_store(a) -> bool:
    """Whether ``a`` is a writable array over Ray's object store (no copy was made)."""
    from sharkcage.backends import _store_views

    address = a.__array_interface__["data"][0]
    return bool(a.flags.writeable) and any(lo <= address < hi for lo, hi in _store_views._store_ranges())


def spoil_then_crash_once(a, marker: str):
    """Overwrite the argument in place, then die the first time: a rerun must
    get the argument as it was sent."""
    total = float(a.sum())
    a[:] = -1
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return total


def sleep_return(seconds, value=None):
    time.sleep(seconds)
    return seconds if value is None else value


def raise_value_error(text="plain"):
    raise ValueError(text)


def sys_exit(code=3):
    sys.exit(code)


class MysqlStyleError(Exception):
    """Like mysql.connector.errors.Error (seed 003): ``self.args`` does not
    match ``__init__``'s parameters, so unpickling it (which calls
    ``cls(*self.args)``) breaks inside ``__init__``."""

    def __init__(self, msg=None, errno=None, values=None, sqlstate=None):
        super().__init__()
        self.msg = msg
        self.errno = errno
        self.sqlstate = sqlstate
        self._full_msg = "{}: {}".format(errno, msg.strip())  # breaks when msg is an int
        self.args = (self.errno, self._full_msg, self.sqlstate)

    def __str__(self):
        return self._full_msg


def raise_mysql(msg="Lost connection to MySQL server", errno=2055):
    raise MysqlStyleError(msg, errno)


def raise_mysql_at(x, bad=2):
    if x == bad:
        raise MysqlStyleError(f"item {x} failed", 1000 + x)
    return x * x


def return_generator(x):
    """A result that cannot be pickled."""
    return (i for i in range(x))


def unpicklable_at(x, bad=3):
    return return_generator(x) if x == bad else x * x


def crash_at(x, bad=3, how="sigkill"):
    """Kill the process running this task when ``x == bad``."""
    if x == bad:
        if how == "os_exit":
            os._exit(0)  # even status 0 mid-task is a crash
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def log_and_return(x):
    logging.getLogger("cluster_helpers").info("task %s says hello", x)
    return x


def nested_pool_sum(n):
    from sharkcage import Pool

    with Pool(2) as p:
        return sum(p.map(abs, range(-n, 0)))


def init_state(value):
    return {"init": value, "pid": os.getpid()}


class Counter:
    """An actor: state that must persist between calls (seed 004)."""

    def __init__(self, start=0, fail=False):
        if fail:
            raise RuntimeError("the constructor refused")
        self.count = start

    def add(self, n=1):
        self.count += n
        return self.count

    def fail(self, text):
        raise ValueError(text)

    def pid(self):
        return os.getpid()

    def sleep(self, seconds):
        time.sleep(seconds)
        return self.count

    def log(self, text):
        logging.getLogger("sharkcage.test.actor").warning(text)
        return text

    def generator(self):
        return (i for i in range(3))


def share_sum(arr, i):
    """A shared array's sum plus ``i`` (a task receives the object, not the handle)."""
    return float(arr.sum()) + i


def share_key_sum(d, key):
    return sum(d[key])


def read_state(_=None):
    from sharkcage import worker_state

    return worker_state()


def make_closure(offset):
    """A closure: only travels by value (cloudpickle)."""
    big = list(range(50_000))  # makes the pickled function bigger than the inline limit

    def add(x):
        return x + offset + big[-1] - 49_999

    return add


# ---------------------------------------------------------------------------
# clusters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([TESTS_DIR, SRC_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "disabled"  # a token in ~/.ray would otherwise lock the test driver out
    env.pop("PYTEST_CURRENT_TEST", None)
    env.update(extra or {})
    return env


def detach(cmd: list[str], log_path: str, env: dict) -> int:
    """Start ``cmd`` in a new session, not as our child; its pid (= its session id)."""
    out = subprocess.run(
        ["/bin/sh", "-c", 'setsid "$@" > "$SC_LOG" 2>&1 < /dev/null & echo $!', "sh", *cmd],
        env=dict(env, SC_LOG=log_path), capture_output=True, text=True, timeout=30, check=True,
    )
    return int(out.stdout.strip())


def _session_members(sids: set[int]) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) in sids:
                found.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


class Cluster:
    """Detached cluster processes: their sessions, their logs, and how to stop them."""

    def __init__(self, name: str):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"sc{name}-")  # short: Ray's socket paths must fit 107 bytes
        self.sids: set[int] = set()
        self.address: str | None = None

    def start(self, cmd: list[str], log_name: str, env: dict) -> int:
        pid = detach(cmd, os.path.join(self.dir, log_name), env)
        self.sids.add(pid)
        return pid

    def log(self, log_name: str) -> str:
        try:
            with open(os.path.join(self.dir, log_name), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in sorted(os.listdir(self.dir)) if n.endswith(".log"))

    def stop(self, grace: float = 3.0) -> list[str]:
        """Stop every process of the cluster's sessions; the ones that would not go.

        multiprocessing's resource trackers (Dask's nannies start one) are
        left to exit on their own once the processes they serve are gone:
        that is when they unlink what a killed worker left behind (its
        semaphores in /dev/shm). Killed with the rest, they leak those.
        """
        procs = _session_members(self.sids)
        for p in procs:
            try:
                p.terminate()  # (a resource tracker ignores SIGTERM)
            except psutil.Error:
                pass
        psutil.wait_procs([p for p in procs if not _is_tracker(p)], timeout=grace)
        deadline = time.monotonic() + 10
        while True:
            left = [p for p in _session_members(self.sids) if _alive(p)]
            served = [p for p in left if not _is_tracker(p)]
            if not left or time.monotonic() > deadline:
                break
            for p in served or left:  # the trackers only once nothing they serve is left
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(left, timeout=1)
        if not left:  # its logs and sockets go with it (kept when something would not stop)
            shutil.rmtree(self.dir, ignore_errors=True)
        return [f"{p.pid} {' '.join(_cmdline(p))[:100]}" for p in left]


def _is_tracker(p: psutil.Process) -> bool:
    return any("resource_tracker" in part for part in _cmdline(p))


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _wait(what: str, check, timeout: float, cluster: Cluster):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    logs = cluster.logs()
    cluster.stop()
    raise RuntimeError(f"{what} did not happen within {timeout} s\n{logs}")


def start_dask(workers: int = 2, timeout: float = 90.0, allowed_failures: int = 0, env: dict | None = None) -> Cluster:
    """A scheduler and ``workers`` single-threaded workers (each behind a
    nanny, which replaces a worker that dies) on 127.0.0.1.

    ``allowed_failures`` is the scheduler's KilledWorker threshold: 0 keeps
    the crash tests short (Dask's default is 3), and is the harshest case for
    innocent tasks queued beside a crashing one (they get KilledWorker too,
    and must still succeed when sharkcage reruns them alone).
    """
    from distributed import Client

    c = Cluster("dask")
    env = cluster_env({"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures), **(env or {})})
    sched_file = os.path.join(c.dir, "scheduler.json")
    c.start([os.path.join(BIN, "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", sched_file], "scheduler.log", env)

    def address():
        try:
            with open(sched_file) as f:
                return json.load(f)["address"]
        except (OSError, ValueError, KeyError):
            return None

    c.address = _wait("the Dask scheduler starting", address, timeout, c)
    for i in range(workers):
        c.start([os.path.join(BIN, "dask"), "worker", c.address, "--nworkers", "1", "--nthreads", "1",
                 "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", "--name", f"w{i}",
                 "--local-directory", os.path.join(c.dir, f"w{i}")], f"worker{i}.log", env)
    client = Client(c.address, set_as_default=False, timeout=timeout)
    try:
        _wait(f"{workers} Dask workers joining", lambda: sum(client.nthreads().values()) >= workers, timeout, c)
    finally:
        client.close()
    return c


def start_ray(cpus: int = 2, timeout: float = 90.0) -> Cluster:
    """A Ray head (``ray start --head --block``) on 127.0.0.1 with ``cpus`` CPUs,
    on ports picked here so it never meets another Ray on this machine."""
    c = Cluster("ray")
    port = free_port()
    cmd = [os.path.join(BIN, "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(port), "--num-cpus", str(cpus), "--include-dashboard", "false",
           "--dashboard-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
           "--disable-usage-stats", "--temp-dir", os.path.join(c.dir, "ray")]
    c.start(cmd, "head.log", cluster_env())
    _wait("the Ray head starting", lambda: "Ray runtime started" in c.log("head.log"), timeout, c)
    c.address = f"127.0.0.1:{port}"
    return c


class SlowCounter(Counter):
    """A Counter whose constructor takes ``seconds``: building an actor is
    not one of its calls, so no call's task_timeout may count it."""

    def __init__(self, seconds):
        time.sleep(seconds)
        super().__init__()
