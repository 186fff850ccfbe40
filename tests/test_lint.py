"""Tests of ``sharkcage lint``: every rule with code that must trigger it and near-misses that
must not, then the CLI (text/json/sarif, exit codes, noqa, --select/--ignore) as a subprocess,
then a run over a corpus nobody here wrote (the installed stdlib's multiprocessing)."""

from __future__ import annotations

import doctest
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import sharkcage.cli.lint as cli_lint
import sharkcage.lint as lint_pkg
from sharkcage.lint import RULES, Finding, lint_paths, lint_source
from sharkcage.lint import engine, findings, model, rules

pytestmark = pytest.mark.timeout(60)


def run_lint(code: str, filename: str = "job.py", **kw) -> list[Finding]:
    return lint_source(textwrap.dedent(code), filename, **kw)


def marked(code: str) -> list[int]:
    """The lines of a snippet marked ``# HIT`` (``# HIT*2`` when the rule fires twice there)."""
    out = []
    for i, line in enumerate(textwrap.dedent(code).splitlines(), 1):
        if "# HIT" in line:
            times = re.search(r"# HIT\*(\d+)", line)
            out += [i] * (int(times.group(1)) if times else 1)
    return out


def hits(code: str, rule: str, filename: str = "job.py") -> list[int]:
    """Lines where ``rule`` fires (only that rule is run)."""
    return [f.line for f in run_lint(code, filename, select=rule)]


# --- the rule table ----------------------------------------------------------------------------


def test_every_rule_has_both_fixes_and_a_check():
    assert set(RULES) == set(rules.CHECKS) | {"SC000"}
    for r in RULES.values():
        assert r.sharkcage_fix and r.stdlib_fix and r.summary
        assert r.code.startswith("SC") and len(r.code) == 5


@pytest.mark.parametrize("module", [lint_pkg, engine, findings, model, rules, cli_lint])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


# --- SC001 unguarded-pool ----------------------------------------------------------------------


def test_sc001_seed_003_pool_at_import_time():
    code = """
    from multiprocessing import Pool
    def f(x): return x*x
    pool = Pool(processes=4)    # HIT
    r = pool.map(f, range(100))
    pool.close()
    pool.join()
    """
    assert hits(code, "SC001") == marked(code)


def test_sc001_resolves_contexts_executors_processes_and_calls():
    code = """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    import sharkcage

    def work(x): return x

    def main():
        with mp.Pool() as pool:
            pool.map(work, [1])

    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as p:                  # HIT
        p.map(work, [1])
    ex = ProcessPoolExecutor()
    ex.submit(work, 1)                      # HIT: the executor starts workers on submit
    proc = mp.Process(target=work, args=(1,))
    proc.start()                            # HIT
    main()                                  # HIT: main() creates a pool
    sp = sharkcage.Pool()                   # HIT: sharkcage cannot make this safe either

    class Holder:
        pool = mp.Manager()                 # HIT: class bodies run at import
    """
    assert hits(code, "SC001") == marked(code)


def test_sc001_near_misses():
    code = """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing.pool import ThreadPool

    def work(x): return x

    def main():
        with mp.Pool() as pool:
            pool.map(work, [1])

    ex = ProcessPoolExecutor()              # no worker until submit, which is guarded
    proc = mp.Process(target=work)          # created, started under the guard
    threads = ThreadPool(4)                 # threads, not processes
    forked = mp.get_context("fork").Pool()  # fork does not re-import the module
    make = lambda: mp.Pool()                # not called at import

    if __name__ == "__main__":
        main()
        proc.start()
        ex.submit(work, 1)
        with mp.Pool() as pool:
            pool.map(work, [1])

    if __name__ != "__main__":
        pass
    else:
        mp.Pool().close()

    if mp.parent_process() is None:              # the other guard: children skip it
        mp.Pool().close()
    if mp.current_process().name == "MainProcess":
        mp.Pool().close()
    """
    assert hits(code, "SC001") == []


def test_sc001_not_in_a_packages_main_module():
    # `python -m pkg` runs pkg/__main__.py; spawn does not re-run it in the children
    code = "from multiprocessing import Pool\nwith Pool() as p:\n    p.map(abs, [1])\n"
    assert hits(code, "SC001", "pkg/__main__.py") == []
    assert hits(code, "SC001", "pkg/cli.py") == [2]


# --- SC002 unpicklable-callable ------------------------------------------------------------------


