"""Child-side code for the shared-memory tests (importable under every start method).

The tests talk to children over a ``multiprocessing.Pipe`` carrying raw
bytes, the same way the engine's channel carries pickles: what crosses the
process boundary is exactly what ``SegmentArena.dumps`` returned.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time

from sharkcage._engine import shm


def echo(conn, prefix: str, threshold: int, consume: bool = True) -> None:
    """Load every message and send it back through this child's own arena."""
    arena = shm.SegmentArena(prefix, threshold)
    while True:
        data = conn.recv_bytes()
        if data == b"stop":
            return
        try:
            obj = shm.loads(data, consume=consume)
            reply = arena.dumps(("ok", obj))
        except BaseException as e:  # noqa: BLE001 - report, keep serving
            reply = arena.dumps(("error", f"{type(e).__name__}: {e}"))
        conn.send_bytes(reply)


def send_and_exit(conn, prefix: str, n: int) -> None:
    """Send one big array and exit at once: the receiver must not need us."""
    import numpy as np

    arena = shm.SegmentArena(prefix, 1 << 16)
    conn.send_bytes(arena.dumps(np.arange(n, dtype=np.float64)))
    conn.close()


def hold_then_load(conn) -> None:
    """Receive a message, say so, and wait (to be killed) before loading it."""
    data = conn.recv_bytes()
    conn.send_bytes(b"got it")
    time.sleep(60)
    shm.loads(data)


def load_and_hold(conn) -> None:
    """Load a message (consuming its segments), say so, and wait to be killed."""
    obj = shm.loads(conn.recv_bytes())
    conn.send_bytes(b"loaded")
    time.sleep(60)
    del obj


class StallWhenPickled:
    """Pickling it tells the parent (over ``conn``) and then hangs: a sender
    frozen in the middle of writing a message."""

    def __init__(self, conn):
        self.conn = conn

    def __reduce__(self):
        self.conn.send_bytes(b"stalled")
        time.sleep(60)
        return (int, ())


def die_while_dumping(conn, prefix: str) -> None:
    """Start a result with a big array, then stall so the parent can kill us."""
    import numpy as np

    arena = shm.SegmentArena(prefix, 1 << 16)
    arena.dumps([np.ones(1 << 18), StallWhenPickled(conn)])


# -- SharedArray / shares -------------------------------------------------------


def add_100(arr, delay: float = 0.0) -> None:
    """Seed 002's worker: read-modify-write under the lock, 100 times."""
    for _ in range(100):
        with arr.lock:
            value = arr[0]
            if delay:
                time.sleep(delay)
            arr[0] = value + 1


def fill(arr, value) -> None:
    arr[...] = value


def report(conn, arr) -> None:
    """Send back a copy of what this process sees in ``arr``."""
    import numpy as np

    conn.send((np.array(arr), bool(arr.flags.writeable)))


def hold_lock(conn, arr) -> None:
    """Take the array's lock, say so, and wait to be killed holding it."""
    arr.lock.acquire()
    conn.send("locked")
    time.sleep(60)


def attach_then_use(conn, arr) -> None:
    """Attached (by unpickling ``arr``); after the creator closed it, write and read."""
    conn.send("attached")
    assert conn.recv() == "closed"
    arr[0] = 42.0
    conn.send(float(arr.sum()))


def try_attach(conn, payload: bytes) -> None:
    """Unpickle a SharedArray or ShareHandle and report what happened."""
    import pickle

    try:
        obj = pickle.loads(payload)
        conn.send(("ok", type(obj).__name__))
    except BaseException as e:  # noqa: BLE001
        conn.send(("error", f"{type(e).__name__}: {e}"))


class CountsLoads:
    """Counts, per process, how many times it was unpickled."""

    loads_here = 0

    def __init__(self, payload):
        self.payload = payload

    def __setstate__(self, state):
        type(self).loads_here += 1
        self.__dict__.update(state)


def resolve_many(conn, payloads: list) -> None:
    """Unpickle several task payloads holding the same share; report what we got."""
    import pickle

    seen = []
    for p in payloads:
        args = pickle.loads(p)
        obj = args[0]
        seen.append(id(obj))
    obj = pickle.loads(payloads[0])[0]
    arrays = [v for v in (obj.payload.values() if isinstance(obj, CountsLoads) else [obj])
              if hasattr(v, "flags")]
    conn.send({
        "distinct_objects": len(set(seen)),
        "loads_here": CountsLoads.loads_here,
        "readonly": [not a.flags.writeable for a in arrays],
        "sums": [float(a.sum()) for a in arrays],
        "owns_data": [bool(a.flags.owndata) for a in arrays],
    })


