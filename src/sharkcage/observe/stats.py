"""What a pool did, as plain data: :class:`PoolStats` and :class:`WorkerStats`.

The engine fills these in (``pool.stats()``); this module only holds the
numbers, prints them as a table people can read, and turns them into a dict
for JSON. It imports nothing from the engine, so a snapshot can be built,
printed and compared in tests without starting a process.

>>> w = WorkerStats(worker_id=0, pid=4242, tasks=20, busy_s=1.25, idle_s=0.3,
...                 crashes=0, restarts=0, peak_rss=35 * 2**20)
>>> s = PoolStats(workers=[w], tasks_submitted=20, tasks_done=20, tasks_failed=0,
...               crashes=0, restarts=0, overhead_per_task_us=42.0, shm_bytes=0)
>>> print(s)
worker   pid  tasks  busy    idle    busy %  crashes  restarts  peak RSS
     0  4242     20  1.25 s  300 ms     81%        0         0    35 MiB
tasks: 20 submitted, 20 done, 0 failed; crashes: 0; restarts: 0; parent overhead: 42 µs/task; shared memory: 0 B
>>> s.to_dict()["workers"][0]["busy_s"]
1.25
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WorkerStats", "PoolStats", "format_seconds", "format_bytes"]


def format_seconds(seconds: float | None) -> str:
    """A duration with a unit a person reads at a glance (3 significant digits).

    >>> [format_seconds(x) for x in (0, 4e-6, 0.0123, 1.25, 75, 5400, None)]
    ['0 s', '4 µs', '12.3 ms', '1.25 s', '1.2 min', '1.5 h', '-']
    """
    if seconds is None:
        return "-"
    s = float(seconds)
    if s == 0:
        return "0 s"
    sign, s = ("-", -s) if s < 0 else ("", s)
    if s < 1e-3:
        return f"{sign}{_sig(s * 1e6)} µs"
    if s < 1:
        return f"{sign}{_sig(s * 1e3)} ms"
    if s < 60:
        return f"{sign}{_sig(s)} s"
    if s < 3600:
        return f"{sign}{_sig(s / 60, 2)} min"
    return f"{sign}{_sig(s / 3600, 2)} h"


def format_bytes(n: int | None) -> str:
    """A size in binary units (KiB, MiB, ...), as ``ls -h`` would print it.

    >>> [format_bytes(x) for x in (0, 512, 1536, 35 * 2**20, 3 * 2**30 // 2, None)]
    ['0 B', '512 B', '1.5 KiB', '35 MiB', '1.5 GiB', '-']
    """
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{_sig(value, 2)} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _sig(x: float, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits, trailing zeros dropped ("1.5", "35", "123")."""
    if x >= 10 ** (digits - 1):
        return str(round(x))
    return f"{x:.{digits}g}"


@dataclass
class WorkerStats:
    """One worker slot: its current process and what the slot did over the pool's life.

    ``worker_id`` is the stable slot number (``sharkcage.worker_info().worker_id``);
    a replacement started after a crash or a ``maxtasksperchild`` recycle keeps
    the slot, gets a new ``pid``, and counts one more ``restart``.
    ``busy_s`` is the time spent running tasks, ``idle_s`` the time alive and
    waiting for work; ``peak_rss`` is the highest resident memory seen, in
    bytes (None where the platform does not tell).

    >>> w = WorkerStats(0, 4242, tasks=3, busy_s=0.75, idle_s=0.25, crashes=0, restarts=0, peak_rss=None)
    >>> w.utilization
    0.75
    """

    worker_id: int
    pid: int | None
    tasks: int
    busy_s: float
    idle_s: float
    crashes: int
    restarts: int
    peak_rss: int | None

    @property
    def utilization(self) -> float | None:
        """Busy share of the slot's lifetime (0..1), None before it has lived at all.

        >>> WorkerStats(1, None, 0, 0.0, 0.0, 0, 0, None).utilization is None
        True
        """
        alive = self.busy_s + self.idle_s
        return self.busy_s / alive if alive > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict.

        >>> WorkerStats(0, 7, 1, 0.5, 0.5, 0, 0, 1024).to_dict()["peak_rss"]
        1024
        """
        return dataclasses.asdict(self)


@dataclass
class PoolStats:
    """A snapshot of a pool: one :class:`WorkerStats` per slot plus pool-wide counts.

    ``tasks_done`` counts tasks that finished successfully, ``tasks_failed``
    the ones that raised, crashed, timed out or were cancelled.
    ``overhead_per_task_us`` is the parent-side time (pickling, dispatch,
    bookkeeping) per task, in microseconds (None before any task ran);
    ``shm_bytes`` is how many bytes went through shared memory instead of a pipe.

    >>> s = PoolStats(workers=[], tasks_submitted=0, tasks_done=0, tasks_failed=0,
    ...               crashes=0, restarts=0, overhead_per_task_us=None, shm_bytes=0)
    >>> s.tasks_pending
    0
    >>> import json; json.loads(json.dumps(s.to_dict()))["shm_bytes"]
    0
    """

    workers: list[WorkerStats] = field(default_factory=list)
    tasks_submitted: int = 0
    tasks_done: int = 0
    tasks_failed: int = 0
    crashes: int = 0
    restarts: int = 0
    overhead_per_task_us: float | None = None
    shm_bytes: int = 0

    @property
    def tasks_pending(self) -> int:
        """Tasks submitted but not finished yet (queued or running).

        >>> PoolStats([], 10, 6, 1, 0, 0, None, 0).tasks_pending
        3
        """
        return max(0, self.tasks_submitted - self.tasks_done - self.tasks_failed)

    def to_dict(self) -> dict[str, Any]:
        """Every field, workers included, as a JSON-ready dict.

        >>> PoolStats([WorkerStats(0, 1, 0, 0.0, 0.0, 0, 0, None)]).to_dict()["workers"][0]["worker_id"]
        0
        """
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        headers = ["worker", "pid", "tasks", "busy", "idle", "busy %", "crashes", "restarts", "peak RSS"]
        rows = []
        for w in sorted(self.workers, key=lambda w: w.worker_id):
            u = w.utilization
            rows.append([
                str(w.worker_id),
                "-" if w.pid is None else str(w.pid),
                str(w.tasks),
                format_seconds(w.busy_s),
                format_seconds(w.idle_s),
                "-" if u is None else f"{u:.0%}",
                str(w.crashes),
                str(w.restarts),
                format_bytes(w.peak_rss),
            ])
        # numbers right-aligned, durations left-aligned so their units line up
        left = {"busy", "idle"}
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

        def line(cells: list[str]) -> str:
            out = [c.ljust(wd) if h in left else c.rjust(wd) for c, wd, h in zip(cells, widths, headers)]
            return "  ".join(out).rstrip()

        header = "  ".join(h.ljust(wd) if h in left or i == 0 else h.rjust(wd)
                           for i, (h, wd) in enumerate(zip(headers, widths))).rstrip()
        lines = [header] + [line(r) for r in rows]
        if not rows:
            lines.append("(no workers)")
        overhead = ("-" if self.overhead_per_task_us is None
                    else f"{format_seconds(self.overhead_per_task_us * 1e-6)}/task")
        lines.append(
            f"tasks: {self.tasks_submitted} submitted, {self.tasks_done} done, {self.tasks_failed} failed"
            + (f", {self.tasks_pending} pending" if self.tasks_pending else "")
            + f"; crashes: {self.crashes}; restarts: {self.restarts}"
            + f"; parent overhead: {overhead}; shared memory: {format_bytes(self.shm_bytes)}"
        )
        return "\n".join(lines)
