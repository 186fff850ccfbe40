"""What ``sharkcage lint`` reports: the rule table and the :class:`Finding` record.

Every rule carries two fixes, because a user reading a finding is in one of two
situations: ready to swap the import for ``sharkcage`` (the one-line fix), or
bound to the standard library (the longer fix).  Both are always shown.

>>> RULES["SC001"].name
'unguarded-pool'
>>> sorted(RULES)[:3]
['SC000', 'SC001', 'SC002']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Rule:
    """One shark: its code, a short name, what it finds, where it comes from, and the two fixes.

    >>> RULES["SC004"].seeds
    ('000', '001')
    """

    code: str
    name: str
    summary: str
    seeds: tuple[str, ...]
    sharkcage_fix: str
    stdlib_fix: str


@dataclass(frozen=True)
class Finding:
    """One shark found in one place.

    ``line`` and ``col`` are 1-based, and ``col`` counts characters (not the
    UTF-8 bytes that :mod:`ast` counts), so editors and SARIF viewers land on
    the right spot.

    >>> f = Finding("SC002", "lambda passed to Pool.map", "job.py", 3, 10)
    >>> f.hint.startswith("sharkcage: ")
    True
    >>> f.to_dict()["line"], f.rule.name
    (3, 'unpicklable-callable')
    """

    code: str
    message: str
    path: str
    line: int
    col: int

    @property
    def rule(self) -> Rule:
        return RULES[self.code]

    @property
    def sharkcage_fix(self) -> str:
        return self.rule.sharkcage_fix

    @property
    def stdlib_fix(self) -> str:
        return self.rule.stdlib_fix

    @property
    def hint(self) -> str:
        """The fix in one line: the sharkcage way, then the stdlib way."""
        return f"sharkcage: {self.sharkcage_fix} | stdlib: {self.stdlib_fix}"

    def to_dict(self) -> dict:
        """A JSON-ready dict (the ``--format json`` record)."""
        d = asdict(self)
        d.update(
            name=self.rule.name,
            hint=self.hint,
            fix={"sharkcage": self.sharkcage_fix, "stdlib": self.stdlib_fix},
        )
        return d


_RULES = [
    Rule(
        "SC000",
        "syntax-error",
        "a scanned file could not be read, parsed or analysed, so none of its sharks were looked for",
        (),
        "fix the file so that Python can parse it, then lint again",
        "`python -m py_compile FILE` shows the same error",
    ),
    Rule(
        "SC001",
        "unguarded-pool",
        "a Pool, Process, Manager or ProcessPoolExecutor is created when the module is imported, "
        "outside `if __name__ == \"__main__\":`; spawn and forkserver re-import the main module in "
        "every child, which then tries to start its own children",
        ("003", "002"),
        "create the `sharkcage.Pool` inside a function called from `if __name__ == \"__main__\":` "
        "(no pool can make import-time creation safe)",
        "move the creation under `if __name__ == \"__main__\":` (or into a function called from there)",
    ),
    Rule(
        "SC002",
        "unpicklable-callable",
        "a lambda, a nested function or a generator object is sent to another process by pickle "
        "(stdlib pool task, Process target under spawn/forkserver, multiprocessing Queue/Pipe)",
        ("004",),
        "`from sharkcage import Pool`: sharkcage pickles lambdas and closures with every start method",
        "define the function at module top level (bind extra arguments with functools.partial) "
        "and send a list instead of a generator",
    ),
    Rule(
        "SC003",
        "stateful-bound-method",
        "a bound method whose body changes `self` is mapped over a pool: every task works on a "
        "pickled copy of the object, so the changes never reach the parent",
        ("004",),
        "`proxy = pool.actor(Cls, ...)` keeps one live object in a worker; call `proxy.method(...)`",
        "make the task a pure function that returns what changed and merge the results in the parent "
        "(or keep the state in a multiprocessing.Manager object)",
    ),
    Rule(
        "SC004",
        "fork-after-threads",
        "a thread (or a logging QueueListener) is started, then a process is forked with the fork "
        "start method (the platform default on Linux before Python 3.14): the child inherits locks "
        "held by threads that do not exist in it, and can hang forever",
        ("000", "001"),
        "`sharkcage.Pool` never forks a threaded parent by default and raises UnsafeForkError "
        "if fork is asked for",
        "use `multiprocessing.get_context(\"spawn\")` (or \"forkserver\") for this pool/process, "
        "or start the processes before any thread",
    ),
    Rule(
        "SC005",
        "global-start-method",
        "`multiprocessing.set_start_method` is called in library code: it changes the start method "
        "of the whole program, and raises if the application already chose one",
        ("000",),
        "`sharkcage.Pool(start_method=\"spawn\")` chooses the method for that pool only",
        "`ctx = multiprocessing.get_context(\"spawn\")` and `ctx.Pool()` / `ctx.Process()`; leave "
        "set_start_method to the application's `if __name__ == \"__main__\":` block",
    ),
    Rule(
        "SC006",
        "thread-primitive-to-process",
        "a queue.Queue or a threading lock/event/condition is handed to another process: it cannot "
        "be pickled, and a forked copy no longer synchronizes with anything (a get() waits forever)",
        ("002",),
        "return results from the task (`imap_unordered` streams them back); for a process-safe lock use "
        "`sharkcage.SharedArray(...).lock` or a multiprocessing lock",
        "use multiprocessing.Queue/Lock for a Process (args=...), or "
        "multiprocessing.Manager().Queue()/Lock() for pool tasks",
    ),
    Rule(
        "SC007",
        "unpicklable-exception",
        "an exception class whose __init__ takes arguments it does not pass on to "
        "super().__init__ (or that rewrites self.args): unpickling calls cls(*self.args), which "
        "fails or scrambles the fields when the exception crosses a process boundary",
        ("003",),
        "sharkcage delivers it as RemoteError (still catchable as the original class) instead of "
        "hanging the pool; fixing the class is still better",
        "call `super().__init__(every, positional, argument)` in the same order, or define `__reduce__`",
    ),
    Rule(
        "SC008",
        "global-mutated-in-task",
        "a task changes a module global that the parent reads afterwards: the task ran in another "
        "process, so the parent still sees its own unchanged copy",
        ("002",),
        "return the value from the task (or write into a `sharkcage.SharedArray`)",
        "return values and combine them in the parent, or share a multiprocessing.Value/Array or a "
        "Manager dict/list",
    ),
    Rule(
        "SC009",
        "inherited-pipe-end",
        "a Pipe end stays open in a process that never closes it: a forked child inherits the "
        "parent's end (or the parent keeps the child's end), so recv() never raises EOFError and "
        "the reader waits forever",
        ("004",),
        "use a pool or `pool.actor(...)` instead of a hand-written Pipe loop",
        "close every end a process does not use: `child_conn.close()` in the parent after start(), "
        "and pass the parent's end to the child so it can close it first thing (or use spawn)",
    ),
    Rule(
        "SC010",
        "pool-not-closed",
        "a stdlib Pool or ProcessPoolExecutor runs tasks but is never closed, joined, shut down "
        "or used as a context manager: workers linger until garbage collection, and at "
        "interpreter exit the pool can hang",
        ("003", "000"),
        "`with sharkcage.Pool() as pool:`",
        "`with Pool() as pool:` (or `pool.close(); pool.join()` in a `finally:`), "
        "`with ProcessPoolExecutor() as ex:`",
    ),
    Rule(
        "SC011",
        "inherit-only-object-in-task",
        "a multiprocessing Queue, Lock, Value or Array is passed as a pool task argument: these "
        "can only be shared by inheritance, so pickling them raises RuntimeError",
        ("002",),
        "pass it once through `Pool(initializer=..., initargs=(q,))` and read it with "
        "`sharkcage.worker_state()`",
        "pass it through `Pool(initializer=..., initargs=(q,))` into a global of the worker, or use "
        "a multiprocessing.Manager().Queue()/Lock() proxy",
    ),
]

RULES: dict[str, Rule] = {r.code: r for r in _RULES}
