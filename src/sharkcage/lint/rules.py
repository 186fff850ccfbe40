"""The sharks: one check per rule code, each yielding ``(node, message)`` pairs.

Every check reads the shared :class:`~sharkcage.lint.model.Model` and stays
quiet when a name cannot be resolved for sure (precision over recall).  The
rule table itself (names, seeds, fixes) lives in :mod:`sharkcage.lint.findings`.

>>> from sharkcage.lint.model import Model
>>> m = Model.from_source("from multiprocessing import Pool\\npool = Pool(4)\\n")
>>> [(node.lineno, msg.split(":")[0]) for node, msg in CHECKS["SC001"](m)]
[(2, '`Pool(...)` starts worker processes at import time, outside `if __name__ == "__main__"`')]
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

from sharkcage.lint.model import Model, Obj, Scope, dotted, pos, walk_scope

Report = Iterator[tuple[ast.AST, str]]

POOL_TASK_METHODS = frozenset(
    {"map", "map_async", "imap", "imap_unordered", "starmap", "starmap_async", "apply", "apply_async"}
)
EXECUTOR_TASK_METHODS = frozenset({"submit", "map"})
CLOSERS = frozenset({"close", "terminate", "join", "shutdown", "__exit__", "__enter__"})
MUTATORS = frozenset(
    {"append", "extend", "add", "update", "insert", "pop", "popitem", "remove", "clear",
     "setdefault", "discard", "appendleft", "extendleft", "sort", "reverse", "__setitem__"}
)
_INF = (1 << 60, 0)


def src(node: ast.AST, limit: int = 40) -> str:
    """Short source text of an expression for messages."""
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def call_name(call: ast.Call) -> str:
    return f"`{src(call.func)}(...)`"


def kwargs_of(call: ast.Call) -> dict[str, ast.AST]:
    return {k.arg: k.value for k in call.keywords if k.arg}


def arg_at(call: ast.Call, index: int, name: str) -> ast.AST | None:
    kw = kwargs_of(call)
    if name in kw:
        return kw[name]
    args = call.args
    if any(isinstance(a, ast.Starred) for a in args[: index + 1]):
        return None
    return args[index] if len(args) > index else None


def elements(expr: ast.AST | None) -> list[ast.AST]:
    """The items of a literal tuple/list (or the values of a literal dict) that get pickled."""
    if isinstance(expr, (ast.Tuple, ast.List, ast.Set)):
        return [e for e in expr.elts if not isinstance(e, ast.Starred)]
    if isinstance(expr, ast.Dict):
        return [v for v in expr.values if v is not None]
    return []


# --- where objects cross into another process ------------------------------------------------


@dataclass
class TaskCall:
    """``pool.map(func, ...)``, ``executor.submit(fn, ...)``: a task sent to a pool."""

    call: ast.Call
    scope: Scope
    pool: Obj
    method: str
    func: ast.AST | None
    pickled: list[ast.AST] = field(default_factory=list)  # argument values that get pickled


def task_calls(m: Model, scope: Scope) -> list[TaskCall]:
    """Every task sent to a stdlib or sharkcage pool/executor in this scope (cached per scope)."""
    key = ("tasks", id(scope))
    if key not in m.cache:
        m.cache[key] = list(_task_calls(m, scope))
    return m.cache[key]


def _task_calls(m: Model, scope: Scope) -> Iterator[TaskCall]:
    for call in scope.calls:
        f = call.func
        if not isinstance(f, ast.Attribute):
            continue
        pool = m.value_of(f.value, scope)
        if pool is None:
            continue
        if pool.kind == "pool" and f.attr in POOL_TASK_METHODS:
            func = arg_at(call, 0, "func")
            if f.attr in ("apply", "apply_async"):
                pickled = elements(arg_at(call, 1, "args")) + elements(arg_at(call, 2, "kwds"))
            else:
                pickled = elements(arg_at(call, 1, "iterable"))
        elif pool.kind == "executor" and f.attr in EXECUTOR_TASK_METHODS:
            func = arg_at(call, 0, "fn")
            if f.attr == "submit":
                pickled = [a for a in call.args[1:] if not isinstance(a, ast.Starred)]
                pickled += [k.value for k in call.keywords if k.arg]
            else:
                pickled = [e for a in call.args[1:] for e in elements(a)]
        else:
            continue
        yield TaskCall(call, scope, pool, f.attr, func, pickled)


@dataclass
class ProcessCall:
    """``Process(target=f, args=(...))``."""

    call: ast.Call
    scope: Scope
    obj: Obj
    target: ast.AST | None
    passed: list[ast.AST]


def started_processes(m: Model) -> set[int]:
    """The Process(...) calls whose object is started somewhere in the file (``p.start()``,
    ``Process(...).start()``, ``for p in procs: p.start()``)."""
    if "started" not in m.cache:
        started = set()
        for scope in m.scopes():
            for call in scope.calls:
                f = call.func
                if isinstance(f, ast.Attribute) and f.attr == "start":
                    obj = m.value_of(f.value, scope)
                    if obj is not None and obj.kind == "process" and obj.node is not None:
                        started.add(id(obj.node))
        m.cache["started"] = started
    return m.cache["started"]


def process_calls(m: Model, scope: Scope) -> list[ProcessCall]:
    """Process creations whose process is started (an unstarted Process pickles nothing)."""
    key = ("processes", id(scope))
    if key not in m.cache:
        m.cache[key] = list(_process_calls(m, scope))
    return m.cache[key]


def _process_calls(m: Model, scope: Scope) -> Iterator[ProcessCall]:
    started = started_processes(m)
    for call in scope.calls:
        obj = m.value_of(call, scope)
        if obj is None or obj.kind != "process" or obj.node is not call or id(call) not in started:
            continue
        target = arg_at(call, 1, "target")
        passed = elements(arg_at(call, 3, "args")) + elements(arg_at(call, 4, "kwargs"))
        yield ProcessCall(call, scope, obj, target, passed)


def sends(m: Model, scope: Scope) -> Iterator[tuple[ast.Call, Obj, ast.AST]]:
    """``q.put(x)`` on a multiprocessing/manager queue and ``conn.send(x)`` on a Pipe end."""
    for call in scope.calls:
        f = call.func
        if not isinstance(f, ast.Attribute) or not call.args:
            continue
        if f.attr not in ("put", "put_nowait", "send"):
            continue
        obj = m.value_of(f.value, scope)
        if obj is None:
            continue
        if (f.attr == "send" and obj.kind == "pipe_end") or (
            f.attr != "send" and obj.kind in ("mp_queue", "managed_queue")
        ):
            yield call, obj, call.args[0]


def pool_init_args(m: Model, scope: Scope) -> Iterator[tuple[ast.Call, Obj, ast.AST | None, list[ast.AST]]]:
    """``Pool(initializer=f, initargs=(...))`` / ``ProcessPoolExecutor(initializer=...)``."""
    for call in scope.calls:
        obj = m.value_of(call, scope)
        if obj is None or obj.kind not in ("pool", "executor") or obj.node is not call:
            continue
        if obj.kind == "pool":
            init, initargs = arg_at(call, 1, "initializer"), arg_at(call, 2, "initargs")
        else:
            init, initargs = arg_at(call, 2, "initializer"), arg_at(call, 3, "initargs")
        yield call, obj, init, elements(initargs)


def main_only(m: Model, expr: ast.AST | None, scope: Scope) -> str | None:
    """A function defined under ``if __name__ == "__main__":``: spawn and forkserver children
    import the main module as ``__mp_main__`` and never run that block, so the name is missing."""
    obj = m.value_of(expr, scope) if expr is not None else None
    if obj is not None and obj.kind == "function" and not obj.nested and id(obj.node) in m.main_defs:
        return f'function `{obj.node.name}` defined under `if __name__ == "__main__"`'
    return None


def unpicklable(m: Model, expr: ast.AST | None, scope: Scope) -> str | None:
    """Why pickle (by reference) cannot send this callable or object, or None."""
    if expr is None:
        return None
    obj = m.value_of(expr, scope)
    if obj is None:
        return None
    if obj.kind == "lambda":
        return "a lambda" if isinstance(expr, ast.Lambda) else f"`{src(expr)}` (a lambda)"
    if obj.kind == "function" and obj.nested:
        return f"nested function `{obj.node.name}`"
    if obj.kind == "generator":
        return "a generator object" if isinstance(expr, (ast.GeneratorExp, ast.Call)) else f"`{src(expr)}` (a generator object)"
    return None


# --- SC001: worker processes started at import time -----------------------------------------


def _starts_workers(m: Model, call: ast.Call, scope: Scope) -> str | None:
    """What worker-starting thing this call does, if any (pool/manager creation, process start,
    executor task)."""
    obj = m.value_of(call, scope)
    if obj is not None and obj.node is call and obj.kind in ("pool", "manager"):
        if obj.flavor == "stdlib" and m.explicit_fork(obj):
            return None  # fork does not re-import the module
        return f"{call_name(call)} starts worker processes"
    f = call.func
    if isinstance(f, ast.Attribute):
        recv = m.value_of(f.value, scope)
        if recv is None or (recv.flavor == "stdlib" and m.explicit_fork(recv)):
            return None
        if f.attr == "start" and recv.kind == "process":
            return f"`{src(f)}()` starts a process"
        if recv.kind == "executor" and f.attr in EXECUTOR_TASK_METHODS:
            return f"`{src(f)}(...)` starts the executor's worker processes"
    return None


class _Summaries:
    """Per-function facts, closed over calls to other local functions (cycle-safe)."""

    def __init__(self, m: Model, fact: Callable[[ast.Call, Scope], str | None]):
        self.m, self.fact, self.memo = m, fact, {}

    def __call__(self, fn: ast.AST) -> str | None:
        key = id(fn)
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = None
        scope = self.m.scope_of_def.get(key)
        result = None
        if scope is not None and scope.kind == "function":
            for call in scope.calls:
                result = self.fact(call, scope)
                if result is None:
                    callee = self.m.def_of(call.func, scope)
                    if callee and isinstance(callee[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
                        inner = self(callee[0])
                        if inner is not None:
                            result = f"`{src(call.func)}()` -> {inner}" if "->" not in inner else inner
                if result is not None:
                    result = f"{result} (line {call.lineno})" if "(line" not in result else result
                    break
        self.memo[key] = result
        return result


def check_sc001(m: Model) -> Report:
    if os.path.basename(m.path) == "__main__.py":
        return  # spawn never re-runs a package's __main__ module in the child (spawn._fixup_main_from_name)
    starts = _Summaries(m, lambda call, scope: _starts_workers(m, call, scope))
    for scope in m.scopes():
        if not m.runs_at_import(scope):
            continue
        for call in scope.calls:
            if id(call) in m.in_main:
                continue
            what = _starts_workers(m, call, scope)
            if what is not None:
                yield call, (
                    f"{what.split(' starts', 1)[0]} starts worker processes at import time, outside "
                    '`if __name__ == "__main__"`: spawn and forkserver re-import this module in every child'
                )
                continue
            callee = m.def_of(call.func, scope)
            if callee and isinstance(callee[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = starts(callee[0])
                if inner is not None:
                    yield call, (
                        f"`{src(call.func)}()` runs at import time, outside `if __name__ == \"__main__\"`, "
                        f"and {inner}: spawn and forkserver re-import this module in every child"
                    )


# --- SC002: lambdas, nested functions and generators sent by pickle --------------------------


def check_sc002(m: Model) -> Report:
    for scope in m.scopes():
        for tc in task_calls(m, scope):
            if tc.pool.flavor != "stdlib":
                continue  # sharkcage pickles closures
            why = unpicklable(m, tc.func, scope)
            if why is not None:
                yield tc.func, f"{why} passed to `{src(tc.call.func)}`: a pool pickles its task function by name, which fails"
            elif not m.explicit_fork(tc.pool):
                why = main_only(m, tc.func, scope)
                if why is not None:
                    yield tc.func, (
                        f"{why} passed to `{src(tc.call.func)}`: spawn and forkserver workers never run that block, "
                        "so unpickling the task fails (the default on macOS and Windows, and on Linux from Python 3.14)"
                    )
            if tc.method in ("apply", "apply_async", "submit"):
                for e in tc.pickled:
                    why = unpicklable(m, e, scope)
                    if why is not None:
                        yield e, f"{why} passed as an argument of `{src(tc.call.func)}`: task arguments are pickled, which fails"
        for pc in process_calls(m, scope):
            if pc.obj.flavor != "stdlib" or m.explicit_fork(pc.obj):
                continue
            for e in ([pc.target] if pc.target is not None else []) + pc.passed:
                why = unpicklable(m, e, scope) or main_only(m, e, scope)
                if why is not None:
                    role = "target" if e is pc.target else "argument"
                    yield e, (
                        f"{why} as {call_name(pc.call)} {role}: spawn and forkserver pickle it, which fails "
                        "(the default on macOS and Windows, and on Linux from Python 3.14)"
                    )
        for call, obj, init, _ in pool_init_args(m, scope):
            if obj.flavor != "stdlib" or m.explicit_fork(obj) or init is None:
                continue
            why = unpicklable(m, init, scope) or main_only(m, init, scope)
            if why is not None:
                yield init, (
                    f"{why} as the initializer of {call_name(call)}: spawn and forkserver pickle it, which fails "
                    "(the default on macOS and Windows, and on Linux from Python 3.14)"
                )
        for call, obj, value in sends(m, scope):
            for item in elements(value) or [value]:
                why = unpicklable(m, item, scope)
                if why is not None:
                    yield item, f"{why} sent through `{src(call.func)}`: queues and pipes pickle what they carry, which fails"


# --- SC003: bound methods that change self --------------------------------------------------


def self_mutation(fn: ast.AST) -> str | None:
    """The first ``self.attr`` a method changes (assignment, augmented assignment, item
    assignment, or a mutating call such as ``self.items.append``), or None."""
    args = fn.args.posonlyargs + fn.args.args
    if not args:
        return None
    me = args[0].arg

    def self_attr(t: ast.AST) -> str | None:
        while isinstance(t, ast.Subscript):
            t = t.value
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == me:
            return f"{me}.{t.attr}"
        return None

    for node in walk_scope(fn.body):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and getattr(node, "value", None) is not None:
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
            hit = self_attr(node.func.value)
            if hit:
                return hit
        for t in targets:
            for sub in ast.walk(t) if isinstance(t, (ast.Tuple, ast.List)) else [t]:
                hit = self_attr(sub)
                if hit:
                    return hit
    return None


def _method_of(m: Model, cls: ast.ClassDef, name: str, seen: frozenset = frozenset()) -> ast.AST | None:
    for stmt in cls.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == name:
            return stmt
    holder = m.scope_holding(cls)
    for base in cls.bases:
        found = m.def_of(base, holder) if holder is not None else None
        if found and isinstance(found[0], ast.ClassDef) and id(found[0]) not in seen:
            hit = _method_of(m, found[0], name, seen | {id(cls)})
            if hit is not None:
                return hit
    return None


def check_sc003(m: Model) -> Report:
    for scope in m.scopes():
        for tc in task_calls(m, scope):
            func = tc.func
            if not isinstance(func, ast.Attribute):
                continue
            cls = None
            recv = m.value_of(func.value, scope)
            if recv is not None and recv.kind == "instance":
                cls = recv.node
            elif isinstance(func.value, ast.Name):
                s = scope
                while s is not None and s.kind == "function" and m.enclosing_class(s) is None:
                    s = s.parent
                if s is not None and m.enclosing_class(s) is not None and func.value.id == m._self_name(s):
                    if m.owner(func.value.id, scope) is s:
                        cls = m.enclosing_class(s).node
            if cls is None:
                continue
            method = _method_of(m, cls, func.attr)
            if method is None or any(
                isinstance(d, ast.Name) and d.id in ("staticmethod", "classmethod") for d in method.decorator_list
            ):
                continue
            changed = self_mutation(method)
            if changed is not None:
                yield func, (
                    f"bound method `{src(func)}` changes `{changed}` but runs in a worker on a pickled copy "
                    f"of the object: the change never reaches this process"
                )


# --- SC004: fork after threads ----------------------------------------------------------------


def _thread_key(m: Model, expr: ast.AST, scope: Scope) -> object:
    """What identifies a thread object for join(): the call that created it, else its name."""
    obj = m.value_of(expr, scope)
    if obj is not None and obj.kind in ("thread", "listener") and obj.node is not None:
        return id(obj.node)
    return dotted(expr)


def _thread_start(m: Model, call: ast.Call, scope: Scope) -> tuple[str, object] | None:
    """``(description, key for join)`` when the call starts a thread or a QueueListener."""
    f = call.func
    if isinstance(f, ast.Attribute) and f.attr == "start":
        obj = m.value_of(f.value, scope)
        if obj is not None and obj.kind in ("thread", "listener"):
            what = "a QueueListener thread" if obj.kind == "listener" else "a thread"
            return what, _thread_key(m, f.value, scope)
    return None


def _fork_event(m: Model, call: ast.Call, scope: Scope) -> str | None:
    obj = m.value_of(call, scope)
    if obj is not None and obj.node is call:
        if obj.kind == "fork":
            return f"{call_name(call)} forks"
        if obj.kind in ("pool", "executor", "manager") and m.forks(obj):
            return f"{call_name(call)} forks its workers"
    f = call.func
    if isinstance(f, ast.Attribute) and f.attr == "start":
        recv = m.value_of(f.value, scope)
        if recv is not None and recv.kind == "process" and m.forks(recv):
            return f"`{src(f)}()` forks"
    return None


def _scan_threads(m: Model, scope: Scope, summary) -> tuple[list[tuple[ast.AST, str]], str | None, str | None]:
    """Walk one scope's calls in source order: report forks made while a thread runs.

    Returns the reports, the thread still running at the end (if any) and the first fork."""
    live: dict[object, str] = {}  # thread key (or a unique key) -> description with line
    reports: list[tuple[ast.AST, str]] = []
    first_fork = None
    for call in scope.calls:
        f = call.func
        if isinstance(f, ast.Attribute) and f.attr in ("join", "stop"):
            key = _thread_key(m, f.value, scope)
            if key in live:  # a joined thread (a stopped listener) holds no lock any more
                del live[key]
                continue
        fork = _fork_event(m, call, scope)
        started = _thread_start(m, call, scope)
        callee = m.def_of(call.func, scope)
        callee_thread = callee_fork = None
        if callee and isinstance(callee[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
            callee_thread, callee_fork = summary(callee[0])
        if fork is None and callee_fork is not None:
            fork = f"`{src(call.func)}()` -> {callee_fork}"
        if fork is not None:
            first_fork = first_fork or f"{fork} (line {call.lineno})"
            if live:
                thread = next(iter(live.values()))
                if m.explicit_fork_for(call, scope):
                    method = "the fork start method"
                else:
                    method = "the default start method (fork on Linux before Python 3.14)"
                reports.append((call, (
                    f"{fork} with {method} while {thread} is running: the child inherits locks "
                    "held by a thread that does not exist in it and can hang"
                )))
        if started is not None:
            what, key = started
            live[key if key is not None else f"#{id(call)}"] = f"{what} started at line {call.lineno}"
        elif callee_thread is not None:
            live[f"#{id(call)}"] = f"{callee_thread} (via `{src(call.func)}()` at line {call.lineno})"
    running = next(iter(live.values())) if live else None
    return reports, running, first_fork


def check_sc004(m: Model) -> Report:
    memo: dict[int, tuple[str | None, str | None]] = {}

    def summary(fn: ast.AST) -> tuple[str | None, str | None]:
        key = id(fn)
        if key not in memo:
            memo[key] = (None, None)
            scope = m.scope_of_def.get(key)
            if scope is not None:
                _, running, fork = _scan_threads(m, scope, summary)
                memo[key] = (running, fork)
        return memo[key]

    for scope in m.scopes():
        if scope.kind == "class":
            continue
        reports, _, _ = _scan_threads(m, scope, summary)
        yield from reports


# --- SC005: set_start_method in library code --------------------------------------------------


def is_test_file(path: str) -> bool:
    """Test modules are run by a test runner, not imported by users: they are applications."""
    norm = path.replace("\\", "/")
    base = os.path.basename(norm)
    parts = norm.split("/")[:-1]
    return (
        base.startswith(("test_", "_test_"))
        or base.endswith("_test.py")
        or base == "conftest.py"
        or any(p in ("test", "tests", "testing") for p in parts)
    )


def is_script(m: Model) -> bool:
    return os.path.basename(m.path) == "__main__.py" or m.source.startswith("#!")


def main_reachable(m: Model) -> set[int]:
    """Functions called (directly or through other local functions) from the main guard,
    plus module-level functions named ``main``: a script's main."""
    todo: list[ast.AST] = []
    for scope in m.scopes():
        for call in scope.calls:
            if id(call) in m.in_main:
                found = m.def_of(call.func, scope)
                if found and isinstance(found[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
                    todo.append(found[0])
    for name, node in m.module.defs.items():
        if name in ("main", "_main") and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            todo.append(node)
    seen: set[int] = set()
    while todo:
        fn = todo.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        scope = m.scope_of_def.get(id(fn))
        if scope is None:
            continue
        for call in scope.calls:
            found = m.def_of(call.func, scope)
            if found and isinstance(found[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
                todo.append(found[0])
    return seen


def check_sc005(m: Model) -> Report:
    if m.package is not None and (m.package == "multiprocessing" or m.package.startswith("multiprocessing.")):
        return  # multiprocessing itself owns the global start method
    if is_test_file(m.path):
        return
    reachable = None
    for scope in m.scopes():
        for call in scope.calls:
            obj = m.value_of(call, scope)
            if obj is None or obj.kind != "set_start_method" or id(call) in m.in_main:
                continue
            if m.runs_at_import(scope):
                if is_script(m):
                    continue
            else:
                if reachable is None:
                    reachable = main_reachable(m)
                s, ok = scope, False
                while s is not None and not ok:
                    ok = id(s.node) in reachable
                    s = s.parent
                if ok:
                    continue
            yield call, (
                f"{call_name(call)} in library code changes the start method of the whole program "
                "(and raises RuntimeError if the application already set one)"
            )


# --- SC006: thread-only primitives handed to another process ----------------------------------

_THREAD_KINDS = {"thread_queue": "queue.Queue", "thread_lock": "threading primitive"}


def _handed(m: Model) -> Iterator[tuple[ast.AST, Scope, str, str]]:
    """Every value handed to another process: ``(expr, scope, how, pool flavor)``."""
    for scope in m.scopes():
        for pc in process_calls(m, scope):
            for e in pc.passed:
                yield e, scope, f"{call_name(pc.call)} args", pc.obj.flavor
        for tc in task_calls(m, scope):
            for e in tc.pickled:
                yield e, scope, f"task of `{src(tc.call.func)}`", tc.pool.flavor
        for call, obj, _, initargs in pool_init_args(m, scope):
            for e in initargs:
                yield e, scope, f"initargs of {call_name(call)}", obj.flavor
        for call, obj, value in sends(m, scope):
            yield value, scope, f"`{src(call.func)}`", obj.flavor


def check_sc006(m: Model) -> Report:
    for expr, scope, how, _ in _handed(m):
        obj = m.value_of(expr, scope)
        if obj is not None and obj.kind in _THREAD_KINDS:
            label = _THREAD_KINDS[obj.kind]
            yield expr, (
                f"{label} `{src(expr)}` handed to another process ({how}): it cannot be pickled, and a "
                "forked copy synchronizes with nothing"
            )


# --- SC007: exceptions that do not survive pickling --------------------------------------------


def _is_exception_class(m: Model, cls: ast.ClassDef, scope: Scope, seen: frozenset = frozenset()) -> bool:
    import builtins

    for base in cls.bases:
        q = m.qualname(base, scope)
        if q and q.startswith("builtins."):
            obj = getattr(builtins, q[9:], None)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                return True
        found = m.def_of(base, scope)
        if found and isinstance(found[0], ast.ClassDef) and id(found[0]) not in seen:
            if _is_exception_class(m, found[0], found[1], seen | {id(cls)}):
                return True
        name = dotted(base) or ""
        last = name.rsplit(".", 1)[-1]
        if not found and last.endswith(("Error", "Exception")):
            return True
    return False


_REDUCERS = ("__reduce__", "__reduce_ex__", "__getnewargs__", "__getnewargs_ex__")


def _defines(m: Model, cls: ast.ClassDef, names: tuple[str, ...], seen: frozenset = frozenset()) -> bool:
    if any(isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Assign)) and
           (getattr(s, "name", None) in names or
            any(isinstance(t, ast.Name) and t.id in names for t in getattr(s, "targets", [])))
           for s in cls.body):
        return True
    holder = m.scope_holding(cls)
    for base in cls.bases:
        found = m.def_of(base, holder) if holder is not None else None
        if found and isinstance(found[0], ast.ClassDef) and id(found[0]) not in seen:
            if _defines(m, found[0], names, seen | {id(cls)}):
                return True
    return False


def _init_of(cls: ast.ClassDef) -> ast.AST | None:
    return next((s for s in cls.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and s.name == "__init__"), None)


def _args_assignment(init: ast.AST, me: str) -> ast.Assign | None:
    for node in walk_scope(init.body):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Attribute) and t.attr == "args" and isinstance(t.value, ast.Name) and t.value.id == me
            for t in node.targets
        ):
            return node
    return None


