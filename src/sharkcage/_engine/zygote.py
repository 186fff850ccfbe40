"""The zygote: one clean, single-threaded process every worker is forked from.

Why not the stdlib's forkserver: its protocol costs a start. Each new
process is a fresh connection to the server, the resource tracker's fd and
a pickled preparation record (``sys.path``, main module, the Process
object) per child, and the child unpickles and "prepares" before running a
line of ours. The zygote speaks one message each way over a SEQPACKET
socket it was born with::

    parent (any thread, under a lock)              zygote (its only thread)
    ---------------------------------              ------------------------
    sendmsg(name, fds=[channel, slot, out?, err?]) fork() -> the child runs
                                                     worker.main(channel, ...)
    recvmsg <- (pid, fds=[status])                 pidfd_open(child): when it
                                                     exits, waitpid() and write
    the status pipe is the worker's sentinel:         its exit code into the
      readable when the exit code is in, or          status pipe, then close it
      at EOF when the zygote itself died

The worker's configuration does not travel here: the supervisor writes it
as the first frame on the worker's own channel, so it has no size limit.

How the zygote is born (once per process, shared by every pool):

* *forked* from the parent when the parent is single-threaded at the OS
  level (OpenBLAS's fork-safe thread pool allowed): no interpreter start,
  every module already imported, and no lock can be held by a thread that
  will not exist in the child because there is none. Every fd it inherited
  is pointed at /dev/null rather than closed, so that no Python object of
  the parent's heap it carries can ever close a number a worker reuses;
* otherwise *spawned* (``python -c``) with the parent's ``sys.path``,
  working directory, authkey and imported packages preloaded.

Either way the zygote ignores Ctrl-C (it is the parent's to handle) and
exits when the parent's end of the socket closes; its workers, which set
PR_SET_PDEATHSIG, die with it, and their sentinels fire. The next pool
start makes a new zygote.

The resource tracker (who unlinks shared-memory segments a SIGKILLed
process left behind) belongs to the zygote: its pipe is made at birth and
adopted by the parent, so parent, zygote and workers all share one; its
process (a fresh interpreter, at low priority) is launched only when the
first segment is registered.

>>> import os
>>> from sharkcage import Pool
>>> from sharkcage._engine import zygote
>>> with Pool(1) as pool:
...     worker_pid = pool.apply(os.getpid)
>>> zygote.ensure().pid in zygote.service_pids()   # one zygote, kept for the next pool
True
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import time

_lock = threading.Lock()
_zygote: "Zygote | None" = None
_STATUS = struct.Struct("q")
_UNKNOWN_EXIT = -signal.SIGKILL  # the zygote died first: its workers were SIGKILLed (PDEATHSIG)


class ZygoteError(OSError):
    """The zygote could not start a worker (it died, or fork failed there)."""


class WorkerProcess:
    """The parent's handle on a worker forked by the zygote.

    Quacks like the part of ``multiprocessing.Process`` the supervisor
    uses: ``pid``, ``sentinel`` (an fd, readable once the worker is gone),
    ``exitcode``, ``join``, ``is_alive``, ``close``.

    The sentinel is the parent's own pidfd of the worker: readable the
    moment it exits, whatever the zygote is doing (even stopped). Its exit
    code comes through the status pipe the zygote writes when it reaps it;
    a status that does not come within a join's timeout leaves ``exitcode``
    None ("died"), and EOF on the pipe means the zygote died first (and the
    worker with it: PDEATHSIG).
    """

    __slots__ = ("pid", "sentinel", "_status", "_exitcode", "_got")

    def __init__(self, pid: int, status: int):
        self.pid = pid
        self._status = status
        try:
            self.sentinel = os.pidfd_open(pid)
        except OSError:  # gone (and reaped) already: the status pipe says so as well
            self.sentinel = status
        self._exitcode = None
        self._got = b""

    def _poll(self, timeout: float | None) -> None:
        if self._exitcode is not None or self._status is None:
            return
        poller = select.poll()  # not select.select: it refuses fds above 1023
        poller.register(self._status, select.POLLIN)
        if not poller.poll(None if timeout is None else int(timeout * 1000)):
            return
        try:
            data = os.read(self._status, _STATUS.size - len(self._got))
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # EOF without a status: the zygote died (and with it, the worker)
            self._exitcode = _UNKNOWN_EXIT
            return
        self._got += data
        if len(self._got) == _STATUS.size:
            self._exitcode = _STATUS.unpack(self._got)[0]

    @property
    def exitcode(self) -> int | None:
        self._poll(0)
        return self._exitcode

    def join(self, timeout: float | None = None) -> None:
        self._poll(timeout)

    def is_alive(self) -> bool:
        if self.exitcode is not None:
            return False
        if self.sentinel is None or self.sentinel == self._status:
            return True
        poller = select.poll()
        poller.register(self.sentinel, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        for fd in {self.sentinel, self._status} - {None}:
            try:
                os.close(fd)
            except OSError:
                pass
        self.sentinel = self._status = None


_REPLY_TIMEOUT = 30.0  # seconds a zygote may take to answer (a fork of a huge process is slow)
_PRELOAD_TIMEOUT = 120.0  # seconds a spawned zygote may take to import the parent's packages


class Zygote:
    """The parent's end of a zygote: :meth:`start` forks one worker there."""

    def __init__(self, sock: socket.socket, pid: int, popen=None, hello: bool = True):
        sock.settimeout(_REPLY_TIMEOUT)  # a stuck or stopped zygote fails a start, never hangs the pool
        self.sock = sock
        self.pid = pid
        self._popen = popen  # the subprocess.Popen of a spawned zygote (reaped with it)
        self._lock = threading.Lock()
        self._hello_pending = hello  # a forked zygote says hello with its tracker
        self.alive = True

    def adopt_tracker(self) -> None:
        """Read the zygote's hello once: the resource tracker it started
        becomes this process's too (unless this one already has one)."""
        if self._hello_pending:
            with self._lock:
                self._read_hello()

    def _read_hello(self) -> None:
        if not self._hello_pending:
            return
        self._hello_pending = False
        try:
            msg, fds, _, _ = socket.recv_fds(self.sock, 256, 1)
        except OSError:
            msg, fds = b"", []
        if not msg:
            self.alive = False
            return
        tracker = _tracker()
        if not fds:
            return  # it could not start one: each process starts its own when it must
        if tracker._fd is None:
            tracker._fd = fds[0]
            tracker._pid = None
        else:
            os.close(fds[0])

    def start(self, name: str, fds: list[int]) -> WorkerProcess:
        """Fork a worker named ``name`` holding ``fds`` (channel, slot, out?, err?)."""
        request = pickle.dumps((name, len(fds)))
        with self._lock:
            self._read_hello()
            if not self.alive:
                raise ZygoteError("the zygote has exited")
            try:
                socket.send_fds(self.sock, [request], fds)
                msg, got, _, _ = socket.recv_fds(self.sock, 256, 1)
            except OSError as e:
                self.alive = False
                raise ZygoteError(f"the zygote is gone ({e!r})") from e
            if not msg:
                self.alive = False
                for fd in got:
                    os.close(fd)
                raise ZygoteError("the zygote has exited")
        reply = pickle.loads(msg)
        if reply[0] != "ok":  # fork failed in the zygote (EAGAIN, ENOMEM)
            for fd in got:
                os.close(fd)
            raise ZygoteError(reply[1])
        return WorkerProcess(reply[1], got[0])

    def stop(self) -> None:
        """Close our end and make sure the zygote is gone (it may be stuck,
        or stopped): its workers, which die with it, were lost already."""
        self.alive = False
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            if self._popen is not None:
                self._popen.wait(5)
            else:
                os.waitpid(self.pid, 0)
        except Exception:  # noqa: BLE001 - reaped already, or not ours to reap
            pass


