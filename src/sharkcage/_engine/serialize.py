"""Serialization: callables by value, data fast, failures attributed to one task.

* Data (arguments, results) goes through plain ``pickle`` first — it is the
  fastest path — and falls back to ``cloudpickle`` for what plain pickle
  cannot do (lambdas, closures, ``__main__`` functions inside the data).
* Callables always go through ``cloudpickle``: importable functions by
  reference, everything else (lambdas, ``python -c`` code, the REPL, a
  notebook) by value. The supervisor pickles a function once per pool and
  ships it once per worker.
* Exceptions are checked for a round trip *in the worker*; one whose
  ``__reduce__`` breaks its own ``__init__`` (seed 003) travels as a
  description and is rebuilt here without calling ``__init__``.

Everything that can raise while decoding runs inside a guard that turns the
failure into an exception object for exactly one task: nothing here may kill
the supervisor thread.
"""

from __future__ import annotations

import collections
import copyreg
import importlib
import io
import pickle
import traceback
from typing import Any

import cloudpickle

from sharkcage.errors import RemoteError, SerializationError

PROTOCOL = 5


def dumps(obj: Any, buffer_callback=None) -> bytes:
    """Pickle data: plain pickle first, cloudpickle when that is not enough.

    Plain pickle refers to classes and functions of ``__main__`` by name,
    which a worker may not have (``python -c``, piped stdin, a notebook), so
    any pickle that mentions ``__main__`` is redone with cloudpickle, which
    carries them by value. The scan is a memchr-speed ``in``; a false hit
    (the string "__main__" in the data) only costs the slower pickler.

    Raises whatever the second attempt raised; callers turn it into a
    :class:`SerializationError` naming the task and direction.
    """
    try:
        data = pickle.dumps(obj, PROTOCOL, buffer_callback=buffer_callback)
    except (pickle.PicklingError, TypeError, AttributeError):
        return cloudpickle.dumps(obj, PROTOCOL, buffer_callback=buffer_callback)
    if b"__main__" in data:
        return cloudpickle.dumps(obj, PROTOCOL, buffer_callback=buffer_callback)
    return data


loads = pickle.loads


class _NotPlain(Exception):
    """Raised inside :class:`_PlainPickler` at the first non-builtin object."""


class _PlainPickler(pickle.Pickler):
    """Pickles builtin data only, and says so by finishing.

    C pickle saves None, bools, ints, floats, str, bytes, bytearray, and
    lists, tuples, dicts, sets and frozensets of them without asking
    ``reducer_override``; it asks for everything else (an instance, a class,
    a function, an int subclass, an array) — exactly what could run code or
    fail to import when unpickled. So plain data costs no Python call per
    element, and the first other object stops the pickling at once.
    """

    def reducer_override(self, obj):
        if obj is complex or type(obj) is complex:  # reduced to complex(re, im): nothing can fail
            return NotImplemented
        raise _NotPlain


def dumps_plain(obj: Any, arena=None) -> bytes | None:
    """The pickle of ``obj`` if it is builtin data all the way down (nothing
    whose unpickling could run code, import a module or fail), else None.
    With a shared-memory ``arena`` (one that moves big bytes, bytearray and
    str payloads), those go to its segments as in :func:`dumps_data`.

    One pass at ``pickle.dumps`` speed: a worker sends a whole batch's
    results as one pickle only when no single result can fail to unpickle
    in the parent (each failure must land on its own task).

    >>> dumps_plain([1, (2.0, "x"), {"k": [None, b"y"]}]) is not None, dumps_plain([1, object()])
    (True, None)
    """
    if _moves_payloads(arena):
        return arena.dumps_only(obj, _PlainPickler, _NotPlain)
    # A pickler is kept for reuse (making one costs more than pickling a
    # one-call batch); pop/append keep two threads from sharing one.
    try:
        pickler, out = _plain_picklers.pop()
    except IndexError:
        out = io.BytesIO()
        pickler = _PlainPickler(out, PROTOCOL)
    try:
        pickler.dump(obj)
        return out.getvalue()
    except BaseException:  # noqa: BLE001 - not builtin, too deep, too big: the caller goes item by item
        return None
    finally:
        pickler.clear_memo()
        out.seek(0)
        out.truncate()
        if len(_plain_picklers) < 4:
            _plain_picklers.append((pickler, out))


