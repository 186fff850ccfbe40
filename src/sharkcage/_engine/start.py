"""Start methods: safe by default, fork only when it is safe or forced.

The default is a clean, single-threaded *forkserver* that has already
imported what the parent imported, so a new worker is a ``fork()`` of a
process that holds no lock of a thread that no longer exists (seed 000) and
needs no re-import of numpy (seed 002's spawn cost). On platforms without
forkserver (Windows, and macOS before Python 3.8 conventions) it is spawn.

``start_method="fork"`` (or a fork ``context=``) is refused with
:class:`UnsafeForkError` while the parent runs threads other than
sharkcage's own, at creation and again at every worker start, unless
``allow_unsafe_fork=True``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import threading
import time

from sharkcage.errors import UnsafeForkError

#: Marker attribute set on every thread sharkcage itself starts.
OWN_THREAD_ATTR = "_sharkcage_own"

# Modules whose import starts threads or services: importing them in the
# forkserver would make it multi-threaded, which is what we avoid.
_NO_PRELOAD = {
    "__main__", "__mp_main__", "ray", "distributed", "dask", "tornado", "asyncio",
    "concurrent", "IPython", "ipykernel", "zmq", "jupyter_client", "pytest", "_pytest",
    "pluggy", "sharkcage", "tqdm", "psutil",
}

_forkserver_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # The zygote is forked while this lock is held (by the forking thread,
    # which becomes the child's only thread but never releases it there):
    # every child starts with a fresh one, or a nested pool would deadlock.
    global _forkserver_lock
    _forkserver_lock = threading.Lock()
    # A forked child (start_method="fork", a user's own fork or stdlib
    # Process) inherits its parent's forkserver handle: that server is not
    # its child and not its to use; a pool made there starts its own.
    # Only a process that imported forkserver can hold one: importing it here
    # would cost every fork (the zygote's is on a pool's startup path) ~15 ms.
    forkserver = sys.modules.get("multiprocessing.forkserver")
    if forkserver is None:
        return
    server = forkserver._forkserver
    if server._forkserver_pid is None:
        return
    if server._forkserver_alive_fd is not None:
        try:
            os.close(server._forkserver_alive_fd)
        except OSError:
            pass
    server._forkserver_pid = None
    server._forkserver_address = None
    server._forkserver_alive_fd = None


os.register_at_fork(after_in_child=_after_fork_in_child)
_patched = False


def _patch_preparation_data() -> None:
    """sharkcage workers never re-run the parent's main script.

    multiprocessing's spawn/forkserver children re-import the main script
    (as ``__mp_main__``) so that functions pickled by name resolve. That is
    seed 003's shark — an unguarded ``Pool()`` at module level spawns
    forever — and it breaks code piped to ``python -`` (``'<stdin>'`` is no
    file). sharkcage ships ``__main__`` functions and classes by value
    (cloudpickle), so its workers need no main module at all: for processes
    named ``sharkcage-*`` the main-module entries are dropped. Other
    processes keep the stdlib's behaviour, except that a main path naming
    no file is dropped instead of killing the child.
    """
    global _patched
    if _patched:
        return
    from multiprocessing import spawn

    original = spawn.get_preparation_data

    def get_preparation_data(name):
        data = original(name)
        if isinstance(name, str) and name.startswith("sharkcage-"):
            data.pop("init_main_from_name", None)
            data.pop("init_main_from_path", None)
        else:
            path = data.get("init_main_from_path")
            if path is not None and not os.path.isfile(path):
                del data["init_main_from_path"]
        return data

    get_preparation_data.__wrapped__ = original
    spawn.get_preparation_data = get_preparation_data
    _patched = True


def mark_own_thread(thread: threading.Thread) -> threading.Thread:
    setattr(thread, OWN_THREAD_ATTR, True)
    return thread


def join_engine_thread(thread: threading.Thread, timeout: float | None, terminate) -> bool:
    """Wait for an engine's own thread to end (a pool's ``join``); whether it did.

    Waits in slices so Ctrl-C gets through: ``terminate(reason)`` then stops
    the engine at once (guarantee 8) and the KeyboardInterrupt goes on, as
    every other wait of sharkcage does. From the thread itself: False.

    >>> t = threading.Thread(target=lambda: None); t.start()
    >>> join_engine_thread(t, 5.0, print)
    True
    """
    if threading.current_thread() is thread:
        return False
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while thread.is_alive():
            left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            if left <= 0:
                break
            thread.join(left)
    except KeyboardInterrupt:
        terminate("the pool was stopped by KeyboardInterrupt")
        thread.join(2.0)
        raise
    return not thread.is_alive()


def foreign_threads() -> list[threading.Thread]:
    """Live threads other than the main one, the calling one and sharkcage's own.

    The main thread is the program itself, not a "thread it runs": workers
    started later from the supervisor thread must not count it.
    """
    me = threading.current_thread()
    main = threading.main_thread()
    return [
        t for t in threading.enumerate()
        if t is not me and t is not main and t.is_alive() and not getattr(t, OWN_THREAD_ATTR, False)
    ]


def check_fork_safe(allow_unsafe_fork: bool) -> None:
    if allow_unsafe_fork:
        return
    others = foreign_threads()
    if others:
        names = ", ".join(sorted(t.name for t in others)[:5])
        raise UnsafeForkError(
            f"start_method='fork' was asked for while this process runs {len(others)} other "
            f"thread(s) ({names}); a forked worker inherits any lock those threads hold and can "
            "deadlock (seed 000). Use the default start method (a clean forkserver, as fast), "
            "or pass allow_unsafe_fork=True if you are sure no thread holds a lock."
        )


def default_method() -> str:
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


def resolve_context(start_method: str | None, context) -> tuple[multiprocessing.context.BaseContext, str]:
    """The multiprocessing context to start workers with, and its method name."""
    if context is not None and start_method is not None:
        ctx_method = context.get_start_method()
        if ctx_method != start_method:
            raise ValueError(
                f"context= uses {ctx_method!r} but start_method={start_method!r}; pass only one of them"
            )
    if context is not None:
        if not hasattr(context, "get_start_method") or not hasattr(context, "Process"):
            raise TypeError(
                f"context= must be a multiprocessing context (multiprocessing.get_context(...)), not {context!r}"
            )
        method = context.get_start_method()
        if not uses_zygote(method, context):
            _patch_preparation_data()
        return context, method
    method = start_method or default_method()
    available = multiprocessing.get_all_start_methods()
    if method not in available:
        raise ValueError(
            f"start_method={method!r} is not available here; choose one of {available} "
            "(or leave it unset for the safe default)"
        )
    context = multiprocessing.get_context(method)
    if not uses_zygote(method, context):
        _patch_preparation_data()  # spawn and the stdlib forkserver re-run __main__ otherwise
    return context, method


def preload_candidates() -> list[str]:
    """Top-level packages the parent has imported that are safe to preload."""
    names = set()
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        if top in _NO_PRELOAD or top.startswith("_") or module is None:
            continue
        if getattr(module, "__file__", None) is None:
            continue
        names.add(top)
    return sorted(names)


def ensure_forkserver(ctx) -> None:
    """Start the stdlib's process-wide forkserver once, the fastest safe way.

    Pools use it only with a custom forkserver ``context=`` object (the
    default, and ``"forkserver"`` by name, use sharkcage's own zygote,
    zygote.py, which starts workers faster). The same two ways of birth:

    * When this process is single-threaded (counting OS threads, not only
      Python's), the forkserver is *forked* from it — a "zygote": no
      interpreter start-up, every module the parent imported is already
      there, and no lock can be held by a thread that will not exist in the
      child, because there is no other thread. The zygote points every file
      descriptor it inherited at /dev/null, so it holds none of the parent's sockets or
      files, and then runs the stdlib's forkserver loop: every worker and
      every replacement is forked from that clean process, never from the
      (later threaded) parent.
    * Otherwise the stdlib's forkserver is spawned fresh, with the parent's
      imported packages preloaded (through our guarded preload module: the
      stdlib's own preload dies on any error that is not an ImportError).

    One forkserver serves every pool of the process.
    """
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    with _forkserver_lock:
        server = forkserver._forkserver
        if getattr(server, "_forkserver_pid", None) is not None:
            return
        if sys.platform.startswith("linux") and fork_is_safe_here():
            try:
                _fork_forkserver(server)
                return
            except OSError:
                pass  # fall back to the spawned forkserver below
        ctx.set_forkserver_preload(["sharkcage._engine.preload"])
        os.environ["SHARKCAGE_PRELOAD"] = ",".join(preload_candidates())
        try:
            forkserver.ensure_running()
        finally:
            os.environ.pop("SHARKCAGE_PRELOAD", None)


def uses_zygote(method: str, context) -> bool:
    """Whether a pool's workers are forked by sharkcage's zygote (zygote.py):
    the default start method, or ``"forkserver"`` asked for by name or with
    the stdlib's own forkserver context, on Linux. A custom context object
    is the user's machinery and is used as it is."""
    if method != "forkserver" or not sys.platform.startswith("linux") or not _zygote_supported():
        return False
    return context is None or context is multiprocessing.get_context("forkserver")


_zygote_support: bool | None = None


def _zygote_supported() -> bool:
    """The kernel calls the zygote needs: pidfd_open (Linux 5.3) and
    memfd_create (3.17). Older kernels get the stdlib forkserver instead."""
    global _zygote_support
    if _zygote_support is None:
        try:
            os.close(os.pidfd_open(os.getpid()))
            os.close(os.memfd_create("sharkcage-probe", os.MFD_CLOEXEC))
            _zygote_support = True
        except (AttributeError, OSError):
            _zygote_support = False
    return _zygote_support


def fork_is_safe_here() -> bool:
    """True when forking this process now cannot copy a lock held by another thread.

    Only the main thread may run — at the OS level. The one exception is a
    thread pool of OpenBLAS (numpy's BLAS): it registers pthread_atfork
    handlers that park its threads around fork(), so it is fork-safe; an
    OpenMP runtime (libgomp, libiomp) is not, and then we do not fork.
    """
    try:
        tids = {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return False
    if len(tids) == 1:
        return True
    py_threads = [t for t in threading.enumerate() if t.is_alive()]
    if len(py_threads) > 1:
        return False
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return False
    return "openblas" in maps and not any(omp in maps for omp in ("libgomp", "libiomp", "libomp"))


def _fork_forkserver(server) -> None:
    """Fork the forkserver from this (single-threaded) process; see ensure_forkserver."""
    from multiprocessing import connection, forkserver, resource_tracker, util

    resource_tracker.ensure_running()  # its fd is handed to every worker
    listener = socket.socket(socket.AF_UNIX)
    address = connection.arbitrary_address("AF_UNIX")
    listener.bind(address)
    if not util.is_abstract_socket_namespace(address):
        os.chmod(address, 0o600)
    listener.listen()
    alive_r, alive_w = os.pipe()
    keep = {0, 1, 2, listener.fileno(), alive_r}
    pid = os.fork()
    if pid == 0:  # the zygote
        try:
            from sharkcage._engine.zygote import _neutralize_fds

            _neutralize_fds(keep)  # as sharkcage's zygote does: no fd number freed for reuse
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
                signal.signal(sig, signal.SIG_DFL)
            forkserver.main(listener.fileno(), alive_r, [], None, None)
        except BaseException:  # noqa: BLE001 - never run the parent's code on the way out
            pass
        finally:
            os._exit(0)
    os.close(alive_r)
    listener.close()
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid
