"""Zero-copy data plane: big buffers travel through POSIX shared memory.

Guarantee 12 of CONTRACT.md: buffers of at least ``threshold`` bytes (numpy
arrays, bytes, bytearray, memoryview, PickleBuffer) cross the process
boundary through ``/dev/shm`` instead of being pickled through the pipe, and
arrive as writable objects of the same type that behave like copies. No
segment outlives its use, even after crashes.

How one message travels::

    sender: SegmentArena.dumps(obj)                     receiver: loads(data)
    -------------------------------                     ---------------------
    pickle protocol 5 into a list of chunks
      numpy array >= threshold (dispatch_table) --+
      memoryview  >= threshold (dispatch_table) --+--> one new segment each:
      PickleBuffer >= threshold (buffer_callback)-+    /dev/shm/{prefix}-{n}
      bytes/bytearray/str payload >= threshold ---+    (register with the resource
        (pickle streams those to file.write as        tracker, then os.write: one
         their own chunk; we divert that chunk)       copy, ENOSPC instead of SIGBUS)
    no segment? -> plain pickle bytes (fast path)
    else -> envelope: MAGIC | header (names, sizes,     open + mmap each segment,
            stream layout, out-of-band order) |         unlink its name at once and
            the small chunks of the stream  ----------> unregister it (consume=True),
                                                         rebuild: arrays and memoryviews
                                                         are views of the mapping, bytes
                                                         and bytearray are copied out of
                                                         it; the mapping lives as long
                                                         as the objects using it

Ownership. A segment belongs to its sender until a receiver attaches it with
``consume=True``, which unlinks the name at once; from then on only the
receiver's mapping holds the memory, so nothing is left in /dev/shm however
the receiver ends. With ``consume=False`` (task arguments, which the pool may
re-send to another worker after a crash) the receiver maps the segment
copy-on-write and the sender unlinks it when it no longer needs it
(:meth:`SegmentArena.unlink` of :func:`segment_names`). Whoever's ``unlink``
succeeds also unregisters the name from multiprocessing's resource tracker,
so the tracker only ever unlinks what a SIGKILLed process left behind: it
outlives the processes that share it (parent, workers, forkserver) and
unlinks every name still registered when the last of them is gone.

Linux only (a tmpfs at /dev/shm); elsewhere :func:`available` is False and
:meth:`SegmentArena.dumps` returns plain pickles.

>>> import numpy as np
>>> arena = SegmentArena("sc-doctest", threshold=1 << 16)
>>> data = arena.dumps({"x": np.arange(100_000.0)})
>>> len(data) < 1000, len(segment_names(data))
(True, 1)
>>> back = loads(data)          # attaches and unlinks the segment
>>> float(back["x"].sum()), segment_names(data)[0] in os.listdir(SHM_DIR)
(4999950000.0, False)
>>> arena.dumps(b"small") == pickle.dumps(b"small", 5)     # fast path
True
"""

from __future__ import annotations

import atexit
import copyreg
import errno
import itertools
import mmap
import os
import pickle
import struct
import sys
import threading
import weakref
from typing import Any, Iterable

from sharkcage.errors import SerializationError

__all__ = [
    "SegmentArena",
    "loads",
    "segment_names",
    "unlink",
    "cleanup_prefix",
    "sweep",
    "pool_prefix",
    "available",
    "shm_free_bytes",
    "map_buffer",
    "SHM_DIR",
    "DEFAULT_THRESHOLD",
]

SHM_DIR = "/dev/shm"
DEFAULT_THRESHOLD = 1 << 20
PROTOCOL = 5
#: Envelope marker. A protocol-5 pickle starts with b"\x80\x05", so no
#: plain pickle can be mistaken for an envelope.
MAGIC = b"\x00SCSHM1\x00"
_HEADER_LEN = struct.Struct("<I")
# Bytes per os.write call: below Linux's 2 GiB cap per write, and small
# enough that Ctrl-C interrupts a big transfer quickly.
_WRITE_CHUNK = 256 << 20
# Scratch size when a non-contiguous array is gathered block by block.
_BLOCK = 16 << 20
_RTYPE = "shared_memory"  # the resource tracker unlinks these with shm_unlink("/" + name)


def available() -> bool:
    """True where segments can be made: a writable tmpfs at :data:`SHM_DIR`.

    >>> isinstance(available(), bool)
    True
    """
    return sys.platform.startswith("linux") and os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