def test_sc002_lambdas_nested_functions_partials_and_generators():
    code = """
    import functools
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    square = lambda x: x * x

    def numbers():
        yield 1

    def main():
        def local(x):
            return x
        with multiprocessing.Pool() as pool:
            pool.map(lambda x: x + 1, range(3))            # HIT
            pool.imap(local, range(3))                       # HIT
            pool.map(square, range(3))                       # HIT
            pool.map(functools.partial(local, 2), [1])       # HIT
            pool.apply_async(print, (numbers(),))            # HIT
        with ProcessPoolExecutor() as ex:
            ex.submit(lambda: 1)                             # HIT
        multiprocessing.Pool(initializer=lambda: None).close()   # HIT
    """
    assert hits(code, "SC002") == marked(code)


def test_sc002_seed_004_process_target_args_queue_and_pipe():
    code = """
    from multiprocessing import Pipe, Process, Queue

    def calculator(out_pipe, func, datas):
        for n in datas:
            out_pipe.send(func(n))

    def myrange():
        for n in range(3):
            yield n

    if __name__ == "__main__":
        father_pipe, child_pipe = Pipe(duplex=True)
        p = Process(target=calculator, args=(child_pipe, lambda x: x*2, myrange()))   # HIT*2
        p.start()
        father_pipe.send((myrange(), myrange()))   # HIT*2
        q = Queue()
        q.put(lambda: 1)                           # HIT
        q.put(myrange())                           # HIT
    """
    assert hits(code, "SC002") == marked(code)


def test_sc002_function_defined_under_the_main_guard():
    code = """
    import multiprocessing
    import sharkcage

    if __name__ == "__main__":
        def double(x):
            return x * 2
        with multiprocessing.Pool() as pool:
            pool.map(double, [1])                                     # HIT
        multiprocessing.Process(target=double, args=(1,)).start()    # HIT
        with multiprocessing.get_context("fork").Pool() as fp:
            fp.map(double, [1])                # fork workers have __main__.double
        with sharkcage.Pool() as sp:
            sp.map(double, [1])                # sharkcage sends it by value
    """
    found = run_lint(code, select="SC002")
    assert [f.line for f in found] == marked(code)
    assert "__mp_main__" not in found[0].message and "never run that block" in found[0].message


def test_sc002_near_misses():
    code = """
    import multiprocessing
    import threading
    from multiprocessing.dummy import Pool as DummyPool
    from multiprocessing.pool import ThreadPool
    from sharkcage import Pool as SafePool

    def top(x):
        return x

    def gen():
        yield 1

    def run(pool):
        pool.map(lambda x: x, [1])                 # unknown pool: stay quiet

    def main():
        def local(x):
            return x
        with SafePool() as pool:
            pool.map(lambda x: x, [1])               # sharkcage pickles closures
            pool.map(local, [1])
        with ThreadPool() as tp:
            tp.map(lambda x: x, [1])                 # threads pickle nothing
        with DummyPool() as dp:
            dp.map(local, [1])
        with multiprocessing.Pool() as pool:
            pool.map(top, gen())                      # the iterable is consumed here
        ctx = multiprocessing.get_context("fork")
        ctx.Process(target=lambda: None).start()      # fork pickles nothing
        multiprocessing.Process(target=lambda: None)  # never started
        threading.Thread(target=lambda: None).start()
    """
    assert hits(code, "SC002") == []


# --- SC003 stateful-bound-method -------------------------------------------------------------------


def test_sc003_seed_004_counter_and_self_method():
    code = """
    from multiprocessing import Pool
    import sharkcage

    class MyCls:
        def __init__(self):
            self.count = 0

        def add(self, x):
            self.count += 1
            return sum(x)

    class Collector:
        def __init__(self):
            self.seen = []

        def work(self, x):
            self.seen.append(x)

        def run(self):
            with Pool() as p:
                p.map(self.work, [1, 2])                     # HIT

    if __name__ == "__main__":
        my_obj = MyCls()
        with Pool(1) as pool:
            for n in pool.imap(my_obj.add, [(1, 1), (2, 2)]):   # HIT
                print(n)
        with sharkcage.Pool() as sp:
            sp.apply(my_obj.add, ((1, 2),))                   # HIT: state is lost with sharkcage too
        print(my_obj.count)
    """
    assert hits(code, "SC003") == marked(code)


