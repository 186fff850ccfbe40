"""``pool.share(obj)`` on a cluster: the object in the engine's object store.

The local engine writes a shared object into shared memory (``shared.py``);
a cluster has no memory the parent and the workers all map, but each engine
has an object store made for this: Ray's (``ray.put``: every worker of a node
maps the same copy, numpy arrays arrive as zero-copy read-only views) and
Dask's (``client.scatter``: the object moves to a worker once, and from
worker to worker as tasks need it). A :class:`ClusterShare` is the parent's
handle on that copy.

How a task gets the object. The handle pickles as its key only (a few
dozen bytes in the task's arguments). When the dispatcher launches a
batch, it looks for the keys of the pool's live shares in the batch's
pickles (:func:`shares_in`) and sends the engine's references of those it
finds beside the payload; the engine resolves them on the worker (Dask
replaces its futures by the data; on Ray, :func:`stage` calls ``ray.get``
once per worker process). Only then is the payload unpickled, and each key
becomes its object (:func:`share_value`).

>>> import pickle
>>> shares_in(pickle.dumps(("sharkcage-share-ab-1", 5)), ["sharkcage-share-ab-1", "sharkcage-share-ab-2"])
['sharkcage-share-ab-1']
"""

from __future__ import annotations

import collections
import threading
from typing import Any

_fetched: "collections.OrderedDict[str, Any]" = collections.OrderedDict()  # Ray: key -> object
_fetched_lock = threading.Lock()
_FETCHED_LIMIT = 16  # objects a Ray worker process keeps fetched (the latest used)
_call = threading.local()  # .values: {key: object} of the batch this thread runs


class ClusterShare:
    """The parent's handle on an object placed once in a cluster's object
    store by ``pool.share(obj)`` (``backend="dask"`` or ``"ray"``).

    Pass it in task arguments: the task receives the object itself. Treat the
    object as read-only: every task of a worker may get the same one.
    :meth:`resolve` fetches it in the parent; :meth:`release` (or the pool's
    end) drops the cluster's copy.

    >>> from sharkcage import Pool
    >>> with Pool(backend="ray", address="auto") as pool:       # doctest: +SKIP
    ...     h = pool.share(list(range(1000)))
    ...     pool.apply(sum, (h,))
    499500
    """

    __slots__ = ("key", "ref", "nbytes", "type_name", "_backend", "__weakref__")

    def __init__(self, key: str, ref, nbytes: int | None, type_name: str, backend):
        self.key = key
        self.ref = ref  # the engine's reference: a Ray ObjectRef, a Dask Future
        self.nbytes = nbytes
        self.type_name = type_name
        self._backend = backend

    @property
    def id(self) -> str:
        """The handle's id: the key tasks look the object up by."""
        return self.key

    def resolve(self) -> Any:
        """The object, fetched from the cluster into this process."""
        if self.ref is None:
            raise ValueError(f"{self!r} was released")
        return self._backend._get_shared(self.ref)

    def release(self) -> None:
        """Drop the cluster's copy (idempotent). Tasks already running keep theirs."""
        if self.ref is not None:
            self._backend._release_share(self)

    def __enter__(self) -> ClusterShare:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __reduce__(self):
        return (share_value, (self.key,))

    def __repr__(self) -> str:
        where = "released" if self.ref is None else f"in the {self._backend.engine} cluster"
        return f"<ClusterShare {self.key}: {self.type_name}, {where}>"


def shares_in(payload, keys) -> list[str]:
    """The keys (of ``keys``) that occur in a batch's pickles: one bytes
    search per key and pickle, on the in-band part only (a pickle stores a
    short str as its UTF-8 bytes)."""
    if not keys:
        return []
    pieces = payload if isinstance(payload, list) else [payload]
    heads = [getattr(p, "head", p) for p in pieces]  # an OutOfBand's head holds its keys
    return [k for k in keys if any(k.encode() in h for h in heads if isinstance(h, (bytes, bytearray)))]


def stage(shares) -> None:
    """On the worker, before the payload is unpickled: the batch's shared
    objects by key, for this thread (a Dask worker runs tasks in threads).
    ``shares`` is ``(how, {key: value or ref})``; ``how`` "ray": the values
    are ObjectRefs, fetched once per process and kept for the next batches."""
    if not shares:
        _call.values = None
        return
    how, refs = shares
    if how != "ray":
        _call.values = dict(refs)  # Dask put its stored objects in place of its futures
        return
    with _fetched_lock:
        values = {k: _fetched[k] for k in refs if k in _fetched}
    missing = [k for k in refs if k not in values]
    if missing:
        import ray

        values.update(zip(missing, ray.get([refs[k] for k in missing])))
    with _fetched_lock:
        for k in refs:
            _fetched[k] = values[k]
            _fetched.move_to_end(k)
        while len(_fetched) > _FETCHED_LIMIT:
            _fetched.popitem(last=False)
    _call.values = values


def unstage() -> None:
    """After the batch: this thread holds no shared object any more."""
    _call.values = None


def share_value(key: str) -> Any:
    """What unpickling a :class:`ClusterShare` gives on a worker: its object."""
    values = getattr(_call, "values", None)
    if values is not None and key in values:
        return values[key]
    raise LookupError(
        f"shared object {key!r} is not known here: a handle from pool.share() works in the arguments of the "
        "tasks of the pool that made it, until it is released (not in another pool, nor inside a shared object)"
    )