_plain_picklers: list = []


def _moves_payloads(arena) -> bool:
    """Whether ``arena`` sends big bytes/bytearray/str payloads through
    shared memory (a pool's SegmentArena; a cluster's BufferArena does not)."""
    return arena is not None and arena.enabled and getattr(arena, "moves_payloads", False)


_WHOLE_BUFFER_LIMIT = 1 << 20  # without an arena: a buffer this big goes item by item, not copied twice


def dumps_checked(values: list, arena=None) -> bytes | None:
    """One pickle for a batch's results that are not all builtin data, if
    each of them unpickles here; else None (the caller pickles item by item).

    What unpickles in the worker unpickles in the parent (same code, same
    environment), so trying it here keeps "a result that cannot be
    unpickled fails only its own task" while the batch pays one pickle and
    one memo: a class is named once, not once per item (2.9 -> 1.3 µs per
    small object), and a ``__main__`` class cloudpickle carries by value is
    carried once per batch instead of once per result. A buffer of at least
    the arena's threshold (an array for shared memory) returns None before
    anything is copied; a pickle that big may hold a big bytes or str, which
    a shared-memory arena moves: it is pickled again through it.

    >>> from fractions import Fraction
    >>> pickle.loads(dumps_checked([Fraction(1, 3), Fraction(2, 3)]))
    [Fraction(1, 3), Fraction(2, 3)]
    """
    limit = arena.threshold if arena is not None else _WHOLE_BUFFER_LIMIT

    def in_band_if_small(buf) -> bool:
        if memoryview(buf).nbytes >= limit:
            raise _NotPlain
        return True

    try:
        data = dumps(values, buffer_callback=in_band_if_small)
        pickle.loads(data)
        if len(data) >= limit and _moves_payloads(arena):
            data = dumps_data(values, arena)
    except BaseException:  # noqa: BLE001 - SystemExit in __setstate__ too: item by item names the culprit
        return None
    return data


# SHM_WIRED: arguments and results go through dumps_data/loads_data, which
# send buffers of at least the pool's shm_threshold through shared memory
# (see shm.py); everything else is the plain pickle of dumps().


_SCALARS = frozenset({int, float, bool, type(None), complex})
_CONTAINERS = frozenset({tuple, list, dict})


def plainly_small(obj: Any, threshold: int, depth: int = 2) -> bool:
    """True when ``obj`` cannot hold a buffer worth shared memory: a scalar, a
    short str or bytes, or short tuples/lists/dicts of those, two levels
    deep (``(args, kwargs)`` of most ``apply_async`` calls). Such objects
    skip the arena's machinery.

    >>> plainly_small(((1, "a", None), {}), 1 << 16), plainly_small(((b"x" * 100_000,), {}), 1 << 16)
    (True, False)
    """
    t = type(obj)
    if t in _SCALARS:
        return True
    if t is str or t is bytes:
        return len(obj) * 4 < threshold  # 4: a str's worst UTF-8 size
    if depth == 0 or len(obj) > 16 if t in _CONTAINERS else True:
        return False
    # Plain loops, no generators, scalars checked inline: this runs for
    # every apply_async, whose item is (args, kwargs).
    if t is dict:
        for k, v in obj.items():
            if type(k) is not str or (type(v) not in _SCALARS and not plainly_small(v, threshold, depth - 1)):
                return False
        return True
    for x in obj:
        tx = type(x)
        if tx in _SCALARS or tx is dict and not x:
            continue
        if tx is tuple and depth > 1 and len(x) <= 16:
            for y in x:
                ty = type(y)
                if ty not in _SCALARS and not ((ty is str or ty is bytes) and len(y) * 4 < threshold):
                    break
            else:
                continue
        if not plainly_small(x, threshold, depth - 1):
            return False
    return True