def _super_init_call(init: ast.AST, cls: ast.ClassDef, me: str) -> tuple[ast.Call, int, ast.AST | None] | None:
    """The first ``super().__init__(...)`` or ``Base.__init__(self, ...)`` call of an __init__:
    ``(call, how many leading arguments are self, the base it goes to or None for the first)``."""
    bases = {dotted(b): b for b in cls.bases}
    for node in walk_scope(init.body):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "__init__"):
            continue
        v = node.func.value
        if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super":
            return node, 0, None
        name = dotted(v)
        if name in bases and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == me:
            return node, 1, bases[name]
    return None


KEEP = "keep"  # BaseException.__init__ is never reached: self.args keeps every constructor argument


def _args_after_init(m: Model, cls: ast.ClassDef, scope: Scope, n: int, depth: int = 0) -> int | str | None:
    """How many values end up in ``self.args`` when ``cls.__init__`` gets ``n`` positional
    arguments: a count, KEEP, or None when the chain leaves this file (unknown: no finding)."""
    if depth > 20:
        return None
    init = _init_of(cls)
    if init is None:
        return _args_after_base(m, cls, cls.bases[0] if cls.bases else None, scope, n, depth)
    params = init.args.posonlyargs + init.args.args
    if not params:
        return None
    me, named = params[0].arg, params[1:]
    assign = _args_assignment(init, me)
    if assign is not None:
        value = assign.value
        if isinstance(value, (ast.Tuple, ast.List)) and not any(isinstance(e, ast.Starred) for e in value.elts):
            return len(value.elts)
        return None
    found = _super_init_call(init, cls, me)
    if found is None:
        return KEEP
    call, skip, base = found
    passed = call.args[skip:]
    count = 0
    for arg in passed:
        if isinstance(arg, ast.Starred):
            vararg = init.args.vararg
            if vararg is None or not (isinstance(arg.value, ast.Name) and arg.value.id == vararg.arg):
                return None
            count += max(n - len(named), 0)  # *args passes the extra positional arguments along
        else:
            count += 1
    return _args_after_base(m, cls, base if base is not None else (cls.bases[0] if cls.bases else None),
                            scope, count, depth)