def test_sc003_near_misses():
    code = """
    from multiprocessing import Pool
    import json

    class Pure:
        def __init__(self, k):
            self.k = k

        def scale(self, x):
            total = x * self.k
            return total

        @staticmethod
        def stat(x):
            return x

        def run(self):
            with Pool() as p:
                p.map(self.scale, [1])

    if __name__ == "__main__":
        obj = Pure(2)
        enc = json.JSONEncoder()
        with Pool() as pool:
            pool.map(obj.scale, [1])
            pool.map(obj.stat, [1])
            pool.map(enc.encode, [1])       # not a class of this file: unknown
    """
    assert hits(code, "SC003") == []


# --- SC004 fork-after-threads --------------------------------------------------------------------


def test_sc004_seed_000_logging_thread_then_pool():
    code = """
    import logging
    from threading import Thread
    from queue import Queue
    from logging.handlers import QueueListener, QueueHandler
    from multiprocessing import Pool

    def setup_logging():
        _log_queue = Queue()
        QueueListener(_log_queue, logging.FileHandler("out.log")).start()
        logging.getLogger().addHandler(QueueHandler(_log_queue))
        def write_logs():
            while True:
                logging.error("hello, I just did something")
        Thread(target=write_logs).start()

    def runs_in_subprocess():
        logging.error("hello, I did something")

    if __name__ == '__main__':
        setup_logging()
        while True:
            with Pool() as pool:                         # HIT
                pool.apply(runs_in_subprocess)
    """
    found = run_lint(code, select="SC004")
    assert [f.line for f in found] == marked(code)
    assert "QueueListener" in found[0].message and "line 21" in found[0].message


def test_sc004_direct_threads_os_fork_and_explicit_fork():
    code = """
    import os
    import threading
    import multiprocessing as mp

    def f(): pass

    def direct():
        t = threading.Thread(target=f)
        t.start()
        p = mp.Process(target=f)
        p.start()                            # HIT

    def explicit():
        ctx = mp.get_context("fork")
        threading.Timer(5, f).start()
        ctx.Pool(2).close()                  # HIT
        os.fork()                            # HIT
    """
    found = run_lint(code, select="SC004")
    assert [f.line for f in found] == marked(code)
    assert "the fork start method" in found[1].message


def test_sc004_near_misses():
    code = """
    import threading
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
    import sharkcage

    def f(): pass

    def joined():
        t = threading.Thread(target=f)
        t.start()
        t.join()
        mp.Pool().close()                       # the thread is gone

    def spawned():
        threading.Thread(target=f).start()
        mp.get_context("spawn").Pool().close()  # spawn copies no lock
        ProcessPoolExecutor(max_tasks_per_child=1).shutdown()   # spawn by default then
        sharkcage.Pool().close()                # sharkcage refuses to fork a threaded parent

    def fork_first():
        pool = mp.Pool()
        threading.Thread(target=f).start()
        pool.close()

    def only_threads():
        threading.Thread(target=f).start()
        with ThreadPoolExecutor() as ex:
            ex.submit(f)
    """
    assert hits(code, "SC004") == []


def test_sc004_threads_joined_under_another_name():
    code = """
    import threading
    import multiprocessing as mp

    def f(): pass

    def main():
        threads = [threading.Thread(target=f) for _ in range(4)]
        for t in threads:
            t.start()
        for worker in threads:
            worker.join()
        with mp.Pool() as pool:
            pool.map(abs, [1])
    """
    assert hits(code, "SC004") == []


def test_sc004_respects_set_start_method_in_main():
    code = """
    import multiprocessing, threading
    def f(): pass
    def search():
        threading.Thread(target=f).start()
        multiprocessing.Process(target=f).start()
    if __name__ == '__main__':
        multiprocessing.set_start_method('spawn')
        search()
    """
    assert hits(code, "SC004") == []
    assert hits(code.replace("'spawn'", "'fork'"), "SC004") == [6]


# --- SC005 global-start-method -------------------------------------------------------------------


def test_sc005_library_code():
    code = """
    import multiprocessing as mp
    from multiprocessing import set_start_method

    mp.set_start_method("spawn")            # HIT: runs when anyone imports this

    def configure():
        set_start_method("forkserver", force=True)   # HIT
    """
    assert hits(code, "SC005", "mylib/workers.py") == marked(code)