def dumps_data(obj: Any, arena=None, owned: bool = False, task: str = "", direction: str = "") -> bytes:
    """Pickle an argument or a result; big buffers through ``arena``'s shared memory.

    ``owned=True`` (arguments): the returned bytes own their segments and
    unlink them when garbage-collected, so a re-sent batch still finds them.
    Same ``__main__`` rule as :func:`dumps`.
    """
    if arena is None or not arena.enabled or plainly_small(obj, arena.threshold):
        return dumps(obj)
    data = arena.dumps(obj, owned=owned, task=task, direction=direction)
    if b"__main__" in (data.head if isinstance(data, OutOfBand) else data):
        from sharkcage._engine import shm

        again = arena._dumps_cloudpickle(obj, owned, task, direction)
        if not owned:
            shm.unlink(shm.segment_names(data))
        return again
    return data


def loads_data(data, arena=None, consume: bool = True) -> Any:
    """Unpickle what :func:`dumps_data` made (a plain pickle, or an envelope).

    ``consume=True`` takes the segments over (unlinks their names);
    ``consume=False`` maps them copy-on-write and leaves them to the sender.
    """
    if isinstance(data, OutOfBand):
        # A carrier's buffers may be read-only views of its store (Ray's);
        # what arrives must be writable and behave like a copy: copy those.
        buffers = [b if not memoryview(b).readonly else _writable_copy(b) for b in data.buffers]
        return pickle.loads(data.head, buffers=buffers)
    if data[0] != 0:  # a pickle starts with PROTO (0x80); an envelope with NUL
        return pickle.loads(data)
    if arena is not None:
        return arena.loads(data, consume=consume)
    from sharkcage._engine import shm

    return shm.loads(data, consume=consume)


def _writable_copy(buf):
    """A writable copy of a read-only buffer: numpy's copy when numpy is
    loaded (the data is an array's, and it copies at memcpy speed), else a
    bytearray (about half as fast on big buffers)."""
    import sys

    np = sys.modules.get("numpy")
    if np is not None:
        try:
            return np.frombuffer(buf, dtype=np.uint8).copy()
        except (ValueError, TypeError):
            pass
    return bytearray(buf)


class OutOfBand:
    """A pickle whose big buffers travel beside it, not inside it.

    For carriers that move buffers without copying them (Ray's object store,
    Dask's frames): pickled with protocol 5 by such a carrier, ``buffers``
    (PickleBuffer objects) go out of band there too, so an array crosses a
    cluster with one copy each way instead of being pickled into the stream.
    """

    __slots__ = ("head", "buffers")

    def __init__(self, head: bytes, buffers: list):
        self.head = head
        self.buffers = buffers

    def __reduce__(self):
        return (OutOfBand, (self.head, self.buffers))

    def __len__(self) -> int:
        return len(self.head) + sum(memoryview(b).nbytes for b in self.buffers)


class BufferArena:
    """The arena of a cluster backend: buffers of at least ``threshold``
    bytes leave the pickle as :class:`OutOfBand` buffers (no shared memory:
    the cluster's own transport carries them).

    >>> import pickle
    >>> arena = BufferArena(threshold=16)
    >>> data = dumps_data(pickle.PickleBuffer(bytearray(64)), arena)
    >>> isinstance(data, OutOfBand), bytes(loads_data(data)) == bytes(64)
    (True, True)
    """

    enabled = True
    moves_payloads = False  # bytes, bytearray and str stay in the pickle: the cluster carries it

    def __init__(self, threshold: int = 1 << 20):
        self.threshold = threshold
        self.bytes_shared = 0
        self.bytes_received = 0

    def _dump(self, pickler_dumps, obj):
        buffers: list = []

        def keep_big(pb) -> bool:
            if pb.raw().nbytes >= self.threshold:
                buffers.append(pb)
                return False  # out of band
            return True

        head = pickler_dumps(obj, PROTOCOL, buffer_callback=keep_big)
        if not buffers:
            return head
        self.bytes_shared += sum(pb.raw().nbytes for pb in buffers)
        return OutOfBand(head, buffers)

    def dumps(self, obj: Any, *, owned: bool = False, task: str = "", direction: str = ""):
        try:
            return self._dump(pickle.dumps, obj)
        except (pickle.PicklingError, TypeError, AttributeError):
            return self._dump(cloudpickle.dumps, obj)

    def _dumps_cloudpickle(self, obj: Any, owned: bool, task: str, direction: str):
        return self._dump(cloudpickle.dumps, obj)

    def loads(self, data, *, consume: bool = True) -> Any:
        return loads_data(data)


