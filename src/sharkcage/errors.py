"""The exception hierarchy of sharkcage (see CONTRACT.md, "Errors").

Every error says what happened, to which task, and what to do about it.
All of them derive from :class:`SharkcageError`, so one ``except`` clause
catches every failure the pool itself adds on top of the task's own errors.

>>> from sharkcage import SharkcageError, WorkerCrashedError
>>> issubclass(WorkerCrashedError, SharkcageError)
True
"""

from __future__ import annotations

import pickle
import signal as _signal

__all__ = [
    "SharkcageError",
    "WorkerCrashedError",
    "TaskTimeoutError",
    "RemoteError",
    "SerializationError",
    "WorkerInitError",
    "UnsafeForkError",
]


class SharkcageError(Exception):
    """Base class of every error sharkcage raises on its own account.

    >>> try:
    ...     raise SharkcageError("the pool is closed")
    ... except SharkcageError as e:
    ...     print(e)
    the pool is closed
    """


def signal_name(signum: int | None) -> str:
    """``SIGKILL`` for 9; a plain number for anything the OS does not name."""
    if signum is None:
        return "no signal"
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


_SIGNAL_HINTS = {
    _signal.SIGSEGV: "a segmentation fault: a bug in native code (a C extension, ctypes, or the interpreter)",
    _signal.SIGBUS: "a bus error: native code touched bad memory (often a truncated mmap or a full /dev/shm)",
    _signal.SIGABRT: "abort() was called: a native library hit a failed assertion",
    _signal.SIGFPE: "a floating-point exception in native code",
    _signal.SIGILL: "an illegal instruction in native code",
}


class WorkerCrashedError(SharkcageError):
    """The worker process running this task died before the task finished.

    Raised for that task only; the pool replaces the worker and keeps serving
    every other task. ``exitcode`` follows ``multiprocessing.Process.exitcode``
    (negative signal number on a signal death); ``signal`` is that signal
    number, or None.

    >>> e = WorkerCrashedError(pid=4242, exitcode=-9, task="apply(f)")
    >>> e.signal, e.exitcode
    (9, -9)
    >>> "SIGKILL" in str(e)
    True
    """

    def __init__(
        self,
        pid: int | None = None,
        exitcode: int | None = None,
        *,
        task: str | None = None,
        cause: str | None = None,
        attempts: int = 1,
        replaced: bool = True,
    ):
        self.replaced = replaced
        self.pid = pid
        self.exitcode = exitcode
        self.signal = -exitcode if exitcode is not None and exitcode < 0 else None
        self.task = task
        self.cause = cause
        self.attempts = attempts
        super().__init__(pid, exitcode)

    def __reduce__(self):
        return (
            _rebuild_crash,
            (self.pid, self.exitcode, self.task, self.cause, self.attempts, self.replaced),
        )

    def __str__(self) -> str:
        who = f"worker pid {self.pid}" if self.pid else "the worker"
        what = f" running {self.task}" if self.task else ""
        if self.signal is not None:
            how = f"was killed by {signal_name(self.signal)}"
        elif self.exitcode is None:
            how = "died"
        else:
            how = f"exited with status {self.exitcode} in the middle of the task"
        text = f"{who}{what} {how}"
        if self.attempts > 1:
            text += f" (after {self.attempts} attempts)"
        hint = self.cause
        if hint is None and self.signal is not None:
            hint = _SIGNAL_HINTS.get(self.signal)
        if hint:
            text += f"; likely cause: {hint}"
        if not self.replaced:
            return text + ". The actor is gone: create a new one, or pass restart=True to pool.actor()."
        return text + ". The pool replaced the worker; other tasks were not affected."


def _rebuild_crash(pid, exitcode, task, cause, attempts, replaced=True):
    return WorkerCrashedError(pid, exitcode, task=task, cause=cause, attempts=attempts, replaced=replaced)


