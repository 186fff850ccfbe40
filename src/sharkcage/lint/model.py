"""The semantic model the rules share: scopes, imports, bindings, and what a call creates.

The rules ask questions such as "is ``pool`` a stdlib Pool at this line?" or
"does ``mp.get_context('spawn').Process`` fork?".  This module answers them
from the AST alone, resolving names through imports (``import multiprocessing
as mp``, ``from multiprocessing.pool import Pool``, relative imports inside a
package) and through simple assignments (``pool = Pool()``, ``with Pool() as
p``, ``a, b = Pipe()``, ``for p in procs``).

Whenever a name cannot be resolved for sure, the answer is ``None`` and the
rules stay quiet: the linter prefers missing a shark to crying wolf.

>>> m = Model.from_source("import multiprocessing as mp\\npool = mp.get_context('spawn').Pool(2)\\n")
>>> [m.value_of(call, m.module) for call in m.module.calls]
[Obj(kind='pool', flavor='stdlib', method='spawn'), Obj(kind='context', flavor='stdlib', method='spawn')]
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field, replace
from typing import Iterator

Pos = tuple[int, int]

# --- what the qualified names create -------------------------------------------------------

_MP_SYNC = ("Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier")
_MP_SHARED = ("Value", "Array", "RawValue", "RawArray")
_MP_QUEUES = ("Queue", "SimpleQueue", "JoinableQueue")

# qualified name -> (kind, start method implied by the name or None)
FACTORIES: dict[str, tuple[str, str | None]] = {
    "multiprocessing.Pool": ("pool", None),
    "multiprocessing.pool.Pool": ("pool", None),
    "multiprocessing.context.BaseContext.Pool": ("pool", None),
    "concurrent.futures.ProcessPoolExecutor": ("executor", None),
    "concurrent.futures.process.ProcessPoolExecutor": ("executor", None),
    "multiprocessing.Process": ("process", None),
    "multiprocessing.process.BaseProcess": ("process", None),
    "multiprocessing.context.Process": ("process", None),
    "multiprocessing.context.ForkProcess": ("process", "fork"),
    "multiprocessing.context.SpawnProcess": ("process", "spawn"),
    "multiprocessing.context.ForkServerProcess": ("process", "forkserver"),
    "multiprocessing.Manager": ("manager", None),
    "multiprocessing.Pipe": ("pipe", None),
    "multiprocessing.connection.Pipe": ("pipe", None),
    "multiprocessing.get_context": ("context", None),
    "multiprocessing.set_start_method": ("set_start_method", None),
    "queue.Queue": ("thread_queue", None),
    "queue.LifoQueue": ("thread_queue", None),
    "queue.PriorityQueue": ("thread_queue", None),
    "queue.SimpleQueue": ("thread_queue", None),
    "threading.Lock": ("thread_lock", None),
    "threading.RLock": ("thread_lock", None),
    "threading.Condition": ("thread_lock", None),
    "threading.Semaphore": ("thread_lock", None),
    "threading.BoundedSemaphore": ("thread_lock", None),
    "threading.Event": ("thread_lock", None),
    "threading.Barrier": ("thread_lock", None),
    "_thread.allocate_lock": ("thread_lock", None),
    "threading.Thread": ("thread", None),
    "threading.Timer": ("thread", None),
    "logging.handlers.QueueListener": ("listener", None),
    "os.fork": ("fork", "fork"),
    "os.forkpty": ("fork", "fork"),
    "functools.partial": ("partial", None),
    "contextlib.closing": ("closing", None),
}
for _n in _MP_QUEUES:
    FACTORIES[f"multiprocessing.{_n}"] = ("mp_queue", None)
    FACTORIES[f"multiprocessing.queues.{_n}"] = ("mp_queue", None)
for _n in _MP_SYNC:
    FACTORIES[f"multiprocessing.{_n}"] = ("mp_sync", None)
    FACTORIES[f"multiprocessing.synchronize.{_n}"] = ("mp_sync", None)
for _n in _MP_SHARED:
    FACTORIES[f"multiprocessing.{_n}"] = ("mp_sync", None)
    FACTORIES[f"multiprocessing.sharedctypes.{_n}"] = ("mp_sync", None)

# sharkcage's own pools: the same API, but immune to the pickling and fork sharks.
SHARKCAGE_FACTORIES = {"Pool": "pool", "ProcessPoolExecutor": "executor"}

# what `ctx.X(...)` creates for a multiprocessing context `ctx`
CONTEXT_ATTRS: dict[str, str] = {"Pool": "pool", "Process": "process", "Manager": "manager", "Pipe": "pipe"}
CONTEXT_ATTRS.update({n: "mp_queue" for n in _MP_QUEUES})
CONTEXT_ATTRS.update({n: "mp_sync" for n in _MP_SYNC + _MP_SHARED})

# what `manager.X(...)` creates: proxies, which pickle fine into pool tasks
MANAGER_ATTRS: dict[str, str] = {n: "managed_queue" for n in _MP_QUEUES}
MANAGER_ATTRS.update({n: "managed" for n in _MP_SYNC + ("Value", "Array", "list", "dict", "Namespace")})

# kinds that start (or are) worker processes
WORKER_KINDS = ("pool", "executor", "process", "manager")


@dataclass(frozen=True)
class Obj:
    """What an expression evaluates to, as far as the rules care.

    ``method`` is the start method when the code chose one (``"fork"``,
    ``"spawn"``, ``"forkserver"``), ``"?"`` when it chose one we cannot read,
    and ``None`` for the default.
    """

    kind: str
    flavor: str = "stdlib"
    method: str | None = None
    node: ast.AST | None = field(default=None, compare=False, repr=False)
    index: int | None = field(default=None, compare=False, repr=False)
    many: bool = field(default=False, compare=False, repr=False)
    managed: bool = field(default=False, compare=False, repr=False)
    nested: bool = field(default=False, compare=False, repr=False)


@dataclass
class Binding:
    """One place where a (dotted) name gets a value in a scope."""

    name: str
    pos: Pos
    tag: str  # assign | unpack | iter | with | def | param | import | other
    value: object = None
    node: ast.AST | None = None


class Scope:
    """A module, class, function or lambda body, and what it binds and calls."""

    def __init__(self, node: ast.AST, parent: Scope | None, kind: str):
        self.node = node
        self.parent = parent
        self.kind = kind  # module | class | function
        self.imports: dict[str, str] = {}
        self.defs: dict[str, ast.AST] = {}
        self.bound: set[str] = set()
        self.globals: set[str] = set()
        self.bindings: dict[str, list[Binding]] = {}
        self.calls: list[ast.Call] = []
        self.children: list[Scope] = []
        self._nodes: list[ast.AST] | None = None

    @property
    def nodes(self) -> list[ast.AST]:
        """Every node evaluated in this scope itself (nested defs, lambdas and classes excluded)."""
        if self._nodes is None:
            body = self.node.body
            self._nodes = list(walk_scope(body if isinstance(body, list) else [body]))
        return self._nodes

    @property
    def name(self) -> str:
        return getattr(self.node, "name", "<module>" if self.kind == "module" else "<lambda>")

    def bind(self, name: str, pos: Pos, tag: str, value: object = None, node: ast.AST | None = None) -> None:
        if "." not in name:
            self.bound.add(name)
        self.bindings.setdefault(name, []).append(Binding(name, pos, tag, value, node))

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<Scope {self.kind} {self.name}>"


def pos(node: ast.AST) -> Pos:
    return (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))


def dotted(expr: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if isinstance(expr, ast.Name):
        parts.append(expr.id)
        return ".".join(reversed(parts))
    return None


def is_main_test(test: ast.AST) -> str | None:
    """``"body"`` for ``__name__ == "__main__"``, ``"orelse"`` for ``!=``, else None.

    The other guard people use, ``parent_process() is None`` (or ``current_process().name
    == "MainProcess"``), counts too: a child re-importing the module skips that block.

    >>> is_main_test(ast.parse("multiprocessing.parent_process() is None").body[0].value)
    'body'
    """
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        text = ast.unparse(test)
        if "parent_process()" in text and isinstance(test.ops[0], ast.Is):
            return "body"
        if "current_process().name" in text and "'MainProcess'" in text:
            return "body" if isinstance(test.ops[0], ast.Eq) else "orelse" if isinstance(test.ops[0], ast.NotEq) else None
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    left, right = test.left, test.comparators[0]
    names = {type(left), type(right)}
    if ast.Name not in names or ast.Constant not in names:
        return None
    name = left if isinstance(left, ast.Name) else right
    const = right if isinstance(right, ast.Constant) else left
    if name.id != "__name__" or const.value != "__main__":
        return None
    if isinstance(test.ops[0], ast.Eq):
        return "body"
    if isinstance(test.ops[0], ast.NotEq):
        return "orelse"
    return None


def walk_scope(body: list[ast.AST]) -> Iterator[ast.AST]:
    """Every node of these statements, not descending into nested functions, lambdas or classes."""
    stack = list(reversed(body))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def package_of(path: str | None) -> str | None:
    """The dotted package a file belongs to (walking up ``__init__.py`` files), for relative imports."""
    if not path or path.startswith("<"):
        return None
    d = os.path.dirname(os.path.abspath(path))
    parts = []
    while os.path.isfile(os.path.join(d, "__init__.py")):
        parts.append(os.path.basename(d))
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return ".".join(reversed(parts)) or None


class _Builder(ast.NodeVisitor):
    """Builds the scope tree in one pass, recording bindings, imports and calls in source order."""

    def __init__(self, model: Model):
        self.m = model
        self.scope = model.module
        self.in_main = False

    # scopes ---------------------------------------------------------------------------------
    def _child(self, node: ast.AST, kind: str) -> Scope:
        s = Scope(node, self.scope, kind)
        self.scope.children.append(s)
        self.m.scope_of_def[id(node)] = s
        self.m.holder_of[id(node)] = self.scope
        return s

    def _visit_body(self, scope: Scope, body: list[ast.AST]) -> None:
        outer = self.scope
        self.scope = scope
        for stmt in body:
            self.visit(stmt)
        self.scope = outer

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for d in node.decorator_list:
            self.visit(d)
        self.visit(node.args)  # defaults and annotations run in the enclosing scope
        if node.returns:
            self.visit(node.returns)
        self.scope.defs[node.name] = node
        self.scope.bind(node.name, pos(node), "def", node, node)
        if self.in_main:
            self.m.main_defs.add(id(node))
        s = self._child(node, "function")
        a = node.args
        for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]:
            s.bind(arg.arg, pos(node), "param", None, arg)
        main, self.in_main = self.in_main, False
        self._visit_body(s, node.body)
        self.in_main = main

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_arguments(self, node: ast.arguments) -> None:
        for d in node.defaults + [d for d in node.kw_defaults if d is not None]:
            self.visit(d)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.visit(node.args)
        s = self._child(node, "function")
        a = node.args
        for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]:
            s.bind(arg.arg, pos(node), "param", None, arg)
        outer = self.scope
        self.scope = s
        self.visit(node.body)
        self.scope = outer

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in node.decorator_list + node.bases + [k.value for k in node.keywords]:
            self.visit(expr)
        self.scope.defs[node.name] = node
        self.scope.bind(node.name, pos(node), "def", node, node)
        s = self._child(node, "class")
        self._visit_body(s, node.body)

    # statements that bind -------------------------------------------------------------------
    def _bind_target(self, target: ast.AST, tag: str, value: object) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            elts = target.elts
            if tag == "assign" and isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(elts):
                for t, v in zip(elts, value.elts):
                    self._bind_target(t, "assign", v)
                return
            for i, t in enumerate(elts):
                if isinstance(t, ast.Starred):
                    self._bind_target(t.value, "other", None)
                elif tag == "assign":
                    self._bind_target(t, "unpack", (value, i))
                else:
                    self._bind_target(t, "other", None)
            return
        if isinstance(target, ast.Starred):
            self._bind_target(target.value, "other", None)
            return
        name = dotted(target)
        if name is not None:
            self.scope.bind(name, pos(target), tag, value, target)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for t in node.targets:
            self._bind_target(t, "assign", node.value)
            self.visit(t)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self._bind_target(node.target, "assign", node.value)
        elif isinstance(node.target, ast.Name):
            self.scope.bound.add(node.target.id)
        self.visit(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        self._bind_target(node.target, "other", None)
        self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self._bind_target(node.target, "assign", node.value)
        self.visit(node.target)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        self._bind_target(node.target, "iter", node.iter)
        self.visit(node.target)
        for stmt in node.body + node.orelse:
            self.visit(stmt)

    visit_AsyncFor = visit_For

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self._bind_target(item.optional_vars, "with", item.context_expr)
                self.visit(item.optional_vars)
        for stmt in node.body:
            self.visit(stmt)

    visit_AsyncWith = visit_With

    def visit_Delete(self, node: ast.Delete) -> None:
        for t in node.targets:
            self._bind_target(t, "other", None)
            self.visit(t)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self.scope.bind(node.name, pos(node), "other")
        for stmt in node.body:
            self.visit(stmt)

    def visit_Global(self, node: ast.Global) -> None:
        self.scope.globals.update(node.names)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                local, qual = alias.asname, alias.name
            else:
                local = qual = alias.name.split(".")[0]
            self.scope.imports.setdefault(local, qual)
            self.scope.bind(local, pos(node), "import")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            pkg = self.m.package
            if pkg is None:
                base = None
            else:
                parts = pkg.split(".")
                if node.level - 1 > len(parts) - 1:
                    base = None
                else:
                    head = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(head + ([node.module] if node.module else []))
        for alias in node.names:
            local = alias.asname or alias.name
            if base is not None and alias.name != "*":
                self.scope.imports.setdefault(local, f"{base}.{alias.name}")
            self.scope.bind(local, pos(node), "import")

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        branch = is_main_test(node.test) if self.scope.kind == "module" else None
        main = self.in_main
        self.in_main = main or branch == "body"
        for stmt in node.body:
            self.visit(stmt)
        self.in_main = main or branch == "orelse"
        for stmt in node.orelse:
            self.visit(stmt)
        self.in_main = main

    # everything else --------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        self.scope.calls.append(node)
        if self.in_main:
            self.m.in_main.add(id(node))
        self.generic_visit(node)


class Model:
    """One parsed file, with its scopes and the questions the rules ask of it."""

    def __init__(self, tree: ast.Module, path: str = "<string>", source: str = ""):
        self.tree = tree
        self.path = path
        self.source = source
        self.package = package_of(path)
        self.module = Scope(tree, None, "module")
        self.scope_of_def: dict[int, Scope] = {}
        self.holder_of: dict[int, Scope] = {}
        self.in_main: set[int] = set()  # calls made under `if __name__ == "__main__":`
        self.main_defs: set[int] = set()  # functions defined there
        self._memo: dict[int, Obj | None] = {}
        self.cache: dict[object, object] = {}  # facts the rules compute once per file
        builder = _Builder(self)
        for stmt in tree.body:
            builder.visit(stmt)
        for s in self.scopes():
            s.calls.sort(key=pos)
        self._file_method: str | None | bool = False  # computed on first use

    @property
    def file_method(self) -> str | None:
        """The start method this file sets with ``set_start_method`` (None: not set, "?": unknown)."""
        if self._file_method is False:
            self._file_method = self._file_start_method()
        return self._file_method

    @classmethod
    def from_source(cls, source: str, path: str = "<string>") -> Model:
        return cls(ast.parse(source, filename=path), path, source)

    # the tree ---------------------------------------------------------------------------------
    def scopes(self) -> Iterator[Scope]:
        stack = [self.module]
        while stack:
            s = stack.pop()
            yield s
            stack.extend(reversed(s.children))

    def enclosing_class(self, scope: Scope) -> Scope | None:
        """The class scope a method's scope belongs to."""
        if scope.kind == "function" and scope.parent is not None and scope.parent.kind == "class":
            return scope.parent
        return None

    def runs_at_import(self, scope: Scope) -> bool:
        """Module and class bodies (not nested in functions) run when the module is imported."""
        s = scope
        while s is not None:
            if s.kind == "function":
                return False
            s = s.parent
        return True

    # names ------------------------------------------------------------------------------------
    def owner(self, name: str, scope: Scope) -> Scope | None:
        """The scope a name belongs to, following Python's rules (class bodies are skipped)."""
        if name in scope.globals:
            return self.module if name in self.module.bound else None
        s, first = scope, True
        while s is not None:
            if s.kind == "class" and not first:
                s = s.parent
                continue
            if name in s.bound:
                return s
            first = False
            s = s.parent
        return None

    def qualname(self, expr: ast.AST, scope: Scope) -> str | None:
        """``multiprocessing.pool.Pool`` for ``mpp.Pool`` after ``import multiprocessing.pool as mpp``."""
        if isinstance(expr, ast.Name):
            owner = self.owner(expr.id, scope)
            if owner is None:
                return f"builtins.{expr.id}"
            return owner.imports.get(expr.id)
        if isinstance(expr, ast.Attribute):
            base = self.qualname(expr.value, scope)
            if base is not None and not base.startswith("builtins."):
                return f"{base}.{expr.attr}"
        return None

    def lookup(self, name: str, scope: Scope, at: Pos) -> Obj | None:
        """What a (dotted) name holds at a position: the latest binding before it in the same scope,
        or the value all bindings agree on in an enclosing scope."""
        root = name.split(".")[0]
        owner = self.owner(root, scope)
        if owner is None:
            return None
        bs = owner.bindings.get(name)
        if bs:
            if owner is scope:
                prior = [b for b in bs if b.pos <= at]
                if prior:
                    return self.obj_of(prior[-1], owner)
            return self._agree(bs, owner)
        cls = self.enclosing_class(owner)
        if cls is not None and "." in name and root == self._self_name(owner):
            # self.pool = Pool() in one method, self.pool.map(...) in another
            found = self._attribute_bindings(cls).get(name[len(root):], [])
            if found:
                objs = [self.obj_of(b, s) for b, s in found]
                if all(o is not None for o in objs) and len(set(objs)) == 1:
                    return objs[0]
        return None

    def _attribute_bindings(self, cls: Scope) -> dict[str, list[tuple[Binding, Scope]]]:
        """``{".attr": [(binding, method scope)]}`` for every ``self.attr = ...`` in a class (cached)."""
        key = ("attrs", id(cls))
        if key not in self.cache:
            table: dict[str, list[tuple[Binding, Scope]]] = {}
            for method in cls.children:
                me = self._self_name(method)
                if me is None:
                    continue
                for name, bs in method.bindings.items():
                    if name.startswith(me + "."):
                        table.setdefault(name[len(me):], []).extend((b, method) for b in bs)
            self.cache[key] = table
        return self.cache[key]

    def _self_name(self, scope: Scope) -> str | None:
        """The name of a method's first parameter (``self``), or None outside methods."""
        key = ("self", id(scope))
        if key not in self.cache:
            self.cache[key] = self._compute_self_name(scope)
        return self.cache[key]

    def _compute_self_name(self, scope: Scope) -> str | None:
        node = scope.node
        if self.enclosing_class(scope) is None or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return None
        args = node.args.posonlyargs + node.args.args
        if not args or any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list):
            return None
        return args[0].arg

    def _agree(self, bs: list[Binding], scope: Scope) -> Obj | None:
        objs = [self.obj_of(b, scope) for b in bs]
        if objs and all(o is not None for o in objs) and len(set(objs)) == 1:
            return objs[0]
        return None

    def obj_of(self, b: Binding, scope: Scope) -> Obj | None:
        key = id(b)
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = None  # cycle guard: x = f(x)
        obj: Obj | None = None
        if b.tag == "assign":
            obj = self.value_of(b.value, scope)
        elif b.tag == "unpack":
            value, i = b.value
            whole = self.value_of(value, scope)
            if whole is not None and whole.kind == "pipe":
                obj = replace(whole, kind="pipe_end", index=i, node=whole.node)
        elif b.tag == "iter":
            whole = self.value_of(b.value, scope)
            if whole is not None and whole.many:
                obj = replace(whole, many=False)
        elif b.tag == "with":
            whole = self.value_of(b.value, scope)
            if whole is not None:
                obj = replace(whole, managed=True)
        elif b.tag == "def":
            node = b.value
            if isinstance(node, ast.ClassDef):
                obj = Obj("class", node=node)
            else:
                obj = Obj("function", node=node, nested=scope.kind == "function")
        self._memo[key] = obj
        return obj

    def def_of(self, expr: ast.AST, scope: Scope) -> tuple[ast.AST, Scope] | None:
        """The local ``def``/``class`` a name or ``self.method`` refers to, with the scope holding it."""
        if isinstance(expr, ast.Name):
            owner = self.owner(expr.id, scope)
            if owner is not None and expr.id in owner.defs:
                bs = owner.bindings.get(expr.id, [])
                if all(b.tag == "def" for b in bs):
                    return owner.defs[expr.id], owner
            return None
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
            s = scope
            while s is not None and self.enclosing_class(s) is None:
                s = s.parent if s.kind == "function" and s.parent and s.parent.kind == "function" else None
            if s is not None and expr.value.id == self._self_name(s):
                cls = self.enclosing_class(s)
                fn = cls.defs.get(expr.attr)
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    return fn, cls
        return None

    # values -----------------------------------------------------------------------------------
    def value_of(self, expr: ast.AST | None, scope: Scope) -> Obj | None:
        """What an expression evaluates to, or None when unknown."""
        if expr is None:
            return None
        if isinstance(expr, ast.Call):
            return self.classify_call(expr, scope)
        if isinstance(expr, ast.Lambda):
            return Obj("lambda", node=expr)
        if isinstance(expr, ast.GeneratorExp):
            return Obj("generator", node=expr)
        if isinstance(expr, ast.NamedExpr):
            return self.value_of(expr.value, scope)
        if isinstance(expr, (ast.ListComp, ast.SetComp)):
            inner = self.value_of(expr.elt, scope)
            return replace(inner, many=True) if inner is not None else None
        if isinstance(expr, (ast.List, ast.Tuple, ast.Set)) and expr.elts:
            objs = [self.value_of(e, scope) for e in expr.elts]
            if all(o is not None for o in objs) and len(set(objs)) == 1:
                return replace(objs[0], many=True)
            return None
        name = dotted(expr)
        if name is not None:
            return self.lookup(name, scope, pos(expr))
        return None

    def context_method(self, expr: ast.AST, scope: Scope) -> str | None:
        """The start method of a context expression (``None`` = default, ``"?"`` = unknown)."""
        obj = self.value_of(expr, scope)
        if obj is not None and obj.kind == "context":
            return obj.method
        if isinstance(expr, ast.Constant) and expr.value is None:
            return None
        return "?"

    def classify_call(self, call: ast.Call, scope: Scope) -> Obj | None:
        key = id(call)
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = None
        obj = self._classify_call(call, scope)
        self._memo[key] = obj
        return obj

    def _classify_call(self, call: ast.Call, scope: Scope) -> Obj | None:
        func = call.func
        if isinstance(func, ast.Attribute):
            base = self.value_of(func.value, scope)
            if base is not None and base.kind == "context" and func.attr in CONTEXT_ATTRS:
                return Obj(CONTEXT_ATTRS[func.attr], method=base.method, node=call)
            if base is not None and base.kind == "manager" and func.attr in MANAGER_ATTRS:
                return Obj(MANAGER_ATTRS[func.attr], node=call)
        q = self.qualname(func, scope)
        if q is not None:
            if q.startswith("sharkcage.") and q.rsplit(".", 1)[-1] in SHARKCAGE_FACTORIES:
                return Obj(SHARKCAGE_FACTORIES[q.rsplit(".", 1)[-1]], flavor="sharkcage", node=call)
            if q in FACTORIES:
                kind, method = FACTORIES[q]
                return self._refine(kind, method, call, scope)
        fobj = self.value_of(func, scope)
        if fobj is None:
            return None
        if fobj.kind == "class":
            base_kind = self.class_kind(fobj.node)
            if base_kind is not None:
                return Obj(base_kind, node=call)
            return Obj("instance", node=fobj.node)
        if fobj.kind == "function" and self.is_generator(fobj.node):
            return Obj("generator", node=call)
        return None

    def _refine(self, kind: str, method: str | None, call: ast.Call, scope: Scope) -> Obj | None:
        kw = {k.arg: k.value for k in call.keywords if k.arg}
        if kind == "context":
            arg = call.args[0] if call.args else kw.get("method")
            if arg is None or (isinstance(arg, ast.Constant) and arg.value is None):
                method = None
            elif isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                method = arg.value
            else:
                method = "?"
        elif kind == "pool":
            ctx = kw.get("context", call.args[4] if len(call.args) > 4 else None)
            if ctx is not None:
                method = self.context_method(ctx, scope)
        elif kind == "executor":
            ctx = kw.get("mp_context", call.args[1] if len(call.args) > 1 else None)
            if ctx is not None:
                method = self.context_method(ctx, scope)
            elif "max_tasks_per_child" in kw:
                method = "spawn"  # the executor picks spawn itself in that case (3.11+)
        elif kind == "partial":
            inner = self.value_of(call.args[0], scope) if call.args else None
            return inner if inner is not None and inner.kind in ("lambda", "function") else None
        elif kind == "closing":
            inner = self.value_of(call.args[0], scope) if call.args else None
            return replace(inner, managed=True) if inner is not None else None
        return Obj(kind, method=method, node=call)

    def class_kind(self, cls: ast.ClassDef, _seen: frozenset = frozenset()) -> str | None:
        """``"process"``/``"thread"`` for a local subclass of Process/Thread."""
        if id(cls) in _seen:
            return None
        scope = self.scope_holding(cls)
        for base in cls.bases:
            q = self.qualname(base, scope) if scope else None
            if q in FACTORIES and FACTORIES[q][0] in ("process", "thread"):
                return FACTORIES[q][0]
            if scope is not None:
                if isinstance(base, ast.Attribute):
                    ctx = self.value_of(base.value, scope)
                    if ctx is not None and ctx.kind == "context" and base.attr == "Process":
                        return "process"
                found = self.def_of(base, scope)
                if found and isinstance(found[0], ast.ClassDef):
                    k = self.class_kind(found[0], _seen | {id(cls)})
                    if k:
                        return k
        return None

    def scope_holding(self, node: ast.AST) -> Scope | None:
        """The scope in which a ``def``/``class`` statement sits."""
        return self.holder_of.get(id(node))

    # start methods ----------------------------------------------------------------------------
    def _file_start_method(self) -> str | None:
        """The start method a ``set_start_method(...)`` call in this file chooses, if any."""
        methods = set()
        for s in self.scopes():
            for call in s.calls:
                f = call.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if name != "set_start_method":
                    continue  # cheap filter: most calls are not this one
                obj = self.classify_call(call, s)
                if obj is None or obj.kind != "set_start_method":
                    continue
                arg = call.args[0] if call.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    methods.add(arg.value)
                else:
                    methods.add("?")
        if not methods:
            return None
        return methods.pop() if len(methods) == 1 else "?"

    def is_generator(self, fn: ast.AST) -> bool:
        """Whether a local function is a generator function (cached: big files call helpers a lot)."""
        key = ("gen", id(fn))
        if key not in self.cache:
            scope = self.scope_of_def.get(id(fn))
            nodes = scope.nodes if scope is not None else list(walk_scope(fn.body))
            self.cache[key] = any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in nodes)
        return self.cache[key]

    def forks(self, obj: Obj) -> bool:
        """Whether this stdlib object starts its children with fork (explicitly, or as the platform
        default on Linux before Python 3.14 when nothing else was chosen)."""
        if obj.flavor != "stdlib":
            return False
        method = obj.method if obj.method is not None else self.file_method
        return method in (None, "fork")

    def explicit_fork(self, obj: Obj) -> bool:
        method = obj.method if obj.method is not None else self.file_method
        return method == "fork"

    def explicit_fork_for(self, call: ast.Call, scope: Scope) -> bool:
        """Whether the process a call creates or starts was explicitly asked to fork."""
        obj = self.value_of(call, scope)
        if obj is None and isinstance(call.func, ast.Attribute):
            obj = self.value_of(call.func.value, scope)
        return obj is not None and (obj.kind == "fork" or self.explicit_fork(obj))