def dumps_callable(fn: Any) -> bytes:
    """Pickle a callable by value where it cannot be found by reference."""
    return cloudpickle.dumps(fn, PROTOCOL)


def dumps_task_function(fn: Any) -> bytes:
    """A task's function pickled for the workers (every engine's
    ``register_function``); :class:`SerializationError` naming it if it cannot be.

    >>> len(dumps_task_function(abs)) > 0
    True
    """
    try:
        return dumps_callable(fn)
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, KeyboardInterrupt):
            raise
        raise serialization_error("argument", f"the function {callable_name(fn)}", fn, e) from None


def callable_name(fn: Any) -> str:
    """A short, human name for a callable, for error messages."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        inner = getattr(fn, "func", None)  # functools.partial
        if inner is not None:
            return f"partial({callable_name(inner)})"
        name = type(fn).__name__
    return name


def failing_type(obj: Any, exc: BaseException) -> str:
    """Best guess at the type of the object that failed to pickle.

    Pickle's own messages name it ("cannot pickle 'generator' object");
    otherwise, search the object's direct contents for the first one that
    fails on its own, and name the outermost type as a last resort.
    """
    text = str(exc)
    marker = "cannot pickle '"
    if marker in text:
        return text.split(marker, 1)[1].split("'", 1)[0]
    return _first_failing(obj, depth=4)


def _first_failing(obj: Any, depth: int) -> str:
    """The innermost container element (a few levels down) that fails alone."""
    if depth > 0:
        for part in _children(obj):
            try:
                dumps(part)
            except BaseException:  # noqa: BLE001 - probing only
                return _first_failing(part, depth - 1)
    return type(obj).__qualname__


def _children(obj: Any):
    if isinstance(obj, (tuple, list, set, frozenset)):
        return list(obj)[:1000]
    if isinstance(obj, dict):
        return (list(obj.keys()) + list(obj.values()))[:1000]
    return []


def describe_exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def serialization_error(direction: str, task: str, obj: Any, exc: BaseException) -> SerializationError:
    """Build the error for ``obj`` that failed to (de)serialize."""
    hint = None
    if direction == "argument":
        hint = "Pass picklable arguments (plain data, importable classes), or create the object inside the task"
    elif direction == "result":
        hint = "Return picklable data from the task (convert generators to lists, drop open handles)"
    err = SerializationError(direction, task, failing_type(obj, exc), describe_exception(exc), hint)
    err.__cause__ = exc if isinstance(exc, Exception) else None
    return err


# --------------------------------------------------------------------------
# Exceptions raised by tasks


class _RemoteTraceback(Exception):
    """Carries the worker's traceback text as ``__cause__`` (as concurrent.futures does)."""

    def __init__(self, tb: str):
        self.tb = tb
        super().__init__(tb)

    def __str__(self) -> str:
        return self.tb


def _exception_dumps(obj: Any) -> bytes:
    """Pickle an exception report with the exception classes' own reducers.

    Some libraries register a copyreg reducer for every exception class
    (tblib, installed in every Dask process, rebuilds them with
    ``cls.__new__`` plus attribute copies): ``SystemExit(3)`` would lose its
    code and seed 003's class would "round-trip" without its ``__init__``
    ever being checked. Those reducers are left out here; any other
    registered reducer still applies.
    """
    table = {cls: red for cls, red in copyreg.dispatch_table.items()
             if not getattr(red, "__module__", "").startswith("tblib")}
    buf = io.BytesIO()
    try:
        pickler = pickle.Pickler(buf, PROTOCOL)
        pickler.dispatch_table = table
        pickler.dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError):
        buf = io.BytesIO()
        pickler = cloudpickle.Pickler(buf, PROTOCOL)
        pickler.dispatch_table = collections.ChainMap(cloudpickle.Pickler.dispatch_table, table)
        pickler.dump(obj)
    return buf.getvalue()


