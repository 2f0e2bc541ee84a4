"""jobs/report.py: the run report drawn from literal report data (an
ingest and an enrich run), its figures checked against the data, and the
page opened from a file in headless Chromium with no network: its charts
drawn (DOM) and a screenshot that is not blank. The report a real run writes
is checked in tests/service/test_service_report.py.

Run with: .venv/bin/python -m pytest tests/test_run_report.py
"""

from __future__ import annotations

import json
import re

from jobs import commit
from jobs import report as R
from tests.browser import dump_dom, not_blank, screenshot

STARTED = 1_796_000_000.0
INGEST = {
    "job": "ingest",
    "run_id": "r-ingest",
    "state": "succeeded",
    "started_at": STARTED,
    "seconds": 21.5,
    "inputs": {"input": "/data/in.jsonl"},
    "outputs": {"output": "/data/records", "rejects": "/data/rejects"},
    "settings": ["encoder.batch_size=16"],
    "summary": {
        "input": 10,
        "good": 7,
        "rejected": 3,
        "reasons": {"empty_text": 2, "bad_json": 1},
        "skipped": {},
        "output": "/data/records",
        "rejects": "/data/rejects",
    },
    "error": None,
    "timeline": [
        {"elapsed_s": 5.0, "stages": [{"id": 0, "name": "count at ingest.py:1", "tasks": 4, "tasks_done": 1}]},
        {"elapsed_s": 6.0, "stages": [{"id": 0, "name": "count at ingest.py:1", "tasks": 4, "tasks_done": 3}]},
        {"elapsed_s": 7.0, "stages": [{"id": 1, "name": "parquet at ingest.py:2", "tasks": 2, "tasks_done": 2}]},
    ],
    "spark": {
        "app_id": "local-1",
        "stages": [
            {"id": 0, "attempt": 0, "name": "count", "tasks": 4, "start": STARTED + 5, "seconds": 2.0, "records": 10},
            {"id": 1, "attempt": 0, "name": "parquet", "tasks": 2, "start": STARTED + 7, "seconds": 0.5, "records": 7},
        ],
        "slowest_tasks": [
            {"stage": 0, "index": 3, "seconds": 1.75, "records": 4, "executor": "driver", "status": "SUCCESS"},
            {"stage": 1, "index": 0, "seconds": 0.25, "records": 7, "executor": "driver", "status": "SUCCESS"},
        ],
        "note": None,
    },
}
ENRICH_SUMMARY = {
    "dry_run": False,
    "lines": ["enrich: rows in 6 = enriched 3 + dead-lettered 1 + not selected 2"],
    "rows_in": 6,
    "enriched": 3,
    "dead_letter": 1,
    "not_selected": 2,
    "calls": 5,
    "cache_hits": 0,
    "input_tokens": 400,
    "output_tokens": 120,
    "cost_usd": 0.00123,
    "histograms": {
        "latency_ms": {"edges": [100.0, 200.0, 300.0], "counts": [3, 1]},
        "input_tokens": {"edges": [90.0, 100.0, 110.0], "counts": [2, 2]},
        "output_tokens": {"edges": [30.0, 31.0], "counts": [4]},
    },
}


