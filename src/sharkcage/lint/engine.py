"""Running the rules: over a string, over files and folders; noqa comments; --select/--ignore.

>>> src = "from multiprocessing import Pool\\npool = Pool(4)  # sharkcage: noqa[SC001]\\n"
>>> lint_source(src)
[]
>>> [f.code for f in lint_source(src.replace("  # sharkcage: noqa[SC001]", ""))]
['SC001']
"""

from __future__ import annotations

import ast
import io
import os
import re
import sys
import tokenize
from typing import Iterable

from sharkcage.lint.findings import RULES, Finding
from sharkcage.lint.model import Model
from sharkcage.lint.rules import CHECKS

# folders never worth scanning when walking a tree (explicitly named files are always scanned)
SKIP_DIRS = frozenset({"__pycache__", "node_modules", "venv", "__pypackages__", "site-packages"})

_NOQA = re.compile(r"#\s*sharkcage\s*:\s*noqa(?:\s*\[([^\]]*)\])?", re.IGNORECASE)


def parse_codes(text: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """Turn ``"SC001,SC002"`` (or a list) into code prefixes, checking each matches some rule.

    >>> parse_codes("sc001, SC01")
    ('SC001', 'SC01')
    >>> parse_codes("SC999")
    Traceback (most recent call last):
    ...
    ValueError: unknown rule code 'SC999' (known: SC000..SC011)
    """
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    codes = tuple(c.strip().upper() for c in items if c.strip())
    for c in codes:
        if not any(code.startswith(c) for code in RULES):
            known = sorted(RULES)
            raise ValueError(f"unknown rule code {c!r} (known: {known[0]}..{known[-1]})")
    return codes


def _wanted(code: str, select: tuple[str, ...] | None, ignore: tuple[str, ...] | None) -> bool:
    if select is not None and not any(code.startswith(p) for p in select):
        return False
    return not (ignore and any(code.startswith(p) for p in ignore))


def _noqa_lines(text: str) -> dict[int, set[str] | None]:
    """``{line: codes}`` from ``# sharkcage: noqa[...]`` comments (``None`` = every code).

    Comments are found with :mod:`tokenize`, so a ``# sharkcage: noqa`` inside a
    string does not count; when the file does not tokenize, plain text is used.
    """
    out: dict[int, set[str] | None] = {}

    def add(line: int, comment: str) -> None:
        match = _NOQA.search(comment)
        if not match:
            return
        if match.group(1) is None:
            out[line] = None
        elif line not in out or out[line] is not None:
            codes = {c.strip().upper() for c in match.group(1).split(",") if c.strip()}
            out.setdefault(line, set()).update(codes)

    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                add(tok.start[0], tok.string)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        out.clear()
        for i, line in enumerate(text.splitlines(), 1):
            if "#" in line:
                add(i, line[line.index("#"):])
    return out


def _char_col(lines: list[str], line: int, byte_col: int) -> int:
    """ast counts columns in UTF-8 bytes; people and SARIF count characters (1-based here)."""
    if 1 <= line <= len(lines):
        return len(lines[line - 1].encode("utf-8")[:byte_col].decode("utf-8", "ignore")) + 1
    return byte_col + 1


def lint_source(
    text: str,
    filename: str = "<string>",
    select: str | Iterable[str] | None = None,
    ignore: str | Iterable[str] | None = None,
) -> list[Finding]:
    """Find the sharks in Python source text.

    ``filename`` is used in the findings, to resolve relative imports (its
    package) and to tell tests and scripts from library code.
    ``select``/``ignore`` take codes or code prefixes, as a comma-separated
    string or a list.  A file that does not parse gives one SC000 finding.

    >>> code = '''
    ... from multiprocessing import Pool
    ... if __name__ == "__main__":
    ...     with Pool() as pool:
    ...         print(pool.map(lambda x: x * 2, range(3)))
    ... '''
    >>> [(f.code, f.line, f.col) for f in lint_source(code)]
    [('SC002', 5, 24)]
    >>> lint_source("def broken(:\\n")[0].code
    'SC000'
    """
    select_t, ignore_t = parse_codes(select), parse_codes(ignore)
    lines = text.splitlines()
    raw: list[Finding] = []
    try:
        tree = ast.parse(text, filename=filename)
    except SyntaxError as exc:
        raw.append(Finding("SC000", f"syntax error: {exc.msg}", filename, exc.lineno or 1, max(exc.offset or 1, 1)))
    except (ValueError, RecursionError, MemoryError) as exc:
        raw.append(Finding("SC000", f"cannot parse: {exc}", filename, 1, 1))
    else:
        # The model walks the tree recursively; generated code (huge nested literals) can be
        # deeper than the default limit, so allow more, and report what is still too deep.
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 20000))
        try:
            model = Model(tree, filename, text)
            for code, check in CHECKS.items():
                if not _wanted(code, select_t, ignore_t):
                    continue
                for node, message in check(model):
                    line = getattr(node, "lineno", 1)
                    col = _char_col(lines, line, getattr(node, "col_offset", 0))
                    raw.append(Finding(code, message, filename, line, col))
        except RecursionError:
            raw = [Finding("SC000", "cannot analyse: the code is nested too deeply", filename, 1, 1)]
        finally:
            sys.setrecursionlimit(limit)
    # tokenizing for comments costs as much as the analysis: only do it when it can matter
    noqa = _noqa_lines(text) if raw and "noqa" in text.lower() else {}
    findings = []
    seen = set()
    for f in raw:
        key = (f.code, f.line, f.col, f.message)
        if key in seen or not _wanted(f.code, select_t, ignore_t):
            continue
        seen.add(key)
        codes = noqa.get(f.line, set())
        if codes is None or f.code in (codes or ()):
            continue
        findings.append(f)
    findings.sort(key=lambda f: (f.line, f.col, f.code))
    return findings


