"""Summaries of the samples, and the three outputs: JSON, markdown, PNG.

For each metric and peer: the median of the samples that produced a
number, their min and max, and the ratio ``peer median / sharkcage median``
on the metric's own scale (so for a "lower is better" metric a ratio above
1 means sharkcage did better). Where no sample produced a number the row
carries the samples' status instead: ``hung``, ``broken``, ``error``,
``n/a`` (the peer has no way to run it) or ``skipped``.

>>> fmt(1234.5), fmt(12.345), fmt(0.0012345)
('1,234', '12.3', '0.00123')
"""

from __future__ import annotations

import collections
import json
import os
import platform
import statistics
from pathlib import Path

from sharkcage.benchmarking import peers as peers_mod
from sharkcage.benchmarking import workloads as wl

JSON_NAME, MD_NAME, PNG_NAME = "bench.json", "bench.md", "bench.png"
SCHEMA = 1


def fmt(value: float | None) -> str:
    """A number with about three significant digits, never in e-notation."""
    if value is None:
        return ""
    a = abs(value)
    if a >= 100:
        return f"{value:,.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    if a == 0:
        return "0"
    return f"{value:.3g}" if a >= 1e-4 else f"{value:.2e}"


def label_of(peer: str, backend=None, address=None) -> str:
    """A peer's human name (a workload's reference row is named separately)."""
    return peers_mod.create(peer, backend, address).label


def summarize(samples: list[dict], peers: list[str], workloads: list[str],
              backend=None, address=None) -> list[dict]:
    """One row per (metric, peer) in table order, sharkcage first."""
    by_pair: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
    for s in samples:
        by_pair[(s["workload"], s["peer"])].append(s)
    # Tables list the peers in the bench's order with the reference rows last.
    peers = [p for p in peers if p != "baseline"] + [p for p in peers if p == "baseline"]
    rows = []
    for workload in workloads:
        spec = wl.WORKLOADS[workload]
        for metric in spec.metrics:
            metric_rows = []
            for peer in peers:
                if peer == "baseline" and not spec.baseline:
                    continue
                adapter = peers_mod.create(peer, backend, address)
                row = {"workload": workload, "metric": metric.key, "unit": metric.unit, "better": metric.better,
                       "peer": peer, "label": spec.baseline if peer == "baseline" else adapter.label}
                if not adapter.supports(workload):
                    row.update(status="n/a", detail=f"{peer} has no way to run {workload}", n=0, n_ok=0)
                else:
                    row.update(_stats(by_pair.get((workload, peer), []), metric.key))
                metric_rows.append(row)
            ref = next((r for r in metric_rows if r["peer"] == "sharkcage" and r.get("median") is not None), None)
            for row in metric_rows:
                if ref and row.get("median") is not None and ref["median"]:
                    row["ratio"] = row["median"] / ref["median"]
                else:
                    row["ratio"] = None
            rows.extend(metric_rows)
    return rows


def _stats(samples: list[dict], key: str) -> dict:
    values, statuses, details = [], collections.Counter(), {}
    for s in samples:
        if s["status"] == "ok":
            v = s.get("metrics", {}).get(key)
            if isinstance(v, (int, float)):
                values.append(float(v))
                continue
            if isinstance(v, dict):
                status, detail = v.get("status", "error"), v.get("detail", "")
            else:
                status, detail = "n/a", f"no {key} in the result"
        else:
            status, detail = s["status"], s.get("detail", "")
        statuses[status] += 1
        details.setdefault(status, detail)
    out = {"n": len(samples), "n_ok": len(values)}
    if values:
        out.update(status="ok", median=statistics.median(values), min=min(values), max=max(values),
                   values=values)
        if statuses:
            out["detail"] = ", ".join(f"{n} {st}" for st, n in statuses.most_common())
    elif statuses:
        status = statuses.most_common(1)[0][0]
        out.update(status=status, detail=details[status])
    else:
        out.update(status="skipped", detail="no sample ran")
    return out


def environment() -> dict:
    """Where the numbers come from."""
    import sharkcage

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"sharkcage": sharkcage.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": load}