def test_sc005_near_misses():
    code = """
    import multiprocessing

    def helper():
        multiprocessing.set_start_method("spawn")

    def main():
        multiprocessing.set_start_method("spawn")

    def ctx_pool():
        return multiprocessing.get_context("spawn").Pool()

    if __name__ == "__main__":
        helper()
        multiprocessing.set_start_method("spawn")
    """
    assert hits(code, "SC005", "tool.py") == []
    top = "import multiprocessing\nmultiprocessing.set_start_method('spawn')\n"
    assert hits(top, "SC005", "pkg/__main__.py") == []
    assert hits("#!/usr/bin/env python\n" + top, "SC005", "script.py") == []
    assert hits(top, "SC005", "tests/test_pool.py") == []
    assert hits(top, "SC005", "pkg/lib.py") == [2]


# --- SC006 thread-primitive-to-process ---------------------------------------------------------------


def test_sc006_seed_002_queue_and_locks():
    code = """
    import queue, threading
    from multiprocessing import Pool, Process

    def foo(q): q.put(1)
    def init(lock): pass

    if __name__ == "__main__":
        q = queue.Queue()
        p = Process(target=foo, args=(q,))               # HIT
        p.start()
        lock = threading.Lock()
        with Pool(initializer=init, initargs=(threading.RLock(),)) as pool:   # HIT
            pool.apply_async(foo, (lock,))                 # HIT
    """
    assert hits(code, "SC006") == marked(code)


def test_sc006_near_misses():
    code = """
    import multiprocessing, queue, threading

    def foo(q): pass

    def test_queuespeed(Process, q):          # mp_benchmarks: Process may be threading.Thread
        Process(target=foo, args=(q,)).start()

    if __name__ == "__main__":
        test_queuespeed(threading.Thread, queue.Queue())
        q = multiprocessing.Queue()
        multiprocessing.Process(target=foo, args=(q,)).start()
        threading.Thread(target=foo, args=(queue.Queue(),)).start()
        m = multiprocessing.Manager()
        with multiprocessing.Pool() as pool:
            pool.apply(foo, (m.Queue(),))
    """
    assert hits(code, "SC006") == []


# --- SC007 unpicklable-exception -------------------------------------------------------------------


def test_sc007_seed_003_exceptions():
    code = """
    class DemoError(Exception):
        def __init__(self, msg, errno):
            super().__init__(msg)                       # HIT

    class Error(Exception):                              # mysql-connector
        def __init__(self, msg=None, errno=None, values=None, sqlstate=None):
            super(Error, self).__init__()
            self.msg, self.errno, self.sqlstate = msg, errno, sqlstate
            self.args = (self.errno, self.msg, self.sqlstate)   # HIT

    class FitDataError(ValueError):                     # scipy
        def __init__(self, distr, lower, upper):
            self.args = (f"{distr} needs {lower} < x < {upper}",)   # HIT

    class FitUniformFixedScaleDataError(FitDataError):  # scipy: a string, not a 1-tuple
        def __init__(self, ptp, fscale):
            self.args = (f"ptp = {ptp} and fscale = {fscale}")   # HIT

    class Coded(ValueError):
        def __init__(self, *, code):                    # HIT
            self.code = code

    class AppError(Exception):
        pass

    class DbError(AppError):
        def __init__(self, table, key):
            AppError.__init__(self, f"{table}:{key}")   # HIT
    """
    assert hits(code, "SC007") == marked(code)


def test_sc007_near_misses():
    code = """
    class Keeps(Exception):
        def __init__(self, a, b):          # no super call: args stay (a, b)
            self.a, self.b = a, b

    class Passes(Exception):
        def __init__(self, exc, value):
            self.exc = repr(exc)
            super(Passes, self).__init__(self.exc, value)

    class Optional(Exception):
        def __init__(self, msg=None):
            super().__init__()

    class Reduced(Exception):
        def __init__(self, a, b):
            super().__init__(a)
        def __reduce__(self):
            return (Reduced, (self.args[0], None))

    class Star(Exception):
        def __init__(self, *args):
            super().__init__(*args)

    class Ordered(Exception):
        def __init__(self, a, b):
            super().__init__(a, b)
            self.args = (a, b)

    class NotAnError:
        def __init__(self, a, b):
            super().__init__()

    class FitSolverError(Exception):          # scipy: one argument, rewritten but kept
        def __init__(self, mesg):
            emsg = "Solver failed: " + mesg
            self.args = (emsg,)

    class Opaque(Exception):
        def __init__(self, a, b):
            self.args = make_args(a, b)          # not a literal: unknown
    """
    assert hits(code, "SC007") == []