class TaskTimeoutError(SharkcageError, TimeoutError):
    """The task ran longer than ``task_timeout``; its worker was killed and replaced.

    >>> issubclass(TaskTimeoutError, TimeoutError)
    True
    >>> print(TaskTimeoutError(2.0, task="task 3 of map(slow)", pid=77))
    task 3 of map(slow) ran longer than task_timeout=2.0 s; its worker (pid 77) was killed and replaced
    """

    def __init__(self, timeout: float | None = None, *, task: str | None = None, pid: int | None = None):
        self.timeout = timeout
        self.task = task
        self.pid = pid
        super().__init__(timeout)

    def __reduce__(self):
        return (_rebuild_timeout, (self.timeout, self.task, self.pid))

    def __str__(self) -> str:
        who = self.task or "the task"
        pid = f" (pid {self.pid})" if self.pid else ""
        return (
            f"{who} ran longer than task_timeout={self.timeout} s; "
            f"its worker{pid} was killed and replaced"
        )


def _rebuild_timeout(timeout, task, pid):
    return TaskTimeoutError(timeout, task=task, pid=pid)


class RemoteError(SharkcageError):
    """A task raised an exception that pickle alone could not bring back.

    ``type_name`` is the original class as ``module.qualname``, ``message``
    its ``str()`` in the worker, ``remote_traceback`` the worker's traceback
    text. When the original class is importable here, sharkcage raises an
    instance of a subclass of both that class and RemoteError instead, so
    ``except OriginalError`` still works.

    >>> e = RemoteError("mysql.connector.errors.Error", "2055: Lost connection", "Traceback ...")
    >>> e.type_name
    'mysql.connector.errors.Error'
    >>> "2055: Lost connection" in str(e)
    True
    """

    def __init__(self, type_name: str = "", message: str = "", remote_traceback: str = ""):
        # Set as attributes, never through __init__ of a foreign class: the
        # rebuilt subclasses bypass the original __init__ on purpose.
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        Exception.__init__(self, type_name, message)

    def __reduce__(self):
        return (RemoteError, (self.type_name, self.message, self.remote_traceback))

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class SerializationError(SharkcageError, pickle.PicklingError):
    """An argument or a result could not be serialized (or deserialized).

    ``direction`` is ``"argument"`` or ``"result"``; ``task`` names the task;
    ``type_name`` the type of the object that failed.

    >>> e = SerializationError("result", "task 2 of map(f)", "generator", "cannot pickle 'generator' object")
    >>> print(e)
    cannot serialize the result of task 2 of map(f): an object of type generator failed: cannot pickle 'generator' object
    """

    def __init__(
        self,
        direction: str = "",
        task: str = "",
        type_name: str = "",
        reason: str = "",
        hint: str | None = None,
    ):
        self.direction = direction
        self.task = task
        self.type_name = type_name
        self.reason = reason
        self.hint = hint
        super().__init__(direction, task, type_name, reason)

    def __reduce__(self):
        return (SerializationError, (self.direction, self.task, self.type_name, self.reason, self.hint))

    def __str__(self) -> str:
        verb = "deserialize" if self.reason.startswith("(unpickling)") else "serialize"
        text = (
            f"cannot {verb} the {self.direction} of {self.task}: "
            f"an object of type {self.type_name} failed: {self.reason}"
        )
        if self.hint:
            text += f". {self.hint}"
        return text


class WorkerInitError(SharkcageError):
    """Workers failed to start three times in a row.

    Pending and later tasks fail with this error instead of the stdlib's
    endless respawn loop; ``init_traceback`` carries the initializer's
    traceback (or how the worker died while starting).

    >>> print(WorkerInitError("ValueError: no database", attempts=3).args[0])
    workers failed to start 3 times in a row; the last failure: ValueError: no database
    """

    def __init__(self, init_traceback: str = "", *, attempts: int = 3):
        self.init_traceback = init_traceback
        self.attempts = attempts
        super().__init__(
            f"workers failed to start {attempts} times in a row; the last failure: "
            + init_traceback.strip()
        )

    def __reduce__(self):
        return (_rebuild_init, (self.init_traceback, self.attempts))


def _rebuild_init(tb, attempts):
    return WorkerInitError(tb, attempts=attempts)


class UnsafeForkError(SharkcageError):
    """``fork`` was asked for while the parent runs threads other than sharkcage's.

    Forking a multi-threaded process copies locks held by threads that will
    not exist in the child (seed 000): the child can deadlock. Use the default
    start method, or pass ``allow_unsafe_fork=True`` if you know better.

    >>> issubclass(UnsafeForkError, SharkcageError)
    True
    """