# -- processes that die with segments outstanding -----------------------------

SIGKILL_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from sharkcage._engine import shm
    from sharkcage.shared import SharedArray, make_share

    arena = shm.SegmentArena("sc-killme-%d" % os.getpid(), 1 << 16)
    data = arena.dumps([np.ones(1 << 17), b"x" * (1 << 17)])      # never consumed
    owned = arena.dumps(np.zeros(1 << 17), owned=True)              # held by the sender
    arr = SharedArray(1 << 15)
    share = make_share(np.arange(1 << 15))
    names = shm.segment_names(data) + shm.segment_names(owned) + [arr.shm_name, share.name]
    print(" ".join(names), flush=True)
    time.sleep(120)
    """
)


def start_doomed_sender() -> tuple[subprocess.Popen, list[str]]:
    """A separate interpreter (its own resource tracker) that holds segments of
    every kind and waits; returns it and the names it holds."""
    # stderr to a file, not a pipe: the orphaned resource tracker reports
    # what it cleans there after the sender is gone.
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", SIGKILL_SCRIPT], stdout=subprocess.PIPE,
                                stderr=err, text=True)
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            err.seek(0)
            raise RuntimeError(f"the sender failed to start:\n{err.read()}")
    return proc, line.split()


def wait_gone(names, timeout: float) -> list[str]:
    """Wait until none of ``names`` is in /dev/shm; the ones still there."""
    deadline = time.monotonic() + timeout
    while True:
        left = [n for n in names if os.path.exists(os.path.join(shm.SHM_DIR, n))]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


# -- tasks for pools (tests/test_zero_copy_pool.py) ------------------------------


def total(a) -> float:
    return float(a.sum())


def describe(x):
    """What a task received: type, writability, and whether it owns its memory."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return ("ndarray", bool(x.flags.writeable), bool(x.flags.owndata), x.shape, float(x.sum()))
    if isinstance(x, memoryview):
        return ("memoryview", not x.readonly, None, x.shape, None)
    return (type(x).__name__, None, None, len(x), None)


def make_array(n: int, value: float):
    import numpy as np

    return np.full(n, value)


def identity(x):
    return x


def scale_in_place(a, factor):
    a *= factor  # the task's own copy: the parent must not see this
    return float(a[0])


def scribble_then_crash_once(a, marker: str):
    """Write into the argument, then die the first time: a retry must see the original."""
    seen = float(a[0])
    a[0] = -1.0
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return seen


class KillWhilePickled:
    """Pickling it (as part of a result) SIGKILLs the worker: mid-transfer."""

    def __reduce__(self):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)


def die_while_returning(n: int):
    import numpy as np

    return [np.ones(n), KillWhilePickled()]


def sleep_with(a, seconds: float):
    time.sleep(seconds)
    return float(a[0])


def share_report(obj, _i):
    """(pid, unpickles of the shared object in this process, id of what we got, readonly)."""
    arrays = [v for v in obj.payload.values() if hasattr(v, "flags")]
    return (os.getpid(), type(obj).loads_here, id(obj), all(not a.flags.writeable for a in arrays),
            float(sum(a.sum() for a in arrays)))


def worker_root_entries(root: str) -> list[str]:
    return sorted(e for e in os.listdir(shm.SHM_DIR) if e.startswith(root))


POOL_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, %(tests)r)
    import numpy as np
    import shm_helpers as sh
    from sharkcage import Pool

    big = np.ones(1 << 20)
    with Pool(2) as pool:
        handle = pool.share(np.arange(1 << 20))
        results = [pool.apply_async(sh.sleep_with, (big, 30)) for _ in range(4)]
        time.sleep(0.5)
        print(pool._backend.shm_root, flush=True)
        print(" ".join(sh.worker_root_entries(pool._backend.shm_root)), flush=True)
        try:
            for r in results:
                r.get()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            raise
    """
)


def start_pool_script() -> tuple[subprocess.Popen, str, list[str]]:
    """A separate program with a pool busy on big arguments; its pool root and entries."""
    err = tempfile.TemporaryFile("w+")
    tests = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, "-c", POOL_SCRIPT % {"tests": tests}], stdout=subprocess.PIPE,
                            stderr=err, text=True)
    proc._sc_stderr = err
    root = proc.stdout.readline().strip()
    entries = proc.stdout.readline().split()
    if not root:
        proc.wait()
        err.seek(0)
        raise RuntimeError(f"the pool program failed:\n{err.read()}")
    return proc, root, entries