def test_sc007_follows_the_init_chain_of_local_bases():
    code = """
    class OptParseError(Exception):            # optparse: never calls Exception.__init__
        def __init__(self, msg):
            self.msg = msg

    class BadOptionError(OptParseError):
        def __init__(self, opt_str):
            self.opt_str = opt_str

    class AmbiguousOptionError(BadOptionError):
        def __init__(self, opt_str, possibilities):
            BadOptionError.__init__(self, opt_str)      # args keep both values: fine

    class Error(Exception):
        pass

    class NoOptionError(Error):                  # configparser: restores args in order
        def __init__(self, option, section):
            Error.__init__(self, "No option %r in section: %r" % (option, section))
            self.args = (option, section)

    class URLError(OSError):                     # urllib.error
        def __init__(self, reason, filename=None):
            self.args = reason,

    class ContentTooShortError(URLError):
        def __init__(self, message, content):
            URLError.__init__(self, message)            # HIT: args == (message,)

    class TestFailed(Error):                     # test.support: *args passed along
        def __init__(self, msg, *args, stats=None):
            super().__init__(msg, *args)

    class TestFailedWithDetails(TestFailed):
        def __init__(self, msg, errors, failures, stats):
            super().__init__(msg, errors, failures, stats=stats)   # HIT: 3 of 4

    from somewhere import LibError

    class Wrapped(LibError):                     # unknown base: stay quiet
        def __init__(self, a, b):
            super().__init__(a)
    """
    assert hits(code, "SC007") == marked(code)


# --- SC008 global-mutated-in-task --------------------------------------------------------------------


def test_sc008_seed_002_global_counter_and_results_list():
    code = """
    from multiprocessing import Pool, Process

    number = 0
    results = []

    def add():
        global number
        number += 100

    def task(x):
        results.append(x * x)

    if __name__ == "__main__":
        p = Process(target=add)             # HIT
        p.start()
        p.join()
        print(number)
        with Pool() as pool:
            pool.map(task, range(3))         # HIT
        print(results)
    """
    found = run_lint(code, select="SC008")
    assert [f.line for f in found] == marked(code)
    assert "line 18" in found[0].message


def test_sc008_near_misses():
    code = """
    import multiprocessing, threading

    counter = multiprocessing.Value("i", 0)
    results = []
    total = 0

    def bump():
        counter.value += 1                  # shared memory: visible to the parent

    def task(x):
        results.append(x)

    def reads():
        return total

    if __name__ == "__main__":
        print(results)
        with multiprocessing.Pool() as pool:
            pool.map(task, [1])             # nothing reads results afterwards
            pool.map(bump, [1])
            pool.map(reads, [1])
        print(counter.value, total)

    def threaded():
        t = threading.Thread(target=task, args=(1,))   # a thread shares the globals
        t.start()
        print(results)
    """
    assert hits(code, "SC008") == []


# --- SC009 inherited-pipe-end --------------------------------------------------------------------


def test_sc009_seed_004_child_inherits_parent_end():
    code = """
    from multiprocessing import Process, Pipe

    def calculator(pipe):
        while True:
            try:
                a, b = pipe.recv()
            except EOFError:
                break
            pipe.send(a + b)

    father_pipe, child_pipe = Pipe(duplex=True)
    p = Process(target=calculator, args=(child_pipe, ))     # HIT
    p.start()
    father_pipe.send((1, 2))
    print(father_pipe.recv())
    father_pipe.close()
    p.join()
    """
    found = run_lint(code, select="SC009")
    assert [f.line for f in found] == marked(code)
    assert "father_pipe" in found[0].message


def test_sc009_parent_keeps_child_end():
    code = """
    import multiprocessing as mp

    def child(conn):
        conn.send(1)

    def main():
        a, b = mp.Pipe()
        p = mp.get_context("spawn").Process(target=child, args=(b,))   # HIT
        p.start()
        while True:
            try:
                print(a.recv())
            except EOFError:
                break
    """
    assert hits(code, "SC009") == marked(code)


def test_sc009_near_misses():
    code = """
    import multiprocessing as mp

    def calculator(pipe, pipe2):
        pipe2.close()
        while True:
            try:
                pipe.recv()
            except EOFError:
                break

    def reader(pipe):
        try:
            pipe.recv()
        except EOFError:
            pass

    def child(conn):
        conn.send(1)

    def fixed():                              # the seed's fix: the child closes the parent's end
        father, child_end = mp.Pipe()
        mp.Process(target=calculator, args=(child_end, father)).start()

    def spawned():                            # spawn passes only what is given
        father, child_end = mp.Pipe()
        mp.get_context("spawn").Process(target=reader, args=(child_end,)).start()

    def closes():
        a, b = mp.Pipe()
        p = mp.get_context("spawn").Process(target=child, args=(b,))
        p.start()
        b.close()
        try:
            a.recv()
        except EOFError:
            pass
    """
    assert hits(code, "SC009") == []


