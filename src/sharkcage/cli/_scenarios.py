"""The sharks of ``sharkcage tank``: one small program per bug, for each side.

Each scenario is the *same* program text run twice, once with
``from multiprocessing import Pool`` and once with ``from sharkcage import
Pool`` (only ``stateful_counter`` differs on purpose: the sharkcage answer to
state is an actor, not a bound method). The text is run with ``python -c``,
which is itself part of the test: functions defined in a ``-c`` main module
are exactly what spawn workers cannot import (seed 003).

A program reports by printing one line, ``@@tank@@ {json}``, with
``outcome`` (``ok`` / ``error`` / ``wrong``), ``exc`` (the exception type
name for ``error``), ``detail`` and ``elapsed``. It never decides whether it
hung: the parent does, when no line arrives before the timeout.

>>> names = [s.name for s in SCENARIOS]
>>> names[:3]
['fork_deadlock', 'mysql_exception', 'killed_worker']
>>> "from sharkcage import Pool" in SCENARIOS[0].program("sharkcage")
True
"""

from __future__ import annotations

import dataclasses

#: Prefix of the one line a scenario program prints; anything else on
#: stdout (a task's print) is ignored.
MARKER = "@@tank@@ "

STDLIB = "stdlib"
SHARKCAGE = "sharkcage"
SIDES = (STDLIB, SHARKCAGE)

_IMPORTS = {
    STDLIB: "from multiprocessing import Pool",
    SHARKCAGE: "from sharkcage import Pool",
}

# Shared by every program: the report line, and helpers that turn what a
# pool call did into one outcome. Kept in the program text (not imported from
# sharkcage) so the stdlib side never imports sharkcage at all.
PRELUDE = r'''
import json as _json, os as _os, sys as _sys, time as _time
_T0 = _time.perf_counter()
_REPORTED = False

def report(outcome, exc=None, detail="", **extra):
    """Print the one result line the tank reads; only the first one counts."""
    global _REPORTED
    if _REPORTED:
        return
    _REPORTED = True
    line = dict(outcome=outcome, exc=exc, detail=detail,
                elapsed=round(_time.perf_counter() - _T0, 3), **extra)
    _sys.stdout.write("@@tank@@ " + _json.dumps(line) + "\n")
    _sys.stdout.flush()

def _excepthook(tp, value, tb):
    # An exception nobody caught is this side's outcome, not a tank failure.
    report("error", tp.__name__, str(value).splitlines()[0][:200] if str(value) else "",
           types=[c.__name__ for c in tp.__mro__])
    _sys.__excepthook__(tp, value, tb)

_sys.excepthook = _excepthook

def _types(e):
    return [c.__name__ for c in type(e).__mro__]

def _name(e):
    if isinstance(e, SystemExit):
        return "SystemExit(%r)" % (e.code,)
    return type(e).__name__

def pool_lives(pool):
    """'' when the pool still runs a task after the failure, else why not."""
    try:
        got = pool.apply(abs, (-7,))
    except BaseException as e:  # SystemExit included: any of them means a dead pool
        return "the pool no longer works (%s)" % _name(e)
    return "" if got == 7 else "the pool returned %r for abs(-7)" % (got,)

def check_items(iterator, expected, bad=(), pool=None, note="", catch=None):
    """Drain an imap: errors allowed only at the 'bad' positions, every other
    item must be right, and the pool must still work afterwards. With
    'catch', the error must also be an instance of that class (the user's
    own except clause must still catch it)."""
    got, errors = {}, {}
    for i in range(len(expected)):
        try:
            got[i] = next(iterator)
        except StopIteration:
            break
        except (Exception, SystemExit) as e:  # sharkcage re-raises a task's SystemExit
            errors[i] = e
    wrong = sorted(i for i, v in got.items() if v != expected[i])
    stray = sorted(i for i in errors if i not in bad)
    missing = len(expected) - len(got) - len(errors)
    dead = pool_lives(pool) if pool is not None else ""
    others = len(expected) - len(bad)
    if wrong or missing:
        return report("wrong", None, "items %s wrong, %d missing" % (wrong, missing))
    if stray:
        i = stray[0]
        return report("wrong", None, "task %d failed too (%s: %s)" % (i, _name(errors[i]), str(errors[i])[:120]))
    if dead:
        return report("wrong", None, dead)
    if errors and catch is not None:
        e = errors[min(errors)]
        if not isinstance(e, catch):
            return report("wrong", None, "raised %s, which `except %s` does not catch"
                          % (_name(e), catch.__name__))
        note += "; `except %s` catches it" % catch.__name__
    if errors:
        i = min(errors)
        first = str(errors[i]).splitlines()[0][:300] if str(errors[i]) else ""
        return report("error", type(errors[i]).__name__,
                      "task %d only; %d others right; pool lives%s" % (i, others, note),
                      message=first, shown=_name(errors[i]), types=_types(errors[i]))
    return report("ok", None, "all %d results right%s" % (len(expected), note))

def check_call(call, args, expected, note=""):
    """One blocking call (a map): its value, or the exception it raised."""
    try:
        got = call(*args)
    except (Exception, SystemExit) as e:
        return report("error", type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "",
                      shown=_name(e), types=_types(e))
    if got != expected:
        return report("wrong", None, "got %r, expected %r" % (got, expected))
    return report("ok", None, "all %d results right%s" % (len(expected), note))
'''


