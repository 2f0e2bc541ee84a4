"""A run's report: one self-contained HTML page (plotly.js inline, so it opens
with no network) that every Spark job and every mrjob twin (run through
jobs/mapreduce/launch.py) writes beside its first output as `_report.html`,
and that the service serves at /runs/{id} (live while the run goes on).
Plain Python over the report's data, a JSON-able dict (report_data builds
it); no pyspark, so the service renders the same page from the same data:

    {"job", "run_id", "state", "started_at" (epoch s), "seconds", "inputs", "outputs",
     "summary" (what the job printed, or None), "error", "settings" (--set),
     "timeline": the job's `running` events (elapsed_s, stages: id, name, tasks, tasks_done),
     "spark": {"app_id", "stages": [{"id", "name", "tasks", "start", "seconds", "records"}],
               "slowest_tasks": [{"stage", "index", "seconds", "executor", "records", "status"}], "note"},
     "mrjob" (a twin's run only): {"runner", "steps": [{"step", "seconds"}],
                                   "counters": {group: {name: n}} (summed over the steps)}}

What the page shows: rows in = out + rejects by reason, the label
distribution, tasks done over time per stage and each finished stage's span
and rows/s, enrich's latency and token histograms and cost, the slowest
tasks and the lineage. Charts are Plotly figures: built here, drawn by
plotly.js in the page (Plotly.react redraws them as live events arrive)."""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

REPORT_FILE = "_report.html"  # `_` first: Spark and Hadoop skip it when they read the dir, like _SUCCESS
MAX_TIMELINE = 2000  # progress points kept; a longer run keeps every other one (thinned evenly)
TEMPLATE = "plotly_white"


