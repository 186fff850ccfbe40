"""Guarantee 8: Ctrl-C (SIGINT to the process group, or to the parent alone)
raises KeyboardInterrupt in the parent, stops the pool within 2 s and leaves no
child process behind; so does terminate(), even for tasks that ignore SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time

import pytest

from sharkcage import Pool, SharkcageError

from . import helpers

pytestmark = pytest.mark.timeout(30)

SCRIPT = textwrap.dedent(
    """
    import functools, sys, time
    from sharkcage import Pool, ProcessPoolExecutor
    from sharks import helpers

    directory, call = sys.argv[1], sys.argv[2]
    task = functools.partial(helpers.touch_and_sleep, directory, 30)

    if __name__ == "__main__":
        try:
            if call.startswith("executor"):
                with ProcessPoolExecutor(2) as ex:
                    if call == "executor_submit":
                        futures = [ex.submit(task, i) for i in range(4)]
                        futures[0].result()
                    else:
                        for _ in ex.map(task, range(4)):
                            pass
            else:
                with Pool(2) as pool:
                    if call == "map":
                        pool.map(task, range(4), chunksize=1)
                    elif call == "imap":
                        for _ in pool.imap(task, range(4)):
                            pass
                    elif call == "apply":
                        r = pool.apply_async(task, (0,))
                        pool.apply(task, (1,))
            print("NO-INTERRUPT", flush=True)
        except KeyboardInterrupt:
            print("KI", time.monotonic(), flush=True)
            raise
    """
)


def _start(tmp_path, call):
    script = tmp_path / "ctrl_c.py"
    script.write_text(SCRIPT)
    d = tmp_path / "started"
    d.mkdir()
    proc = subprocess.Popen(
        [helpers.PYTHON, str(script), str(d), call],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=helpers.child_env(), start_new_session=True,
    )
    names = helpers.wait_for_files(str(d), "started-", 2, 15)
    if len(names) < 2:
        helpers.kill_tree(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"the tasks did not start: {names}\n{out}\n{err}")
    time.sleep(0.2)  # let the parent settle into its wait
    worker_pids = {int(n.split("-")[1]) for n in names}
    every = set(helpers.descendants(proc.pid)) | worker_pids
    return proc, worker_pids, every


@pytest.mark.parametrize("call", ["map", "imap", "apply", "executor_submit", "executor_map"])
@pytest.mark.parametrize("target", ["group", "parent"])
def test_sigint_stops_everything_within_2s(tmp_path, target, call):
    proc, workers, every = _start(tmp_path, call)
    handles = helpers.process_handles(every)
    try:
        t0 = time.monotonic()
        if target == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        left_workers = helpers.wait_gone(workers, max(0.0, t0 + 2.0 - time.monotonic()))
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            helpers.kill_tree(proc.pid)
            out, err = proc.communicate()
            pytest.fail(f"the parent did not exit within 5 s of SIGINT\nstdout:\n{out}\nstderr:\n{err[-2000:]}")
        exited = time.monotonic()
        ki = [line for line in out.splitlines() if line.startswith("KI ")]
        assert ki, f"no KeyboardInterrupt in the parent\nstdout:\n{out}\nstderr:\n{err[-2000:]}"
        assert float(ki[0].split()[1]) - t0 < 2.0, "KeyboardInterrupt came later than 2 s after SIGINT"
        assert "KeyboardInterrupt" in err
        assert not left_workers, "workers still alive 2 s after SIGINT:\n" + helpers.describe(left_workers)
        assert exited - t0 < 4.0, f"the parent took {exited - t0:.1f} s to exit after SIGINT"
        left = helpers.wait_gone(every, 2.0)
        assert not left, "processes left behind after Ctrl-C:\n" + helpers.describe(left)
    finally:
        helpers.kill_tree(proc.pid)
        helpers.kill_procs(handles)


def test_terminate_with_tasks_that_ignore_sigterm_returns_within_2s(tmp_path):
    d = str(tmp_path)
    pool = Pool(2)
    results = [pool.apply_async(helpers.ignore_sigterm_and_sleep, (d, 30)) for _ in range(2)]
    pending = pool.apply_async(helpers.square, (3,))
    names = helpers.wait_for_files(d, "started-", 2, 10)
    assert len(names) == 2
    pids = [int(n.split("-")[1]) for n in names]
    time.sleep(0.1)  # the tasks have set SIG_IGN by now
    t0 = time.monotonic()
    pool.terminate()
    assert time.monotonic() - t0 < 2.0, "terminate() waited on tasks that ignore SIGTERM"
    assert not helpers.wait_gone(pids, max(0.0, t0 + 2.0 - time.monotonic())), helpers.describe(pids)
    for r in results + [pending]:
        with pytest.raises(SharkcageError):
            r.get(5)
    pool.join()