# How each side asks for spawn workers: the stdlib through a context's Pool
# (multiprocessing.Pool takes no context=), sharkcage through the same
# context passed to its Pool.
_SPAWN_POOL = {
    STDLIB: "ctx.Pool(2)",
    SHARKCAGE: "Pool(2, context=ctx)",
}


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One shark: its program (per side), and what sharkcage must do with it.

    ``expect`` is the clean sharkcage outcome: ``"ok"`` or ``"error:<Type>"``
    (the program itself already checked that the other tasks were right and
    the pool still works, else it reports ``wrong``).
    """

    name: str
    seed: str
    title: str
    body: str
    expect: str
    shows: str
    sharkcage_body: str | None = None
    sharkcage_kwargs: str = ""

    def program(self, side: str) -> str:
        """The complete ``python -c`` text for ``side`` (``stdlib``/``sharkcage``)."""
        body = self.sharkcage_body if side == SHARKCAGE and self.sharkcage_body else self.body
        kwargs = self.sharkcage_kwargs if side == SHARKCAGE else ""
        return PRELUDE + (
            body.replace("__POOL__", _IMPORTS[side])
            .replace("__KW__", kwargs)
            .replace("__SPAWN_POOL__", _SPAWN_POOL[side])
        )


_FORK_DEADLOCK = r'''
import logging, queue, threading, time
from logging.handlers import QueueHandler, QueueListener
__POOL__

def runs_in_subprocess():
    logging.error("hello, I did something")
    return "logged"

# Seed 000, as written: logs go through a queue to a listener thread, and a
# thread of the parent logs all the time.
log_queue = queue.Queue()
QueueListener(log_queue, logging.NullHandler()).start()
logging.getLogger().addHandler(QueueHandler(log_queue))

def write_logs():
    while True:
        logging.error("hello, I just did something")
        time.sleep(0.0005)

threading.Thread(target=write_logs, daemon=True).start()

# Amplifier, so the race shows within seconds instead of minutes: a busy
# thread holds the queue's lock most of the time, as a heavily logging
# program does. Logging re-creates its own handler locks after fork; this
# lock (queue.Queue's mutex) nobody re-creates.
def busy_logger():
    while True:
        with log_queue.mutex:
            time.sleep(0.005)
        time.sleep(0.0002)

threading.Thread(target=busy_logger, daemon=True).start()

CYCLES = 3
for cycle in range(CYCLES):
    with Pool(2) as pool:
        assert pool.apply(runs_in_subprocess) == "logged"
report("ok", None, "%d pool cycles; every worker logged" % CYCLES)
'''

_MYSQL = r'''
__POOL__

class MySQLError(Exception):
    """Shaped like mysql.connector.errors.Error (seed 003): self.args is not
    what __init__ takes, so pickle's rebuild, cls(*self.args), breaks."""

    def __init__(self, msg=None, errno=None, values=None, sqlstate=None):
        super().__init__()
        self.msg, self.errno, self.sqlstate = msg, errno or -1, sqlstate
        if self.msg and self.errno != -1:
            # the seed's line was msg.encode('utf8'): any str-only call fails on an int
            self._full_msg = "%s: %s" % (self.errno, self.msg.strip())
        else:
            self._full_msg = self.msg
        self.args = (self.errno, self._full_msg, self.sqlstate)

def query(i):
    if i == 1:
        raise MySQLError("Lost connection to MySQL server at '192.169.36.189:3306'", 2055)
    return i * 10