def shm_free_bytes() -> int:
    """Bytes an unprivileged process may still allocate in :data:`SHM_DIR`.

    >>> shm_free_bytes() > 0
    True
    """
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


_prefix_counter = itertools.count(1)


def pool_prefix() -> str:
    """A fresh name root for one pool: ``sc{pid}-{n}.``.

    Every arena of that pool uses it plus a tag (``p`` for the parent,
    ``w{pid}`` per worker), so :func:`sweep` of the root removes everything
    the pool could have left.

    >>> a, b = pool_prefix(), pool_prefix()
    >>> a != b and a.endswith(".")
    True
    """
    return f"sc{os.getpid()}-{next(_prefix_counter)}."


def _fmt_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


# --------------------------------------------------------------------------
# The resource tracker: who unlinks what a SIGKILLed process left behind


def _tracker():
    from multiprocessing import resource_tracker

    return resource_tracker


def _adopt_zygote_tracker() -> None:
    # A pool's zygote starts the tracker every worker shares; this process
    # adopts it (on first need) instead of starting a second one.
    zygote = sys.modules.get("sharkcage._engine.zygote")
    if zygote is not None:
        zygote.adopt_tracker()


def _ensure_tracker() -> None:
    """Start (or join) the tracker now, so forked children share it."""
    _adopt_zygote_tracker()
    try:
        _tracker().ensure_running()
    except Exception:  # noqa: BLE001 - best effort: without it only crash cleanup is lost
        pass


def _track(name: str) -> None:
    _adopt_zygote_tracker()
    try:
        _tracker().register("/" + name, _RTYPE)
    except Exception:  # noqa: BLE001
        pass


def _untrack(name: str) -> None:
    """Unregister a name this process's tracker is known to hold."""
    try:
        _tracker().unregister("/" + name, _RTYPE)
    except Exception:  # noqa: BLE001
        pass


def _untrack_any(name: str) -> None:
    """Unregister a name that may or may not be registered with our tracker.

    The tracker prints a KeyError traceback for an unknown name, so register
    it first (a set: idempotent). Never starts a tracker.
    """
    if _tracker_token() is None:
        return
    _track(name)
    _untrack(name)


def _tracker_token() -> str | None:
    """Identity of the tracker this process talks to: its pipe's inode.

    A receiver unregisters a segment only when it shares the sender's
    tracker; otherwise the sender's tracker would still hold the name and a
    foreign one would print a KeyError for it.
    """
    _adopt_zygote_tracker()
    try:
        fd = _tracker()._resource_tracker._fd
        if fd is None:
            return None
        st = os.fstat(fd)
        return f"{st.st_dev}:{st.st_ino}"
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------
# Segments


def _path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def _unlink_name(name: str) -> bool:
    """Unlink one segment; True if this call removed it (ENOENT is not an error)."""
    try:
        os.unlink(_path(name))
    except FileNotFoundError:
        return False
    return True


def unlink(names: Iterable[str]) -> list[str]:
    """Unlink segments by name (ENOENT ignored); the names this call removed.

    For the sender of a message nobody will read (a cancelled task, a dead
    worker): ``unlink(segment_names(data))``.

    >>> unlink(["sc-doctest-no-such-segment"])
    []
    """
    removed = []
    for name in names:
        if _unlink_name(name):
            _untrack_any(name)
            removed.append(name)
    return removed


def cleanup_prefix(prefix: str) -> list[str]:
    """Unlink every ``{prefix}-{n}`` segment (the names one arena makes).

    >>> cleanup_prefix("sc-doctest-nothing")
    []
    """
    head = prefix + "-"
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    return unlink(e for e in entries if e.startswith(head) and e[len(head):].isdigit())


def sweep(root: str) -> list[str]:
    """Unlink every /dev/shm entry whose name starts with ``root``.

    For a pool's shutdown with its :func:`pool_prefix`: the parent's
    arena, every worker's, and the pool's shares.

    >>> sweep(pool_prefix())
    []
    """
    if not root or "/" in root:
        raise ValueError(f"refusing to sweep /dev/shm with root {root!r}")
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    return unlink(e for e in entries if e.startswith(root))


def _write_all(fd: int, buf) -> None:
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    with view:
        off, total = 0, view.nbytes
        while off < total:
            off += os.write(fd, view[off : off + _WRITE_CHUNK])


