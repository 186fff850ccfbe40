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
import sys
import threading

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
    _patch_preparation_data()
    if context is not None:
        if not hasattr(context, "get_start_method") or not hasattr(context, "Process"):
            raise TypeError(
                f"context= must be a multiprocessing context (multiprocessing.get_context(...)), not {context!r}"
            )
        method = context.get_start_method()
        return context, method
    method = start_method or default_method()
    available = multiprocessing.get_all_start_methods()
    if method not in available:
        raise ValueError(
            f"start_method={method!r} is not available here; choose one of {available} "
            "(or leave it unset for the safe default)"
        )
    return multiprocessing.get_context(method), method


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
    """Start the forkserver (once per process) with the parent's imports preloaded.

    The stdlib forkserver dies on any preload error that is not an
    ImportError, so the list travels in an environment variable to our own
    preload module, which imports each entry inside a guard.
    """
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    with _forkserver_lock:
        server = forkserver._forkserver
        if getattr(server, "_forkserver_pid", None) is not None:
            return
        ctx.set_forkserver_preload(["sharkcage._engine.preload"])
        os.environ["SHARKCAGE_PRELOAD"] = ",".join(preload_candidates())
        try:
            forkserver.ensure_running()
        finally:
            os.environ.pop("SHARKCAGE_PRELOAD", None)
