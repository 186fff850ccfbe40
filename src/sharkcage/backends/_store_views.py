"""Writable views of big buffers that Ray hands out read-only, without a copy.

Ray delivers an object's big buffers (an argument on its worker, a result on
the driver) as read-only views of its object store ("plasma": a file in
/dev/shm that every Ray process on the node maps shared and writable). A
pool's arrays must arrive writable, as they do from the local engine; a
copy costs 35-60 ms per 100 MB on a small machine, twice per round trip.

Those buffers have one reader: a task's argument object is made for that
call alone (a rerun sends a new one) and a result object is read once, by
the pool. So the reader may write to it in place, as to a copy of its own:
:func:`writable` returns a writable view of the same memory that keeps Ray's
read-only view (and with it the object, pinned in the store) alive. It does
so only where the memory is provably a writable, shared mapping of the
object store's file in this process; anything else (Ray Client's buffers,
inline objects, a store elsewhere) is returned as it is, and the caller
copies it as before.

Never for ``pool.share()`` objects: those are read by many tasks, and are
not passed through here (they stay read-only, as documented).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

_lock = threading.Lock()
_ranges: list[tuple[int, int]] = []  # [lo, hi) of this process's writable store mappings, as last read


def _store_ranges() -> list[tuple[int, int]]:
    """The writable, shared mappings of Ray's object store file in this process."""
    found = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) < 6 or parts[1][:2] != "rw" or parts[1][3] != "s":
                    continue
                name = os.path.basename(parts[5].strip().removesuffix(" (deleted)"))
                if not name.startswith("plasma"):
                    continue
                lo, hi = parts[0].split("-")
                found.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return found


def _inside(lo: int, hi: int) -> bool:
    return any(a <= lo and hi <= b for a, b in _ranges)


def writable(buf):
    """A writable view of ``buf`` (same memory) if it is a read-only view of
    Ray's object store in this process; ``buf`` itself otherwise.

    >>> data = b"not Ray's store"
    >>> writable(data) is data
    True
    """
    global _ranges
    view = memoryview(buf)
    if not view.readonly or not view.contiguous or view.nbytes == 0:
        return buf
    np = sys.modules.get("numpy")
    if np is None:
        return buf
    try:
        address = np.frombuffer(view.cast("B"), dtype=np.uint8).__array_interface__["data"][0]
    except (TypeError, ValueError):
        return buf
    end = address + view.nbytes
    with _lock:
        if not _inside(address, end):
            _ranges = _store_ranges()  # the store may have mapped more since
            if not _inside(address, end):
                return buf
    alias = (ctypes.c_char * view.nbytes).from_address(address)
    alias.keep = buf  # Ray's view pins the object in the store while ours lives
    return memoryview(alias).cast("B")