def _space_error(size: int, free: int, what: str, task: str, direction: str) -> SerializationError:
    return SerializationError(
        direction or "data",
        task or "this message",
        what,
        f"it needs {_fmt_size(size)} of shared memory but {SHM_DIR} has only {_fmt_size(free)} free",
        f"Enlarge {SHM_DIR} (e.g. docker run --shm-size=...), send the data in smaller pieces, "
        "or share it once with pool.share()",
    )


class _NewSegment:
    """A segment being written by its sender (no mapping: os.write only)."""

    __slots__ = ("name", "fd", "size")

    def __init__(self, name: str, fd: int, size: int):
        self.name, self.fd, self.size = name, fd, size


def _create(next_name, size: int, what: str, task: str, direction: str) -> _NewSegment:
    """Create an empty segment of ``size`` bytes, registered with the tracker.

    Registration comes first, so a process killed right after the file
    exists still has it cleaned up.
    """
    free = shm_free_bytes()
    if size > free:
        raise _space_error(size, free, what, task, direction)
    while True:
        name = next_name()
        _track(name)
        try:
            fd = os.open(_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # left by a dead process with a recycled pid
            _untrack(name)
            continue
        except BaseException:
            _untrack(name)
            raise
        return _NewSegment(name, fd, size)


def _discard(seg: _NewSegment) -> None:
    if seg.fd >= 0:
        os.close(seg.fd)
        seg.fd = -1
    if _unlink_name(seg.name):
        _untrack(seg.name)


def _os_error(e: OSError, seg: _NewSegment, what: str, task: str, direction: str) -> SerializationError:
    if e.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
        return _space_error(seg.size, shm_free_bytes(), what, task, direction)
    return SerializationError(direction or "data", task or "this message", what,
                              f"could not write shared-memory segment {seg.name}: {e}")


# --------------------------------------------------------------------------
# Rebuilding on the receiver (module-level: pickles refer to them by name)


def _rebuild_ndarray(buf, dtype, shape, order):
    import numpy as np

    return np.ndarray(shape, dtype, buffer=buf, order=order)


def _rebuild_memoryview(buf, fmt, shape):
    if isinstance(buf, bytes):  # the small, in-band case: make it writable like the rest
        buf = bytearray(buf)
    view = memoryview(buf).cast("B")
    if fmt != "B" or len(shape) != 1:
        view = view.cast(fmt, shape)
    return view


_CASTABLE: dict[str, bool] = {}


def _castable(fmt: str) -> bool:
    ok = _CASTABLE.get(fmt)
    if ok is None:
        try:
            memoryview(bytearray(64)).cast(fmt)
            ok = True
        except (TypeError, ValueError):
            ok = False
        _CASTABLE[fmt] = ok
    return ok


# --------------------------------------------------------------------------
# The sender


class _Writer:
    __slots__ = ("write",)


class _Dumper:
    """One reusable pickler and the state of the message it is writing.

    Creating a Pickler costs more than pickling a small object, so arenas
    keep a few and reset them between messages; that keeps the path without
    big buffers as fast as ``pickle.dumps``.
    """

    def __init__(self, arena: SegmentArena, pickler_cls, base_table=None):
        self.arena = arena
        self.chunks: list = []
        writer = _Writer()
        writer.write = self.chunks.append
        self.pickler = pickler_cls(writer, PROTOCOL, buffer_callback=self._buffer_callback)
        self.base_table = base_table  # a mapping to chain ours onto (cloudpickle's), or None
        self.table_key = None
        self.segments: list[_NewSegment] = []
        self.oob: list[int] = []  # segment index of each out-of-band buffer, in order
        self.markers: dict[int, int] = {}  # id(marker PickleBuffer) -> segment index
        self.keep: list = []  # markers stay alive until the message is written
        self.has_arrays = False  # tells the receiver to import numpy before mapping
        self.task = self.direction = ""

    # -- dispatch -------------------------------------------------------
    def _refresh_table(self) -> None:
        np = sys.modules.get("numpy")
        ndarray = getattr(np, "ndarray", None)
        ours = {memoryview: self._reduce_memoryview}
        if ndarray is not None:
            ours[ndarray] = self._reduce_ndarray
        if self.base_table is None:
            # A Pickler with its own dispatch_table no longer consults
            # copyreg's, so carry its entries along.
            table = dict(copyreg.dispatch_table)
            table.update(ours)
        else:
            from collections import ChainMap

            table = ChainMap(ours, self.base_table)
        self.pickler.dispatch_table = table
        # Rebuilt when copyreg gains an entry or numpy gets imported.
        self.table_key = len(copyreg.dispatch_table) + (ndarray is not None) * 1_000_000

    def _marker(self, index: int):
        marker = pickle.PickleBuffer(bytearray())  # stands for the segment in the stream
        self.markers[id(marker)] = index
        self.keep.append(marker)
        return marker

    def _reduce_ndarray(self, a):
        if a.nbytes < self.arena.threshold or a.dtype.hasobject:
            return a.__reduce_ex__(PROTOCOL)
        order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
        self.has_arrays = True
        if a.flags.c_contiguous or a.flags.f_contiguous:
            index = self._store(a.nbytes, "ndarray", (a.ravel(order="K").view("u1"),))
        else:
            index = self._store(a.nbytes, "ndarray", _c_order_blocks(a))
        return (_rebuild_ndarray, (self._marker(index), a.dtype, a.shape, order))

    def _reduce_memoryview(self, m):
        fmt, shape = m.format, m.shape
        if not _castable(fmt):
            fmt, shape = "B", (m.nbytes,)  # exotic formats arrive as raw bytes
        if m.nbytes < self.arena.threshold:
            return (_rebuild_memoryview, (m.tobytes(), fmt, shape))
        index = self._store(m.nbytes, "memoryview", (m if m.c_contiguous else m.tobytes(),))
        return (_rebuild_memoryview, (self._marker(index), fmt, shape))

    def _buffer_callback(self, pb) -> bool:
        """Out-of-band (False) for our markers and big buffers; in-band (True) otherwise."""
        index = self.markers.get(id(pb))
        if index is not None:
            self.oob.append(index)
            return False
        try:
            raw = pb.raw()
        except BufferError:  # non-contiguous: let pickle say what it thinks
            return True
        if raw.nbytes < self.arena.threshold:
            return True
        self.oob.append(self._store(raw.nbytes, "PickleBuffer", (raw,)))
        return False

    def _store(self, size: int, what: str, blocks) -> int:
        """Copy ``blocks`` (buffers, in order) into a new segment; its index."""
        seg = _create(self.arena._next_name, size, what, self.task, self.direction)
        self.segments.append(seg)
        try:
            for block in blocks:
                _write_all(seg.fd, block)
        except OSError as e:
            raise _os_error(e, seg, what, self.task, self.direction) from e
        finally:
            # One fd per segment only while it is written: a message with
            # thousands of big buffers must not run out of descriptors.
            os.close(seg.fd)
            seg.fd = -1
        return len(self.segments) - 1

    # -- one message ----------------------------------------------------
    def dump(self, obj) -> bytes:
        if self.table_key != len(copyreg.dispatch_table) + ("numpy" in sys.modules) * 1_000_000:
            self._refresh_table()
        self.pickler.dump(obj)
        chunks = self.chunks
        threshold = self.arena.threshold
        # One chunk is a stream of at most one frame: nothing worth moving.
        big = {i for i in range(1, len(chunks)) if _is_big_payload(chunks[i - 1], chunks[i], threshold)} \
            if len(chunks) > 1 else ()
        if not self.segments and not big:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        # Stream pieces: >= 0 is that many inline bytes, < 0 is segment -(k+1).
        pieces: list[int] = []
        inline: list = []
        for i, chunk in enumerate(chunks):
            if i in big:
                pieces.append(-(self._store(_nbytes(chunk), type(chunk).__name__, (chunk,)) + 1))
            else:
                inline.append(chunk)
                if pieces and pieces[-1] >= 0:
                    pieces[-1] += _nbytes(chunk)
                else:
                    pieces.append(_nbytes(chunk))
        names = [s.name for s in self.segments]
        sizes = [s.size for s in self.segments]
        header = pickle.dumps((1, _tracker_token(), names, sizes, pieces, self.oob, self.has_arrays), PROTOCOL)
        return b"".join([MAGIC, _HEADER_LEN.pack(len(header)), header, *inline])

    def reset(self) -> None:
        self.chunks.clear()
        self.pickler.clear_memo()
        if self.segments or self.keep:
            self.has_arrays = False
            self.segments = []
            self.oob = []
            self.markers.clear()
            self.keep.clear()

    def abort(self) -> None:
        """Undo a failed message: no segment of it may survive."""
        for seg in self.segments:
            try:
                _discard(seg)
            except OSError:
                pass
        self.segments = []


def _is_big_payload(prev, chunk, threshold: int) -> bool:
    """Is ``chunk`` the raw data of one bytes/bytearray/str/PickleBuffer?

    Pickle writes such a payload (from 64 KiB up) to the file as its own
    chunk, right after a chunk that ends with the opcode's length field.
    Frames (the rest of the stream) are never moved: it would be correct
    (the receiver rebuilds the exact stream) but pointless.
    """
    n = _nbytes(chunk)
    if n < threshold or type(prev) is not bytes:
        return False
    return prev.endswith(n.to_bytes(8, "little")) or (n < 1 << 32 and prev.endswith(n.to_bytes(4, "little")))


def _nbytes(chunk) -> int:
    if type(chunk) is bytes or type(chunk) is bytearray:
        return len(chunk)
    with memoryview(chunk) as m:
        return m.nbytes


def _c_order_blocks(a):
    """C-order bytes of a non-contiguous array, in blocks of about _BLOCK bytes."""
    if a.flags.c_contiguous:
        yield a.reshape(-1).view("u1")
        return
    row = a.nbytes // a.shape[0]
    if row > _BLOCK and a.ndim > 1:
        for i in range(a.shape[0]):
            yield from _c_order_blocks(a[i])
        return
    import numpy as np

    step = max(1, _BLOCK // max(row, 1))
    for start in range(0, a.shape[0], step):
        yield np.ascontiguousarray(a[start : start + step]).reshape(-1).view("u1")


class _OwnedEnvelope(bytes):
    """Envelope bytes that own their segments (``dumps(owned=True)``).

    Plain bytes everywhere (a channel pickles it as such); when the last
    reference in the creating process goes, its segments are unlinked.
    """

    def __reduce__(self):
        return (bytes, (bytes(self),))

    def __del__(self):
        d = self.__dict__
        if d.get("_pid") == os.getpid():  # a forked child's copy owns nothing
            try:
                _release_owned(d["_names"])
            except Exception:  # noqa: BLE001 - interpreter teardown
                pass


_live_owned: set[str] = set()  # names held by live owned envelopes in this process
_live_pid = os.getpid()


def _owned_envelope(data: bytes, names: list[str]) -> _OwnedEnvelope:
    env = _OwnedEnvelope(data)
    env._names = names
    env._pid = os.getpid()
    _live_owned.update(names)
    return env


def _release_owned(names) -> None:
    for name in names:
        _live_owned.discard(name)
        if _unlink_name(name):
            _untrack(name)


@atexit.register
def _release_all_owned() -> None:
    # Envelopes still alive at a normal exit: unlink now rather than leave
    # it to the tracker (which would warn about "leaked" segments).
    if os.getpid() == _live_pid:
        _release_owned(list(_live_owned))


def _after_fork_in_child() -> None:
    global _live_pid
    _live_owned.clear()
    _live_pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class SegmentArena:
    """Pickles whose big buffers travel through POSIX shared memory.

    ``prefix`` names this arena's segments (``/dev/shm/{prefix}-{n}``); make
    it unique per process and pool (see :func:`pool_prefix`). Buffers of at
    least ``threshold`` bytes go to shared memory; everything smaller stays
    in the pickle, and a message without big buffers is a plain pickle.

    Thread-safe: ``dumps`` may run in several threads at once.

    >>> import numpy as np
    >>> arena = SegmentArena("sc-doctest-arena", threshold=1 << 16)
    >>> data = arena.dumps([np.ones((300, 300), order="F"), b"x" * 100_000, 7])
    >>> arr, raw, seven = loads(data)
    >>> arr.flags.f_contiguous, arr.flags.writeable, raw == b"x" * 100_000, seven
    (True, True, True, 7)
    >>> arena.bytes_shared
    820000
    """

    moves_payloads = True  # a big bytes/bytearray/str payload goes to a segment too (guarantee 12)

    def __init__(self, prefix: str, threshold: int = DEFAULT_THRESHOLD, start_tracker: bool = True):
        if not prefix or "/" in prefix or len(prefix) > 200:
            raise ValueError(f"a segment prefix must be a short name without '/', not {prefix!r}")
        if threshold < 1:
            raise ValueError(f"threshold must be at least 1 byte, not {threshold!r}")
        self.prefix = prefix
        self.threshold = int(threshold)
        self.enabled = available()
        self._counter = itertools.count()
        self._free: list[_Dumper] = []
        self._free_only: dict[type, list[_Dumper]] = {}  # dumps_only's, per pickler class
        self._lock = threading.Lock()
        self.bytes_shared = 0  # bytes this arena wrote to shared memory
        self.bytes_received = 0  # bytes loads() attached through this arena
        if self.enabled and start_tracker:  # a zygote's pool: the zygote starts it, off our path
            _ensure_tracker()

    def _next_name(self) -> str:
        return f"{self.prefix}-{next(self._counter)}"

    def dumps(self, obj: Any, *, owned: bool = False, task: str = "", direction: str = "") -> bytes:
        """Pickle ``obj``; big buffers go to new segments, referenced by an envelope.

        ``owned=False`` (results): the receiver takes the segments over with
        ``loads(consume=True)``; if it never does, the sender unlinks them
        (:meth:`unlink` of :func:`segment_names`, or :meth:`cleanup`).

        ``owned=True`` (arguments): the returned bytes object owns its
        segments and unlinks them when it is garbage-collected (or at exit),
        so they live exactly as long as the sender keeps the message, through
        any number of re-sends; receivers load it with ``consume=False``.

        Falls back to cloudpickle for what plain pickle cannot do (lambdas,
        ``__main__`` functions inside the data), as ``serialize.dumps`` does,
        and raises whatever that second attempt raised. A buffer too big for
        /dev/shm raises :class:`~sharkcage.SerializationError` naming its size
        and the space left; ``task`` and ``direction`` fill in its message.
        Segments of a failed call are unlinked before it raises.
        """
        if not self.enabled:
            from sharkcage._engine import serialize

            return serialize.dumps(obj)
        free = self._free
        dumper = free.pop() if free else _Dumper(self, pickle.Pickler)
        dumper.task = task
        dumper.direction = direction
        try:
            data = dumper.dump(obj)
        except SerializationError:
            dumper.abort()
            raise
        except (pickle.PicklingError, TypeError, AttributeError):
            dumper.abort()  # this pickler's state is unknown now: drop it
            return self._dumps_cloudpickle(obj, owned, task, direction)
        except BaseException:
            dumper.abort()
            raise
        if dumper.segments:
            self._account(dumper)
            if owned:
                data = _owned_envelope(data, [seg.name for seg in dumper.segments])
        dumper.reset()
        if len(free) < 4:
            free.append(dumper)
        return data

    def dumps_only(self, obj: Any, pickler_cls, refused: type) -> bytes | None:
        """:meth:`dumps` of a result (not owned) with ``pickler_cls``, a Pickler
        that raises ``refused`` at what it will not pickle; None then, or on
        any other failure (the caller goes item by item, where each failure is
        named). Big payloads still go to segments: one pass, no second pickle.

        >>> from sharkcage._engine import serialize
        >>> arena = SegmentArena("sc-doctest-only", threshold=1 << 16)
        >>> data = arena.dumps_only(["x" * 100_000, 1], serialize._PlainPickler, serialize._NotPlain)
        >>> data[:len(MAGIC)] == MAGIC, arena.loads(data)[1]
        (True, 1)
        >>> arena.dumps_only([object()], serialize._PlainPickler, serialize._NotPlain) is None
        True
        """
        free = self._free_only.setdefault(pickler_cls, [])
        dumper = free.pop() if free else _Dumper(self, pickler_cls)
        try:
            data = dumper.dump(obj)
        except refused:
            dumper.abort()
            dumper.reset()  # refused before a segment was made: the pickler is reusable
            if len(free) < 4:
                free.append(dumper)
            return None
        except BaseException:  # noqa: BLE001 - too deep, /dev/shm full...: no segment of it survives
            dumper.abort()
            return None
        self._account(dumper)
        dumper.reset()
        if len(free) < 4:
            free.append(dumper)
        return data

    def _dumps_cloudpickle(self, obj, owned: bool, task: str, direction: str) -> bytes:
        import cloudpickle

        dumper = _Dumper(self, cloudpickle.Pickler, base_table=cloudpickle.Pickler.dispatch_table)
        dumper.task, dumper.direction = task, direction
        try:
            data = dumper.dump(obj)
        except BaseException:
            dumper.abort()
            raise
        self._account(dumper)
        if owned and dumper.segments:
            data = _owned_envelope(data, [seg.name for seg in dumper.segments])
        return data

    def _account(self, dumper: _Dumper) -> None:
        if dumper.segments:
            with self._lock:
                self.bytes_shared += sum(s.size for s in dumper.segments)

    def loads(self, data, *, consume: bool = True, task: str = "", direction: str = "") -> Any:
        """:func:`loads`, counting the attached bytes in :attr:`bytes_received`."""
        if data[: len(MAGIC)] != MAGIC:
            return pickle.loads(data)
        obj, attached = _loads(data, consume, task, direction)
        if attached:
            with self._lock:
                self.bytes_received += attached
        return obj

    @staticmethod
    def segment_names(data) -> list[str]:
        """The segment names an envelope references (see :func:`segment_names`)."""
        return segment_names(data)

    @staticmethod
    def unlink(names: Iterable[str]) -> list[str]:
        """Unlink segments by name, ENOENT ignored (see :func:`unlink`)."""
        return unlink(names)

    def cleanup(self) -> list[str]:
        """Unlink every segment this arena's prefix names (``{prefix}-{n}``).

        For a worker that died mid-transfer, build an arena with that
        worker's prefix (or call :func:`cleanup_prefix`) and clean it.
        """
        return cleanup_prefix(self.prefix)

    def __repr__(self) -> str:
        return f"SegmentArena({self.prefix!r}, threshold={self.threshold}, bytes_shared={self.bytes_shared})"


# --------------------------------------------------------------------------
# The receiver


def _parse(data):
    if len(data) < len(MAGIC) + _HEADER_LEN.size or data[: len(MAGIC)] != MAGIC:
        return None
    (hlen,) = _HEADER_LEN.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _HEADER_LEN.size
    header = pickle.loads(data[start : start + hlen])
    return header, start + hlen


def segment_names(data) -> list[str]:
    """Names of the segments an envelope references ([] for a plain pickle).

    ``data`` may also be a list or tuple of messages (a batch pickled item by
    item): the names of all of them.

    >>> segment_names(pickle.dumps(1))
    []
    """
    if isinstance(data, (list, tuple)):
        return [n for d in data for n in segment_names(d)]
    parsed = _parse(data)
    return [] if parsed is None else list(parsed[0][2])


def loads(data, *, consume: bool = True, task: str = "", direction: str = "") -> Any:
    """Unpickle a plain pickle or an envelope made by :meth:`SegmentArena.dumps`.

    Every segment is attached before anything is rebuilt. With
    ``consume=True`` (the default) its name is unlinked at once: this process
    owns the memory now, mapped shared and writable, and nothing is left in
    /dev/shm however it ends. With ``consume=False`` the segment is mapped
    copy-on-write and left for its sender to unlink, so the same message can
    be loaded again (a task re-run after a crash sees its original
    arguments). A missing segment raises :class:`~sharkcage.SerializationError`
    (after the others were attached and released).

    >>> loads(pickle.dumps([1, 2]))
    [1, 2]
    """
    if data[: len(MAGIC)] != MAGIC:
        return pickle.loads(data)
    return _loads(data, consume, task, direction)[0]


def _loads(data, consume: bool, task: str, direction: str):
    parsed = _parse(data)
    if parsed is None:
        return pickle.loads(data), 0
    (_version, token, names, sizes, pieces, oob, has_arrays), body = parsed
    if has_arrays:
        import numpy  # noqa: F401 - needed to rebuild them; lets map_buffer keep no fd
    untrack = consume and token is not None and token == _tracker_token()
    stream_segments = {-p - 1 for p in pieces if p < 0}
    maps: list = [None] * len(names)
    missing = []
    try:
        for i, (name, size) in enumerate(zip(names, sizes)):
            try:
                maps[i] = _attach(name, size, consume, stream=i in stream_segments)
            except FileNotFoundError:
                missing.append(name)
                continue
            if consume and _unlink_name(name) and untrack:
                _untrack(name)
        if missing:
            raise SerializationError(
                direction or "data", task or "this message", "shared memory",
                f"(unpickling) shared-memory segment(s) {', '.join(missing)} are gone: "
                "their sender unlinked them (cancelled or cleaned up) or they were already consumed",
            )
        buffers = [maps[i] for i in oob]
        view = memoryview(data)
        if not stream_segments:
            obj = pickle.loads(view[body:], buffers=buffers)
        else:
            parts, pos = [], body
            for p in pieces:
                if p >= 0:
                    parts.append(view[pos : pos + p])
                    pos += p
                else:
                    parts.append(memoryview(maps[-p - 1]))
            stream = _Stream(parts)
            try:
                obj = pickle.Unpickler(stream, buffers=buffers).load()
            finally:
                stream.release()
        del buffers
    finally:
        # Stream segments were copied out; out-of-band ones live on in the
        # objects that view them (their memoryview keeps the mapping).
        for i in stream_segments:
            m = maps[i]
            if m is not None:
                try:
                    m.close()
                except BufferError:
                    pass
        maps = None
    return obj, sum(sizes)


def _attach(name: str, size: int, shared: bool, stream: bool):
    """Map one received segment: an mmap object for a stream piece (closed
    right after loading), a self-unmapping buffer for an out-of-band one."""
    fd = os.open(_path(name), os.O_RDWR | os.O_CLOEXEC)
    try:
        actual = os.fstat(fd).st_size
        if actual < size:  # mapping past the end would SIGBUS on first touch
            raise SerializationError("data", "this message", "shared memory",
                                     f"(unpickling) shared-memory segment {name} holds {actual} bytes, expected {size}")
        if stream:  # read once, in full: map it all up front
            flags = (mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)) if shared else mmap.MAP_PRIVATE
            return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
        # Private (copy-on-write) when the sender keeps the segment: it stays
        # as written, for whoever loads the message next.
        return map_buffer(fd, size, private=not shared)
    finally:
        os.close(fd)


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_long]
            libc.munmap.restype = ctypes.c_int
            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            _LIBC = libc
        except Exception:  # noqa: BLE001 - no libc mmap: the mmap module will do
            _LIBC = False
    return _LIBC or None


