"""Issue 6, the engine wiring of observability (CONTRACT.md "Observability").

Real pools, real processes, real signals: ``progress=`` bars (tqdm on
sys.stderr) reach their total with ok/err counts, per pool and per call;
``pool.stats()`` adds up; ``pool.timeline(path)`` draws one bar per task or
chunk with its outcome (ok, error, crash, timeout) in a lane per worker slot,
as a self-contained page; ``pool.dump_stacks()`` reads busy workers' stacks,
even from C code; ``warn_after=`` logs a stuck task's stack once;
``label_output=True`` prefixes worker lines in the parent's streams.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import time

import pytest

import observe_helpers as h
from sharkcage import Pool, ProcessPoolExecutor, TaskTimeoutError, WorkerCrashedError

pytestmark = pytest.mark.timeout(60)

GET = 30  # seconds: a wait longer than this is a hang


def _final_bar(err_text: str) -> str:
    """The last state tqdm drew (it redraws in place with \\r)."""
    frames = [f for f in re.split(r"[\r\n]", err_text) if f.strip()]
    return frames[-1] if frames else ""


# ---------------------------------------------------------------------------
# progress=


def test_progress_per_call_on_map_counts_ok_and_errors(capsys):
    with Pool(2) as pool:
        capsys.readouterr()
        with pytest.raises(ValueError, match="task 3 fails"):
            pool.map(h.fail_on_three, range(10), progress=True)
        err = capsys.readouterr().err
    assert "ok=9 err=1" in err, err
    last = _final_bar(err)
    assert "10/10" in last and "ok=9 err=1" in last, last


def test_progress_per_call_on_starmap(capsys):
    with Pool(2) as pool:
        capsys.readouterr()
        assert pool.starmap(h.add, [(i, i) for i in range(8)], progress=True) == [2 * i for i in range(8)]
        err = capsys.readouterr().err
    last = _final_bar(err)
    assert "8/8" in last and "ok=8 err=0" in last, err


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_progress_per_call_on_imap(capsys, method):
    with Pool(2) as pool:
        capsys.readouterr()
        it = getattr(pool, method)(h.fail_on_three, range(10), chunksize=1, progress=True)
        got, errors = [], 0
        while True:
            try:
                got.append(next(it))
            except StopIteration:
                break
            except ValueError:
                errors += 1
        assert errors == 1 and sorted(got) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
        err = capsys.readouterr().err
    last = _final_bar(err)
    assert "10/10" in last and "ok=9 err=1" in last, err


def test_progress_on_executor_map(capsys):
    with ProcessPoolExecutor(2) as ex:
        capsys.readouterr()
        assert list(ex.map(h.square, range(10), progress=True)) == [x * x for x in range(10)]
        err = capsys.readouterr().err
    last = _final_bar(err)
    assert "10/10" in last and "ok=10 err=0" in last, err


def test_progress_on_the_pool_applies_to_every_map_call(capsys):
    with Pool(2, progress=True) as pool:
        capsys.readouterr()
        with pytest.raises(ValueError):
            pool.map(h.fail_on_three, range(10))
        first = capsys.readouterr().err
        assert list(pool.imap(h.square, range(6))) == [x * x for x in range(6)]
        second = capsys.readouterr().err
        # a call can still turn it off
        assert pool.map(h.square, range(5), progress=False) == [0, 1, 4, 9, 16]
        third = capsys.readouterr().err
    assert "10/10" in _final_bar(first) and "ok=9 err=1" in _final_bar(first), first
    assert "6/6" in _final_bar(second) and "ok=6 err=0" in _final_bar(second), second
    assert third == ""


def test_progress_is_off_by_default(capfd):
    with Pool(2) as pool:
        pool.map(h.square, range(10))
        with pytest.raises(ValueError):
            pool.map(h.fail_on_three, range(10))
        list(pool.imap(h.square, range(10)))
        list(pool.imap_unordered(h.square, range(10)))
        pool.starmap(h.add, [(1, 2)] * 5)
    with ProcessPoolExecutor(1) as ex:
        list(ex.map(h.square, range(5)))
    out, err = capfd.readouterr()  # fds 1 and 2, and sys.stdout/sys.stderr
    assert out == "" and err == "", (out, err)


# ---------------------------------------------------------------------------
# pool.stats()


def test_stats_add_up_after_cpu_tasks():
    with Pool(2) as pool:
        assert pool.map(h.cpu_task, range(20), chunksize=1) == list(range(20))
        stats = pool.stats()
    assert sum(w.tasks for w in stats.workers) == 20
    assert stats.tasks_done == 20 and stats.tasks_failed == 0
    assert stats.tasks_submitted >= 20
    assert {w.worker_id for w in stats.workers} <= {0, 1}
    working = [w for w in stats.workers if w.tasks]
    assert working and all(w.busy_s > 0 for w in working)
    # 20 tasks of about 20 ms of CPU each
    assert sum(w.busy_s for w in stats.workers) >= 20 * 0.02 * 0.9
    assert all(w.idle_s >= 0 for w in stats.workers)
    assert stats.crashes == 0 and stats.restarts == 0
    assert any(isinstance(w.peak_rss, int) and w.peak_rss > 1 << 20 for w in working), stats
    assert isinstance(stats.overhead_per_task_us, (int, float)) and stats.overhead_per_task_us >= 0


def test_stats_count_crashes_and_restarts_after_a_worker_is_killed():
    with Pool(2) as pool:
        pool.map(h.square, range(4))
        with pytest.raises(WorkerCrashedError):
            pool.apply(h.kill_self)  # SIGKILL to itself
        # the replacement is there and serves tasks
        assert pool.map(h.square, range(6), chunksize=1) == [x * x for x in range(6)]
        stats = pool.stats()
    assert stats.crashes == 1
    assert stats.restarts == 1
    assert sum(w.crashes for w in stats.workers) == 1
    assert sum(w.restarts for w in stats.workers) == 1
    crashed = [w for w in stats.workers if w.crashes]
    assert crashed[0].restarts == 1, "the replacement keeps the slot and counts a restart"
    assert stats.tasks_failed == 1
    assert stats.tasks_done == 4 + 6


def test_stats_tasks_done_and_failed_right_after_a_map_with_failures():
    with Pool(2) as pool:
        with pytest.raises(ValueError):
            pool.map(h.fail_on_three, range(10), chunksize=1)
        s1 = pool.stats()
        with pytest.raises(ValueError):
            pool.map(h.fail_on_three, range(10), chunksize=5)  # the failure inside a chunk
        s2 = pool.stats()
    assert (s1.tasks_done, s1.tasks_failed) == (9, 1)
    assert (s2.tasks_done, s2.tasks_failed) == (18, 2)
    assert s2.tasks_pending == 0
    assert sum(w.tasks for w in s2.workers) == 20


def test_stats_str_is_a_table():
    with Pool(2) as pool:
        pool.map(h.cpu_task, range(8), chunksize=1)
        stats = pool.stats()
    text = str(stats)
    lines = text.splitlines()
    header = lines[0].split()
    for column in ("worker", "pid", "tasks", "busy", "idle", "crashes", "restarts"):
        assert column in header, lines[0]
    rows = lines[1:1 + len(stats.workers)]
    assert len(rows) == len(stats.workers) >= 1
    for w, row in zip(sorted(stats.workers, key=lambda w: w.worker_id), rows):
        cells = row.split()
        assert cells[0] == str(w.worker_id) and cells[1] == str(w.pid) and cells[2] == str(w.tasks)
    assert "8 done" in lines[-1] and "0 failed" in lines[-1]


# ---------------------------------------------------------------------------
# pool.timeline(path)


def _timeline_events(html: str) -> list:
    m = re.search(r"const EV = (\[.*?\]);\n", html, re.S)
    assert m, "the page carries its events"
    return json.loads(m.group(1))


def test_timeline_bars_outcomes_and_lanes(tmp_path):
    with Pool(2, task_timeout=1.5) as pool:
        assert pool.map(h.square, range(6), chunksize=1) == [x * x for x in range(6)]
        assert pool.map(h.square, range(100), chunksize=25) == [x * x for x in range(100)]
        with pytest.raises(RuntimeError):
            pool.apply(h.raise_error)
        with pytest.raises(WorkerCrashedError):
            pool.apply(h.kill_self)
        with pytest.raises(TaskTimeoutError):
            pool.apply(h.sleep_for, (30,))
        assert pool.apply(h.square, (3,)) == 9
        path = pool.timeline(tmp_path / "timeline.html")
    html = open(path, encoding="utf-8").read()
    events = _timeline_events(html)
    bars = re.findall(r'<rect x="[^"]*" width="[^"]*" height="[^"]*" class="(\w+)"/>', html)
    assert len(bars) == len(events), "one bar per recorded task or chunk"
    outcomes = collections.Counter(e[1] for e in events)
    assert outcomes == collections.Counter(bars)
    # 6 single tasks + 4 chunks + 1 ok apply; one of each failure
    assert outcomes["ok"] == 6 + 4 + 1, outcomes
    assert outcomes["error"] == 1 and outcomes["crash"] == 1 and outcomes["timeout"] == 1, outcomes
    labels = [e[0] for e in events]
    assert sum("tasks 0-24 of map(" in label or "tasks 75-99 of map(" in label for label in labels) == 2
    assert any("raise_error" in e[0] for e in events if e[1] == "error")
    assert any("kill_self" in e[0] for e in events if e[1] == "crash")
    assert any("sleep_for" in e[0] for e in events if e[1] == "timeout")
    # lanes per worker slot (a replacement keeps its slot)
    slots = {e[2] for e in events}
    assert slots <= {0, 1}
    for slot in slots:
        assert f">worker {slot}<" in html
    # the timeout bar lasted about task_timeout
    timeout_event = next(e for e in events if e[1] == "timeout")
    assert 1.0 <= timeout_event[5] - timeout_event[4] < 20
    # self-contained: nothing fetched from the network
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script src" not in html and "<link" not in html


def test_timeline_of_the_executor(tmp_path):
    with ProcessPoolExecutor(1) as ex:
        assert [f.result(GET) for f in [ex.submit(h.square, i) for i in range(3)]] == [0, 1, 4]
        path = ex.timeline(tmp_path / "ex.html")
    events = _timeline_events(open(path, encoding="utf-8").read())
    # one bar per batch sent (single submits may travel together)
    assert 1 <= len(events) <= 3 and all(e[1] == "ok" for e in events), events
    assert {e[2] for e in events} == {0}


# ---------------------------------------------------------------------------
# pool.dump_stacks()


def _wait_for_pid(path, timeout: float = GET) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = open(path).read().split()
        except FileNotFoundError:
            text = []
        if text:
            return int(text[0])
        time.sleep(0.02)
    raise AssertionError("the task never started")


def test_dump_stacks_of_a_task_stuck_in_c_code_and_not_of_idle_workers(tmp_path):
    marker = tmp_path / "c.pid"
    pool = Pool(2)
    try:
        idle_pids = set(pool.map(h.sleepy_python_marker, [0.3, 0.3], chunksize=1))
        r = pool.apply_async(h.stuck_in_c_marker, (20, str(marker)))
        busy_pid = _wait_for_pid(marker)
        time.sleep(0.3)  # well inside libc's sleep(3)
        stacks = pool.dump_stacks(timeout=10.0)  # returns as soon as the dump settled
        assert list(stacks) == [busy_pid], stacks
        assert "stuck_in_c_marker" in stacks[busy_pid], stacks[busy_pid]
        # the idle worker is not there
        assert not (idle_pids - {busy_pid}) & set(stacks)
        assert not r.ready()
    finally:
        pool.terminate()
        pool.join()


def test_dump_stacks_of_every_busy_worker(tmp_path):
    markers = [tmp_path / "a.pid", tmp_path / "b.pid"]
    pool = Pool(2)
    try:
        pool.apply_async(h.sleepy_python_marker, (20, str(markers[0])))
        pool.apply_async(h.busy_in_c_with_the_gil_marker, (20, str(markers[1])))
        pids = [_wait_for_pid(m) for m in markers]
        time.sleep(0.2)
        stacks = pool.dump_stacks(timeout=10.0)
        assert set(stacks) == set(pids), stacks
        assert "sleepy_python_marker" in stacks[pids[0]]
        assert "busy_in_c_with_the_gil_marker" in stacks[pids[1]]
    finally:
        pool.terminate()
        pool.join()


def test_dump_stacks_of_an_idle_pool_is_empty():
    with Pool(2) as pool:
        pool.map(h.square, range(4))
        assert pool.dump_stacks() == {}


# ---------------------------------------------------------------------------
# warn_after=


def test_warn_after_logs_the_stack_of_a_long_task_once(caplog):
    caplog.set_level(logging.WARNING, logger="sharkcage")
    with Pool(1, warn_after=0.5) as pool:
        assert pool.apply(h.square, (2,)) == 4
        assert pool.apply(h.slow_warned_marker, (2,)) == "done"
        time.sleep(0.3)  # a late second warning would land here
    warnings = [r for r in caplog.records
                if r.name.startswith("sharkcage") and r.levelno == logging.WARNING
                and "slow_warned_marker" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    msg = warnings[0].getMessage()
    # the stack of the task, as faulthandler wrote it
    assert re.search(r'File ".*observe_helpers\.py", line \d+ in slow_warned_marker', msg), msg
    assert not any("square" in r.getMessage() for r in caplog.records if r.name.startswith("sharkcage"))


def test_no_warning_without_warn_after(caplog):
    caplog.set_level(logging.WARNING, logger="sharkcage")
    with Pool(1) as pool:
        assert pool.apply(h.slow_warned_marker, (1,)) == "done"
    assert not [r for r in caplog.records if "running for" in r.getMessage()]


# ---------------------------------------------------------------------------
# label_output=


def _read_until(capture, needles, timeout: float = 5.0) -> tuple[str, str]:
    """Accumulate captured output until every needle appeared (or time is up)."""
    out = err = ""
    deadline = time.monotonic() + timeout
    while True:
        o, e = capture.readouterr()
        out += o
        err += e
        if all(n in out + err for n in needles) or time.monotonic() >= deadline:
            return out, err
        time.sleep(0.05)


def test_label_output_prefixes_worker_lines_in_the_parent_streams(capsys):
    pool = Pool(2, label_output=True)
    try:
        results = pool.map(h.print_lines, [3, 3], chunksize=1)
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    needles = [f"out line {i} from pid {pid}" for _, pid in results for i in range(3)]
    needles += [f"err line from pid {pid}" for _, pid in results]
    out, err = _read_until(capsys, needles)
    for wid, pid in results:
        for i in range(3):
            assert f"[worker {wid}] out line {i} from pid {pid}\n" in out, out
        assert f"[worker {wid}] err line from pid {pid}\n" in err, err
        assert f"from pid {pid}" not in err.replace(f"[worker {wid}] err line from pid {pid}", "")
    # every line is whole and prefixed
    for line in out.splitlines() + err.splitlines():
        assert re.match(r"\[worker \d+\] ", line), line


def test_label_output_joins_pieces_into_one_line(capsys):
    with Pool(1, label_output=True) as pool:
        wid = pool.apply(h.print_in_pieces)
        out, _ = _read_until(capsys, ["alpha-beta-gamma"])
    assert f"[worker {wid}] alpha-beta-gamma\n" in out, out


def test_label_output_forwards_what_a_worker_printed_before_crashing(capsys):
    with Pool(1, label_output=True) as pool:
        with pytest.raises(WorkerCrashedError):
            pool.apply(h.print_then_crash, ("7b2",))
        out, err = _read_until(capsys, ["last words 7b2", "last error words 7b2"])
        assert pool.apply(h.square, (3,)) == 9
    assert "[worker 0] last words 7b2\n" in out, (out, err)
    assert "[worker 0] last error words 7b2\n" in err, (out, err)


def test_without_label_output_workers_write_to_the_inherited_fds(capfd):
    with Pool(1) as pool:
        pid = pool.apply(h.print_and_write_fd, ("c4d",))
        out, err = _read_until(capfd, ["python stdout c4d", "python stderr c4d", "raw fd1 c4d", "raw fd2 c4d"])
    assert "python stdout c4d\n" in out and "raw fd1 c4d\n" in out, (out, err)
    assert "python stderr c4d\n" in err and "raw fd2 c4d\n" in err, (out, err)
    assert "[worker" not in out + err
    assert pid != os.getpid()
