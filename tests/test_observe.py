"""sharkcage.observe: the progress bar, the stats table and the HTML timeline.

These parts are pure (no pool needed): the engine feeds them. The timeline
is also rendered by a real headless Chromium when one is installed, and the
screenshot is checked for actual coloured bars, not just for a file.

Run ``python tests/test_observe.py docs/timeline.png`` to regenerate the
screenshot shown in docs/observe.md.
"""

from __future__ import annotations

import html.parser
import io
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from pathlib import Path

import pytest

from sharkcage.observe import PoolStats, ProgressBar, WorkerStats, render_timeline
from sharkcage.observe.stats import format_bytes, format_seconds
from sharkcage.observe.timeline import OUTCOMES

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------
# ProgressBar


def test_progress_counts_ok_and_errors_in_the_postfix():
    out = io.StringIO()
    bar = ProgressBar(total=4, desc="map(square)", enabled=True, file=out)
    bar.ok()
    bar.ok(2)
    bar.error()
    bar.close()
    text = out.getvalue()
    assert "map(square)" in text
    assert "4/4" in text
    assert "ok=3 err=1" in text
    assert (bar.ok_count, bar.error_count) == (3, 1)


def test_progress_disabled_is_a_silent_noop_that_still_counts():
    out = io.StringIO()
    bar = ProgressBar(total=2, desc="quiet", enabled=False, file=out)
    bar.ok()
    bar.error()
    bar.set_total(5)
    bar.close()
    assert out.getvalue() == ""
    assert not bar.enabled
    assert (bar.ok_count, bar.error_count) == (1, 1)


def test_progress_auto_is_off_when_stderr_is_not_a_terminal():
    out = io.StringIO()  # isatty() is False, as for a CI log or a redirected stderr
    bar = ProgressBar(total=1, desc="auto", enabled=None, file=out)
    bar.ok()
    bar.close()
    assert not bar.enabled and out.getvalue() == ""


def test_progress_close_is_idempotent_and_late_calls_are_ignored():
    out = io.StringIO()
    with ProgressBar(total=2, desc="late", enabled=True, file=out) as bar:
        bar.ok()
    size = len(out.getvalue())
    bar.close()
    bar.ok()
    bar.error()
    assert len(out.getvalue()) == size  # nothing redrawn after close
    assert (bar.ok_count, bar.error_count) == (1, 0)


def test_progress_unknown_total_then_set_total():
    out = io.StringIO()
    bar = ProgressBar(total=None, desc="imap", enabled=True, file=out)
    bar.ok(3)
    bar.set_total(3)
    bar.close()
    assert "3/3" in out.getvalue()


def test_progress_is_thread_safe():
    out = io.StringIO()
    bar = ProgressBar(total=8 * 500, desc="threads", enabled=True, file=out, mininterval=0)
    start = threading.Barrier(8)

    def hammer(k):
        start.wait()
        for i in range(500):
            (bar.error if (i + k) % 10 == 0 else bar.ok)()

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    bar.close()
    assert bar.ok_count + bar.error_count == 4000
    assert bar.error_count == 400
    assert f"ok={bar.ok_count} err=400" in out.getvalue()
    assert "4000/4000" in out.getvalue()


# ---------------------------------------------------------------------------
# Stats


def _stats() -> PoolStats:
    return PoolStats(
        workers=[
            WorkerStats(0, 123456, 400, 12.5, 0.02, 1, 1, 350 * 2**20),
            WorkerStats(1, None, 0, 0.0, 0.0, 0, 0, None),
            WorkerStats(12, 99, 3, 0.004, 61.0, 0, 2, 2**31),
        ],
        tasks_submitted=500, tasks_done=403, tasks_failed=2, crashes=1, restarts=3,
        overhead_per_task_us=12.5, shm_bytes=5 * 2**30,
    )