# --- SC010 pool-not-closed -------------------------------------------------------------------------


def test_sc010_pools_left_open():
    code = """
    from multiprocessing import Pool
    from concurrent.futures import ProcessPoolExecutor

    def f(x): return x

    def leaks():
        pool = Pool(4)                      # HIT
        return pool.map(f, [1])

    def chained():
        return Pool(2).map(f, [1])          # HIT

    def executor():
        ex = ProcessPoolExecutor()          # HIT
        return ex.submit(f, 1).result()

    def rebinds():
        pool = Pool(2)
        pool.map(f, [1])
        pool.close()
        pool.join()
        pool = Pool(2)                      # HIT: mp_pool.py's garbage-collection case
        pool.apply(f, [2])
        pool = None
    """
    assert hits(code, "SC010") == marked(code)


def test_sc010_near_misses():
    code = """
    import atexit, contextlib
    from multiprocessing import Pool
    from concurrent.futures import ProcessPoolExecutor
    import sharkcage

    def f(x): return x

    def managed():
        with Pool() as pool:
            pool.map(f, [1])
        with contextlib.closing(Pool()) as p:
            p.map(f, [1])

    def closed():
        pool = Pool()
        try:
            pool.map(f, [1])
        finally:
            pool.terminate()
        ex = ProcessPoolExecutor()
        ex.submit(f, 1)
        ex.shutdown()

    def escapes():
        pool = Pool()
        pool.map(f, [1])
        return pool

    def registered():
        pool = Pool()
        atexit.register(pool.close)
        pool.map(f, [1])

    def with_later():
        pool = Pool()
        with pool:
            pool.map(f, [1])

    def unused():
        pool = Pool()
        print(pool)

    def shark():
        pool = sharkcage.Pool()
        pool.map(f, [1])

    class Service:
        def __init__(self):
            self.pool = Pool()
        def run(self):
            return self.pool.map(f, [1])
    """
    assert hits(code, "SC010") == []


# --- SC011 inherit-only-object-in-task ---------------------------------------------------------------


def test_sc011_queues_and_locks_as_task_arguments():
    code = """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    def search_file(filename, matches): pass

    if __name__ == "__main__":
        lock = multiprocessing.Lock()
        with ProcessPoolExecutor(4) as workers:
            matches = multiprocessing.Queue(100)
            workers.submit(search_file, "a.txt", matches)          # HIT
        with multiprocessing.Pool() as pool:
            pool.apply_async(search_file, ("b", lock))              # HIT
            pool.map(search_file, [multiprocessing.Value("i")])     # HIT
    """
    assert hits(code, "SC011") == marked(code)


def test_sc011_near_misses():
    code = """
    import multiprocessing

    def init(q): pass
    def work(q): pass

    if __name__ == "__main__":
        q = multiprocessing.Queue()
        with multiprocessing.Pool(initializer=init, initargs=(q,)) as pool:   # inherited: fine
            pool.map(work, [1])
        multiprocessing.Process(target=work, args=(q,)).start()
        with multiprocessing.Manager() as m:
            mq = m.Queue()
            with multiprocessing.Pool() as pool:
                pool.apply(work, (mq,))                            # a proxy pickles fine
    """
    assert hits(code, "SC011") == []


# --- SC000, noqa, select/ignore, names through imports ------------------------------------------------


def test_sc000_syntax_error_is_a_finding():
    found = lint_source("print 'python 2'\n", "old.py")
    assert [(f.code, f.line) for f in found] == [("SC000", 1)]
    assert "syntax error" in found[0].message


def test_sc000_for_undecodable_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_bytes(b"x = '\xff\xfe'\n")
    good = tmp_path / "good.py"
    good.write_text("from multiprocessing import Pool\nPool()\n")
    found = lint_paths([tmp_path])
    assert [(Path(f.path).name, f.code) for f in found] == [("bad.py", "SC000"), ("good.py", "SC001")]


def test_noqa_bare_and_with_codes():
    code = """
    from multiprocessing import Pool
    a = Pool()  # sharkcage: noqa
    b = Pool()  # sharkcage: noqa[SC001]
    c = Pool()  # sharkcage: noqa[SC010]
    d = Pool()  # SHARKCAGE: NOQA[sc002, sc001]
    e = "# sharkcage: noqa"; f = Pool()
    """
    assert hits(code, "SC001") == [5, 7]


