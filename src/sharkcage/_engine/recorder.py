"""What the supervisor remembers for ``pool.stats()`` and ``pool.timeline()``.

Recording is on by default, so it must cost next to nothing per task: one
call per *batch* (a chunk of a map is one timeline bar), plain counters, and
a bounded deque of events. The supervisor thread is the only writer; the
snapshot methods copy under a lock, so a caller thread can read at any time.
"""

from __future__ import annotations

import collections
import threading
import time

from sharkcage._engine.jobs import describe_task


MAX_EVENTS = 100_000  # timeline bars kept (the oldest are dropped first)
_RSS_EVERY = 1.0  # seconds between RSS samples of one worker


class _Slot:
    __slots__ = ("pid", "tasks", "busy", "crashes", "restarts", "peak_rss", "born", "lived", "rss_at")

    def __init__(self):
        self.pid = None
        self.tasks = 0
        self.busy = 0.0
        self.crashes = 0
        self.restarts = 0
        self.peak_rss = None
        self.born = None  # monotonic start of the current process
        self.lived = 0.0  # seconds lived by the slot's earlier processes
        self.rss_at = 0.0


class Recorder:
    """Counters and timeline events of one pool."""

    def __init__(self, enabled: bool = True):
        # enabled=False (Pool(record=False)) keeps only the pool-wide counts:
        # no timeline events, per-worker times or RSS samples.
        self.enabled = enabled
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._slots: dict[int, _Slot] = {}
        self._events: collections.deque = collections.deque(maxlen=MAX_EVENTS)
        self.submitted = 0
        self.done = 0
        self.failed = 0
        self.crashes = 0
        self.restarts = 0
        self.parent_seconds = 0.0
        self.shm_source = None  # the pool's SegmentArena: bytes that went through shared memory

    # -- supervisor side -----------------------------------------------------
    def _slot(self, slot_id: int) -> _Slot:
        s = self._slots.get(slot_id)
        if s is None:
            s = self._slots[slot_id] = _Slot()
        return s

    def worker_started(self, slot_id: int, pid: int, replacement: bool) -> None:
        with self._lock:
            s = self._slot(slot_id)
            s.pid = pid
            s.born = time.monotonic()
            if replacement:
                s.restarts += 1
                self.restarts += 1

    def worker_ended(self, slot_id: int, crashed: bool) -> None:
        with self._lock:
            s = self._slot(slot_id)
            if s.born is not None:
                s.lived += time.monotonic() - s.born
                s.born = None
            if crashed:
                s.crashes += 1
                self.crashes += 1

    def batch_done(self, slot_id: int, pid: int, batch, n: int, failed: int, elapsed: float, now: float) -> None:
        if not self.enabled:
            self.done += n - failed
            self.failed += failed
            return
        # The hot path: no lock (this thread is the only writer, and a deque
        # append is atomic) and no string formatting — the label and detail
        # are made when someone asks for the timeline.
        s = self._slots.get(slot_id) or self._slot(slot_id)
        s.tasks += n
        s.busy += elapsed
        self.done += n - failed
        self.failed += failed
        self._events.append((slot_id, pid, _label_parts(batch), now - elapsed - self.t0, now - self.t0,
                             failed, n))
        if now - s.rss_at >= _RSS_EVERY:
            s.rss_at = now
            self._sample_rss(s)

    def task_ended(self, slot_id: int, pid: int, label: str, start: float | None, outcome: str, detail: str) -> None:
        """One task that ended its worker: a crash, a timeout, a cancel."""
        now = time.monotonic()
        with self._lock:
            self.failed += 1
            if not self.enabled:
                return
            begin = (start if start is not None else now) - self.t0
            self._events.append((slot_id, pid, label, begin, now - self.t0, outcome, detail))  # a finished row

    def failed_without_running(self, n: int = 1) -> None:
        with self._lock:
            self.failed += n

    def _sample_rss(self, s: _Slot) -> None:
        rss = rss_of(s.pid)
        if rss is None:  # gone, or no permission: keep what we saw
            return
        if s.peak_rss is None or rss > s.peak_rss:
            s.peak_rss = rss

    # -- caller side -----------------------------------------------------------
    def stats(self):
        from sharkcage.observe.stats import PoolStats, WorkerStats  # only when asked: dataclasses is slow to import

        now = time.monotonic()
        with self._lock:
            workers = []
            for slot_id in sorted(self._slots):
                s = self._slots[slot_id]
                lived = s.lived + (now - s.born if s.born is not None else 0.0)
                workers.append(WorkerStats(
                    worker_id=slot_id, pid=s.pid, tasks=s.tasks, busy_s=s.busy,
                    idle_s=max(0.0, lived - s.busy), crashes=s.crashes, restarts=s.restarts,
                    peak_rss=s.peak_rss,
                ))
            finished = self.done + self.failed
            overhead = self.parent_seconds / finished * 1e6 if finished else None
            return PoolStats(
                workers=workers, tasks_submitted=self.submitted, tasks_done=self.done,
                tasks_failed=self.failed, crashes=self.crashes, restarts=self.restarts,
                overhead_per_task_us=overhead, shm_bytes=self._shm_bytes(),
            )

    def _shm_bytes(self) -> int:
        arena = self.shm_source
        if arena is None:
            return 0
        return arena.bytes_shared + arena.bytes_received

    def events(self) -> list[dict]:
        if not self.enabled:
            raise ValueError("this pool records no timeline: it was created with record=False")
        with self._lock:
            rows = list(self._events)
        events = []
        for (w, pid, label, start, end, outcome, detail) in rows:
            if isinstance(outcome, int):  # a batch: (failed, n) in the last two fields
                failed, n = outcome, detail
                label = _format_label(label)
                outcome = "error" if failed else "ok"
                detail = f"{failed} of {n} failed" if failed else ""
            events.append({"worker": w, "pid": pid, "label": label, "start": start, "end": end,
                           "outcome": outcome, "detail": detail})
        return events


_PAGE = None


def rss_of(pid: int) -> int | None:
    """Resident bytes of ``pid``: one read of /proc (psutil elsewhere).

    This runs on the supervisor thread, so it must be cheap: importing psutil
    there would stall the first delivery by tens of milliseconds.
    """
    global _PAGE
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            pages = int(f.read().split()[1])
        if _PAGE is None:
            import os

            _PAGE = os.sysconf("SC_PAGE_SIZE")
        return pages * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:
        return None


def _label_parts(batch) -> tuple:
    """What a batch's label is made of, without formatting it (hot path).
    Only strings and ints: a timeline must not keep jobs (and their results) alive."""
    if batch.job is not None:
        return (batch.job.kind, batch.job.name, batch.indices[0], batch.indices[-1], len(batch))
    job, index = batch.targets[0]
    return (job.kind, job.name, index, None, len(batch))


def _format_label(parts) -> str:
    kind, name, first, last, n = parts
    if last is None:
        return f"{n} tasks: {describe_task(kind, name, first)}, ..."
    if n == 1:
        return describe_task(kind, name, first)
    return f"tasks {first}-{last} of {name}"