class _Mapping:
    """Owns one mapped region; numpy arrays over it keep it alive (their base)."""

    __slots__ = ("__array_interface__", "__weakref__")

    def __init__(self, addr: int, size: int, readonly: bool):
        self.__array_interface__ = {"data": (addr, readonly), "shape": (size,), "typestr": "|u1", "version": 3}
        fin = weakref.finalize(self, _munmap, addr, size)
        fin.atexit = False  # at exit the OS unmaps; objects may still use it during teardown


def _munmap(addr: int, size: int) -> None:
    _libc().munmap(addr, size)


def map_buffer(fd: int, size: int, *, private: bool = False, readonly: bool = False):
    """Map ``size`` bytes of ``fd``: a memoryview that unmaps itself when its last user goes.

    The ``mmap`` module keeps a duplicate of the file descriptor for every
    mapping (until Python 3.13's ``trackfd``), so a process holding thousands
    of received arrays would run out of descriptors. With numpy loaded the
    region is mapped through libc and owned by a small object instead; views
    (numpy arrays, memoryviews, casts) keep that owner alive. Without numpy,
    the ``mmap`` module it is.
    """
    prot = mmap.PROT_READ | (0 if readonly else mmap.PROT_WRITE)
    flags = mmap.MAP_PRIVATE if private else mmap.MAP_SHARED
    np = sys.modules.get("numpy")
    libc = _libc() if np is not None else None
    if libc is None:
        return memoryview(mmap.mmap(fd, size, flags=flags, prot=prot))
    addr = libc.mmap(None, size, prot, flags, fd, 0)
    if addr is None or addr == (1 << (8 * struct.calcsize("P"))) - 1:  # MAP_FAILED
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"mmap of {size} bytes failed: {os.strerror(err)}")
    return memoryview(np.asarray(_Mapping(addr, size, readonly)))


