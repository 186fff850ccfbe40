"""Shared data: one copy in shared memory, seen by the parent and every worker.

Two tools (CONTRACT.md, "Shared data"):

* :class:`SharedArray` — a writable numpy array whose memory is a POSIX
  shared-memory segment. It pickles as a small handle (segment name, dtype,
  shape, strides, offset), never as data, so a task that receives it writes
  straight into the parent's array. ``.lock`` is a process-safe lock that
  travels with it.
* :func:`make_share` / :class:`ShareHandle` — the machinery of
  ``pool.share(obj)``: a large read-only object is written to shared memory
  once; the handle pickles small, and unpickling it in a worker yields the
  object itself, rebuilt at most once per process (numpy arrays inside it are
  read-only zero-copy views of the segment).

Ownership. The process that creates a SharedArray or a share owns its
segment and unlinks the name when it is closed, released or garbage
collected; processes that attached it keep a valid mapping until they drop
their last reference. Every segment is registered with multiprocessing's
resource tracker, so a SIGKILLed creator leaves nothing behind.

The lock is an ``fcntl`` record lock on the segment's file plus a thread lock:
the kernel releases it when its holder dies, so a worker killed while holding
it (a task timeout, a crash) never deadlocks the others. What that worker was
writing may be half done, as with any lock.

numpy is optional: this module imports without it, and only SharedArray
needs it (``pip install 'sharkcage[numpy]'``).

>>> h = make_share({"weights": list(range(5))})
>>> import pickle
>>> pickle.loads(pickle.dumps(h))      # what a task receives: the object
{'weights': [0, 1, 2, 3, 4]}
>>> h.release()
"""

from __future__ import annotations

import fcntl
import itertools
import os
import pickle
import struct
import sys
import threading
import time
import weakref
from typing import Any

from sharkcage._engine import shm

__all__ = ["SharedArray", "SharedLock", "ShareHandle", "make_share", "resolve", "forget"]

_counter = itertools.count()
_NUMPY_HINT = "sharkcage.SharedArray needs numpy: pip install 'sharkcage[numpy]'"


# --------------------------------------------------------------------------
# Segments shared by name (SharedArray)


class _Segment:
    """One process's attachment to a named segment: fd, mapping, locks.

    One per (process, name): the fd carries the process's fcntl lock, and
    POSIX drops all of a process's locks on a file when *any* of its fds
    for that file closes, so there must never be two.
    """

    __slots__ = ("name", "size", "fd", "buf", "addr", "owner", "tlock", "__weakref__")

    def __init__(self, name: str, fd: int, size: int, owner: bool):
        self.name = name
        self.size = size
        self.fd = fd
        self.buf = shm.map_buffer(fd, size)  # keeps no second fd (numpy is there for SharedArray)
        self.owner = owner
        self.tlock = threading.Lock()
        self.addr = None  # base address of the mapping, found when first needed
        weakref.finalize(self, _finalize_segment, name, fd, os.getpid() if owner else None)

    def base_address(self) -> int:
        if self.addr is None:
            import numpy as np

            self.addr = np.frombuffer(self.buf, dtype=np.uint8).__array_interface__["data"][0]
        return self.addr

    @property
    def lock(self) -> SharedLock:
        # A new small object each time, not a cached one: a cache would make
        # a reference cycle and delay the unlink until the next gc run.
        return SharedLock(self)

    def unlink(self) -> None:
        """The owner gives the name up: no new attachment; mappings stay valid."""
        if self.owner and os.getpid() == _OWNER_PID.get(self.name):
            _OWNER_PID.pop(self.name, None)
            if shm._unlink_name(self.name):
                shm._untrack(self.name)
        self.owner = False


_registry: weakref.WeakValueDictionary[str, _Segment] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()
_OWNER_PID: dict[str, int] = {}  # name -> pid of the process that created it


