"""A twin's run report (jobs/mapreduce/twin_report.py, drawn by jobs/report.py):
an ingest run through the launcher on `-r inline` writes `_report.html` in
its output, with the counts the twin printed and the charts' data; a second
ingest over that output reads past it (names starting with `_` are hidden).
The page itself is drawn in a browser by tests/test_run_report.py.

Run with: .venv/bin/python -m pytest tests/mapreduce/test_mr_report.py
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from jobs import report as R
from jobs.mapreduce import twin_report

from .conftest import launch

ROOT = Path(__file__).resolve().parent.parent.parent


def printed_counters(stderr: str, group: str) -> dict[str, int]:
    """The counters of `group` as mrjob printed them (a tab, the group; two tabs, name=value)."""
    found: dict[str, int] = {}
    current = None
    for line in stderr.splitlines():
        if line.startswith("\t\t") and current == group:
            name, _, value = line.strip().rpartition("=")
            found[name] = int(value)
        elif line.startswith("\t"):
            current = line.strip()
    return found


def page_parts(path: Path) -> tuple[str, dict]:
    page = path.read_text()
    found = re.search(r'<script type="application/json" id="figures">(.*?)</script>', page, re.S)
    assert found
    return page, json.loads(found[1])


def test_an_ingest_run_reports_what_it_printed_and_a_twin_reads_past_the_report(tmp_path):
    raw = tmp_path / "in.jsonl"
    lines = [{"id": "1", "text": "good film"}, {"id": "2", "text": ""}, {"id": "3", "text": "bad film"}]
    raw.write_text("".join(json.dumps(r) + "\n" for r in lines) + "not json\n\n" + json.dumps(lines[2]) + "\n")
    out = tmp_path / "records"
    proc = launch(
        "ingest", "-r", "inline", "--source", "s", str(raw), "--output-dir", str(out), "--set", "stats.top_k=3"
    )
    printed = printed_counters(proc.stderr, "ingest")
    assert printed["input"] == 5 and printed["good"] == 2 and printed["skipped blank_line"] == 1, printed

    page, figures = page_parts(out / R.REPORT_FILE)
    assert R.plotly_js()[:2000] in page  # self-contained
    flow = {t["name"]: t["x"][0] for t in figures["chart-flow"]["data"]}
    reasons = {k.removeprefix("reason "): v for k, v in printed.items() if k.startswith("reason ")}
    assert flow == {
        f"input ({printed['input']})": printed["input"],
        f"good ({printed['good']})": printed["good"],
        **{f"rejected: {r} ({n})": n for r, n in reasons.items()},
    }
    assert printed["input"] == printed["good"] + sum(reasons.values()) == printed["good"] + printed["rejected"]
    [steps] = figures["chart-steps"]["data"]
    assert steps["y"] == ["step 1 of 1"] and 0 < steps["x"][0] < 120
    for name, value in printed.items():  # the Hadoop counters table, each as the twin printed it
        assert f"<td>ingest</td><td>{name}</td><td>{value}</td>" in page
    assert "no Spark stages or task times: an mrjob run (inline runner)" in page
    assert "<td>--set</td><td>stats.top_k=3</td>" in page and f"<td>output output</td><td>{out}</td>" in page

    # The report is hidden from the next job: were its lines read, they would be rejects of a second ingest.
    written = [line for p in sorted(out.glob("part-*")) for line in p.read_text().splitlines() if line.strip()]
    again = launch("ingest", "-r", "inline", "--source", "again", str(out), "--output-dir", str(tmp_path / "again"))
    assert printed_counters(again.stderr, "ingest")["input"] == len(written) == printed["good"] + printed["rejected"]
    _, again_figures = page_parts(tmp_path / "again" / R.REPORT_FILE)
    assert again_figures["chart-flow"]["data"][0]["x"] == [len(written)]


def test_the_score_twins_rows_in_are_scored_plus_the_rejects_it_skipped():
    counters = {"score": {"rows": 7, "skipped_rejects": 2, "batches": 1}}
    data = twin_report.report_data(
        "score",
        {"runner": "local", "steps": [], "counters": counters, "summary": None},
        run_id="r1",
        started_at=1.0,
        seconds=2.0,
        inputs=["a", "b"],
        outputs={"output": "/o"},
        settings=[],
        runner="local",
        extra={"model": "sentiment@1"},
    )
    assert R.flow(data["summary"]) == ("rows in", 9, [("scored", 7), ("skipped: ingest rejects", 2)])
    assert dict(R.lineage(data))["model"] == "sentiment@1" and data["inputs"] == {"1": "a", "2": "b"}
    missing = twin_report.report_data(
        "score", None, run_id="r2", started_at=1.0, seconds=2.0, inputs=[], outputs={}, settings=[], runner="inline"
    )
    assert missing["summary"] is None and "counts are missing" in missing["spark"]["note"]


def test_step_times_from_the_runners_log_lines():
    now = [10.0]
    with twin_report.StepTimer(clock=lambda: now[0]) as timer:
        import logging

        logging.getLogger("mrjob.sim").info("Running step 1 of 2...")
        now[0] = 13.5
        logging.getLogger("mrjob.hadoop").info("Running step 2 of 2...")
        now[0] = 14.0
    assert timer.steps() == [{"step": "1 of 2", "seconds": 3.5}, {"step": "2 of 2", "seconds": 0.5}]


def test_a_report_that_cannot_be_written_fails_nothing(tmp_path, caplog):
    (tmp_path / "a_file").write_text("")
    data = dict(
        R.report_data(
            job="x", run_id="r", started_at=1.0, seconds=1.0, inputs={}, outputs={}, settings=[], summary=None, spark={}
        )
    )
    assert R.write_report(data, {"output": str(tmp_path / "a_file")}) is None
    assert "could not write" in caplog.text


def test_an_enrich_run_reports_the_totals_and_cost_its_driver_printed(tmp_path):
    from tests.enrich.support import enrich_settings, scored_rows, start_gateway, submit_env, write_config, write_jsonl

    with start_gateway({"plain": {}}) as gw:
        cfg = write_config(tmp_path / "c.toml", enrich_settings(gw, "plain", tmp_path / "store"))
        src = write_jsonl(scored_rows(12), tmp_path / "scored.jsonl")
        out = tmp_path / "enriched"
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.mapreduce.launch", "enrich", "-r", "inline", "--config", str(cfg), src]
            + ["--output-dir", str(out)],
            cwd=ROOT,
            env=submit_env(gw, "plain"),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"rows in (\d+) = enriched (\d+) \+ dead-lettered (\d+) \+ not selected (\d+)", proc.stdout)
    assert found, proc.stdout
    rows_in, *parts = (int(n) for n in found.groups())
    assert rows_in == 12 and sum(parts) == 12 and parts[0] > 0
    page, figures = page_parts(out / R.REPORT_FILE)
    assert [t["x"][0] for t in figures["chart-flow"]["data"]] == [rows_in, *parts]
    assert found[0] in page  # what the driver printed, on the page
    cost = re.search(r"\$\d+\.\d{4}", proc.stdout)
    assert cost and f"<b>{cost[0]}</b>" in page
    assert "<td>enrich</td><td>calls</td>" in page  # its counters
    assert [t["y"] for t in figures["chart-steps"]["data"]] == [["step 1 of 1"]]  # the driver's one run of the job