def test_the_figures_say_what_the_summary_says():
    figs = R.figures(INGEST)
    flow = figs["chart-flow"]["data"]
    assert [t["x"][0] for t in flow] == [10, 7, 1, 2]  # input, then good + rejects by reason (sorted)
    assert sum(t["x"][0] for t in flow[1:]) == flow[0]["x"][0]
    assert [t["name"] for t in flow[1:]] == ["good (7)", "rejected: bad_json (1)", "rejected: empty_text (2)"]
    progress = {t["name"]: (t["x"], t["y"]) for t in figs["chart-progress"]["data"]}
    assert progress["stage 0: count at ingest.py:1"] == ([5.0, 6.0], [1, 3])
    assert R.stage_label(2, "collect at /work/x/jobs/spark/ingest.py:238") == "stage 2: collect at ingest.py:238"
    [stages] = figs["chart-stages"]["data"]
    assert stages["base"] == [5.0, 7.0] and stages["x"] == [2.0, 0.5]
    assert [c[1] for c in stages["customdata"]] == [5.0, 14.0]  # rows/s: 10 in 2 s, 7 in 0.5 s
    assert "chart-labels" not in figs and "chart-latency" not in figs  # ingest counts no labels, makes no calls

    enrich = R.figures(dict(INGEST, job="enrich", summary=ENRICH_SUMMARY, spark={}))
    assert [t["x"][0] for t in enrich["chart-flow"]["data"]] == [6, 3, 1, 2]
    [latency] = enrich["chart-latency"]["data"]
    assert latency["x"] == [150.0, 250.0] and latency["y"] == [3, 1] and latency["width"] == [100.0, 100.0]
    assert [t["name"] for t in enrich["chart-tokens"]["data"]] == ["input tokens", "output tokens"]

    scored = {"rows": 4, "by_label": {"positive": 3, "negative": 1}, "model": "sentiment@1", "encoder": "minilm"}
    labels = R.figures({"summary": {"ingest": INGEST["summary"], "score": scored}})["chart-labels"]["data"][0]
    assert (labels["x"], labels["y"]) == (["negative", "positive"], [1, 3])
    stats = {"counts": ['{"source": "a", "label": "x", "count": 2}', '{"source": "b", "label": "x", "count": 1}']}
    assert R.labels(stats) == ("predicted label", {"x": 3})


def test_the_page_holds_everything_it_needs_and_nothing_breaks_out_of_its_scripts():
    hostile = dict(INGEST, settings=["x=</script><script>alert(1)</script>"])
    page = R.render(dict(hostile, job="enrich", summary=ENRICH_SUMMARY))
    assert R.plotly_js()[:2000] in page  # plotly.js inline: no network needed
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # nothing fetched
    assert "</script><script>alert(1)" not in page and "&lt;/script&gt;" in page
    found = re.search(r'<script type="application/json" id="figures">(.*?)</script>', page, re.S)
    assert found
    figures = json.loads(found[1])
    assert set(figures) == {"chart-progress", "chart-flow", "chart-stages", "chart-latency", "chart-tokens"}
    assert "$0.0012" in page and "Slowest tasks" in page and "local-1" in page  # cost, tasks, lineage
    assert len(page) < 6_000_000  # plotly.js is about 4.8 MB of it


def test_lineage_and_a_long_timeline():
    scored = {"rows": 2, "by_label": {}, "model": "sentiment@2", "encoder": "minilm", "head_version": "abc"}
    rows = dict(R.lineage(dict(INGEST, summary=scored)))
    assert rows["input input"] == "/data/in.jsonl" and rows["model"] == "sentiment@2"
    assert rows["model head_version"] == "abc" and rows["--set"] == "encoder.batch_size=16"
    points = R.thin(list(range(5001)), 2000)
    assert len(points) <= 2000 and points[-1] == 5000 and points == sorted(points)


def test_put_file_writes_whole_and_replaces(tmp_path):
    out = tmp_path / "records"
    out.mkdir()
    commit.put_file(str(out / R.REPORT_FILE), b"first")
    commit.put_file(str(out / R.REPORT_FILE), b"second")
    assert (out / R.REPORT_FILE).read_bytes() == b"second"
    assert sorted(p.name for p in out.iterdir()) == [R.REPORT_FILE]  # no staging file left beside it


def test_the_report_file_draws_its_charts_in_chromium_without_network(tmp_path):
    path = tmp_path / R.REPORT_FILE
    path.write_text(R.render(dict(INGEST, job="enrich", summary=ENRICH_SUMMARY)))
    dom = dump_dom(path.as_uri())
    for chart in ("chart-flow", "chart-progress", "chart-stages", "chart-latency", "chart-tokens"):
        drawn = re.search(rf'<div id="{chart}" class="[^"]*js-plotly-plot[^"]*".*?<svg class="main-svg"', dom, re.S)
        assert drawn, f"{chart} not drawn"
    assert dom.count('class="trace bars"') >= 8 and "LLM call latency" in dom  # flow 4, stages, latency, tokens 2
    colours, ink = not_blank(screenshot(path.as_uri(), tmp_path / "report.png"))
    assert colours > 50 and ink > 0.05, (colours, ink)