def test_stats_table_has_aligned_columns_and_human_units():
    text = str(_stats())
    lines = text.splitlines()
    header, rows, summary = lines[0], lines[1:4], lines[4]
    # right-aligned numeric columns end at the same offset as their header
    for name, value in (("pid", "123456"), ("tasks", "400"), ("crashes", "1"), ("peak RSS", "350 MiB")):
        end = header.index(name) + len(name)
        assert rows[0][end - len(value):end] == value, (name, rows[0])
    assert "12.5 s" in rows[0] and "20 ms" in rows[0] and "350 MiB" in rows[0]
    assert "1 min" in rows[2] and "2 GiB" in rows[2]
    assert rows[1].split()[1] == "-"  # unknown pid shown as a dash, not "None"
    assert "500 submitted, 403 done, 2 failed, 95 pending" in summary
    assert "12.5 µs/task" in summary or "12.2 µs/task" in summary
    assert "shared memory: 5 GiB" in summary


def test_stats_to_dict_is_json_ready_and_complete():
    d = json.loads(json.dumps(_stats().to_dict()))
    assert d["tasks_submitted"] == 500 and d["shm_bytes"] == 5 * 2**30
    assert [w["worker_id"] for w in d["workers"]] == [0, 1, 12]
    assert set(d["workers"][0]) == {"worker_id", "pid", "tasks", "busy_s", "idle_s", "crashes", "restarts", "peak_rss"}


def test_stats_empty_pool_prints():
    text = str(PoolStats())
    assert "(no workers)" in text and "parent overhead: -" in text


@pytest.mark.parametrize("seconds, text", [
    (0, "0 s"), (2.5e-6, "2.5 µs"), (0.000999, "999 µs"), (0.0123, "12.3 ms"),
    (1.25, "1.25 s"), (59.9, "59.9 s"), (90, "1.5 min"), (7200, "2 h"), (-0.5, "-500 ms"),
])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (35 * 2**20, "35 MiB"), (int(1.2 * 2**30), "1.2 GiB"),
    (3 * 2**40, "3 TiB"), (None, "-"),
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


# ---------------------------------------------------------------------------
# Timeline


def demo_events() -> list[dict]:
    """A realistic run: map(square, range(40)) on 2 workers, one error, one crash, one timeout."""
    rng = random.Random(6)
    events: list[dict] = []
    clock = {0: 0.02, 1: 0.03}  # workers become ready a little after the pool starts
    pid = {0: 4242, 1: 4243}
    next_pid = 4244
    for i in range(40):
        w = min(clock, key=clock.get)
        duration = rng.uniform(0.04, 0.16)
        outcome, detail = "ok", ""
        if i == 8:
            outcome, detail = "error", "ValueError: square() got a negative number: -3"
        elif i == 17:
            outcome, duration = "crash", 0.07
            detail = f"WorkerCrashedError: worker {pid[w]} was killed by SIGSEGV (native code crashed)"
        elif i == 29:
            outcome, duration = "timeout", 0.5
            detail = "TaskTimeoutError: task 29 ran longer than task_timeout=0.5 s; its worker was killed"
        start = clock[w]
        events.append({"worker": w, "pid": pid[w], "label": f"task {i} of map(square)", "start": start,
                       "end": start + duration, "outcome": outcome, "detail": detail})
        clock[w] = start + duration + 0.002
        if outcome in ("crash", "timeout"):  # the slot gets a new process, which takes a moment to start
            pid[w], next_pid = next_pid, next_pid + 1
            clock[w] += 0.06
    return events


class _Tags(html.parser.HTMLParser):
    """Counts tags and collects attributes, to check the page's structure without a browser."""

    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.attrs: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.attrs.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def _parse(path: Path) -> _Tags:
    p = _Tags()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _bar_classes(p: _Tags) -> list[str]:
    return [a["class"] for tag, a in p.attrs if tag == "rect" and "x" in a and "class" in a and "lane" not in a["class"]]


