"""Which task ran where, and how it ended: :func:`render_timeline`.

Writes one self-contained HTML file: an inline SVG with a lane per worker slot
and a bar per task (or chunk), coloured by outcome, a time axis, a legend with
counts, dashed markers where a slot's process was replaced, and a tooltip on
hover. No network, no external script, font or stylesheet: the file opens the
same way from a laptop, a CI artifact or an email attachment, and the bars are
plain SVG, so they show even with JavaScript off (only the tooltips need it).

Size stays reasonable for big runs because each bar is one short ``<rect>``
(position, width, class) and the hover details live once, in a JSON array the
script indexes by the bar's position: 10,000 tasks make a file of about 1 MB.

>>> import tempfile, pathlib
>>> events = [
...     {"worker": 0, "pid": 101, "label": "task 0 of map(square)", "start": 0.00, "end": 0.20,
...      "outcome": "ok", "detail": ""},
...     {"worker": 1, "pid": 102, "label": "task 1 of map(square)", "start": 0.01, "end": 0.15,
...      "outcome": "crash", "detail": "WorkerCrashedError: SIGSEGV"},
... ]
>>> out = render_timeline(events, pathlib.Path(tempfile.mkdtemp()) / "timeline.html")
>>> page = out.read_text(encoding="utf-8")
>>> page.count('<rect x="'), "worker 1" in page, "http://" in page.replace("http://www.w3.org/2000/svg", "")
(2, True, False)
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from sharkcage.observe.stats import format_seconds

__all__ = ["render_timeline", "OUTCOMES"]

#: Outcome name -> (bar colour, legend text). Hues chosen to stay apart for
#: the common colour-vision deficiencies (green/amber/red differ in lightness too).
OUTCOMES: dict[str, tuple[str, str]] = {
    "ok": ("#2f9e5b", "ok"),
    "error": ("#f0a030", "raised an exception"),
    "crash": ("#d7263d", "worker crashed"),
    "timeout": ("#7b4fc9", "timed out"),
    "cancelled": ("#9aa0a6", "cancelled"),
    "running": ("#3b82f6", "still running"),
}
_OTHER = ("#555555", "other")

# Layout, in SVG user units (= CSS px at natural size).
_WIDTH = 1200
_LEFT = 96  # lane labels
_RIGHT = 24
_AXIS = 34  # room for tick labels above the first lane
_LANE = 24
_BAR = 16
_MIN_BAR = 1.5  # a 2 µs task must still be a visible sliver
_GAP = 0.6  # between back-to-back bars, cut from the bar itself: a stroke would hide thin bars


def render_timeline(events: list[dict[str, Any]], path: str | os.PathLike[str],
                    title: str = "sharkcage timeline") -> Path:
    """Write ``events`` as a self-contained HTML timeline to ``path`` and return it as a Path.

    Each event is a dict with ``worker`` (int slot), ``pid`` (int or None),
    ``label`` (str), ``start`` and ``end`` (seconds since the pool started;
    ``end=None`` means still running), ``outcome`` (``"ok"``, ``"error"``,
    ``"crash"``, ``"timeout"``, ``"cancelled"`` or ``"running"``; anything
    else is drawn grey as "other") and ``detail`` (str, may be empty). All
    text is escaped; nothing in an event can inject markup or script.
    An empty list writes a valid page that says no task ran.

    >>> import tempfile, os
    >>> p = render_timeline([], os.path.join(tempfile.mkdtemp(), "empty.html"))
    >>> "no tasks ran" in p.read_text(encoding="utf-8")
    True
    """
    rows = [_normalise(i, e) for i, e in enumerate(events)]
    out = Path(path)
    out.write_text(_render(rows, title), encoding="utf-8")
    return out


def _normalise(i: int, e: dict[str, Any]) -> dict[str, Any]:
    """Check one event and fill the optional keys; errors name the event so bad data is easy to find."""
    for key in ("worker", "start"):
        if key not in e:
            raise ValueError(f"timeline event {i} has no {key!r}: {e!r}")
    start = float(e["start"])
    end = e.get("end")
    end = None if end is None else float(end)
    if not math.isfinite(start) or (end is not None and not math.isfinite(end)):
        raise ValueError(f"timeline event {i} has a non-finite time: start={e['start']!r} end={e.get('end')!r}")
    outcome = str(e.get("outcome") or ("running" if end is None else "ok"))
    pid = e.get("pid")
    return {
        "worker": int(e["worker"]),
        "pid": None if pid is None else int(pid),
        "label": str(e.get("label") or f"event {i}"),
        "start": start,
        "end": end,
        "outcome": outcome,
        "detail": str(e.get("detail") or ""),
    }


def _nice_step(span: float, target: int = 8) -> float:
    """A tick step of 1, 2 or 5 times a power of ten giving about ``target`` ticks."""
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag  # pragma: no cover - the loop always returns


def _axis_unit(largest: float) -> tuple[float, str]:
    """One unit for every tick label, so the axis never mixes "500 ms" and "1 s".

    Chosen from the largest time shown: an axis from 2.04 s to 2.2 s reads
    better in seconds than as "2040 ms".
    """
    if largest < 1e-3:
        return 1e-6, "µs"
    if largest < 1:
        return 1e-3, "ms"
    if largest < 600:
        return 1.0, "s"
    if largest < 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _tick_label(t: float, step: float, largest: float | None = None) -> str:
    scale, unit = _axis_unit(max(step, largest or 0.0))
    decimals = max(0, -math.floor(math.log10(step / scale) + 1e-9))
    text = f"{t / scale:.{decimals}f}"
    if "." in text:  # "0.5 s", "1 s", not "1.0 s"
        text = text.rstrip("0").rstrip(".")
    return f"{text} {unit}"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _script_json(value: Any) -> str:
    """JSON safe inside <script>: no "</script>", "<!--" or line separators can end it early."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for ch, rep in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, rep)
    return text


