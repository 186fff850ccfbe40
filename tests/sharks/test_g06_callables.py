"""Guarantee 6: lambdas, closures and functions defined in ``__main__``, ``python -c``,
piped stdin, the REPL or IPython (a notebook's shell) work with every start method; a function is pickled once
per pool and sent once per worker, not per task.

Seed 003 (first half): with spawn, a function defined in an interactive
``__main__`` cannot be found by the worker ("Can't get attribute 'f' on
<module '__main__'>").
"""

from __future__ import annotations

import functools
import textwrap

import pytest

from sharkcage import Pool, ProcessPoolExecutor

from . import helpers

pytestmark = pytest.mark.timeout(30)

# REPL-compatible: no blank line inside a compound statement, one after each.
# Every start method is tried in turn in the same interpreter (the output says which).
SCRIPT = textwrap.dedent(
    """
    import sys
    from sharkcage import Pool, ProcessPoolExecutor

    def triple(x):
        return 3 * x

    def make_adder(n):
        def add(x):
            return x + n
        return add

    class Scaler:
        def __init__(self, k):
            self.k = k
        def scale(self, x):
            return x * self.k

    if __name__ == "__main__":
        for method in ("forkserver", "spawn", "fork"):
            try:
                with Pool(2, start_method=method) as pool:
                    print(method, "FN", pool.map(triple, range(5)))
                    print(method, "LAMBDA", pool.map(lambda x: x * x, range(5)))
                    print(method, "CLOSURE", pool.map(make_adder(10), range(5)))
                    print(method, "METHOD", pool.map(Scaler(4).scale, range(5)))
                    print(method, "APPLY", pool.apply_async(triple, (7,)).get(15))
                    print(method, "IMAP", list(pool.imap(lambda x: -x, range(3))))
                with ProcessPoolExecutor(2, start_method=method) as ex:
                    print(method, "EXEC", list(ex.map(triple, range(3))), ex.submit(lambda: 42).result(15))
            except BaseException as e:
                print(method, "FAILED", repr(e)[:500])
        print("END")

    """
)

EXPECTED = [
    "FN [0, 3, 6, 9, 12]",
    "LAMBDA [0, 1, 4, 9, 16]",
    "CLOSURE [10, 11, 12, 13, 14]",
    "METHOD [0, 4, 8, 12, 16]",
    "APPLY 21",
    "IMAP [0, -1, -2]",
    "EXEC [0, 3, 6] 42",
]


@pytest.mark.parametrize("mode", ["script", "dash_c", "stdin", "repl", "ipython"])
def test_main_defined_callables_with_every_start_method(mode, tmp_path):
    code = SCRIPT
    if mode == "script":
        path = tmp_path / "user_script.py"
        path.write_text(code)
        proc = helpers.run_python([str(path)], cwd=str(tmp_path), timeout=25)
    elif mode == "dash_c":
        proc = helpers.run_python(["-c", code], cwd=str(tmp_path), timeout=25)
    elif mode == "stdin":
        proc = helpers.run_python(["-"], input=code, cwd=str(tmp_path), timeout=25)
    elif mode == "repl":  # the interactive interpreter, fed on stdin
        proc = helpers.run_python(["-i", "-q"], input=code, cwd=str(tmp_path), timeout=25)
    else:
        # IPython's shell: what a Jupyter notebook's kernel runs cells in.
        # Its history is saved by a thread, with which start_method="fork" is
        # (rightly) refused with UnsafeForkError; without it, fork works too.
        proc = helpers.run_python(["-m", "IPython", "--quick", "--no-banner", "--colors=NoColor",
                                   "--HistoryManager.enabled=False", "-c", code], cwd=str(tmp_path), timeout=25)
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    expected = [f"{m} {e}" for m in helpers.START_METHODS for e in EXPECTED] + ["END"]
    assert lines == expected, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    if mode not in ("repl", "ipython"):  # these exit 0 whatever happened; the output says it all
        assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("method", helpers.START_METHODS)
def test_lambdas_and_closures_in_process(method):
    k = 5

    def closure(x):
        return x + k

    def outer(n):
        def inner(x):
            return x * n
        return inner

    with Pool(2, start_method=method) as pool:
        assert pool.map(lambda x: x * 2, range(6)) == [0, 2, 4, 6, 8, 10]
        assert pool.map(closure, range(3)) == [5, 6, 7]
        assert pool.apply(outer(3), (4,)) == 12
        assert pool.map(functools.partial(lambda a, b: a - b, 10), range(3)) == [10, 9, 8]
        assert sorted(pool.imap_unordered(lambda x: x + 1, range(4))) == [1, 2, 3, 4]
        assert pool.starmap(lambda a, b: a * b, [(1, 2), (3, 4)]) == [2, 12]


def test_function_pickled_once_per_pool_and_sent_once_per_worker(tmp_path):
    counter_path = str(tmp_path / "counter")
    counter = helpers.ReduceCounter(counter_path)

    # a lambda is pickled by value, so its closure (the counter) is pickled with it
    fn = lambda x: (counter, x)[1] * 2  # noqa: E731

    with Pool(2) as pool:
        assert pool.map(fn, range(100), chunksize=1) == [2 * x for x in range(100)]
        assert pool.apply(fn, (21,)) == 42
        assert [pool.apply_async(fn, (i,)).get(15) for i in range(10)] == [2 * i for i in range(10)]
        assert list(pool.imap(fn, range(30))) == [2 * x for x in range(30)]
        assert sorted(pool.imap_unordered(fn, range(30), 3)) == [2 * x for x in range(30)]
        worker_pids = set(pool.map(helpers.sleep_pid, [0.05] * 8, chunksize=1))
    lines = helpers.read_lines(counter_path)
    dumps = [line for line in lines if line.startswith("dump")]
    loads = [line.split()[1] for line in lines if line.startswith("load")]
    assert len(dumps) == 1, f"the function was pickled {len(dumps)} times for one pool"
    assert 1 <= len(loads) <= 2, f"the function was unpickled {len(loads)} times by 2 workers"
    assert len(set(loads)) == len(loads), "a worker received the function more than once"
    assert set(map(int, loads)) <= worker_pids


def test_callable_object_pickled_once_per_call_not_per_task(tmp_path):
    counter_path = str(tmp_path / "counter")
    fn = helpers.CountingCallable(counter_path, 3)
    with Pool(2) as pool:
        assert pool.map(fn, range(200), chunksize=1) == [3 * x for x in range(200)]
    lines = helpers.read_lines(counter_path)
    assert len([line for line in lines if line.startswith("dump")]) == 1
    assert len([line for line in lines if line.startswith("load")]) <= 2


def test_executor_function_pickled_once(tmp_path):
    counter_path = str(tmp_path / "counter")
    counter = helpers.ReduceCounter(counter_path)
    fn = lambda x: (counter, x)[1] + 1  # noqa: E731
    with ProcessPoolExecutor(2) as ex:
        assert [ex.submit(fn, i).result(15) for i in range(20)] == list(range(1, 21))
        assert list(ex.map(fn, range(50))) == list(range(1, 51))
    lines = helpers.read_lines(counter_path)
    assert len([line for line in lines if line.startswith("dump")]) == 1
    assert len([line for line in lines if line.startswith("load")]) <= 2