def _finalize_segment(name: str, fd: int, owner_pid: int | None) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    # A forked child inherits the owner's objects; only the creator unlinks.
    if owner_pid is not None and owner_pid == os.getpid() and _OWNER_PID.get(name) == owner_pid:
        _OWNER_PID.pop(name, None)
        if shm._unlink_name(name):
            shm._untrack(name)


def _create_segment(size: int, tag: str) -> _Segment:
    if not shm.available():
        raise OSError(f"shared memory needs a tmpfs at {shm.SHM_DIR} (Linux); it is not available here")
    free = shm.shm_free_bytes()
    if size > free:
        raise MemoryError(
            f"a shared segment of {shm._fmt_size(size)} does not fit: {shm.SHM_DIR} has "
            f"{shm._fmt_size(free)} free (enlarge it, e.g. docker run --shm-size=...)"
        )
    while True:
        name = f"sc{os.getpid()}-{tag}{next(_counter)}"
        shm._track(name)
        try:
            fd = os.open(shm._path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            shm._untrack(name)
            continue
        except BaseException:
            shm._untrack(name)
            raise
        break
    try:
        # fallocate, not ftruncate: a full /dev/shm fails here with ENOSPC
        # instead of killing whoever touches the page later with SIGBUS.
        os.posix_fallocate(fd, 0, size)
    except BaseException as e:
        os.close(fd)
        if shm._unlink_name(name):
            shm._untrack(name)
        if isinstance(e, OSError):
            raise MemoryError(f"could not allocate {shm._fmt_size(size)} in {shm.SHM_DIR}: {e}") from e
        raise
    _OWNER_PID[name] = os.getpid()
    seg = _Segment(name, fd, size, owner=True)
    with _registry_lock:
        _registry[name] = seg
    return seg


def _attach_segment(name: str, size: int, what: str) -> _Segment:
    with _registry_lock:
        seg = _registry.get(name)
        if seg is not None:
            return seg
        try:
            fd = os.open(shm._path(name), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{what} {name!r} is gone: its creator closed it, was garbage-collected or exited. "
                f"Keep the {what} alive (e.g. a `with` block around the pool calls) while tasks use it"
            ) from None
        seg = _Segment(name, fd, size, owner=False)
        _registry[name] = seg
        return seg


def _after_fork_in_child() -> None:
    # A thread lock copied while another thread held it would never be released.
    for seg in list(_registry.values()):
        seg.tlock = threading.Lock()
    _share_lock_reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------
# The lock


class SharedLock:
    """A process-safe lock living with a shared segment; it pickles by name.

    Acquire and release in the same thread, as with ``threading.Lock``. Its
    holder dying (even by SIGKILL) releases it.

    >>> import numpy as np
    >>> from sharkcage.shared import SharedArray
    >>> with SharedArray(4, np.int64) as counter:
    ...     with counter.lock:
    ...         counter[0] += 1
    ...     counter.lock.acquire(timeout=0.1), counter.lock.locked()
    ...     counter.lock.release()
    (True, True)
    """

    __slots__ = ("_seg",)

    def __init__(self, seg: _Segment):
        self._seg = seg

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Like ``threading.Lock.acquire``: True once held, False on a timeout."""
        if not blocking and timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        seg = self._seg
        if not (seg.tlock.acquire(blocking, -1 if deadline is None else timeout)):
            return False
        try:
            if deadline is None and blocking:
                # Blocks in the kernel; a signal (Ctrl-C) interrupts it.
                fcntl.lockf(seg.fd, fcntl.LOCK_EX, 1, 0)
                return True
            delay = 0.0005
            while True:
                try:
                    fcntl.lockf(seg.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
                    return True
                except (BlockingIOError, PermissionError):  # EAGAIN / EACCES: held elsewhere
                    pass
                if not blocking or time.monotonic() >= deadline:
                    seg.tlock.release()
                    return False
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 0.02)
        except BaseException:
            seg.tlock.release()
            raise

    def release(self) -> None:
        """Release the lock (held by this thread)."""
        seg = self._seg
        if not seg.tlock.locked():
            raise RuntimeError("release of an unlocked SharedLock")
        fcntl.lockf(seg.fd, fcntl.LOCK_UN, 1, 0)
        seg.tlock.release()

    def locked(self) -> bool:
        """True if some thread of this process holds it (other processes are not seen)."""
        return self._seg.tlock.locked()

    def __enter__(self) -> SharedLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __reduce__(self):
        return (_attach_lock, (self._seg.name, self._seg.size))

    def __eq__(self, other) -> bool:
        return isinstance(other, SharedLock) and other._seg is self._seg

    def __hash__(self) -> int:
        return hash(self._seg.name)

    def __repr__(self) -> str:
        return f"<SharedLock of {self._seg.name} {'locked' if self.locked() else 'unlocked'} here>"


def _attach_lock(name: str, size: int) -> SharedLock:
    return _attach_segment(name, size, "SharedArray").lock


# --------------------------------------------------------------------------
# SharedArray (numpy is imported only when it is first used)


class _SharedArrayWithoutNumpy:
    """Stands in for SharedArray where numpy is not installed."""

    def __new__(cls, *args, **kwargs):
        raise ImportError(_NUMPY_HINT)


_shared_array_class = None


def _build_shared_array_class():
    import numpy as np

    class SharedArray(np.ndarray):
        """A writable numpy array in shared memory, for the parent and every worker.

        ``SharedArray(shape, dtype=float, order="C")`` is zero-filled. Pass it
        (or a view of it) to tasks: it pickles as a handle to the same memory,
        so writes in a worker are visible to the parent and to every other
        worker. ``.lock`` is a process-safe lock for read-modify-write.

        The creating process owns the segment: :meth:`close` (or leaving a
        ``with`` block, or garbage collection of the array and all its views)
        unlinks it. Attached copies in workers stay valid until they drop
        them, but no new attachment is possible: keep the array alive while
        tasks that receive it are pending.

        Slices and other views stay shared. Results of computations
        (``a + 1``, ``a.copy()``, ``a.sum(axis=0)``) are ordinary arrays;
        anything else numpy builds as a new SharedArray (``a.astype(...)``,
        fancy indexing) is *detached*: it travels as data and has no lock.

        >>> import numpy as np, pickle
        >>> from sharkcage.shared import SharedArray
        >>> with SharedArray((2, 3), np.float32) as a:
        ...     b = pickle.loads(pickle.dumps(a[1]))   # what a task receives
        ...     b[:] = 7                               # ... writes in place
        ...     a.tolist(), type(a + 1).__name__
        ([[0.0, 0.0, 0.0], [7.0, 7.0, 7.0]], 'ndarray')
        """

        def __new__(cls, shape, dtype=float, order="C"):
            dtype = np.dtype(dtype)
            if dtype.hasobject:
                raise TypeError(f"a SharedArray cannot hold Python objects (dtype {dtype}); use a numeric or structured dtype")
            shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(n) for n in shape)
            if any(n < 0 for n in shape):
                raise ValueError(f"negative dimensions are not allowed: {shape}")
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            seg = _create_segment(max(nbytes, 1), "arr")
            arr = np.ndarray.__new__(cls, shape, dtype, buffer=seg.buf, order=order)
            arr._sc_segment = seg
            return arr

        def __array_finalize__(self, obj):
            # Views share the parent's memory (their base is set); fresh
            # allocations (copies, results) do not.
            self._sc_segment = getattr(obj, "_sc_segment", None) if self.base is not None else None

        def __array_wrap__(self, arr, context=None, return_scalar=False):
            if isinstance(arr, SharedArray) and arr._sc_segment is not None:
                return arr  # an in-place result (out=...) written into shared memory
            out = arr.view(np.ndarray) if isinstance(arr, np.ndarray) else arr
            if return_scalar and getattr(out, "ndim", None) == 0:
                return out[()]
            return out

        def _segment_or_none(self):
            """The segment, if this array's memory lies inside it."""
            seg = getattr(self, "_sc_segment", None)
            if seg is None:
                return None
            lo = hi = self.__array_interface__["data"][0]
            if self.size:
                for n, s in zip(self.shape, self.strides):
                    if s < 0:
                        lo += s * (n - 1)
                    else:
                        hi += s * (n - 1)
                hi += self.itemsize
            base = seg.base_address()
            return seg if base <= lo and hi <= base + seg.size else None

        def __reduce_ex__(self, protocol):
            seg = self._segment_or_none()
            if seg is None:  # not (or no longer) shared: travels as data
                return self.view(np.ndarray).__reduce_ex__(protocol)
            offset = self.__array_interface__["data"][0] - seg.base_address()
            return (_attach_array, (seg.name, seg.size, self.dtype, self.shape, self.strides, offset))

        def __reduce__(self):
            return self.__reduce_ex__(2)

        def copy(self, order="C"):
            """An ordinary (not shared) copy, like ``np.copy``."""
            return self.view(np.ndarray).copy(order)

        @property
        def lock(self) -> SharedLock:
            """A process-safe lock, the same for every view of this memory in every process."""
            seg = self._sc_segment
            if seg is None:
                raise ValueError("this array is not in shared memory (a computed result, not a view of a SharedArray)")
            return seg.lock

        @property
        def shm_name(self) -> str | None:
            """The /dev/shm name of the segment (None for a detached result)."""
            seg = self._sc_segment
            return None if seg is None else seg.name

        def close(self) -> None:
            """Unlink the segment now (creator only; a no-op elsewhere).

            This array and attached copies stay usable; new attachments fail.
            """
            seg = self._sc_segment
            if seg is not None:
                seg.unlink()

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.close()

    SharedArray.__module__ = __name__
    return SharedArray


def _shared_array_cls():
    global _shared_array_class
    if _shared_array_class is None:
        try:
            _shared_array_class = _build_shared_array_class()
        except ImportError:
            _shared_array_class = _SharedArrayWithoutNumpy
            _SharedArrayWithoutNumpy.__name__ = _SharedArrayWithoutNumpy.__qualname__ = "SharedArray"
    return _shared_array_class


def __getattr__(name: str):
    # SharedArray is built on first use, so importing this module (and
    # sharkcage) never imports numpy.
    if name == "SharedArray":
        cls = _shared_array_cls()
        globals()["SharedArray"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _attach_array(name: str, size: int, dtype, shape, strides, offset: int):
    import numpy as np

    cls = _shared_array_cls()
    seg = _attach_segment(name, size, "SharedArray")
    arr = np.ndarray.__new__(cls, shape, dtype, buffer=seg.buf, offset=offset, strides=strides)
    arr._sc_segment = seg
    return arr


# --------------------------------------------------------------------------
# Shares: a read-only object written once, rebuilt at most once per process

_SHARE_MAGIC = b"\x00SCSHR1\x00"
_SHARE_HEAD = struct.Struct("<8sQ")
_ALIGN = 64
_MIN_OOB = 0  # every buffer out of band: all arrays resolve as read-only views
_resolved: dict[str, Any] = {}
_resolve_lock = threading.Lock()


def _share_lock_reset() -> None:
    global _resolve_lock
    _resolve_lock = threading.Lock()


class ShareHandle:
    """A small, picklable reference to an object placed in shared memory once.

    Unpickling a handle (in a task's arguments) gives the object itself,
    rebuilt at most once per process and cached there; numpy arrays in it
    are read-only zero-copy views of the segment. Treat the object as
    read-only: every task in a worker receives the same one.

    :meth:`release` (or garbage collection of the creator's handle) unlinks
    the segment; processes that already resolved it keep their copy.

    >>> import numpy as np, pickle
    >>> h = make_share(np.arange(1_000_000.0))
    >>> h.nbytes >= 8_000_000, len(pickle.dumps(h)) < 200
    (True, True)
    >>> arr = h.resolve()
    >>> float(arr.sum()), arr.flags.writeable
    (499999500000.0, False)
    >>> h.release()
    """

    __slots__ = ("name", "size", "nbytes", "type_name", "_finalizer", "__weakref__")

    def __init__(self, name: str, size: int, nbytes: int, type_name: str, owner: bool = False):
        self.name = name
        self.size = size
        self.nbytes = nbytes
        self.type_name = type_name
        self._finalizer = weakref.finalize(self, _release_share, name, os.getpid()) if owner else None

    @property
    def id(self) -> str:
        """The handle's id: its segment name, the key of every process's cache."""
        return self.name

    def resolve(self) -> Any:
        """The object (rebuilt at most once in this process)."""
        return resolve(self.name, self.size)

    def release(self) -> None:
        """Unlink the segment (creator only). Idempotent."""
        if self._finalizer is not None:
            self._finalizer()
        forget(self.name)

    def __enter__(self) -> ShareHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __reduce__(self):
        return (resolve, (self.name, self.size))

    def __repr__(self) -> str:
        return f"<ShareHandle {self.name}: {self.type_name}, {shm._fmt_size(self.size)} in shared memory>"


def _release_share(name: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid and shm._unlink_name(name):
        shm._untrack(name)


def make_share(obj: Any, prefix: str | None = None) -> ShareHandle:
    """Write ``obj`` into one new shared-memory segment; a handle to it.

    ``prefix`` is the segment's name root (a pool passes its own, so its
    shutdown sweep removes it); the default is ``sc{pid}-``. Buffers of 4 KiB
    or more (numpy arrays, PickleBuffers) are laid out raw, 64-byte aligned,
    and become zero-copy read-only views when resolved; the rest of the
    object is pickled into the same segment.

    >>> h = make_share(("model", [1.5, 2.5]))
    >>> h.resolve()
    ('model', [1.5, 2.5])
    >>> h.release()
    """
    if not shm.available():
        raise OSError(f"shared memory needs a tmpfs at {shm.SHM_DIR} (Linux); it is not available here")
    buffers: list = []

    def buffer_callback(pb) -> bool:
        try:
            raw = pb.raw()
        except BufferError:
            return True
        if raw.nbytes < _MIN_OOB:
            return True
        buffers.append(raw)
        return False

    stream = _pickle_for_share(obj, buffer_callback, buffers)
    layout = []
    meta_guess = 64 + 32 * len(buffers)
    # The meta block's size depends on the offsets it lists: settle it in a loop.
    while True:
        pos = _SHARE_HEAD.size + meta_guess
        stream_off = pos
        pos = _align(pos + len(stream))
        layout = []
        for raw in buffers:
            layout.append((pos, raw.nbytes))
            pos = _align(pos + raw.nbytes)
        meta = pickle.dumps((stream_off, len(stream), layout), 5)
        if len(meta) <= meta_guess:
            break
        meta_guess = len(meta) * 2
    size = max(pos, 1)
    root = prefix if prefix is not None else f"sc{os.getpid()}-"
    free = shm.shm_free_bytes()
    if size > free:
        raise MemoryError(
            f"sharing {type(obj).__name__} needs {shm._fmt_size(size)} of shared memory but "
            f"{shm.SHM_DIR} has {shm._fmt_size(free)} free (enlarge it, e.g. docker run --shm-size=...)"
        )
    while True:
        name = f"{root}share{next(_counter)}"
        shm._track(name)
        try:
            fd = os.open(shm._path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            shm._untrack(name)
            continue
        except BaseException:
            shm._untrack(name)
            raise
        break
    try:
        _pwrite_all(fd, _SHARE_HEAD.pack(_SHARE_MAGIC, len(meta)) + meta, 0)
        _pwrite_all(fd, stream, stream_off)
        for raw, (off, _n) in zip(buffers, layout):
            _pwrite_all(fd, raw, off)
        os.ftruncate(fd, size)
    except BaseException as e:
        os.close(fd)
        if shm._unlink_name(name):
            shm._untrack(name)
        if isinstance(e, OSError):
            raise MemoryError(f"could not write {shm._fmt_size(size)} to {shm.SHM_DIR}: {e}") from e
        raise
    os.close(fd)
    return ShareHandle(name, size, sum(r.nbytes for r in buffers) + len(stream), type(obj).__name__, owner=True)


def _pickle_for_share(obj, buffer_callback, buffers) -> bytes:
    import io
    import sys

    def attempt(pickler_cls) -> bytes:
        buffers.clear()
        out = io.BytesIO()
        p = pickler_cls(out, 5, buffer_callback=buffer_callback)
        np = sys.modules.get("numpy")
        if np is not None:
            # Non-contiguous arrays would be pickled in-band (copied in every
            # process): make them contiguous once here instead.
            def reduce_ndarray(a):
                if not (a.flags.c_contiguous or a.flags.f_contiguous) and not a.dtype.hasobject and a.nbytes >= _MIN_OOB:
                    a = np.ascontiguousarray(a)
                return a.__reduce_ex__(5)

            base = getattr(p, "dispatch_table", None)
            if isinstance(base, dict) or base is None:
                import copyreg

                table = dict(copyreg.dispatch_table if base is None else base)
                table[np.ndarray] = reduce_ndarray
            else:
                from collections import ChainMap

                table = ChainMap({np.ndarray: reduce_ndarray}, base)
            p.dispatch_table = table
        p.dump(obj)
        return out.getvalue()

    try:
        return attempt(pickle.Pickler)
    except (pickle.PicklingError, TypeError, AttributeError):
        import cloudpickle

        return attempt(cloudpickle.Pickler)


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _pwrite_all(fd: int, data, offset: int) -> None:
    with memoryview(data) as view:
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        done, total = 0, view.nbytes
        while done < total:
            done += os.pwrite(fd, view[done : done + shm._WRITE_CHUNK], offset + done)


def resolve(name: str, size: int) -> Any:
    """The shared object named ``name``, rebuilt at most once in this process.

    This is what unpickling a :class:`ShareHandle` calls.
    """
    obj = _resolved.get(name, _resolved)
    if obj is not _resolved:
        return obj
    with _resolve_lock:
        obj = _resolved.get(name, _resolved)
        if obj is _resolved:
            obj = _resolved[name] = _load_share(name, size)
        return obj


def _load_share(name: str, size: int) -> Any:
    try:
        fd = os.open(shm._path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"shared object {name!r} is gone: its handle was released (or its creator exited) "
            "before this process resolved it. Keep the handle until the tasks that use it are done"
        ) from None
    try:
        head = os.pread(fd, _SHARE_HEAD.size, 0)
        if len(head) == _SHARE_HEAD.size and _SHARE_HEAD.unpack(head)[0] == _SHARE_MAGIC:
            _stream_off, _stream_len, layout = pickle.loads(os.pread(fd, _SHARE_HEAD.unpack(head)[1], _SHARE_HEAD.size))
            if layout and "numpy" not in sys.modules:
                # Buffers are numpy arrays as a rule: importing it now lets the
                # mapping keep no file descriptor (see shm.map_buffer).
                try:
                    import numpy  # noqa: F401
                except ImportError:
                    pass
        view = shm.map_buffer(fd, size, readonly=True)
    finally:
        os.close(fd)
    magic, meta_len = _SHARE_HEAD.unpack_from(view, 0)
    if magic != _SHARE_MAGIC:
        raise ValueError(f"{name!r} is not a sharkcage share")
    stream_off, stream_len, layout = pickle.loads(view[_SHARE_HEAD.size : _SHARE_HEAD.size + meta_len])
    # Read-only views: numpy arrays built on them are read-only too. They
    # keep the mapping alive; nothing else does.
    buffers = [view[off : off + n] for off, n in layout]
    return pickle.loads(view[stream_off : stream_off + stream_len], buffers=buffers)


def forget(name: str) -> bool:
    """Drop this process's cached object for a share (after its release).

    Returns whether it was cached. The memory goes once nothing uses it.

    >>> forget("no-such-share")
    False
    """
    return _resolved.pop(name, _resolved) is not _resolved