def _args_after_base(m: Model, cls: ast.ClassDef, base: ast.AST | None, scope: Scope, n: int, depth: int):
    import builtins

    if base is None:
        return None
    found = m.def_of(base, scope)
    if found and isinstance(found[0], ast.ClassDef):
        return _args_after_init(m, found[0], found[1], n, depth + 1)
    q = m.qualname(base, scope)
    if q and q.startswith("builtins."):
        obj = getattr(builtins, q[9:], None)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return n  # BaseException.__init__ stores exactly what it is given
    return None


def _args_rewrite_problem(value: ast.AST, params: list[str], me: str, n_required: int) -> str | None:
    """What is wrong with ``self.args = value`` for an __init__ taking ``params``, or None."""
    if isinstance(value, ast.JoinedStr) or (isinstance(value, ast.Constant) and isinstance(value.value, str)):
        return "a string, which becomes a tuple of its characters"
    if not isinstance(value, (ast.Tuple, ast.List)) or any(isinstance(e, ast.Starred) for e in value.elts):
        return None  # not a literal: unknown
    if len(value.elts) < n_required:
        return f"{len(value.elts)} value(s) for {n_required} required argument(s), which fails"
    for i, e in enumerate(value.elts):
        name = e.id if isinstance(e, ast.Name) else (
            e.attr if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == me else None)
        if name in params and params.index(name) != i:
            return f"`{name}` at position {i} while __init__ takes it at {params.index(name)}, which scrambles the fields"
    return None


