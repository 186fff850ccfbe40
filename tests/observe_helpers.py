"""Importable task functions for tests/test_observe_pool.py.

Function names that end in ``_marker`` are looked for in stack dumps and
warnings, so they must be unique in the code base.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

import sharkcage


def square(x):
    return x * x


def add(a, b):
    return a + b


def fail_on_three(x):
    if x == 3:
        raise ValueError("task 3 fails on purpose")
    return x


def cpu_task(x, seconds=0.02):
    """Burn CPU (not sleep) for about ``seconds``."""
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return x


def raise_error(_=None):
    raise RuntimeError("an ordinary task error")


def kill_self(_=None):
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def _mark(path: str) -> None:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def stuck_in_c_marker(seconds: float, path: str):
    """Sits in libc's sleep(3) (C code, GIL released) after writing its pid to ``path``.

    A signal interrupts sleep(3) early; loop so the task stays stuck anyway.
    """
    libc = ctypes.CDLL(None)
    _mark(path)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        libc.sleep(1)
    return os.getpid()


def busy_in_c_with_the_gil_marker(seconds: float, path: str):
    """Holds the GIL in C code: ``time.sleep`` via ctypes.pythonapi would
    release it; a tight C loop through ``ctypes.pythonapi`` does not, so use
    a large ``sum`` over a C-implemented iterator."""
    _mark(path)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(2_000_000))
    return os.getpid()


def sleepy_python_marker(seconds: float, path: str | None = None):
    if path is not None:
        _mark(path)
    time.sleep(seconds)
    return os.getpid()


def slow_warned_marker(seconds: float):
    time.sleep(seconds)
    return "done"


def print_lines(n: int):
    """Prints ``n`` numbered lines to stdout and one to stderr; returns the worker id."""
    wid = sharkcage.worker_info().worker_id
    for i in range(n):
        print(f"out line {i} from pid {os.getpid()}")
    print(f"err line from pid {os.getpid()}", file=sys.stderr)
    return wid, os.getpid()


def print_in_pieces(_=None):
    """One line written in three pieces, with pauses: must arrive as one line."""
    for piece in ("alpha-", "beta-", "gamma"):
        sys.stdout.write(piece)
        sys.stdout.flush()
        time.sleep(0.05)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return sharkcage.worker_info().worker_id


def print_then_crash(tag: str):
    print(f"last words {tag}")
    print(f"last error words {tag}", file=sys.stderr)
    os._exit(1)


def print_and_write_fd(tag: str):
    """Prints through Python's streams and writes to fds 1 and 2 directly."""
    print(f"python stdout {tag}", flush=True)
    print(f"python stderr {tag}", file=sys.stderr, flush=True)
    os.write(1, f"raw fd1 {tag}\n".encode())
    os.write(2, f"raw fd2 {tag}\n".encode())
    return os.getpid()