class _Stream:
    """A file over the pickle stream: inline pieces and segment pieces in order."""

    __slots__ = ("_parts", "_i", "_pos")

    def __init__(self, parts: list):
        self._parts = parts
        self._i = 0
        self._pos = 0

    def readinto(self, b) -> int:
        with memoryview(b) as out:
            out = out.cast("B") if out.format != "B" else out
            n, filled, parts = out.nbytes, 0, self._parts
            while filled < n and self._i < len(parts):
                part = parts[self._i]
                k = min(len(part) - self._pos, n - filled)
                out[filled : filled + k] = part[self._pos : self._pos + k]
                filled += k
                self._pos += k
                if self._pos == len(part):
                    self._i += 1
                    self._pos = 0
            return filled

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = sum(len(p) for p in self._parts[self._i :]) - self._pos
        if self._i < len(self._parts):
            part = self._parts[self._i]
            if self._pos + n <= len(part):  # the common case: within one piece
                out = bytes(part[self._pos : self._pos + n])
                self._pos += n
                if self._pos == len(part):
                    self._i += 1
                    self._pos = 0
                return out
        buf = bytearray(n)
        k = self.readinto(buf)
        return bytes(buf[:k])

    def readline(self) -> bytes:
        out = bytearray()
        while self._i < len(self._parts):
            c = self.read(1)
            out += c
            if c == b"\n":
                break
        return bytes(out)

    def release(self) -> None:
        for p in self._parts:
            p.release()
        self._parts = []