def iter_python_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files named on the command line, plus every ``*.py`` below named folders (sorted,
    skipping hidden folders, ``__pycache__``, virtualenvs and ``node_modules``).

    Raises FileNotFoundError for a path that does not exist.

    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.py", "a.py", "notes.txt", ".hidden/c.py", "__pycache__/d.py"):
    ...     (d / name).parent.mkdir(exist_ok=True)
    ...     _ = (d / name).write_text("")
    >>> [pathlib.Path(p).name for p in iter_python_files([d, d / "notes.txt"])]
    ['a.py', 'b.py', 'notes.txt']
    """
    out: list[str] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            out.append(path)

    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
                for name in sorted(files):
                    if name.endswith(".py"):
                        add(os.path.join(root, name))
        elif os.path.exists(p):
            add(p)
        else:
            raise FileNotFoundError(f"no such file or directory: {p}")
    return out


def read_source(path: str) -> str:
    """Read a Python file honouring its encoding cookie and BOM (as Python itself does)."""
    with tokenize.open(path) as fh:
        return fh.read()


def lint_paths(
    paths: Iterable[str | os.PathLike],
    select: str | Iterable[str] | None = None,
    ignore: str | Iterable[str] | None = None,
) -> list[Finding]:
    """Find the sharks in files and folders (folders are searched for ``*.py``).

    A file that cannot be read or decoded gives an SC000 finding; a path that
    does not exist raises FileNotFoundError.

    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "job.py").write_text("import multiprocessing\\nmultiprocessing.set_start_method('spawn')\\n")
    >>> [(f.code, f.line) for f in lint_paths([d])]
    [('SC005', 2)]
    >>> lint_paths([d], ignore="SC005")
    []
    """
    select_t, ignore_t = parse_codes(select), parse_codes(ignore)
    findings: list[Finding] = []
    for path in iter_python_files(paths):
        try:
            text = read_source(path)
        except (OSError, UnicodeDecodeError, SyntaxError) as exc:
            f = Finding("SC000", f"cannot read: {exc}", path, 1, 1)
            if _wanted("SC000", select_t, ignore_t):
                findings.append(f)
            continue
        findings.extend(lint_source(text, path, select_t, ignore_t))
    return findings