def ensure() -> Zygote:
    """The process's live zygote, started (forked or spawned) on first use."""
    global _zygote
    with _lock:
        if _zygote is not None and _zygote.alive and _reap_if_dead(_zygote):
            return _zygote
        if _zygote is not None:
            _zygote.stop()
            _zygote = None
            _forget_dead_tracker_pipe()
        from sharkcage._engine import start

        if start.fork_is_safe_here():
            try:
                _zygote = _fork_zygote()
                return _zygote
            except OSError:
                pass  # no fork here: spawn one
        _zygote = _spawn_zygote()
        return _zygote


def close_at_exit() -> None:
    """At interpreter exit, once the pools are stopped: close this process's
    end of its zygote's socket. The zygote reads EOF, lets its spare go and
    exits (its children are the stopped pools' workers); the socket is not
    left to the garbage collector, which warns about it (ResourceWarning).
    """
    z = _zygote
    if z is None:
        return
    z.alive = False
    try:
        z.sock.close()
    except OSError:
        pass


def adopt_tracker() -> None:
    """Make sure this process uses its zygote's resource tracker, if it has
    a zygote (shm calls this before it registers a segment)."""
    z = _zygote
    if z is not None and z._hello_pending:
        z.adopt_tracker()


def service_pids() -> set[int]:
    """The pids of the zygote and of the resource tracker it started (for
    leak checks and ``sharkcage doctor``: long-lived helpers, not leaks)."""
    z = _zygote
    if z is None or not z.alive:
        return set()
    pids = {z.pid}
    try:
        import psutil

        for child in psutil.Process(z.pid).children():
            if child.name() == _SPARE_NAME or "resource_tracker" in " ".join(child.cmdline()):
                pids.add(child.pid)
    except Exception:  # noqa: BLE001 - psutil.Error, or no psutil: the zygote alone
        pass
    return pids