def _num(x: float) -> str:
    """Coordinates with one decimal and no trailing ".0": each byte counts times 10,000 bars."""
    text = f"{x:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _render(rows: list[dict[str, Any]], title: str) -> str:
    lanes = sorted({r["worker"] for r in rows})
    ends = [r["end"] for r in rows if r["end"] is not None]
    t_last = max(ends + [r["start"] for r in rows], default=0.0)
    for r in rows:
        if r["end"] is None:  # still running: draw it up to the latest known time
            r["end"] = t_last
        r["end"] = max(r["end"], r["start"])
    t_first = min((r["start"] for r in rows), default=0.0)
    # Times count from the pool's start; keep 0 on the axis unless the tasks
    # ran only late in a long-lived pool, where a 0-based axis would squash them.
    t0 = 0.0 if t_first <= 0.2 * t_last else t_first
    span = max(t_last - t0, 1e-6)
    step = _nice_step(span)
    t0 = math.floor(t0 / step) * step
    span = max(t_last - t0, 1e-6)
    plot_w = _WIDTH - _LEFT - _RIGHT
    height = _AXIS + max(len(lanes), 1) * _LANE + 12

    def x_of(t: float) -> float:
        return (t - t0) / span * plot_w

    lane_y = {w: _AXIS + k * _LANE for k, w in enumerate(lanes)}
    rows.sort(key=lambda r: (lane_y[r["worker"]], r["start"], r["end"]))
    counts = Counter(r["outcome"] for r in rows)

    svg: list[str] = [
        f'<svg id="tl" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {height}" '
        f'width="{_WIDTH}" height="{height}" role="img" aria-label="{_esc(title)}">'
    ]
    # lanes: zebra background and label
    svg.append('<g class="lanes">')
    for k, w in enumerate(lanes):
        y = lane_y[w]
        pids = sorted({r["pid"] for r in rows if r["worker"] == w and r["pid"] is not None})
        pid_text = ", ".join(map(str, pids)) or "unknown"
        svg.append(f'<rect class="lane{k % 2}" x="0" y="{y}" width="{_WIDTH}" height="{_LANE}"/>'
                   f'<text x="{_LEFT - 8}" y="{y + _LANE / 2 + 4}" text-anchor="end">worker {w}'
                   f'<title>worker slot {w}; pid(s): {_esc(pid_text)}</title></text>')
    svg.append("</g>")
    # time axis with grid lines through every lane
    svg.append('<g class="axis">')
    n_ticks = int(math.floor(span / step + 1e-9)) + 1
    for j in range(n_ticks):
        t = t0 + j * step
        x = _LEFT + x_of(t)
        svg.append(f'<line x1="{_num(x)}" y1="{_AXIS - 6}" x2="{_num(x)}" y2="{height - 12}"/>'
                   f'<text x="{_num(x)}" y="{_AXIS - 12}" text-anchor="middle">{_esc(_tick_label(t, step, t_last))}</text>')
    svg.append("</g>")
    # bars: one short <rect> each, in the same order as the EV array the script indexes
    svg.append('<g class="bars">')
    data = []
    restarts: list[tuple[float, int, int | None]] = []
    current = None
    last_pid: int | None = None
    for r in rows:
        w = r["worker"]
        if w != current:
            if current is not None:
                svg.append("</g>")
            svg.append(f'<g transform="translate({_LEFT},{lane_y[w] + (_LANE - _BAR) // 2})">')
            current, last_pid = w, r["pid"]
        elif r["pid"] is not None and last_pid is not None and r["pid"] != last_pid:
            restarts.append((r["start"], w, r["pid"]))
        if r["pid"] is not None:
            last_pid = r["pid"]
        x = x_of(r["start"])
        width = x_of(r["end"]) - x
        width = max(width - _GAP if width > 3 * _GAP else width, _MIN_BAR)
        cls = r["outcome"] if r["outcome"] in OUTCOMES else "other"
        svg.append(f'<rect x="{_num(x)}" width="{_num(width)}" height="{_BAR}" class="{cls}"/>')
        data.append([r["label"], r["outcome"], w, r["pid"], round(r["start"], 6), round(r["end"], 6), r["detail"]])
    if current is not None:
        svg.append("</g>")
    svg.append("</g>")
    # a slot whose pid changed had its process replaced (crash, timeout, recycle)
    if restarts:
        svg.append('<g class="restarts">')
        for t, w, pid in restarts:
            x = _LEFT + x_of(t)
            y = lane_y[w]
            svg.append(f'<line x1="{_num(x)}" y1="{y}" x2="{_num(x)}" y2="{y + _LANE}">'
                       f'<title>worker {w}: new process, pid {_esc(pid)}, from {_esc(format_seconds(t))}</title></line>')
        svg.append("</g>")
    if not rows:
        svg.append(f'<text class="empty" x="{_WIDTH / 2}" y="{_AXIS + _LANE / 2 + 4}" '
                   f'text-anchor="middle">no tasks ran</text>')
    svg.append("</svg>")

    legend = []
    for name, (_, text) in list(OUTCOMES.items()) + [("other", _OTHER)]:
        n = sum(c for o, c in counts.items() if (o if o in OUTCOMES else "other") == name)
        if n or name in ("ok", "error", "crash", "timeout"):
            legend.append(f'<span><i class="{name}"></i>{_esc(text)} <b>{n}</b></span>')
    if restarts:
        legend.append('<span><i class="restart"></i>process replaced</span>')
    summary = (f"{len(rows)} task{'s' if len(rows) != 1 else ''} on {len(lanes)} worker "
               f"slot{'s' if len(lanes) != 1 else ''}, over {format_seconds(t_last)} since the pool started")
    if not rows:
        summary = "no tasks ran"

    colours = "".join(f".{n}{{fill:{c}}}i.{n}{{background:{c}}}" for n, (c, _) in OUTCOMES.items())
    colours += f".other{{fill:{_OTHER[0]}}}i.other{{background:{_OTHER[0]}}}"
    return _PAGE.format(
        title=_esc(title),
        summary=_esc(summary),
        legend="".join(legend),
        svg="\n".join(svg),
        colours=colours,
        data=_script_json(data),
        width=_WIDTH,
    )