def test_select_and_ignore_prefixes():
    code = "from multiprocessing import Pool\npool = Pool()\npool.map(abs, [1])\n"
    assert [f.code for f in lint_source(code)] == ["SC001", "SC010"]
    assert [f.code for f in lint_source(code, select="SC01")] == ["SC010"]
    assert [f.code for f in lint_source(code, ignore=["SC001"])] == ["SC010"]
    assert lint_source(code, select="SC001", ignore="SC001") == []
    with pytest.raises(ValueError):
        lint_source(code, select="SC123")


@pytest.mark.parametrize(
    "imports, expr",
    [
        ("import multiprocessing", "multiprocessing.Pool()"),
        ("import multiprocessing as mp", "mp.Pool()"),
        ("from multiprocessing import Pool as P", "P()"),
        ("from multiprocessing.pool import Pool", "Pool()"),
        ("import multiprocessing.pool", "multiprocessing.pool.Pool()"),
        ("import multiprocessing as mp", "mp.get_context('forkserver').Pool()"),
        ("from multiprocessing import get_context", "get_context().Pool()"),
        ("import concurrent.futures", "concurrent.futures.ProcessPoolExecutor().submit(abs, 1)"),
        ("from concurrent import futures", "futures.ProcessPoolExecutor().submit(abs, 1)"),
        ("from concurrent.futures.process import ProcessPoolExecutor as PPE", "PPE().submit(abs, 1)"),
        ("from sharkcage import Pool", "Pool()"),
        ("import sharkcage as sc", "sc.ProcessPoolExecutor().submit(abs, 1)"),
    ],
)
def test_names_resolve_through_imports(imports, expr):
    assert hits(f"{imports}\n{expr}\n", "SC001") == [2]


@pytest.mark.parametrize(
    "code",
    [
        "Pool = list\nPool()\n",                                           # not multiprocessing
        "import multiprocessing\ndef f(multiprocessing):\n    multiprocessing.Pool()\nf(1)\n",
        "from multiprocessing.pool import ThreadPool\nThreadPool()\n",
        "from multiprocessing.dummy import Pool\nPool()\n",
        "from concurrent.futures import ThreadPoolExecutor\nThreadPoolExecutor().submit(abs, 1)\n",
    ],
)
def test_lookalikes_are_not_pools(code):
    assert hits(code, "SC001") == []


def test_relative_imports_inside_a_package(tmp_path):
    # a copy of the stdlib's layout: `from .pool import Pool` inside multiprocessing/
    pkg = tmp_path / "multiprocessing" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "multiprocessing" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "jobs.py").write_text("from ..pool import Pool\nfrom . import helpers\nPool()\n")
    found = lint_paths([pkg / "jobs.py"], select="SC001")
    assert [f.line for f in found] == [3]
    assert model.package_of(str(pkg / "jobs.py")) == "multiprocessing.sub"


def test_columns_count_characters_not_bytes():
    code = "from multiprocessing import Pool\nx = 'ü'; p = Pool()\n"
    assert [(f.line, f.col) for f in lint_source(code, select="SC001")] == [(2, 14)]


def test_findings_carry_both_fixes():
    f = lint_source("import multiprocessing\nmultiprocessing.Pool()\n")[0]
    assert f.hint == f"sharkcage: {f.sharkcage_fix} | stdlib: {f.stdlib_fix}"
    d = f.to_dict()
    assert d["fix"]["sharkcage"] and d["fix"]["stdlib"] and d["name"] == "unguarded-pool"


# --- the CLI, as a subprocess ---------------------------------------------------------------------------