def check_sc007(m: Model) -> Report:
    for scope in m.scopes():
        for cls in [d for d in scope.defs.values() if isinstance(d, ast.ClassDef)]:
            init = _init_of(cls)
            if init is None or not _is_exception_class(m, cls, scope) or _defines(m, cls, _REDUCERS):
                continue
            a = init.args
            params = a.posonlyargs + a.args
            if not params:
                continue
            me, params = params[0].arg, params[1:]
            required = [p.arg for p in params[: max(len(params) - len(a.defaults), 0)]]
            kwonly = [p.arg for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
            if kwonly:
                yield init, (
                    f"exception `{cls.name}` requires keyword-only argument(s) {', '.join(kwonly)}, which "
                    f"never reach self.args: unpickling calls {cls.name}(*self.args) without them and fails"
                )
                continue
            assign = _args_assignment(init, me)
            if assign is not None:
                # self.args = (a, b) in __init__'s own order is the documented way to stay picklable;
                # too few values fail, parameters in another order scramble the fields (mysql-connector)
                why = _args_rewrite_problem(assign.value, [p.arg for p in params], me, len(required))
                if why is not None:
                    yield assign, (
                        f"exception `{cls.name}` rewrites self.args in __init__ with {why}: unpickling calls "
                        f"{cls.name}(*self.args)"
                    )
                continue
            if not required:
                continue
            kept = _args_after_init(m, cls, scope, len(required))
            if isinstance(kept, int) and kept < len(required):
                found = _super_init_call(init, cls, me)
                yield (found[0] if found else init), (
                    f"exception `{cls.name}` takes {len(required)} required argument(s) "
                    f"({', '.join(required)}) but keeps {kept} in self.args: "
                    f"unpickling calls {cls.name}(*self.args) with {kept} and fails"
                )


# --- SC008: globals changed in a task and read in the parent ------------------------------------

_CONTAINER_CALLS = {"list", "dict", "set", "bytearray", "collections.defaultdict", "collections.OrderedDict",
                    "collections.Counter", "collections.deque"}


def _mutable_globals(m: Model) -> set[str]:
    out = set()
    for name, bs in m.module.bindings.items():
        if "." in name:
            continue
        ok = True
        for b in bs:
            v = b.value if b.tag == "assign" else None
            if isinstance(v, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)):
                continue
            if isinstance(v, ast.Call):
                q = m.qualname(v.func, m.module) or ""
                if q.removeprefix("builtins.") in _CONTAINER_CALLS:
                    continue
            ok = False
            break
        if ok:
            out.add(name)
    return out