# The page. Doubled braces are literal CSS/JS braces (str.format).
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body{{font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px;color:#222;background:#fff}}
h1{{font-size:18px;margin:0 0 4px}}
.summary{{margin:0 0 8px;color:#555}}
.legend span{{margin-right:16px;white-space:nowrap}}
.legend i{{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-1px;border-radius:2px}}
.legend i.restart{{background:none;border-left:2px dashed #222;border-radius:0;width:0}}
.chart{{overflow-x:auto;margin-top:8px}}
svg{{width:100%;max-width:{width}px;height:auto;font:12px system-ui,sans-serif}}
.lane0{{fill:#f7f7f9}}.lane1{{fill:#eef0f4}}
.lanes text,.axis text{{fill:#444}}
.axis line{{stroke:#d0d4dc;stroke-width:1}}
.restarts line{{stroke:#222;stroke-width:1.5;stroke-dasharray:3 2}}
.bars rect.hover{{stroke:#000;stroke-width:1.5}}
.empty{{fill:#888;font-size:14px}}
{colours}
#tip{{position:fixed;pointer-events:none;background:#222;color:#fff;padding:6px 8px;border-radius:4px;
max-width:420px;white-space:pre-wrap;word-break:break-word;font-size:12px;box-shadow:0 2px 6px #0004}}
#tip b{{display:block}}
</style></head>
<body>
<h1>{title}</h1>
<p class="summary">{summary}</p>
<div class="legend">{legend}</div>
<div class="chart">
{svg}
</div>
<div id="tip" hidden></div>
<script>
"use strict";
// [label, outcome, worker, pid, start, end, detail], in the order of the bars
const EV = {data};
(function () {{
  const svg = document.getElementById("tl"), tip = document.getElementById("tip");
  const bars = svg.querySelectorAll("g.bars rect"), index = new Map();
  bars.forEach((r, i) => index.set(r, i));
  document.body.dataset.bars = String(bars.length);
  function fmt(s) {{
    const a = Math.abs(s);
    if (a === 0) return "0 s";
    if (a < 1e-3) return (s * 1e6).toPrecision(3) * 1 + " \\u00b5s";
    if (a < 1) return (s * 1e3).toPrecision(3) * 1 + " ms";
    if (a < 60) return s.toPrecision(3) * 1 + " s";
    return (s / 60).toPrecision(3) * 1 + " min";
  }}
  let shown = null;
  function hide() {{ tip.hidden = true; if (shown) shown.classList.remove("hover"); shown = null; }}
  svg.addEventListener("mousemove", (e) => {{
    const i = index.get(e.target);
    if (i === undefined) return hide();
    const [label, outcome, worker, pid, start, end, detail] = EV[i];
    if (shown !== e.target) {{
      if (shown) shown.classList.remove("hover");
      shown = e.target; shown.classList.add("hover");
      tip.replaceChildren();  // textContent only below: event text is never parsed as HTML
      const head = document.createElement("b"); head.textContent = label; tip.append(head);
      tip.append(outcome + " \\u00b7 worker " + worker + " \\u00b7 pid " + (pid === null ? "?" : pid) + "\\n" +
        fmt(start) + " \\u2192 " + fmt(end) + " (" + fmt(end - start) + ")" + (detail ? "\\n" + detail : ""));
      tip.hidden = false;
    }}
    const pad = 14, w = tip.offsetWidth, h = tip.offsetHeight;
    tip.style.left = Math.min(e.clientX + pad, innerWidth - w - 4) + "px";
    tip.style.top = (e.clientY + pad + h > innerHeight ? e.clientY - h - pad : e.clientY + pad) + "px";
  }});
  svg.addEventListener("mouseleave", hide);
}})();
</script>
</body></html>
"""
