"""Importable task functions for tests/test_compat.py and tests/test_scale.py.

They live in a module (not in the test files) so that multiprocessing's own
Pool/ProcessPoolExecutor, used as the reference, can pickle them by name too.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import sharkcage

_STATE = {"initialized": 0, "tag": None}
_HOLD: list = []


def square(x):
    return x * x


def add(a, b):
    return a + b


def power(base, exp=2):
    return base ** exp


def getpid(_=None):
    return os.getpid()


def pid_after(delay, _=None):
    time.sleep(delay)
    return os.getpid()


def slow_square(x, delay=0.02):
    time.sleep(delay)
    return x * x


def sleep_return(seconds, value):
    time.sleep(seconds)
    return value


def sleep_first(x):
    """Item 0 sleeps, the others return at once (for imap_unordered order)."""
    if x == 0:
        time.sleep(0.8)
    return x


def raise_value_error(msg="boom"):
    raise ValueError(msg)


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x * x


def mark_and_sleep(path, seconds, value="done"):
    """Write our pid to ``path`` (atomically), then sleep: the test knows we started."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(seconds)
    return value


def kill_self(_=None):
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(5)


def exit_self(code=0):
    os._exit(code)


# -- initializers / worker state ---------------------------------------------

def init_record(path, tag):
    """Record this worker's pid in ``path`` (one line per run); the state is ``tag``."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    _STATE["initialized"] += 1
    _STATE["tag"] = tag
    return {"tag": tag, "pid": os.getpid()}


def read_init():
    return (_STATE["initialized"], _STATE["tag"], os.getpid())


def state_and_info(_=None):
    info = sharkcage.worker_info()
    return (
        sharkcage.worker_state(),
        None if info is None else (info.worker_id, info.pid, info.tasks_done),
        os.getpid(),
    )


def init_state_dir(directory):
    return {"dir": str(directory)}


def finalize_to_file(state):
    path = os.path.join(state["dir"], f"final-{os.getpid()}")
    with open(path, "w") as f:
        f.write(repr(state))


def init_raises(path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    raise RuntimeError("no database here (initializer failed on purpose)")


# -- memory -------------------------------------------------------------------

def hold_memory(mb):
    """Allocate ``mb`` MiB, touch every page and keep it: the worker's RSS grows."""
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    _HOLD.append(block)
    return os.getpid()


# -- callbacks run in the parent -----------------------------------------------

def thread_name(_=None):
    return threading.current_thread().name


def reverse_delay(x):
    """Low items sleep longest: completion order is roughly the reverse of input order."""
    time.sleep(max(0.0, 0.3 - 0.06 * x))
    return x


# -- the soak test's task (tests/test_scale.py) -----------------------------------

def soak_task(spec):
    """``spec`` = (task_id, kind, delay): act out one outcome of the soak test."""
    task_id, kind, delay = spec
    if delay:
        time.sleep(delay)
    if kind == "ok":
        return (task_id, "ok")
    if kind == "raise":
        raise ValueError(f"soak task {task_id} raised")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    if kind == "unpicklable":
        return (task_id, threading.Lock())
    if kind == "timeout":
        time.sleep(30)
        return (task_id, "late")
    raise AssertionError(kind)
