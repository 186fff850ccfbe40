"""Guarantee 9: if the parent is killed (SIGKILL), every process sharkcage
started exits within 5 s: workers, the forkserver, nested pools' processes."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time

import pytest

from . import helpers

pytestmark = pytest.mark.timeout(30)

SCRIPT = textwrap.dedent(
    """
    import functools, os, sys, time
    import sharkcage
    from sharks import helpers

    directory, mode, method = sys.argv[1], sys.argv[2], sys.argv[3]
    task = functools.partial(helpers.touch_and_sleep, directory, 60)

    def ready():
        open(os.path.join(directory, "ready"), "w").close()

    if __name__ == "__main__":
        if mode == "busy":
            pool = sharkcage.Pool(2, start_method=method)
            results = [pool.apply_async(task, (i,)) for i in range(4)]
            results[0].get()
        elif mode == "idle":
            pool = sharkcage.Pool(2, start_method=method)
            pids = set(pool.map(helpers.sleep_pid, [0.1] * 4, chunksize=1))
            for pid in pids:
                open(os.path.join(directory, f"started-{pid}-idle"), "w").close()
            ready()
            time.sleep(60)
        elif mode == "executor":
            ex = sharkcage.ProcessPoolExecutor(2, start_method=method)
            futures = [ex.submit(task, i) for i in range(4)]
            futures[0].result()
        elif mode == "imap":
            pool = sharkcage.Pool(2, start_method=method)
            for _ in pool.imap(task, iter(int, 1)):   # an infinite input
                pass
        elif mode == "nested":
            pool = sharkcage.Pool(2, start_method=method)
            results = [pool.apply_async(helpers.nested_pool_sleeping, (directory, 60)) for _ in range(2)]
            results[0].get()
    """
)


def _run_and_kill(tmp_path, mode, method, expected_started):
    script = tmp_path / "victim.py"
    script.write_text(SCRIPT)
    d = tmp_path / "files"
    d.mkdir()
    proc = subprocess.Popen(
        [helpers.PYTHON, str(script), str(d), mode, method],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=helpers.child_env(), start_new_session=True,
    )
    handles = []
    try:
        names = helpers.wait_for_files(str(d), "started-", expected_started, 15)
        if len(names) < expected_started:
            helpers.kill_tree(proc.pid)
            out, err = proc.communicate()
            pytest.fail(f"the tasks did not start: {names}\n{out}\n{err[-3000:]}")
        time.sleep(0.3)
        started = {int(n.split("-")[1]) for n in helpers.wait_for_files(str(d), "started-", 0, 0)}
        every = (set(helpers.descendants(proc.pid)) | started) - {proc.pid}
        handles = helpers.process_handles(every)
        assert started <= every
        if method == "forkserver":
            # the forkserver is among them (the workers are its children)
            parents = {p.ppid() for p in handles if p.pid in started}
            assert parents & every, "workers are not children of a process we track"
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        left = helpers.wait_gone(every, max(0.0, t0 + 5.0 - time.monotonic()))
        assert not left, (
            f"still alive {time.monotonic() - t0:.1f} s after the parent was SIGKILLed:\n"
            + helpers.describe(left)
        )
    finally:
        helpers.kill_tree(proc.pid)
        helpers.kill_procs(handles)
        proc.communicate()


@pytest.mark.parametrize("method", helpers.START_METHODS)
def test_busy_workers_exit_when_the_parent_is_killed(tmp_path, method):
    _run_and_kill(tmp_path, "busy", method, 2)


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_idle_workers_exit_when_the_parent_is_killed(tmp_path, method):
    _run_and_kill(tmp_path, "idle", method, 1)


def test_executor_workers_exit_when_the_parent_is_killed(tmp_path):
    _run_and_kill(tmp_path, "executor", "forkserver", 2)


def test_imap_with_infinite_input_exits_when_the_parent_is_killed(tmp_path):
    _run_and_kill(tmp_path, "imap", "forkserver", 2)


def test_nested_pools_exit_when_the_parent_is_killed(tmp_path):
    # 2 outer tasks, each with an inner pool whose task also touches a file
    _run_and_kill(tmp_path, "nested", "forkserver", 4)