def global_writes(m: Model, fn: ast.AST, containers: set[str]) -> dict[str, str]:
    """Module globals a function changes: ``{name: how}``."""
    scope = m.scope_of_def.get(id(fn))
    if scope is None:
        return {}
    out: dict[str, str] = {}
    for name in scope.globals:
        if any(b.tag != "import" for b in scope.bindings.get(name, [])):
            out[name] = "rebinds"
    for node in scope.nodes:
        target = None
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            for t in getattr(node, "targets", None) or [node.target]:
                if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
                    target = t.value.id
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
            if isinstance(node.func.value, ast.Name):
                target = node.func.value.id
        if target and target in containers and m.owner(target, scope) is m.module and target not in out:
            out[target] = "changes"
    return out


def check_sc008(m: Model) -> Report:
    containers = _mutable_globals(m)
    for scope in m.scopes():
        submitted: list[tuple[ast.Call, ast.AST]] = []
        for tc in task_calls(m, scope):
            submitted.append((tc.call, tc.func))
        for pc in process_calls(m, scope):
            submitted.append((pc.call, pc.target))
        for call, func in submitted:
            found = m.def_of(func, scope) if func is not None else None
            if not found or found[1] is not m.module or not isinstance(found[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            writes = global_writes(m, found[0], containers)
            for name, how in writes.items():
                read = next((n for n in scope.nodes if isinstance(n, ast.Name) and n.id == name
                             and isinstance(n.ctx, ast.Load) and pos(n) > pos(call)
                             and m.owner(name, scope) is m.module), None)
                if read is not None:
                    yield call, (
                        f"task `{found[0].name}` {how} global `{name}` in a worker process, but this process "
                        f"reads `{name}` at line {read.lineno} and sees only its own unchanged copy"
                    )
                    break


# --- SC009: Pipe ends left open in a process ----------------------------------------------------


def _catches_eof(nodes: list[ast.AST]) -> bool:
    for n in nodes:
        if isinstance(n, ast.ExceptHandler) and n.type is not None:
            types = n.type.elts if isinstance(n.type, ast.Tuple) else [n.type]
            if any(isinstance(t, ast.Name) and t.id == "EOFError" for t in types):
                return True
    return False


def _end_names(m: Model, scope: Scope, pipe: ast.AST) -> dict[int, str]:
    """Names bound to each end (0, 1) of the Pipe() call ``pipe``, looking in the scope and its parents."""
    out: dict[int, str] = {}
    s = scope
    while s is not None:
        for name, bs in s.bindings.items():
            for b in bs:
                if b.tag == "unpack" and b.value[0] is pipe:
                    out.setdefault(b.value[1], name)
        s = s.parent
    return out


def check_sc009(m: Model) -> Report:
    for scope in m.scopes():
        for pc in process_calls(m, scope):
            if pc.obj.flavor != "stdlib":
                continue
            ends = [(e, m.value_of(e, scope)) for e in pc.passed]
            ends = [(e, o) for e, o in ends if o is not None and o.kind == "pipe_end" and o.index in (0, 1)]
            for expr, end in ends:
                if any(o.node is end.node and o.index != end.index for _, o in ends):
                    continue  # the child gets both ends, so it can close the one it does not use
                names = _end_names(m, scope, end.node)
                other = names.get(1 - end.index)
                mine = names.get(end.index)
                if other is None:
                    continue
                target = m.def_of(pc.target, scope) if pc.target is not None else None
                if (m.forks(pc.obj) and target and isinstance(target[0], (ast.FunctionDef, ast.AsyncFunctionDef))
                        and _catches_eof(m.scope_of_def[id(target[0])].nodes)):
                    yield pc.call, (
                        f"the child inherits `{other}` (the other end of this Pipe) through fork and never "
                        f"closes it, so `{target[0].name}` waits for an EOFError that never comes"
                    )
                    continue
                closes = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                             and n.func.attr == "close" and dotted(n.func.value) == mine for n in scope.nodes)
                if mine and not closes and _catches_eof(scope.nodes):
                    yield pc.call, (
                        f"this process keeps `{mine}` (the child's end of the Pipe) open and never closes it, so "
                        f"`{other}.recv()` never raises EOFError after the child exits"
                    )


# --- SC010: pools never closed ----------------------------------------------------------------


def _attribute_parents(scope: Scope) -> dict[int, ast.Attribute]:
    """``id(name) -> attribute`` for every ``name.attr`` evaluated in the scope."""
    return {id(n.value): n for n in scope.nodes if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}


def check_sc010(m: Model) -> Report:
    for scope in m.scopes():
        parents = None
        if scope.kind == "class":
            continue
        # Pool(...).map(...) directly: nothing can ever close that pool
        for call in scope.calls:
            f = call.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call):
                obj = m.value_of(f.value, scope)
                if obj is not None and obj.flavor == "stdlib" and obj.node is f.value and (
                        (obj.kind == "pool" and f.attr in POOL_TASK_METHODS) or
                        (obj.kind == "executor" and f.attr in EXECUTOR_TASK_METHODS)):
                    yield f.value, f"{call_name(f.value)} runs tasks but is never closed or joined"
        for name, bs in scope.bindings.items():
            if "." in name:
                continue
            for i, b in enumerate(bs):
                if b.tag != "assign":
                    continue
                obj = m.obj_of(b, scope)
                if obj is None or obj.flavor != "stdlib" or obj.kind not in ("pool", "executor") or obj.managed:
                    continue
                if not isinstance(b.value, ast.Call) or obj.node is not b.value:
                    continue
                end = bs[i + 1].pos if i + 1 < len(bs) else _INF
                if parents is None:
                    parents = _attribute_parents(scope)
                uses = [n for n in scope.nodes if isinstance(n, ast.Name) and n.id == name
                        and isinstance(n.ctx, ast.Load) and b.pos <= pos(n) < end]
                tasks = closed = escaped = False
                methods = POOL_TASK_METHODS if obj.kind == "pool" else EXECUTOR_TASK_METHODS
                for u in uses:
                    p = parents.get(id(u))
                    if p is not None:
                        if p.attr in CLOSERS:
                            closed = True
                        elif p.attr in methods:
                            tasks = True
                    else:
                        escaped = True
                if not tasks or closed or escaped or _used_elsewhere(m, scope, name):
                    continue
                yield b.value, (
                    f"`{name} = {src(b.value)}` runs tasks but is never closed, joined or used in a `with` "
                    "block: its workers linger until garbage collection"
                )