def _reap_if_dead(z: Zygote) -> bool:
    """True if the zygote still runs (a dead forked one is reaped here)."""
    try:
        if z._popen is not None:
            return z._popen.poll() is None
        pid, _ = os.waitpid(z.pid, os.WNOHANG)
        return pid == 0
    except ChildProcessError:
        return False


def _after_fork_in_child() -> None:
    # A forked child (a user's fork, start_method="fork") holds a copy of our
    # end of the socket: that zygote serves its parent, not it.
    global _zygote, _lock
    _lock = threading.Lock()
    z, _zygote = _zygote, None
    if z is not None:
        try:
            z.sock.close()
        except OSError:
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------
# Birth


def _tracker():
    from multiprocessing import resource_tracker

    return resource_tracker._resource_tracker


def _forget_dead_tracker_pipe() -> None:
    """A zygote that died before launching the tracker took the pipe's read
    end with it: drop our write end quietly, so the next tracker starts
    fresh (the stdlib would warn that its tracker "died unexpectedly")."""
    imported = sys.modules.get("multiprocessing.resource_tracker")
    if imported is None:
        return
    tracker = imported._resource_tracker
    fd = tracker._fd
    if fd is None or tracker._pid is not None:
        return  # none, or one this process launched and watches itself
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if any(ev & select.POLLERR for _, ev in poller.poll(0)):
        tracker._fd = None
        try:
            os.close(fd)
        except OSError:
            pass


def _fork_zygote() -> Zygote:
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tracker = _tracker()  # imported before the fork: the zygote and every worker need it
    tracker_fd = tracker._fd
    import sharkcage._engine.worker  # noqa: F401 - every worker needs it: import it once, here

    pid = os.fork()
    if pid == 0:  # the zygote
        code = 0
        try:
            keep = {0, 1, 2, child_sock.fileno()}
            if tracker_fd is not None:
                keep.add(tracker_fd)
            _neutralize_fds(keep)
            parent_sock.detach()  # its fd now points at /dev/null: not ours to close
            launch = _tracker_pipe() if tracker_fd is None else None
            tracker._pid = None  # its parent reaps it, not its users
            socket.send_fds(child_sock, [b"hello"], [] if tracker._fd is None else [tracker._fd])
            _serve(child_sock, launch)
        except BaseException:  # noqa: BLE001 - never run the parent's code on the way out
            code = 1
        finally:
            os._exit(code)
    child_sock.close()
    # Its hello (the tracker it started) is read when first needed, so the
    # parent goes on setting up the pool meanwhile.
    return Zygote(parent_sock, pid)


