"""Fault injectors for the crash matrix (tests/test_crash_matrix.py).

Inspired by loky's public crash matrix (ErrorAtPickle, ExitAtUnpickle,
CExitAtPickle, CrashAtUnpickle, raise_error/exit/c_exit/crash...), written
afresh: one fault function and two carrier classes, each parametrised by the
kind of fault, so every (side x fault) cell uses the same code.

Faults:

* ``"error"``   -- raise :class:`FaultError` (a plain, picklable exception)
* ``"sysexit"`` -- ``sys.exit(3)`` (raises SystemExit)
* ``"cexit"``   -- the C library's ``exit(0)``: the process ends without
                   unwinding Python (status 0 on purpose: the contract says a
                   worker that ends mid-task with any status, 0 included, is a
                   WorkerCrashedError)
* ``"segv"``    -- a segmentation fault (``ctypes.string_at(0)``, and
                   ``os.kill(getpid(), SIGSEGV)`` if that somehow returned)

This module must stay importable in the workers (it is found by reference
when pickled), so it imports nothing from the tests.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

FAULTS = ("error", "sysexit", "cexit", "segv")
SYSEXIT_CODE = 3


class FaultError(Exception):
    """The error the "error" fault raises; round-trips through pickle."""


def fault(kind: str, where: str = "") -> None:
    """Inject the fault ``kind`` right here (in whatever process runs this)."""
    if kind == "error":
        raise FaultError(f"injected error {where}".strip())
    if kind == "sysexit":
        sys.exit(SYSEXIT_CODE)
    if kind == "cexit":
        libc = ctypes.CDLL(None)
        libc.exit(0)
    if kind == "segv":
        ctypes.string_at(0)
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(5)
    raise ValueError(f"unknown fault {kind!r}")


class FaultAtPickle:
    """Faults when pickled (``__reduce__`` runs the fault)."""

    def __init__(self, kind: str, where: str = "at pickle"):
        self.kind = kind
        self.where = where

    def __reduce__(self):
        fault(self.kind, self.where)
        return (FaultAtPickle, (self.kind, self.where))  # not reached for the faults above


class FaultAtUnpickle:
    """Pickles fine; faults when unpickled (the loader calls ``fault``)."""

    def __init__(self, kind: str, where: str = "at unpickle"):
        self.kind = kind
        self.where = where

    def __reduce__(self):
        return (fault, (self.kind, self.where))


# ---------------------------------------------------------------------------
# Task functions. Each takes one item; an item is either a plain int (the
# task returns its square) or a carrier/marker that triggers the fault on the
# side under test.

class RunFault:
    """A marker argument: the task runs ``fault(kind)`` when it receives it."""

    def __init__(self, kind: str):
        self.kind = kind


class ReturnPickleFault:
    """A marker argument: the task returns FaultAtPickle(kind)."""

    def __init__(self, kind: str):
        self.kind = kind


class ReturnUnpickleFault:
    """A marker argument: the task returns FaultAtUnpickle(kind)."""

    def __init__(self, kind: str):
        self.kind = kind


def task(item):
    """``item ** 2`` for an int; otherwise act on the marker."""
    if isinstance(item, RunFault):
        fault(item.kind, "while running")
    if isinstance(item, ReturnPickleFault):
        return FaultAtPickle(item.kind, "pickling the result")
    if isinstance(item, ReturnUnpickleFault):
        return FaultAtUnpickle(item.kind, "unpickling the result")
    return item * item


def task2(a, b):
    """Two-argument variant for starmap/submit checks: ``task(a) + b``."""
    return task(a) + b


def square(x):
    return x * x


def getpid(_=None):
    return os.getpid()


def bad_item(side: str, kind: str):
    """The argument that injects fault ``kind`` on ``side`` of a task's round trip."""
    if side == "task_pickle":
        return FaultAtPickle(kind, "pickling the argument")
    if side == "task_unpickle":
        return FaultAtUnpickle(kind, "unpickling the argument")
    if side == "run":
        return RunFault(kind)
    if side == "result_pickle":
        return ReturnPickleFault(kind)
    if side == "result_unpickle":
        return ReturnUnpickleFault(kind)
    raise ValueError(side)


def task_in_pair(item):
    """``task(item)`` nested in builtin containers: ``(item, [task(item)])``
    for an int; the fault's carrier then sits one level down."""
    return (item if isinstance(item, int) else -1, [task(item)])