def sharkcage(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    src = str(Path(lint_pkg.__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "sharkcage", "lint", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=50,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "jobs.py").write_text(textwrap.dedent("""\
        from multiprocessing import Pool

        def square(x):
            return x * x

        pool = Pool(4)
        print(pool.map(lambda x: x * x, range(4)))  # sharkcage: noqa[SC002]
        pool.close()
        pool.join()
        """))
    (tmp_path / "pkg" / "clean.py").write_text(textwrap.dedent("""\
        from multiprocessing import Pool

        def square(x):
            return x * x

        if __name__ == "__main__":
            with Pool() as pool:
                print(pool.map(square, range(4)))
        """))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "skipped.py").write_text("from multiprocessing import Pool\nPool()\n")
    return tmp_path


def test_cli_text_output_and_exit_code_1(project):
    r = sharkcage("pkg", cwd=project)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == (
        f"{os.path.join('pkg', 'jobs.py')}:6:8: SC001 `Pool(...)` starts worker processes at import time, "
        'outside `if __name__ == "__main__"`: spawn and forkserver re-import this module in every child'
    )
    assert lines[1].startswith("    fix: sharkcage: ") and "| stdlib: " in lines[1]
    assert len(lines) == 2  # SC002 on line 7 is suppressed by noqa, .hidden is skipped
    assert "1 finding(s) in 1 file(s)" in r.stderr


def test_cli_clean_exit_0(project):
    r = sharkcage("pkg/clean.py", cwd=project)
    assert (r.returncode, r.stdout) == (0, "")


def test_cli_json(project):
    r = sharkcage("pkg", "--format", "json", cwd=project)
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert [(d["code"], d["line"], d["col"]) for d in data] == [("SC001", 6, 8)]
    assert set(data[0]) >= {"code", "message", "path", "line", "col", "hint", "fix", "name"}
    assert data[0]["path"].endswith("jobs.py")


def test_cli_sarif(project):
    r = sharkcage("pkg", "--format", "sarif", "--select", "SC001,SC002", cwd=project)
    assert r.returncode == 1
    log = json.loads(r.stdout)
    assert log["version"] == "2.1.0" and "sarif" in log["$schema"]
    run = log["runs"][0]
    rule_ids = [rule["id"] for rule in run["tool"]["driver"]["rules"]]
    assert rule_ids == sorted(RULES)
    (result,) = run["results"]
    assert result["ruleId"] == "SC001" and rule_ids[result["ruleIndex"]] == "SC001"
    loc = result["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"] == {"uri": "pkg/jobs.py", "uriBaseId": "%SRCROOT%"}
    assert loc["region"] == {"startLine": 6, "startColumn": 8}


def test_cli_select_and_ignore(project):
    assert sharkcage("pkg", "--ignore", "SC001", cwd=project).returncode == 0
    assert sharkcage("pkg", "--select", "SC010", cwd=project).returncode == 0
    r = sharkcage("pkg", "--select", "sc0", "--ignore", "SC002", cwd=project)
    assert r.returncode == 1 and " SC001 " in r.stdout


def test_cli_bad_usage_exit_2(project):
    r = sharkcage("pkg", "nowhere.py", cwd=project)
    assert r.returncode == 2
    assert "no such file or directory: nowhere.py" in r.stderr and r.stdout == ""
    r = sharkcage("pkg", "--select", "SC999", cwd=project)
    assert r.returncode == 2 and "unknown rule code 'SC999'" in r.stderr
    r = sharkcage("pkg", "--format", "xml", cwd=project)
    assert r.returncode == 2
    r = sharkcage(cwd=project)
    assert r.returncode == 2


def test_cli_syntax_error_does_not_crash(project):
    (project / "pkg" / "old.py").write_text("print 'hello'\n")
    r = sharkcage("pkg", "--format", "json", cwd=project)
    assert r.returncode == 1
    codes = sorted((Path(d["path"]).name, d["code"]) for d in json.loads(r.stdout))
    assert codes == [("jobs.py", "SC001"), ("old.py", "SC000")]


def test_pre_commit_hook_definition():
    text = (Path(__file__).resolve().parents[1] / ".pre-commit-hooks.yaml").read_text()
    assert "id: sharkcage-lint" in text and "entry: sharkcage lint" in text and "types: [python]" in text


# --- a corpus nobody here wrote ---------------------------------------------------------------------------

# Every finding the stdlib corpus gives, judged in docs/lint.md ("Corpus run"). Empty: the
# installed multiprocessing package and its test suite give no finding at all.
EXPECTED_STDLIB_FINDINGS: list[tuple[str, int, str]] = []


def test_corpus_stdlib_multiprocessing_is_clean_and_fast():
    import multiprocessing

    mp_dir = Path(multiprocessing.__file__).parent
    paths = [mp_dir]
    test_file = mp_dir.parent / "test" / "_test_multiprocessing.py"
    if test_file.exists():
        paths.append(test_file)
    start = time.perf_counter()
    found = lint_paths(paths)
    elapsed = time.perf_counter() - start
    assert [(Path(f.path).name, f.line, f.code) for f in found] == EXPECTED_STDLIB_FINDINGS, found
    assert elapsed < 10