def _spawn_zygote() -> Zygote:
    import subprocess

    from sharkcage._engine import start

    tracker = _tracker()
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = (
        f"import sys; sys.path.insert(0, {package_root!r}); "
        f"from sharkcage._engine.zygote import _spawned_main; _spawned_main({child_sock.fileno()})"
    )
    args = [sys.executable, *subprocess._args_from_interpreter_flags(), "-c", code]
    fds = [child_sock.fileno()] + ([tracker._fd] if tracker._fd is not None else [])
    try:
        popen = subprocess.Popen(args, pass_fds=fds, stdin=subprocess.DEVNULL)
    finally:
        child_sock.close()
    import multiprocessing

    prep = dict(
        sys_path=list(sys.path),
        cwd=os.getcwd(),
        authkey=bytes(multiprocessing.current_process().authkey),
        preload=start.preload_candidates(),
        tracker_fd=tracker._fd,
    )
    parent_sock.settimeout(_PRELOAD_TIMEOUT)  # a preload that hangs fails the start instead
    try:
        parent_sock.sendall(pickle.dumps(prep))
        msg = parent_sock.recv(256)  # "ready" once the preload is done
        if not msg:
            raise OSError("the spawned zygote exited at start")
    except OSError:
        parent_sock.close()
        popen.kill()
        popen.wait()
        raise
    return Zygote(parent_sock, popen.pid, popen=popen, hello=False)


def _spawned_main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    prep = pickle.loads(sock.recv(1 << 20))
    sys.path[:] = prep["sys_path"]
    try:
        os.chdir(prep["cwd"])
    except OSError:
        pass
    import multiprocessing

    multiprocessing.current_process().authkey = prep["authkey"]
    if prep["tracker_fd"] is not None:
        _tracker()._fd = prep["tracker_fd"]
    os.environ["SHARKCAGE_PRELOAD"] = ",".join(prep["preload"])
    from sharkcage._engine import preload  # noqa: F401 - imports the parent's packages, guarded

    os.environ.pop("SHARKCAGE_PRELOAD", None)
    import sharkcage._engine.worker  # noqa: F401

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock.sendall(b"ready")
    try:
        _serve(sock)
    finally:
        os._exit(0)


def _neutralize_fds(keep: set[int]) -> None:
    """Point every inherited fd not in ``keep`` at /dev/null.

    Closing them would free their numbers for reuse, and a parent's object
    this process still carries (a log file, a socket) could close a reused
    number when collected — a worker's channel, say. /dev/null in their
    place releases what they referred to and keeps the numbers taken.
    """
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd in keep or fd == devnull:
            continue
        try:
            os.dup2(devnull, fd, inheritable=False)
        except OSError:
            pass
    os.close(devnull)


def _tracker_pipe():
    """Give this process a resource tracker's pipe now, its process later.

    Children forked from here inherit the write end at once; what they
    register waits in the pipe until the tracker (a fresh interpreter) is
    launched, which the zygote does when the first line arrives — most
    pools never use shared memory, and on a small machine that start would
    take a core from their first workers. Returns the function that
    launches it.
    """
    tracker = _tracker()
    r, w = os.pipe()
    tracker._fd = w

    def launch() -> int | None:
        from multiprocessing import spawn, util

        exe = spawn.get_executable()
        args = [exe] + util._args_from_interpreter_flags()
        args += ["-c", f"from multiprocessing.resource_tracker import main;main({r})"]
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            pid = util.spawnv_passfds(exe, args, [r])
        except OSError:
            pid = None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(r)
        if pid is not None:
            try:  # it only drains register/unregister lines: never urgent
                os.setpriority(os.PRIO_PROCESS, pid, 10)
            except OSError:
                pass
        return pid

    launch.read_end = r
    return launch


# ---------------------------------------------------------------------------
# The zygote's loop


def _serve(ctl: socket.socket, launch_tracker=None) -> None:
    _Server(ctl, launch_tracker).run()


_SPARE_NAME = "sc-spare"
_IDLE_BEFORE_SPARE = 0.05  # seconds of quiet after a hand-over before the next spare is forked
_TRACKER_DELAY = 0.2  # the tracker starts after this long, once the zygote is quiet...
_TRACKER_LATEST = 1.0  # ...and at the latest after this (its pipe holds what waits)  # its /proc comm while it waits: how leak checks tell it from a worker