def build(plan, samples: list[dict], started: str, finished: str, env_before: dict, quick: bool) -> dict:
    """The JSON document of a run."""
    peer_info = []
    for name in peers_mod.SELECTABLE + ["baseline"]:
        if name in plan.peers or name in plan.skipped:
            cls = peers_mod.PEERS[name]
            peer_info.append({"name": name, "label": label_of(name, plan.backend, plan.address),
                              "version": cls.version() if name not in plan.skipped else None,
                              "ran": name in plan.peers, "skipped": plan.skipped.get(name),
                              "notes": cls.notes})
    return {
        "schema": SCHEMA, "started": started, "finished": finished, "quick": quick,
        "repeats": plan.repeats, "timeout": plan.timeout, "budget": plan.budget,
        "backend": plan.backend, "address": plan.address, "params": plan.params,
        "environment": env_before, "loadavg_after": environment()["loadavg"],
        "peers": peer_info,
        "workloads": [{"name": w, "description": wl.describe(w, plan.params),
                       "metrics": [m.key for m in wl.WORKLOADS[w].metrics],
                       "baseline": wl.WORKLOADS[w].baseline} for w in plan.workloads],
        "samples": samples,
        "summary": summarize(samples, plan.peers, plan.workloads, plan.backend, plan.address),
    }


def _cell(row: dict) -> str:
    if row.get("median") is None:
        return row["status"]
    text = fmt(row["median"])
    if row["peer"] != "sharkcage" and row.get("ratio") is not None:
        text += f" ({row['ratio']:.2f}×)"
    return text


def markdown(doc: dict) -> str:
    """The markdown report: the run, an overview, then one table per metric."""
    env = doc["environment"]
    rows = doc["summary"]
    peers = [p["name"] for p in doc["peers"] if p["ran"]]
    mode = "quick" if doc["quick"] else "full"
    lines = ["# sharkcage bench", ""]
    lines.append(f"{mode} run, {doc['repeats']} repeat(s), sample timeout {doc['timeout']:g} s, "
                 f"{doc['started']} – {doc['finished']}; sharkcage {env['sharkcage']}, Python {env['python']}, "
                 f"{env['platform']}, {env['cpus']} CPUs.")
    load = env.get("loadavg")
    if load:
        busy = load[0] > 0.5 * (env.get("cpus") or 1)
        lines.append(f"Load average at start {load[0]:g}, at end {(doc.get('loadavg_after') or [0])[0]:g}"
                     + (" — **the machine was busy: these numbers are noisy.**" if busy else "."))
    if doc.get("backend"):
        lines.append(f"sharkcage ran on backend `{doc['backend']}` at `{doc.get('address')}`.")
    lines += ["", "Each sample is a fresh interpreter running one peer on one workload with 2 workers. "
              "Medians over the repeats, min–max beside them; `N×` is the peer's median divided by "
              "sharkcage's on the metric's own scale (for *lower is better* metrics above 1 means "
              "sharkcage did better; for *higher is better* below 1 does).", ""]
    ran = [p for p in doc["peers"] if p["ran"] and p["name"] != "baseline"]
    lines.append("Peers: " + ", ".join(f"{p['name']} ({p['version']})" if p["version"] else p["name"] for p in ran) + ".")
    skipped = [p for p in doc["peers"] if not p["ran"]]
    if skipped:
        lines.append("Skipped: " + "; ".join(f"{p['name']} ({p['skipped']})" for p in skipped) + ".")
    lines.append("")

    # Overview: metrics down, peers across.
    cols = [p for p in peers if p != "baseline"]
    lines += ["## Overview", "",
              "| metric | unit | better | " + " | ".join(cols) + " | reference |",
              "|---|---|---|" + "---:|" * len(cols) + "---:|"]
    by_metric: dict[str, dict[str, dict]] = collections.defaultdict(dict)
    for row in rows:
        by_metric[row["metric"]][row["peer"]] = row
    for key, cells in by_metric.items():
        metric = wl.METRICS[key]
        ref = cells.get("baseline")
        ref_text = f"{fmt(ref['median'])} ({ref['label'].split(':')[0]})" if ref and ref.get("median") is not None else ""
        lines.append(f"| {key} | {metric.unit} | {metric.better} | "
                     + " | ".join(_cell(cells[p]) if p in cells else "" for p in cols) + f" | {ref_text} |")
    lines.append("")

    lines += ["## Details", ""]
    descriptions = {w["name"]: w["description"] for w in doc["workloads"]}
    for key, cells in by_metric.items():
        metric = wl.METRICS[key]
        workload = next(iter(cells.values()))["workload"]
        lines += [f"### {metric.title}", "",
                  f"{_sentence(descriptions[workload])} Unit: {metric.unit}, {metric.better} is better.", "",
                  "| peer | median | min–max | × sharkcage | samples | note |",
                  "|---|---:|---:|---:|---:|---|"]
        for peer, row in cells.items():
            name = f"**{row['label']}**" if peer == "sharkcage" else row["label"]
            if row.get("median") is not None:
                span = f"{fmt(row['min'])}–{fmt(row['max'])}"
                ratio = "" if row.get("ratio") is None else f"{row['ratio']:.2f}"
                lines.append(f"| {name} | {fmt(row['median'])} | {span} | {ratio} | "
                             f"{row['n_ok']}/{row['n']} | {_md(row.get('detail', ''))} |")
            else:
                lines.append(f"| {name} | {row['status']} | | | {row['n_ok']}/{row['n']} | {_md(row.get('detail', ''))} |")
        lines.append("")
    notes = [p for p in doc["peers"] if p["ran"] and p.get("notes")]
    if notes:
        lines += ["## Notes on the peers", ""]
        lines += [f"- **{p['name']}**: {p['notes']}" for p in notes]
        lines.append("")
    return "\n".join(lines)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")[:160]