with Pool(2) as pool:
    check_items(pool.imap(query, range(4)), [0, 10, 20, 30], bad={1}, pool=pool, catch=MySQLError)
'''

_KILLED = r'''
import os, signal
__POOL__

def task(x):
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)   # as the OOM killer would
    return x * x

with Pool(2) as pool:
    check_items(pool.imap(task, range(8)), [x * x for x in range(8)], bad={3}, pool=pool)
'''

_UNPICKLABLE = r'''
__POOL__

def make(x):
    if x == 2:
        return (i for i in range(x))           # a generator cannot be pickled (seed 004)
    return x + 1

with Pool(2) as pool:
    check_items(pool.imap(make, range(5)), [1, 2, None, 4, 5], bad={2}, pool=pool)
'''

_LAMBDA_SPAWN = r'''
import multiprocessing
__POOL__

ctx = multiprocessing.get_context("spawn")
with __SPAWN_POOL__ as pool:
    check_call(pool.map, (lambda x: x * 2, range(6)), [0, 2, 4, 6, 8, 10])
'''

_MAIN_SPAWN = r'''
import multiprocessing
__POOL__

def double(x):           # lives in the `python -c` main module: no file to re-import
    return x * 2

ctx = multiprocessing.get_context("spawn")
with __SPAWN_POOL__ as pool:
    check_call(pool.map, (double, range(6)), [0, 2, 4, 6, 8, 10])
'''

_HUNG = r'''
import time
__POOL__

def task(x):
    if x == 1:
        time.sleep(3600)        # a stuck network call, a deadlocked C library...
    return x

with Pool(2__KW__) as pool:
    check_items(pool.imap(task, range(4)), [0, 1, 2, 3], bad={1}, pool=pool)
'''

_INFINITE = r'''
import itertools, resource, time
__POOL__

pulled = 0
GUARD = 200000        # the demo's own brake: an unbounded consumer stops here

def source():
    global pulled
    for i in itertools.count():
        pulled += 1
        if pulled > GUARD:
            report("wrong", None, "pulled over %d items from the generator for 10 results "
                   "(eager; stopped by the demo's guard)" % GUARD, short="over %d items pulled" % GUARD)
            _os._exit(0)
        yield i

def square(x):
    return x * x

with Pool(2) as pool:
    it = pool.imap(square, source())
    first = [next(it) for _ in range(10)]
    # Bounded means: once the consumer stops taking results, the pool stops
    # pulling input. Sample the count until it stands still (or clearly not).
    counts = [pulled]
    for _ in range(6):
        time.sleep(0.3)
        counts.append(pulled)
        if counts[-1] == counts[-2]:
            break
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    if first != [x * x for x in range(10)]:
        report("wrong", None, "first results %r" % first)
    elif counts[-1] != counts[-2]:
        report("wrong", None, "still pulling input %.1f s after the last result was taken: %d -> %d items "
               "for 10 results (unbounded); parent max RSS %d MB" % (0.3 * (len(counts) - 1), counts[0], counts[-1], rss),
               short="%d items pulled, still going" % counts[-1])
    else:
        report("ok", None, "first 10 results right; pulled %d items, then stopped (bounded); parent max RSS %d MB"
               % (counts[-1], rss))
'''

_COUNTER = r'''
__POOL__

class Counter:
    def __init__(self):
        self.count = 0              # how many times add() was called

    def add(self, x):
        self.count += 1
        return sum(x)
'''

_COUNTER_STDLIB = _COUNTER + r'''
counter = Counter()
with Pool(1) as pool:
    results = list(pool.imap(counter.add, [(1, 1), (2, 2), (3, 3)]))
if results != [2, 4, 6]:
    report("wrong", None, "results %r" % results)
elif counter.count != 3:
    report("wrong", None, "parent count %d after 3 calls (each call ran on a copy)" % counter.count,
           short="parent count %d" % counter.count)
else:
    report("ok", None, "count 3")
'''

_COUNTER_SHARKCAGE = _COUNTER + r'''
    def total(self):
        return self.count

with Pool(1) as pool:
    # The pool pattern for state: an actor. The object lives in one worker,
    # its methods run there in call order, and its state persists.
    counter = pool.actor(Counter)
    results = [counter.add(x) for x in [(1, 1), (2, 2), (3, 3)]]
    count = counter.total()
    if results != [2, 4, 6]:
        report("wrong", None, "results %r" % results)
    elif count != 3:
        report("wrong", None, "actor count %d after 3 calls" % count, short="actor count %d" % count)
    else:
        report("ok", None, "pool.actor(Counter): count %d after 3 calls; results right" % count)
