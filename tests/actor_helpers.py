"""Importable task functions and actor classes for tests/test_worker_state.py,
tests/test_actors.py and tests/test_asyncio.py.

They live in a module (not in the test files) so that workers, and the
stdlib's own Pool used as the reference for seed 004, can import them by name.
Files stand in for shared counters: a line appended per initializer run, per
finalizer run, per actor construction.
"""

from __future__ import annotations

import asyncio
import os
import time

import sharkcage


def _append(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")
        f.flush()


def lines(path) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------------
# worker state


def init_state(log: str, tag: str):
    """An initializer: one line per run; the worker's state is a fresh dict."""
    _append(log, str(os.getpid()))
    return {"tag": tag, "pid": os.getpid(), "log": log, "hits": 0}


def init_returns_none(log: str):
    _append(log, str(os.getpid()))


def state_and_info(_=None):
    """(state, (worker_id, pid, tasks_done), os.getpid()) as seen inside a task."""
    state = sharkcage.worker_state()
    info = sharkcage.worker_info()
    return state, (info.worker_id, info.pid, info.tasks_done), os.getpid()


def bump_state(_=None):
    """The state is one object per worker: mutations persist between tasks."""
    state = sharkcage.worker_state()
    state["hits"] += 1
    return os.getpid(), state["hits"]


def finalize_to_file(state) -> None:
    """A finalizer: appends "pid tag" to the state's log next to the init lines."""
    _append(state["log"] + ".final", f"{os.getpid()}:{state['tag']}:{state['hits']}")


def init_raises(log: str):
    _append(log, str(os.getpid()))
    raise RuntimeError("no database here (initializer marker 7f3a)")


def getpid(_=None):
    return os.getpid()


def sleep_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def crash(_=None):
    os._exit(13)


# ---------------------------------------------------------------------------
# actors


class MyCls:
    """Seed 004's class, verbatim: counts its calls, returns the sum."""

    def __init__(self):
        # 计数当前api调用了多少次
        self.count = 0

    def add(self, x):
        self.count += 1
        print('count add to', self.count)
        return sum(x)


class MyClsReadable(MyCls):
    """Seed 004's class plus a way to read the counter back through a proxy."""

    def get_count(self):
        return self.count


class Box:
    """A list-appending actor that can also crash, sleep, and report its pid."""

    def __init__(self, *start, tag="box", log=None):
        self.items = list(start)
        self.tag = tag
        self.pid = os.getpid()
        if log is not None:
            _append(log, str(os.getpid()))

    def append(self, x):
        self.items.append(x)
        return len(self.items)

    def get(self):
        return list(self.items)

    def get_tag(self):
        return self.tag

    def get_pid(self):
        return os.getpid()

    def slow(self, seconds):
        time.sleep(seconds)
        return seconds

    def slow_marked(self, seconds, path):
        _append(path, str(os.getpid()))
        time.sleep(seconds)
        return seconds

    def boom(self):
        raise KeyError("actor method marker 41c2")

    def die(self):
        os._exit(9)


class BrokenCtor:
    """An actor whose constructor raises, after recording that it ran."""

    def __init__(self, log):
        _append(log, str(os.getpid()))
        raise ValueError("constructor marker 9d0e")

    def ping(self):
        return "pong"


class AsyncCounter:
    """An actor with an async method: it runs on the actor's own event loop."""

    def __init__(self):
        self.n = 0

    async def add(self, k):
        await asyncio.sleep(0.01)
        self.n += k
        return self.n


# ---------------------------------------------------------------------------
# asyncio


def sleep_return(seconds, value):
    time.sleep(seconds)
    return value


def square(x):
    return x * x


def raise_value_error(msg):
    raise ValueError(msg)


def sleep_then_square(x):
    # later items finish first: completion order differs from input order
    time.sleep(0.05 * (5 - x % 6) if x < 6 else 0.0)
    return x * x


async def coro_square(x):
    """A coroutine function as a task: must run on the worker's own loop."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.01)
    return x * x, type(loop).__name__, os.getpid()


async def coro_raises(msg):
    await asyncio.sleep(0)
    raise ValueError(msg)


def raise_if_three(x):
    if x == 3:
        raise ValueError("item 3 fails")
    return x


def sleep_return_one(seconds):
    time.sleep(seconds)
    return seconds