def test_timeline_one_bar_per_event_coloured_by_outcome(tmp_path):
    events = demo_events()
    out = render_timeline(events, tmp_path / "t.html")
    assert out == tmp_path / "t.html" and out.exists()
    p = _parse(out)
    classes = _bar_classes(p)
    assert len(classes) == 40
    assert classes.count("ok") == 37
    assert {"error", "crash", "timeout"} <= set(classes)
    text = out.read_text(encoding="utf-8")
    assert "worker 0" in text and "worker 1" in text
    for name in ("ok", "raised an exception", "worker crashed", "timed out"):  # legend
        assert name in text
    assert "process replaced" in text  # the slots whose pid changed are marked
    assert re.search(r"[0-9.]+ s</text>", text)  # time axis labels


def test_timeline_is_self_contained(tmp_path):
    out = render_timeline(demo_events(), tmp_path / "t.html")
    p = _parse(out)
    text = out.read_text(encoding="utf-8")
    assert "link" not in p.tags and "img" not in p.tags and "iframe" not in p.tags
    assert all("src" not in a and "href" not in a for _, a in p.attrs)
    assert "@import" not in text and "url(" not in text
    # the only URL is the SVG namespace name, which browsers never fetch
    assert re.findall(r"https?://[^\s\"'<>]+", text) == ["http://www.w3.org/2000/svg"]


def test_timeline_escapes_every_text(tmp_path):
    evil = "</script><script>alert(1)</script><img src=x onerror=alert(2)>&amp;\u2028"
    events = [{"worker": 0, "pid": 1, "label": evil, "start": 0.0, "end": 1.0, "outcome": "error", "detail": evil},
              {"worker": 1, "pid": 2, "label": "ok", "start": 0.0, "end": 1.0, "outcome": evil, "detail": ""}]
    out = render_timeline(events, tmp_path / "t.html", title=evil)
    text = out.read_text(encoding="utf-8")
    p = _parse(out)
    assert p.tags.get("script") == 1 and "img" not in p.tags
    assert "alert(1)</script>" not in text and "<img" not in text
    assert "&lt;/script&gt;" in text  # the title, escaped but still readable
    script = text[text.index("const EV"):]
    assert "\u2028" not in script  # a raw line separator would end a JS string early in old engines
    assert json.loads(re.search(r"const EV = (\[.*?\]);\n", script, re.S).group(1))[0][0] == evil
    # the unknown outcome is drawn as "other", not injected as a class name
    assert "other" in _bar_classes(p)


def test_timeline_empty(tmp_path):
    out = render_timeline([], tmp_path / "empty.html")
    text = out.read_text(encoding="utf-8")
    assert "no tasks ran" in text
    assert _bar_classes(_parse(out)) == []


def test_timeline_running_tasks_and_defaults(tmp_path):
    events = [{"worker": 0, "start": 0.0, "end": 2.0, "outcome": "ok"},
              {"worker": 0, "pid": 7, "label": "task 1", "start": 2.0, "end": None, "outcome": "running"},
              {"worker": 3, "pid": 8, "label": "task 2", "start": 1.0, "end": 1.5, "outcome": "cancelled"}]
    out = render_timeline(events, str(tmp_path / "r.html"))
    classes = _bar_classes(_parse(out))
    assert sorted(classes) == ["cancelled", "ok", "running"]
    assert "worker 3" in out.read_text(encoding="utf-8")


def test_timeline_rejects_bad_events_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="event 1 has no 'worker'"):
        render_timeline([{"worker": 0, "start": 0, "end": 1}, {"start": 0}], tmp_path / "x.html")
    with pytest.raises(ValueError, match="non-finite"):
        render_timeline([{"worker": 0, "start": float("nan"), "end": 1}], tmp_path / "x.html")