'''

_EXIT = r'''
import sys
__POOL__

def task(x):
    if x == 2:
        sys.exit(3)       # a library's "fatal error" path
    return x

with Pool(2) as pool:
    check_items(pool.imap(task, range(5)), [0, 1, None, 3, 4], bad={2}, pool=pool)
'''


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "fork_deadlock", "000", "threads + fork: a lock copied held",
        _FORK_DEADLOCK, "ok",
        "A thread logs through a QueueHandler while pools are created. The stdlib "
        "forks workers (Linux default); a worker inherits the queue's lock held by a "
        "thread that does not exist in it, and its first log call waits forever. "
        "sharkcage forks workers from a clean single-threaded zygote.",
    ),
    Scenario(
        "mysql_exception", "003", "exception that cannot be rebuilt",
        _MYSQL, "error:RemoteError",
        "A task raises an exception whose __init__ breaks when pickle re-calls it with "
        "self.args (mysql-connector's Error). The stdlib's result-handler thread dies "
        "unpickling it and every get() waits forever. sharkcage raises a RemoteError "
        "that is also an instance of the original class, so `except MySQLError` works.",
    ),
    Scenario(
        "killed_worker", "", "worker SIGKILLed mid-task",
        _KILLED, "error:WorkerCrashedError",
        "A task's worker is SIGKILLed (as by the OOM killer). The stdlib replaces the "
        "worker but forgets the task: imap/map wait forever. sharkcage fails that task "
        "with WorkerCrashedError (naming the signal) and delivers the rest.",
    ),
    Scenario(
        "unpicklable_result", "004", "result that cannot be pickled",
        _UNPICKLABLE, "error:SerializationError",
        "A task returns a generator. sharkcage raises SerializationError naming the "
        "task, the direction and the type, for that task only; the pool lives.",
    ),
    Scenario(
        "lambda_spawn", "003/004", "lambda under spawn",
        _LAMBDA_SPAWN, "ok",
        "pool.map(lambda ...) with the spawn start method: the stdlib cannot pickle "
        "the lambda. sharkcage ships functions by value, once per worker.",
    ),
    Scenario(
        "main_function_spawn", "003", "function defined in `python -c` under spawn",
        _MAIN_SPAWN, "ok",
        "A function defined in the main module of `python -c` (or the REPL, a "
        "notebook): a spawn worker cannot import it, so the stdlib worker dies "
        "unpickling the task (AttributeError: Can't get attribute) and map waits "
        "forever. sharkcage sends it by value.",
    ),
    Scenario(
        "hung_task", "", "a task that never returns",
        _HUNG, "error:TaskTimeoutError",
        "One task sleeps forever. The stdlib has no per-task timeout: the map never "
        "finishes. With task_timeout=1 sharkcage kills and replaces that worker, the "
        "task raises TaskTimeoutError and the others are delivered.",
        sharkcage_kwargs=", task_timeout=1",
    ),
    Scenario(
        "infinite_imap", "004", "imap over an infinite generator",
        _INFINITE, "ok",
        "Take the first 10 results of imap over itertools.count(). The stdlib's task "
        "handler pulls the whole input as fast as it can (memory grows without bound). "
        "sharkcage keeps a bounded number of tasks in flight: the pulling stops.",
    ),
    Scenario(
        "stateful_counter", "004", "bound method of a stateful object",
        _COUNTER_STDLIB, "ok",
        "Mapping counter.add over a pool: every call runs on a pickled copy, so the "
        "parent's count stays 0 - silently wrong. No pool can fix that by pickling; "
        "sharkcage's pattern for state is an actor (pool.actor(Counter)): the object "
        "lives in one worker and its methods run there in order.",
        sharkcage_body=_COUNTER_SHARKCAGE,
    ),
    Scenario(
        "exit_in_task", "", "sys.exit() inside a task",
        _EXIT, "error:SystemExit",
        "A task calls sys.exit(3). The stdlib worker exits, the task is lost and the "
        "map waits forever. sharkcage re-raises SystemExit in the caller (as "
        "concurrent.futures does); the worker and the pool live on.",
    ),
)

BY_NAME = {s.name: s for s in SCENARIOS}