def _used_elsewhere(m: Model, scope: Scope, name: str) -> bool:
    """Whether a nested (or, for module globals, any) function reads the name from this scope."""
    for s in m.scopes():
        if s is scope:
            continue
        for n in s.nodes:
            if isinstance(n, ast.Name) and n.id == name and m.owner(name, s) is scope:
                return True
    return False


# --- SC011: inherit-only multiprocessing objects sent as task arguments --------------------------

_INHERIT_ONLY = {"mp_queue": "multiprocessing queue", "mp_sync": "multiprocessing synchronization/shared object"}


def check_sc011(m: Model) -> Report:
    for scope in m.scopes():
        for tc in task_calls(m, scope):
            for e in tc.pickled:
                obj = m.value_of(e, scope)
                if obj is not None and obj.kind in _INHERIT_ONLY:
                    yield e, (
                        f"{_INHERIT_ONLY[obj.kind]} `{src(e)}` passed as a task argument of `{src(tc.call.func)}`: "
                        "it can only be shared by inheritance, so pickling it raises RuntimeError"
                    )
        for call, _, value in sends(m, scope):
            obj = m.value_of(value, scope)
            if obj is not None and obj.kind in _INHERIT_ONLY:
                yield value, (
                    f"{_INHERIT_ONLY[obj.kind]} `{src(value)}` sent through `{src(call.func)}`: it can only be "
                    "shared by inheritance, so pickling it raises RuntimeError"
                )


CHECKS: dict[str, Callable[[Model], Report]] = {
    "SC001": check_sc001,
    "SC002": check_sc002,
    "SC003": check_sc003,
    "SC004": check_sc004,
    "SC005": check_sc005,
    "SC006": check_sc006,
    "SC007": check_sc007,
    "SC008": check_sc008,
    "SC009": check_sc009,
    "SC010": check_sc010,
    "SC011": check_sc011,
}
