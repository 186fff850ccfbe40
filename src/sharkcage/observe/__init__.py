"""See inside the pool: progress, statistics, timelines.

The building blocks the pool uses for ``progress=True``, ``pool.stats()``
and ``pool.timeline(path)``; each is also usable on its own.

>>> from sharkcage.observe import ProgressBar, PoolStats, WorkerStats, render_timeline
>>> with ProgressBar(total=2, desc="demo", enabled=False) as bar:
...     bar.ok(); bar.error()
>>> print(PoolStats(workers=[WorkerStats(0, 4242, 2, 0.5, 0.1, 0, 0, None)],
...                 tasks_submitted=2, tasks_done=1, tasks_failed=1).workers[0].tasks)
2

See ``docs/observe.md``.
"""

from sharkcage.observe.progress import ProgressBar
from sharkcage.observe.stats import PoolStats, WorkerStats
from sharkcage.observe.timeline import render_timeline

__all__ = ["ProgressBar", "PoolStats", "WorkerStats", "render_timeline"]
