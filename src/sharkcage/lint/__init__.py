"""``sharkcage lint``: find the sharks of multiprocessing in existing code, with :mod:`ast` only.

Each finding has a rule code (SC001...), a one-line message, a position, and a
fix hint naming the sharkcage way and the stdlib way.  Names are resolved
through imports (``import multiprocessing as mp``, ``from multiprocessing.pool
import Pool``, ``mp.get_context("spawn").Pool``, ``concurrent.futures``...),
and sharkcage's own pools are recognised: they are immune to the pickling and
fork rules, so those rules leave them alone.

>>> from sharkcage.lint import lint_source
>>> code = '''
... from multiprocessing import Pool
... pool = Pool(4)
... print(pool.map(abs, [-1, 2]))
... '''
>>> for f in lint_source(code, "job.py"):
...     print(f"{f.path}:{f.line}:{f.col}: {f.code} {f.rule.name}")
job.py:3:8: SC001 unguarded-pool
job.py:3:8: SC010 pool-not-closed
>>> print(f.hint)  # doctest: +ELLIPSIS
sharkcage: `with sharkcage.Pool() as pool:` | stdlib: `with Pool() as pool:` ...

The rule table is :data:`RULES`; see ``docs/lint.md`` for the seeds and fixes.
"""

from sharkcage.lint.engine import iter_python_files, lint_paths, lint_source, parse_codes
from sharkcage.lint.findings import RULES, Finding, Rule

__all__ = ["Finding", "Rule", "RULES", "lint_source", "lint_paths", "iter_python_files", "parse_codes"]