def report_data(
    *,
    job: str,
    run_id: str,
    started_at: float,
    seconds: float,
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    settings: Iterable[str],
    summary: Any,
    spark: Mapping[str, Any],
    timeline: list[dict[str, Any]] | None = None,
    mrjob: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The data of a run that succeeded (the module docstring has the keys),
    as both engines' runners assemble it."""
    data = {
        "job": job,
        "run_id": run_id,
        "state": "succeeded",
        "started_at": started_at,
        "seconds": round(seconds, 3),
        "inputs": dict(inputs),
        "outputs": dict(outputs),
        "settings": list(settings),
        "summary": summary,
        "error": None,
        "timeline": timeline or [],
        "spark": dict(spark),
    }
    if mrjob is not None:
        data["mrjob"] = dict(mrjob)
    return data


def write_report(data: Mapping[str, Any], outputs: Mapping[str, str]) -> str | None:
    """The page, as REPORT_FILE in the run's first output dir (local or
    hdfs://, through jobs.commit.put_file: a hidden file, then one rename);
    its path, or None where the run has no output or the write failed."""
    if not outputs:
        return None
    from jobs import commit

    target = next(iter(outputs.values())).rstrip("/") + "/" + REPORT_FILE
    try:
        commit.put_file(target, render(data).encode())
    except Exception as exc:  # the outputs are committed: a report that cannot be written fails nothing
        log.warning("run report: could not write %s (%s)", target, exc)
        return None
    return target


def counts_of(summary: Any, prefix: str = "") -> dict[str, int]:
    """The integer counts of a job's summary, nested keys joined by dots
    (ingest: input, good, rejected; stats: rows.term_freq, ...)."""
    found: dict[str, int] = {}
    if isinstance(summary, dict):
        for key, value in summary.items():
            name = f"{prefix}{key}"
            if isinstance(value, bool):
                continue
            if isinstance(value, int):
                found[name] = value
            elif isinstance(value, dict):
                found.update(counts_of(value, f"{name}."))
    return found


def thin(points: list[Any], most: int = MAX_TIMELINE) -> list[Any]:
    """At most `most` points, every other one dropped while there are more (the last one kept)."""
    while len(points) > most:
        points = points[-1::-2][::-1]
    return points


def progress_points(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The report's timeline from a run's events: each `running` event's time
    and its stages' tasks (what the status tracker said)."""
    points = []
    for event in events:
        if event.get("state") == "running":
            stages = [
                {k: s.get(k) for k in ("id", "name", "tasks", "tasks_done")}
                for s in event.get("stages") or []
                if isinstance(s, dict)
            ]
            points.append({"elapsed_s": event.get("elapsed_s"), "stages": stages})
    return thin(points)


# ----- what the summary says ------------------------------------------------


def flow(summary: Any) -> tuple[str, int, list[tuple[str, int]]] | None:
    """(what came in, how many, [(where it went, how many)]) for the jobs
    whose summary accounts for every row: ingest (input = good + rejected by
    reason), enrich (rows in = enriched + dead letters + not selected),
    pipeline (its ingest); score (rows scored) has no rejects."""
    if not isinstance(summary, dict):
        return None
    if isinstance(summary.get("ingest"), dict):
        return flow(summary["ingest"])
    if {"input", "good", "reasons"} <= summary.keys():
        parts = [("good", int(summary["good"]))]
        parts += [(f"rejected: {r}", int(n)) for r, n in sorted(summary["reasons"].items())]
        return "input", int(summary["input"]), parts
    if {"rows_in", "enriched", "dead_letter", "not_selected"} <= summary.keys():
        parts = [(k.replace("_", " "), int(summary[k])) for k in ("enriched", "dead_letter", "not_selected")]
        return "rows in", int(summary["rows_in"]), parts
    if {"rows_in", "rows", "skipped_rejects"} <= summary.keys():  # the score twin: ingest's rejects come in too
        parts = [("scored", int(summary["rows"])), ("skipped: ingest rejects", int(summary["skipped_rejects"]))]
        return "rows in", int(summary["rows_in"]), parts
    if "rows" in summary and isinstance(summary["rows"], int) and "by_label" in summary:
        return "rows", summary["rows"], [("scored", summary["rows"])]
    return None


def labels(summary: Any) -> tuple[str, dict[str, int]] | None:
    """(what was counted, {label: rows}): score's predicted labels (also
    the pipeline's), stats' rows per predicted label."""
    if not isinstance(summary, dict):
        return None
    if isinstance(summary.get("score"), dict):
        return labels(summary["score"])
    if isinstance(summary.get("by_label"), dict) and summary["by_label"]:
        return "predicted label", {str(k): int(v) for k, v in summary["by_label"].items()}
    if isinstance(summary.get("counts"), list) and summary["counts"]:
        found: dict[str, int] = {}
        for line in summary["counts"]:
            row = json.loads(line) if isinstance(line, str) else line
            if isinstance(row, dict) and "count" in row:
                key = str(row.get("label", row.get("predicted")))
                found[key] = found.get(key, 0) + int(row["count"])
        return ("predicted label", found) if found else None
    return None


def lineage(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Where the outputs came from: inputs, outputs, the model and its
    versions (score), the settings changed, the job's and Spark's run ids."""
    rows: list[tuple[str, str]] = []
    rows += [(f"input {k}", str(v)) for k, v in (data.get("inputs") or {}).items()]
    rows += [(f"output {k}", str(v)) for k, v in (data.get("outputs") or {}).items()]
    summary: dict[str, Any] = data["summary"] if isinstance(data.get("summary"), dict) else {}
    scored: dict[str, Any] = summary["score"] if isinstance(summary.get("score"), dict) else summary
    for key in ("model", "kind", "precision", "encoder", "encoder_version", "head", "head_version", "run_id"):
        if scored.get(key) not in (None, ""):
            rows.append((f"model {key}" if key != "model" else "model", str(scored[key])))
    if summary.get("provider") or (summary.get("calls") is not None and "rows_in" in summary):
        rows.append(("LLM calls in this run", str(summary.get("calls"))))
    for item in data.get("settings") or []:
        rows.append(("--set", str(item)))
    rows.append(("job run id", str(data.get("run_id"))))
    if (data.get("mrjob") or {}).get("runner"):
        rows.append(("mrjob runner", str(data["mrjob"]["runner"])))
    spark = data.get("spark") or {}
    if spark.get("app_id"):
        rows.append(("Spark application", str(spark["app_id"])))
    return rows


# ----- figures --------------------------------------------------------------


def stage_label(stage_id: Any, name: Any) -> str:
    """`stage 3: collect at ingest.py:238`: Spark's call site without its
    directories, cut at 40 characters (the live page's script names its lines
    the same way, so its new points continue them)."""
    return f"stage {stage_id}: {re.sub(r'[^ ]*/', '', str(name or ''))[:40]}"


def _figure(traces: list[Any], title: str, **layout: Any) -> dict[str, Any]:
    import plotly.graph_objects as go

    fig = go.Figure(traces)
    fig.update_layout(
        title=title, template=TEMPLATE, height=layout.pop("height", 340), margin={"l": 60, "r": 20, "t": 50, "b": 50}
    )
    fig.update_layout(**layout)
    return json.loads(fig.to_json())


def _bins(hist: Mapping[str, Any]) -> tuple[list[float], list[float], list[int]]:
    edges, counts = [float(e) for e in hist["edges"]], [int(c) for c in hist["counts"]]
    centers = [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
    widths = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    return centers, widths, counts


def progress_figure(timeline: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Tasks done over time, one line per Spark stage (from the `running` events)."""
    import plotly.graph_objects as go

    series: dict[str, tuple[list[float], list[int]]] = {}
    for point in timeline:
        for stage in point.get("stages") or []:
            key = stage_label(stage.get("id"), stage.get("name"))
            xs, ys = series.setdefault(key, ([], []))
            xs.append(float(point.get("elapsed_s") or 0))
            ys.append(int(stage.get("tasks_done") or 0))
    traces = [go.Scatter(x=xs, y=ys, mode="lines+markers", name=key) for key, (xs, ys) in series.items()]
    return _figure(
        traces,
        "Tasks done over time, per stage",
        xaxis_title="seconds since the job started",
        yaxis_title="tasks done",
        showlegend=True,
    )


def figures(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The page's charts by element id, as Plotly figure JSON (data, layout)."""
    import plotly.graph_objects as go

    summary = data.get("summary")
    out: dict[str, dict[str, Any]] = {"chart-progress": progress_figure(data.get("timeline") or [])}
    moved = flow(summary)
    if moved:
        what, total, parts = moved
        traces = [go.Bar(y=[what], x=[total], orientation="h", name=f"{what} ({total})")]
        traces += [go.Bar(y=["out + rejects"], x=[n], orientation="h", name=f"{name} ({n})") for name, n in parts]
        out["chart-flow"] = _figure(traces, f"{what} = " + " + ".join(p for p, _ in parts), barmode="stack", height=260)
    counted = labels(summary)
    if counted:
        what, by = counted
        names = sorted(by)
        out["chart-labels"] = _figure(
            [go.Bar(x=names, y=[by[n] for n in names], text=[by[n] for n in names])],
            f"Rows per {what}",
            yaxis_title="rows",
        )
    stages = (data.get("spark") or {}).get("stages") or []
    if stages:
        origin = min(float(s["start"]) for s in stages)
        if data.get("started_at"):
            origin = min(origin, float(data["started_at"]))
        names = [stage_label(s["id"], s.get("name")) for s in stages]
        rates = [round(s["records"] / s["seconds"], 1) if s.get("seconds") else 0 for s in stages]
        bar = go.Bar(
            y=names,
            x=[max(float(s["seconds"]), 0.01) for s in stages],
            base=[float(s["start"]) - origin for s in stages],
            orientation="h",
            marker={"color": rates, "colorscale": "Viridis", "colorbar": {"title": "rows/s"}},
            customdata=[[s["records"], r, s["tasks"]] for s, r in zip(stages, rates, strict=True)],
            hovertemplate="%{y}<br>%{x:.2f} s, %{customdata[0]} rows, %{customdata[1]} rows/s, "
            "%{customdata[2]} tasks<extra></extra>",
        )
        out["chart-stages"] = _figure(
            [bar],
            "Finished stages: when they ran, and rows per second",
            xaxis_title="seconds since the job started",
            height=max(260, 60 + 28 * len(stages)),
            yaxis={"autorange": "reversed"},
        )
    steps = (data.get("mrjob") or {}).get("steps") or []
    if steps:
        names = [f"step {s['step']}" for s in steps]
        out["chart-steps"] = _figure(
            [go.Bar(y=names, x=[float(s["seconds"]) for s in steps], orientation="h", name="seconds")],
            "mrjob steps: wall time of each",
            xaxis_title="seconds",
            height=max(220, 60 + 28 * len(steps)),
            yaxis={"autorange": "reversed"},
        )
    enrich = summary if isinstance(summary, dict) else {}
    hists = enrich.get("histograms") or {}
    if hists.get("latency_ms"):
        centers, widths, counts = _bins(hists["latency_ms"])
        out["chart-latency"] = _figure(
            [go.Bar(x=centers, y=counts, width=widths, name="calls")],
            "LLM call latency",
            xaxis_title="milliseconds",
            yaxis_title="rows answered by a call",
        )
    token_traces = []
    for key, name in (("input_tokens", "input tokens"), ("output_tokens", "output tokens")):
        if hists.get(key):
            centers, widths, counts = _bins(hists[key])
            token_traces.append(go.Bar(x=centers, y=counts, width=widths, name=name, opacity=0.75))
    if token_traces:
        out["chart-tokens"] = _figure(
            token_traces, "Tokens per call", barmode="overlay", xaxis_title="tokens", yaxis_title="calls"
        )
    return out


# ----- the page -------------------------------------------------------------


@cache
def plotly_js() -> str:
    """plotly.js as the installed plotly package ships it (about 4.8 MB), inlined once per page."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _when(epoch: Any) -> str:
    if not epoch:
        return "-"
    return dt.datetime.fromtimestamp(float(epoch), dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _table(rows: Iterable[Iterable[Any]], head: Iterable[str] | None = None, cls: str = "") -> str:
    e = html.escape
    top = f"<thead><tr>{''.join(f'<th>{e(h)}</th>' for h in head)}</tr></thead>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{top}<tbody>{body}</tbody></table>'


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no `</script>` can close it early)."""
    return json.dumps(value, default=str).replace("<", "\\u003c")


STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:16px 28px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#c9d1e0}
main{padding:16px 28px;display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}
section{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 3px #0002}
section.wide{grid-column:1/-1}
h2{font-size:16px;margin:4px 0 10px}
table{border-collapse:collapse;font-size:13px;width:100%}
td,th{border-bottom:1px solid #e3e6ec;padding:4px 8px;text-align:left;vertical-align:top}
.state{display:inline-block;padding:2px 10px;border-radius:10px;background:#3a4356}
.state.succeeded{background:#1e7a46}.state.failed,.state.unknown{background:#a12a2a}
.state.running{background:#2a5ca1}.state.cancelled{background:#7a5a1e}
.kpi{display:flex;gap:24px;flex-wrap:wrap}.kpi div{font-size:13px;color:#56607a}
.kpi b{display:block;font-size:22px;color:#1d2330}
.error{color:#a12a2a;font-family:monospace;white-space:pre-wrap}
.note{color:#56607a;font-size:13px}
"""

DRAW = """
const FIGURES = JSON.parse(document.getElementById("figures").textContent);
const CONFIG = {displaylogo: false, responsive: true};
for (const [id, fig] of Object.entries(FIGURES)) {
  const el = document.getElementById(id);
  if (el) Plotly.newPlot(el, fig.data, fig.layout, CONFIG);
}
"""


def _kpis(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    summary: dict[str, Any] = data["summary"] if isinstance(data.get("summary"), dict) else {}
    items = [("seconds", f"{data['seconds']:.1f}" if data.get("seconds") is not None else "-")]
    moved = flow(summary)
    if moved:
        items.append((moved[0], str(moved[1])))
        items += [(name, str(n)) for name, n in moved[2]]
    if "cost_usd" in summary:
        items.append(("LLM cost", "unknown" if summary["cost_usd"] is None else f"${summary['cost_usd']:.4f}"))
    for key in ("calls", "cache_hits", "input_tokens", "output_tokens", "rows_per_s"):
        if summary.get(key) is not None:
            items.append((key.replace("_", " "), str(summary[key])))
    return items


def render(data: Mapping[str, Any], live_script: str = "") -> str:
    """The report page of `data` (see the module docstring). live_script: a
    script the service adds to a running run's page (it redraws
    FIGURES["chart-progress"] and the counters as events arrive)."""
    e = html.escape
    figs = figures(data)
    state = str(data.get("state") or "unknown")
    summary = data.get("summary")
    sections = [
        '<section class="wide"><h2>Run</h2><div class="kpi">'
        + f'<div>state<b id="live-state">{e(state)}</b></div>'
        + '<div>elapsed s<b id="live-elapsed">'
        + e(f"{data['seconds']:.1f}" if data.get("seconds") is not None else "-")
        + "</b></div>"
        + f'<div>events<b id="live-events">{len(data.get("timeline") or [])}</b></div>'
        + "".join(f"<div>{e(k)}<b>{e(v)}</b></div>" for k, v in _kpis(data)[1:])
        + "</div>"
        + (f'<p class="error">{e(str(data["error"]))}</p>' if data.get("error") else "")
        + '<p class="note" id="live-stages"></p></section>'
    ]
    if "chart-flow" in figs:
        sections.append('<section class="wide"><h2>Rows in and out</h2><div id="chart-flow"></div></section>')
    if "chart-labels" in figs:
        sections.append('<section><h2>Label distribution</h2><div id="chart-labels"></div></section>')
    mrjob = data.get("mrjob") or {}
    if not mrjob:  # a twin's run has no Spark stages: its steps and counters instead
        sections.append('<section><h2>Throughput: tasks over time</h2><div id="chart-progress"></div></section>')
    if "chart-steps" in figs:
        sections.append('<section><h2>mrjob steps</h2><div id="chart-steps"></div></section>')
    counters = [
        (group, name, n)
        for group, named in sorted((mrjob.get("counters") or {}).items())
        for name, n in sorted(named.items())
    ]
    if counters:
        table = _table(counters, ("group", "counter", "value"), "counters")
        sections.append(f"<section><h2>Hadoop counters</h2>{table}</section>")
    if "chart-stages" in figs:
        sections.append('<section class="wide"><h2>Stages</h2><div id="chart-stages"></div></section>')
    if "chart-latency" in figs:
        sections.append('<section><h2>Enrich: latency</h2><div id="chart-latency"></div></section>')
    if "chart-tokens" in figs:
        sections.append('<section><h2>Enrich: tokens</h2><div id="chart-tokens"></div></section>')
    spark = data.get("spark") or {}
    slow = spark.get("slowest_tasks") or []
    if slow:
        rows = [
            (t["stage"], t["index"], f"{t['seconds']:.2f}", t.get("records", ""), t.get("executor", ""), t["status"])
            for t in slow
        ]
        head = ("stage", "task", "seconds", "rows", "executor", "status")
        sections.append(f"<section><h2>Slowest tasks</h2>{_table(rows, head, 'slowest')}</section>")
    elif spark.get("note"):
        sections.append(f'<section><h2>Slowest tasks</h2><p class="note">{e(spark["note"])}</p></section>')
    sections.append(f"<section><h2>Lineage</h2>{_table(lineage(data), None, 'lineage')}</section>")
    if isinstance(summary, dict) and summary.get("lines"):
        text = "\n".join(str(line) for line in summary["lines"])
        sections.append(f'<section class="wide"><h2>What the job printed</h2><pre>{e(text)}</pre></section>')
    counts = counts_of(summary)
    if counts:
        sections.append(f"<section><h2>Counts</h2>{_table(sorted(counts.items()), ('count', 'rows'))}</section>")
    title = f"aibatch {data.get('job')} run {data.get('run_id')}"
    started = _when(data.get("started_at"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style>
<script>{plotly_js()}</script>
</head><body>
<header><h1>{e(str(data.get("job")))} <span class="state {e(state)}">{e(state)}</span></h1>
<p>run {e(str(data.get("run_id")))}, started {e(started)}</p></header>
<main>{"".join(sections)}</main>
<script type="application/json" id="figures">{_script_json(figs)}</script>
<script type="application/json" id="report-data">{_script_json({"job": data.get("job"), "state": state})}</script>
<script>{DRAW}</script>
{live_script}
</body></html>
"""
