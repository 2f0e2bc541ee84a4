"""The Spark side of a run's report (jobs/report.py renders it): what the
session did, read from Spark's monitoring REST API on the driver's own UI
(its public, documented interface for stage and task metrics; the status
tracker has no task times or record counts); jobs/report.py assembles the
data, renders the page and writes it into the run's first output.

run_cli calls spark_facts before it stops the session, and
jobs.report.write_report after the job returned; neither can fail a run
that succeeded: what could not be read or written is said in the report, or
logged as a warning."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

STAGES_KEPT = 200  # the latest finished stages drawn (a stream job can run thousands)
STAGES_ASKED = 20  # the stages with the most task time whose slowest tasks are asked for
SLOWEST = 10


# The REST API's first answer waits for Jersey to start inside the driver:
# 3 s on this 2-core machine when idle, past 5 s under load. warm_up asks
# once as the session starts, so the answers at the end come at once.
TIMEOUT_S = 60


def _get(base: str, path: str) -> Any:
    with urllib.request.urlopen(f"{base}{path}", timeout=TIMEOUT_S) as response:  # noqa: S310 (http on loopback)
        return json.loads(response.read())


def _api(spark: SparkSession) -> str | None:
    """The REST API's base URL for this application, on loopback (the UI
    listens on every interface by default), or None with the UI off."""
    sc = spark.sparkContext
    ui = sc.uiWebUrl
    return f"http://127.0.0.1:{urlsplit(ui).port}/api/v1/applications/{sc.applicationId}" if ui else None


def warm_up(spark: SparkSession) -> None:
    """Start the UI's REST API in the background while the job runs."""

    def ask() -> None:
        try:
            base = _api(spark)
            if base:
                _get(base, "/environment")
        except Exception as exc:  # spark_facts says what went wrong, at the end
            log.debug("run report: the Spark UI did not answer yet (%s)", exc)

    threading.Thread(target=ask, name="spark-ui-warm-up", daemon=True).start()


def _epoch(stamp: str | None) -> float | None:
    """Spark's REST times ('2026-12-06T02:40:01.123GMT') as epoch seconds."""
    if not stamp:
        return None
    return dt.datetime.strptime(stamp.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def stage_rows(stages: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The finished stages, oldest first: when each ran and the rows it read
    (from its input, or from the shuffle, whichever is larger)."""
    rows = []
    for s in stages:
        start, end = _epoch(s.get("submissionTime")), _epoch(s.get("completionTime"))
        if start is None or end is None:
            continue
        rows.append(
            {
                "id": s["stageId"],
                "attempt": s.get("attemptId", 0),
                "name": s.get("name", ""),
                "tasks": s.get("numTasks", 0),
                "start": start,
                "seconds": round(end - start, 3),
                "records": max(int(s.get("inputRecords") or 0), int(s.get("shuffleReadRecords") or 0)),
                "task_seconds": (s.get("executorRunTime") or 0) / 1000,
            }
        )
    rows.sort(key=lambda r: (r["start"], r["id"]))
    return rows[-STAGES_KEPT:]


def task_row(stage: Mapping[str, Any], task: Mapping[str, Any]) -> dict[str, Any]:
    metrics = task.get("taskMetrics") or {}
    records = max(
        int((metrics.get("inputMetrics") or {}).get("recordsRead") or 0),
        int((metrics.get("shuffleReadMetrics") or {}).get("recordsRead") or 0),
    )
    return {
        "stage": stage["id"],
        "index": task.get("index"),
        "seconds": (task.get("duration") or 0) / 1000,
        "records": records,
        "executor": task.get("executorId", ""),
        "status": task.get("status", ""),
    }


def spark_facts(spark: SparkSession, settle_s: float = 3.0) -> dict[str, Any]:
    """{"app_id", "stages", "slowest_tasks", "note"} of the session, from its
    UI's REST API; where the UI is off or does not answer, the note says so."""
    try:
        return _facts(spark, settle_s)
    except Exception as exc:  # a report never fails the run it reports
        log.warning("run report: could not read the session's stages (%s)", exc)
        return {"app_id": None, "stages": [], "slowest_tasks": [], "note": f"no stage or task times ({exc})"}


def _facts(spark: SparkSession, settle_s: float) -> dict[str, Any]:
    sc = spark.sparkContext
    facts: dict[str, Any] = {"app_id": sc.applicationId, "stages": [], "slowest_tasks": [], "note": None}
    base = _api(spark)
    if not base:
        facts["note"] = "no stage or task times: the Spark UI is off (spark.ui.enabled=false)"
        return facts
    # The UI's store is filled from the listener bus, like the status tracker:
    # once the tracker shows no active job, the last stage has been recorded.
    deadline = time.monotonic() + settle_s
    while sc.statusTracker().getActiveJobsIds() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        stages = stage_rows(_get(base, "/stages?status=complete"))
        tasks = []
        for stage in sorted(stages, key=lambda s: -s["task_seconds"])[:STAGES_ASKED]:
            listed = _get(base, f"/stages/{stage['id']}/{stage['attempt']}/taskList?sortBy=-runtime&length={SLOWEST}")
            tasks += [task_row(stage, t) for t in listed]
    except (OSError, ValueError, KeyError) as exc:
        log.warning("run report: could not read the Spark UI's REST API at %s (%s)", base, exc)
        facts["note"] = f"no stage or task times: the Spark UI's REST API did not answer ({exc})"
        return facts
    facts["stages"] = stages
    facts["slowest_tasks"] = sorted(tasks, key=lambda t: -t["seconds"])[:SLOWEST]
    return facts