def test_timeline_ten_thousand_events_stay_small(tmp_path):
    rng = random.Random(0)
    outcomes = ["ok"] * 97 + ["error", "crash", "timeout"]
    events = [{"worker": i % 16, "pid": 1000 + i % 16, "label": f"task {i} of map(square)",
               "start": i * 0.001, "end": i * 0.001 + rng.uniform(0.0001, 0.0009),
               "outcome": rng.choice(outcomes), "detail": ""} for i in range(10_000)]
    out = render_timeline(events, tmp_path / "big.html")
    size = out.stat().st_size
    assert size < 2_500_000, f"{size} bytes for 10k events"
    assert len(_bar_classes(_parse(out))) == 10_000
    # every bar is short markup: no per-bar text or tooltip element
    bar_lines = [line for line in out.read_text(encoding="utf-8").splitlines() if line.startswith("<rect x=")]
    assert max(map(len, bar_lines)) < 70


def test_timeline_lanes_in_slot_order_and_tooltip_data_matches_bars(tmp_path):
    events = demo_events()
    out = render_timeline(list(reversed(events)), tmp_path / "t.html")
    text = out.read_text(encoding="utf-8")
    data = json.loads(re.search(r"const EV = (\[.*?\]);\n", text, re.S).group(1))
    assert len(data) == 40
    # the script maps the n-th bar to data[n]: bars and data must be in the same order
    workers = [row[2] for row in data]
    assert workers == sorted(workers)
    assert text.index(">worker 0<") < text.index(">worker 1<")


# --- real browser -----------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run_chromium(binary: str, url: str, *extra: str, timeout: float = 45) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="sharkcage-chromium-")
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={profile}", *extra, url]
    # its own session: one killpg ends the zygote and renderer helpers too
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def screenshot(html_path: Path, png_path: Path, size: str = "1200,600") -> Path:
    """Render ``html_path`` with headless Chromium into ``png_path``."""
    binary = _chromium()
    if binary is None:
        raise RuntimeError("no chromium binary found")
    png_path = Path(png_path).resolve()
    _run_chromium(binary, html_path.resolve().as_uri(), f"--screenshot={png_path}", f"--window-size={size}")
    return png_path


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """A minimal PNG decoder (8-bit RGB/RGBA, not interlaced): (width, height, rows of RGB bytes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unsupported PNG {header}"
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        prev = line
        rows.append(bytes(line if bpp == 3 else b"".join(line[i:i + 3] for i in range(0, stride, 4))))
    return width, height, rows


def _hex(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


@pytest.mark.skipif(_chromium() is None, reason="LOUD SKIP: no chromium binary on PATH, the timeline was not "
                    "rendered by a real browser (apt-get install chromium)")
def test_timeline_renders_in_headless_chromium(tmp_path):
    page = render_timeline(demo_events(), tmp_path / "timeline.html")
    png = screenshot(page, tmp_path / "shot.png")
    assert png.exists() and png.stat().st_size > 2000
    width, height, rows = read_png(png)
    assert (width, height) == (1200, 600)
    counts: dict[tuple[int, int, int], int] = {}
    non_white = 0
    for row in rows[::2]:
        for i in range(0, len(row), 6):
            px = (row[i], row[i + 1], row[i + 2])
            if px != (255, 255, 255):
                non_white += 1
                counts[px] = counts.get(px, 0) + 1
    assert non_white > 2000, "the screenshot is blank"
    for outcome in ("ok", "error", "crash", "timeout"):  # every outcome's bars are on screen, in colour
        want = _hex(OUTCOMES[outcome][0])
        near = sum(n for px, n in counts.items() if all(abs(p - q) <= 6 for p, q in zip(px, want)))
        assert near > 5, f"no {outcome} bar pixels ({OUTCOMES[outcome][0]}) in the screenshot"
    # the script ran without error and saw every bar
    dom = _run_chromium(_chromium(), page.resolve().as_uri(), "--dump-dom").stdout.decode()
    assert 'data-bars="40"' in dom
    assert dom.count('<rect x="') >= 40


if __name__ == "__main__":  # python tests/test_observe.py docs/timeline.png
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/timeline.png")
    with tempfile.TemporaryDirectory() as tmp:
        page = render_timeline(demo_events(), Path(tmp) / "timeline.html",
                               title="sharkcage timeline: map(square, range(40)) on 2 workers")
        shot = screenshot(page, target, size="1200,215")
    print(f"wrote {shot}")