def chart(doc: dict, path: Path) -> str | None:
    """Write the PNG chart: one panel per metric, a bar per peer (median,
    min–max whisker), sharkcage highlighted. None on success, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display here, ever
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'sharkcage[dev]')"
    by_metric: dict[str, list[dict]] = collections.defaultdict(list)
    for row in doc["summary"]:
        by_metric[row["metric"]].append(row)
    keys = list(by_metric)
    ncols = 2 if len(keys) > 1 else 1
    nrows = (len(keys) + ncols - 1) // ncols
    npeers = max(len(v) for v in by_metric.values()) if keys else 1
    # constrained layout keeps the suptitle clear of the panels' titles
    fig, axes = plt.subplots(nrows, ncols, figsize=(7 * ncols, 0.35 * npeers * nrows + 1.3 * nrows + 0.8),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        metric = wl.METRICS[key]
        rows = by_metric[key]
        labels = [r["peer"] if r["peer"] != "baseline" else r["label"].split(":")[0] for r in rows]
        ys = range(len(rows))
        numeric = [r for r in rows if r.get("median") is not None]
        for y, r in zip(ys, rows):
            if r.get("median") is None:
                ax.text(0.01, y, r["status"], va="center", ha="left", transform=ax.get_yaxis_transform(),
                        color="#a33", fontsize=8)
                continue
            color = "#1f6f8b" if r["peer"] == "sharkcage" else ("#999999" if r["peer"] == "baseline" else "#e39b3b")
            lo, hi = r["median"] - r["min"], r["max"] - r["median"]
            ax.barh(y, r["median"], color=color, xerr=[[lo], [hi]], capsize=2, error_kw={"elinewidth": 0.8})
            ax.text(r["median"], y, " " + fmt(r["median"]), va="center", fontsize=7)
        if numeric:
            vals = [r["median"] for r in numeric if r["median"] > 0]
            if vals and max(vals) / min(vals) > 50:
                ax.set_xscale("log")  # overhead metrics span orders of magnitude
        ax.set_yticks(list(ys), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{metric.title}\n({metric.unit}, {metric.better} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    mode = "quick" if doc["quick"] else "full"
    load = (doc["environment"].get("loadavg") or [None])[0]
    fig.suptitle(f"sharkcage bench ({mode}, {doc['repeats']} repeat(s), load {load})", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write(doc: dict, out_dir: Path) -> dict[str, Path | str]:
    """Write bench.json, bench.md and bench.png into ``out_dir``; returns
    their paths (the PNG's entry is the reason when it could not be made)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path | str] = {}
    md_path = out_dir / MD_NAME
    png_path = out_dir / PNG_NAME
    why_not = chart(doc, png_path)
    doc["chart"] = PNG_NAME if why_not is None else None
    if why_not:
        doc["chart_skipped"] = why_not
    md = markdown(doc)
    if why_not is None:
        md += f"\n![chart]({PNG_NAME})\n"
    else:
        md += f"\n(no chart: {why_not})\n"
    md_path.write_text(md, encoding="utf-8")
    json_path = out_dir / JSON_NAME
    json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    paths.update(json=json_path, markdown=md_path, png=png_path if why_not is None else why_not)
    return paths