def pack_exception(exc: BaseException) -> bytes:
    """Worker side: the bytes that bring ``exc`` back to the parent.

    A round trip is tried right here, so an exception class that cannot be
    rebuilt (seed 003's mysql error) is sent as a description instead of
    exploding in the parent.
    """
    tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None
    cause, context = exc.__cause__, exc.__context__
    try:
        # Chained exceptions may hold unpicklable frames or objects; the
        # traceback text already tells their story.
        exc.__cause__ = exc.__context__ = None
        data = _exception_dumps(("exc", exc, tb_text))
        kind, back, _ = loads(data)
        if type(back) is type(exc):
            return data
    except BaseException:  # noqa: BLE001 - any failure means "describe it instead"
        pass
    finally:
        exc.__cause__, exc.__context__ = cause, context
    return _exception_dumps(("remote", describe_remote(exc), tb_text))


def describe_remote(exc: BaseException) -> dict:
    """The parts of an exception that survive pickling on their own."""
    cls = type(exc)
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001 - a broken __str__ must not stop us
        message = repr(getattr(exc, "args", ()))
    desc = {"module": cls.__module__, "qualname": cls.__qualname__, "message": message, "args": (), "dict": {}}
    try:
        desc["args"] = loads(dumps(tuple(exc.args)))
    except BaseException:  # noqa: BLE001
        pass
    for key, value in getattr(exc, "__dict__", {}).items():
        try:
            desc["dict"][key] = loads(dumps(value))
        except BaseException:  # noqa: BLE001 - keep what can travel, drop the rest
            pass
    return desc


_REMOTE_SUBCLASSES: dict[type, type | None] = {}


def _remote_subclass(cls: type) -> type | None:
    """A subclass of ``cls`` and RemoteError, so ``except cls`` still catches it."""
    if cls not in _REMOTE_SUBCLASSES:
        try:
            sub = type(
                cls.__name__,
                (cls, RemoteError),
                {
                    "__module__": cls.__module__,
                    "__qualname__": cls.__qualname__,
                    "__str__": RemoteError.__str__,
                    "__reduce__": RemoteError.__reduce__,
                    "__init__": RemoteError.__init__,
                },
            )
        except TypeError:  # incompatible layouts (some C exception types)
            sub = None
        _REMOTE_SUBCLASSES[cls] = sub
    return _REMOTE_SUBCLASSES[cls]


def rebuild_remote(desc: dict, tb_text: str) -> BaseException:
    """Parent side: a RemoteError (or a subclass of the original class)."""
    type_name = f"{desc['module']}.{desc['qualname']}"
    cls = None
    try:
        obj: Any = importlib.import_module(desc["module"])
        for part in desc["qualname"].split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            cls = obj
    except BaseException:  # noqa: BLE001 - not importable here: plain RemoteError
        cls = None
    sub = _remote_subclass(cls) if cls is not None else None
    if sub is None:
        return RemoteError(type_name, desc["message"], tb_text)
    err = BaseException.__new__(sub)  # never the original __init__: it is what broke
    err.args = tuple(desc["args"])
    try:
        err.__dict__.update(desc["dict"])
    except BaseException:  # noqa: BLE001
        pass
    err.type_name = type_name
    err.message = desc["message"]
    err.remote_traceback = tb_text
    return err


def unpack_exception(data: bytes) -> BaseException:
    """Parent side: the exception a task raised, ready to raise here."""
    kind, payload, tb_text = loads(data)
    if kind == "remote":
        return rebuild_remote(payload, tb_text)
    exc = payload
    exc.__cause__ = _RemoteTraceback(tb_text)
    return exc
