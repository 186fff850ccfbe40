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

__all__ = ["ProgressBar", "PoolStats", "WorkerStats", "render_timeline"]

_HOME = {"ProgressBar": "progress", "PoolStats": "stats", "WorkerStats": "stats", "render_timeline": "timeline"}


def __getattr__(name: str):
    # Lazy, so that creating a pool imports no timeline renderer or tqdm.
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f"sharkcage.observe.{_HOME[name]}"), name)
    raise AttributeError(f"module 'sharkcage.observe' has no attribute {name!r}")