class _Server:
    """The zygote's loop: fork workers on request, reap them, keep a spare.

    The spare is a child forked ahead of need, waiting on a socket of its
    own: a request hands it the worker's fds, so a new worker — the first
    of a pool, or a crashed one's replacement — costs a message, not a
    fork. A new spare is forked when the zygote is idle again.
    """

    def __init__(self, ctl: socket.socket, launch_tracker):
        import selectors

        self.ctl = ctl
        self.sel = selectors.DefaultSelector()
        self.sel.register(ctl, selectors.EVENT_READ, None)
        self.children: dict[int, tuple[int, int]] = {}  # pid -> (pidfd, status write end)
        self.spare: tuple[int, socket.socket, int] | None = None  # pid, its socket, status read end
        self.spare_ok = True  # False after a failed fork: no retry until a request succeeds
        self.launch_tracker = launch_tracker
        self.tracker_r = getattr(launch_tracker, "read_end", None)
        if self.tracker_r is not None:
            # The tracker process starts when the first line is written to its
            # pipe (a segment registered): a pool that never uses shared
            # memory never pays for that interpreter.
            self.sel.register(self.tracker_r, selectors.EVENT_READ, "tracker")
        self.spare_at = time.monotonic()  # the first spare at once: the pool's first worker is coming

    def run(self) -> None:
        import gc

        # Everything the zygote holds now is every child's, copy-on-write:
        # keep the collector from walking (and so writing to) those pages in
        # each child.
        gc.freeze()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        try:
            while self._turn():
                pass
        finally:
            self._wait_for_children()

    def _turn(self) -> bool:
        """One loop turn; False once the parent is gone."""
        # A new spare waits a little after a hand-over, so that its fork does
        # not take the CPU from the worker just handed over (2 cores).
        want_spare = self.spare is None and self.spare_ok
        timeout = max(0.0, self.spare_at - time.monotonic()) if want_spare else None
        events = self.sel.select(timeout)
        for key, _ in events:
            if key.data == "tracker":
                self._launch_tracker()
            elif key.data is not None:
                self._reap(key.data)
            elif not self._request():
                return False
        if not events and want_spare and time.monotonic() >= self.spare_at:
            self._fork_spare()
        return True

    def _launch_tracker(self) -> None:
        if self.launch_tracker is not None:
            self.sel.unregister(self.tracker_r)
            self.launch_tracker()
            self.launch_tracker = self.tracker_r = None

    def _wait_for_children(self, timeout: float = 2.0) -> None:
        """The parent is gone: let the spare go and reap the workers as they
        exit (each watches its channel), so none is left a zombie of an init
        that does not reap (a container's)."""
        # The closed control socket stays readable (EOF): watching it now
        # would turn the wait into a busy loop.
        self.sel.unregister(self.ctl)
        if self.spare is not None:
            self.spare[1].close()
        if self.tracker_r is not None and select.select([self.tracker_r], [], [], 0)[0]:
            self._launch_tracker()  # segments were registered: someone must clean up after us
        deadline = time.monotonic() + timeout
        while self.children and time.monotonic() < deadline:
            for key, _ in self.sel.select(max(0.0, deadline - time.monotonic())):
                if key.data == "tracker":
                    self._launch_tracker()
                elif key.data is not None:
                    self._reap(key.data)

    # -- requests ------------------------------------------------------------
    def _request(self) -> bool:
        try:
            msg, fds, _, _ = socket.recv_fds(self.ctl, 1 << 16, 8)

        except InterruptedError:
            return True
        except OSError:
            return False
        if not msg:
            return False
        try:
            pid, status_r = self._hand_to_spare(msg, fds)
        except OSError:
            try:
                pid, status_r = self._fork(lambda: _run_worker(pickle.loads(msg)[0], fds))
            except OSError as e:
                for fd in fds:
                    os.close(fd)
                self.spare_ok = False
                return self._reply(("error", f"fork failed in the zygote: {e!r}"), [])
        for fd in fds:
            os.close(fd)
        self.spare_ok = True
        self.spare_at = time.monotonic() + _IDLE_BEFORE_SPARE
        try:
            return self._reply(("ok", pid), [status_r])
        finally:
            os.close(status_r)

    def _reply(self, what, fds) -> bool:
        try:
            socket.send_fds(self.ctl, [pickle.dumps(what)], fds)
            return True
        except OSError:
            return False

    def _hand_to_spare(self, msg: bytes, fds: list[int]) -> tuple[int, int]:
        if self.spare is None:
            raise OSError("no spare")
        pid, sock, status_r = self.spare
        self.spare = None
        try:
            socket.send_fds(sock, [msg], fds)
        except OSError:
            os.close(status_r)  # it died waiting: its reaping is already under way
            raise
        finally:
            sock.close()
        return pid, status_r

    # -- children ------------------------------------------------------------
    def _fork(self, body) -> tuple[int, int]:
        """Fork a child that runs ``body()``; returns its pid and status read end."""
        import selectors

        status_r, status_w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(status_r)
            os.close(status_w)
            raise
        if pid == 0:
            code = 1
            try:
                self._close_in_child()
                os.close(status_r)
                os.close(status_w)
                code = body()
            except BaseException:  # noqa: BLE001 - never back into the zygote's loop
                pass
            finally:
                os._exit(code)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # out of fds: a child we could not watch must not live on
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(status_r)
            os.close(status_w)
            raise
        self.children[pid] = (pidfd, status_w)
        self.sel.register(pidfd, selectors.EVENT_READ, pid)
        return pid, status_r

    def _close_in_child(self) -> None:
        """A child holds nothing of the zygote's: not its socket to the parent,
        not its other children's pidfds and status pipes, not the spare's."""
        self.sel.close()
        os.close(self.ctl.detach())
        for pidfd, w in self.children.values():
            os.close(pidfd)
            os.close(w)
        if self.spare is not None:
            _, sock, status_r = self.spare
            sock.close()
            os.close(status_r)
        if self.tracker_r is not None:
            os.close(self.tracker_r)

    def _fork_spare(self) -> None:
        mine, its = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

        def wait_for_work() -> int:
            mine.close()
            comm = _set_comm(_SPARE_NAME)
            try:
                msg, fds, _, _ = socket.recv_fds(its, 1 << 16, 8)
            except OSError:
                return 0
            finally:
                its.close()
            if not msg:
                return 0  # the zygote is gone
            _set_comm(comm)
            return _run_worker(pickle.loads(msg)[0], fds)

        try:
            pid, status_r = self._fork(wait_for_work)
        except OSError:
            self.spare_ok = False
            mine.close()
            its.close()
            return
        its.close()
        self.spare = (pid, mine, status_r)

    def _reap(self, pid: int) -> None:
        pidfd, status_w = self.children.pop(pid)
        self.sel.unregister(pidfd)
        os.close(pidfd)
        if self.spare is not None and self.spare[0] == pid:  # died unused (killed)
            _, sock, status_r = self.spare
            self.spare = None
            sock.close()
            os.close(status_r)
        try:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = _UNKNOWN_EXIT
        try:
            os.write(status_w, _STATUS.pack(code))
        except OSError:
            pass
        os.close(status_w)


def _set_comm(name: str) -> str | None:
    """Set this process's /proc comm (what ps and psutil call its name); the old one."""
    try:
        with open("/proc/self/comm", "r+") as f:
            old = f.read().strip()
            f.seek(0)
            f.write(name[:15])
        return old
    except OSError:
        return None


def _run_worker(name: str, fds: list[int]) -> int:
    """In the forked child: become a multiprocessing process named ``name``
    and run the worker on the fds the parent sent."""
    import mmap
    from multiprocessing import process

    from sharkcage._engine import worker
    from sharkcage._engine.worker import SLOT_SIZE

    tracker = _tracker()
    tracker._pid = None
    chan = socket.socket(fileno=fds[0])
    slot = mmap.mmap(fds[1], SLOT_SIZE * 8)
    os.close(fds[1])
    streams = (fds[2], fds[3]) if len(fds) == 4 else None
    proc = process.BaseProcess(target=worker.main, name=name, args=(chan, slot, None, streams))
    proc._start_method = None  # keep the worker's default start method as it was
    return proc._bootstrap()
