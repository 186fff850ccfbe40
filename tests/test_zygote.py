"""The zygote every worker is forked from (src/sharkcage/_engine/zygote.py).

Fresh interpreters (subprocess) where the zygote's birth matters: whether
it is forked or spawned depends on the threads the parent runs at the
first pool, and one zygote serves a whole process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from sharkcage import Pool, WorkerCrashedError
from sharkcage._engine import zygote

pytestmark = pytest.mark.timeout(60)


def _run(code: str, timeout: float = 45) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_single_threaded_parent_forks_a_zygote_that_holds_none_of_its_files(tmp_path):
    secret = tmp_path / "parent-only.txt"
    out = _run(f"""
        import json, os, psutil
        from sharkcage import Pool
        from sharkcage._engine import zygote
        f = open({str(secret)!r}, "w")       # the zygote must not keep this open
        with Pool(2) as pool:
            pids = set(pool.map(lambda x: os.getpid(), range(20), chunksize=1))
            z = zygote.ensure()
            zp = psutil.Process(z.pid)
            files = [o.path for o in zp.open_files()]
            workers = {{c.pid for c in zp.children()}}
            print(json.dumps(dict(cmd=zp.cmdline(), me=psutil.Process().cmdline(), files=files,
                                  worker_parent_is_zygote=pids <= workers, pids=len(pids))))
    """)
    assert out["cmd"] == out["me"]  # forked, not spawned: no interpreter start
    assert not any("parent-only" in f for f in out["files"])
    assert out["worker_parent_is_zygote"] and out["pids"] >= 1


def test_threaded_parent_spawns_the_zygote_and_main_functions_still_work():
    out = _run("""
        import json, os, threading, psutil
        from sharkcage import Pool
        from sharkcage._engine import zygote
        stop = threading.Event()
        t = threading.Thread(target=stop.wait); t.start()   # a foreign thread: no fork from here
        def square(x):                                      # a __main__ function
            return x * x
        with Pool(2) as pool:
            result = pool.map(square, range(10))
        z = zygote.ensure()
        cmd = " ".join(psutil.Process(z.pid).cmdline())
        stop.set(); t.join()
        print(json.dumps(dict(result=result, spawned="_spawned_main" in cmd)))
    """)
    assert out["result"] == [x * x for x in range(10)]
    assert out["spawned"]


def test_one_zygote_serves_every_pool_of_the_process():
    with Pool(1) as a, Pool(1) as b:
        parents = {psutil.Process(a.apply(os.getpid)).ppid(), psutil.Process(b.apply(os.getpid)).ppid()}
    assert parents == {zygote.ensure().pid}


def test_ctrl_c_in_the_terminal_does_not_kill_the_zygote():
    with Pool(1) as pool:
        pool.apply(abs, (-1,))
        z = zygote.ensure()
        os.kill(z.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends the whole group
        time.sleep(0.2)
        assert psutil.Process(z.pid).status() != psutil.STATUS_ZOMBIE
        assert pool.apply(abs, (-2,)) == 2
        assert zygote.ensure() is z


def test_a_killed_zygote_takes_its_workers_and_the_pool_carries_on():
    """SIGKILL the zygote: the workers die with it (PDEATHSIG), the task
    running there fails as a crash, and the pool starts a new zygote and
    serves the next tasks."""
    with Pool(2) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]
        old = zygote.ensure()
        running = pool.apply_async(time.sleep, (30,))
        time.sleep(0.3)
        os.kill(old.pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError):
            running.get(20)
        assert pool.map(abs, range(-5, 0)) == [5, 4, 3, 2, 1]
        new = zygote.ensure()
        assert new.pid != old.pid
        assert psutil.Process(pool.apply(os.getpid)).ppid() == new.pid


def test_closing_at_exit_lets_the_zygote_go_and_a_later_pool_starts_another():
    """What the interpreter's exit does once the pools are stopped: our end
    of the zygote's socket is closed (not left to the garbage collector's
    ResourceWarning), the zygote exits on its own, and should anything start
    a pool after that, it gets a new zygote instead of a dead one."""
    with Pool(2) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]
    old = zygote.ensure()
    zygote.close_at_exit()
    assert old.sock.fileno() == -1
    deadline = time.monotonic() + 20
    while zygote._reap_if_dead(old) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not psutil.pid_exists(old.pid) or psutil.Process(old.pid).status() == psutil.STATUS_ZOMBIE
    with Pool(2) as pool:
        assert pool.map(abs, [-3]) == [3]
        assert zygote.ensure().pid != old.pid


def test_worker_exit_codes_come_through_the_zygote():
    with Pool(1, retries=0) as pool:
        with pytest.raises(WorkerCrashedError) as info:
            pool.apply(os._exit, (7,))
        assert "7" in str(info.value)
        with pytest.raises(WorkerCrashedError) as info:
            pool.apply(_kill_self)
        assert "SIGKILL" in str(info.value) or "-9" in str(info.value)


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def test_without_pidfd_support_pools_use_the_stdlib_forkserver():
    """On a kernel older than Linux 5.3 (no pidfd_open) the zygote cannot
    watch its workers: pools fall back to the stdlib forkserver and work."""
    out = _run("""
        import json, os
        def no_pidfd(pid, flags=0):
            raise OSError(38, "Function not implemented")
        os.pidfd_open = no_pidfd
        from sharkcage import Pool
        from sharkcage._engine import zygote
        with Pool(2) as pool:
            result = pool.map(abs, range(-5, 0))
        print(json.dumps(dict(result=result, zygote=bool(zygote.service_pids()))))
    """)
    assert out["result"] == [5, 4, 3, 2, 1]
    assert out["zygote"] is False


def test_a_stopped_zygote_delays_a_start_but_never_hangs_the_pool():
    """SIGSTOP the zygote: a worker that dies is still seen at once (the
    parent's own pidfd), its task fails; the replacement's start times out,
    the stuck zygote is killed and a new one serves."""
    out = _run("""
        import json, os, signal, time
        from sharkcage import Pool, WorkerCrashedError
        from sharkcage._engine import zygote
        zygote._REPLY_TIMEOUT = 1.0   # instead of 30 s: a test has no time to lose
        def die():
            os.kill(os.getpid(), signal.SIGKILL)
        with Pool(1) as pool:
            pool.apply(abs, (-1,))
            old = zygote.ensure().pid
            os.kill(old, signal.SIGSTOP)
            t0 = time.monotonic()
            try:
                pool.apply_async(die).get(20)
                error = None
            except WorkerCrashedError as e:
                error = str(e)
            seen = time.monotonic() - t0
            value = pool.apply_async(abs, (-7,)).get(30)
            new = zygote.ensure().pid
        print(json.dumps(dict(error=error, seen=seen, value=value, replaced=new != old)))
    """, timeout=55)
    assert out["error"] and "died" in out["error"]
    assert out["seen"] < 5
    assert out["value"] == 7 and out["replaced"]


def test_a_zygote_whose_parent_died_waits_for_its_workers_without_spinning():
    # The parent dies while a worker is busy in a task that holds the GIL;
    # the zygote waits (up to 2 s) to reap it. That wait must sleep, not busy-loop on the closed
    # control socket.
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import functools, os, re, time
            from sharkcage import Pool
            from sharkcage._engine import zygote
            pool = Pool(1)
            # a regex that backtracks for seconds holding the GIL: the worker's
            # watchdog thread cannot make it exit when the parent goes
            r = pool.apply_async(functools.partial(re.fullmatch, r"(x+x+)+y", "x" * 27))
            time.sleep(0.5)
            print(zygote.ensure().pid, flush=True)
            os._exit(0)   # no clean-up: the zygote sees its control socket close
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    zpid = int(proc.stdout.readline())
    proc.wait(30)
    z = psutil.Process(zpid)
    try:
        before = sum(z.cpu_times()[:2])
        time.sleep(1.0)
        used = sum(z.cpu_times()[:2]) - before
        assert z.is_running() and z.status() != psutil.STATUS_ZOMBIE  # still waiting for its worker
        assert used < 0.3, f"the zygote used {used:.2f} s of CPU in 1 s while waiting"
    finally:
        for p in [z, *z.children(recursive=True)]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs([z], timeout=5)


def test_a_fork_pays_for_no_import_in_sharkcage_after_fork_handlers():
    """sharkcage's after-fork handlers run in every forked child (the zygote's
    birth is on each pool's startup path, a user's own fork too): they must
    not import what the parent never imported. Importing the stdlib
    forkserver there cost every fork ~15 ms."""
    out = _run("""
        import json, os, sys
        import sharkcage
        assert "multiprocessing.forkserver" not in sys.modules
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, json.dumps("multiprocessing.forkserver" in sys.modules).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        print(json.dumps({"child_imported_forkserver": json.loads(os.read(r, 100))}))
    """)
    assert out == {"child_imported_forkserver": False}
