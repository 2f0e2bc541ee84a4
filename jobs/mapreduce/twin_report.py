"""The mrjob side of a run's report (jobs/report.py renders it, as for the
Spark jobs): the twin's driver notes what its run did (the runner, each
step's wall time, the Hadoop counters summed over the steps, enrich's
summary) in a small JSON file the launcher names with --report-facts, and
the launcher (jobs/mapreduce/launch.py), once the outputs are committed,
turns it into the report's data and writes `_report.html` into the first
output. A twin has no Spark stages or task times; the report says so.

Run with: (the launcher does it for every twin run that has an output)
    ./submit.sh mr ingest -r inline --source mine data.jsonl --output-dir out   # then open out/_report.html
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NO_SPARK = "no Spark stages or task times: an mrjob run ({runner} runner); its steps' wall times and counters are shown"


class StepTimer(logging.Handler):
    """Each step's wall time, from the line every mrjob runner logs as a step
    starts ('Running step N of M...', logger `mrjob`, INFO): a step ends when
    the next one starts or the run ends. Steps are listed in the order they
    ran, so a driver that runs the job more than once (enrich's batch mode)
    lists each run's steps."""

    STARTED = re.compile(r"Running step (\d+) of (\d+)")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(logging.INFO)
        self.clock = clock
        self.starts: list[tuple[str, float]] = []
        self.ended: float | None = None
        self._logger = logging.getLogger("mrjob")
        self._level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        found = self.STARTED.match(record.getMessage())
        if found:
            self.starts.append((f"{found[1]} of {found[2]}", self.clock()))

    def __enter__(self) -> StepTimer:
        self._level = self._logger.level
        if self._logger.getEffectiveLevel() > logging.INFO:  # a driver that did not set up mrjob's logging
            self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.ended = self.clock()
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def steps(self) -> list[dict[str, Any]]:
        ends = [t for _, t in self.starts[1:]] + [self.ended if self.ended is not None else self.clock()]
        return [
            {"step": name, "seconds": round(end - start, 3)}
            for (name, start), end in zip(self.starts, ends, strict=True)
        ]


def summed_counters(per_step: list[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """{group: {name: value}} over all steps (runner.counters() gives one dict a step)."""
    total: dict[str, dict[str, int]] = {}
    for step in per_step:
        for group, named in step.items():
            for name, value in named.items():
                total.setdefault(group, {})[name] = total.get(group, {}).get(name, 0) + int(value)
    return total


def write_facts(
    path: str,
    runner: str,
    steps: list[dict[str, Any]],
    counters: Mapping[str, Mapping[str, int]],
    summary: Mapping[str, Any] | None = None,
) -> None:
    """The driver's note of its run, for the launcher (never fails the run: a warning)."""
    facts = {"runner": runner, "steps": steps, "counters": counters, "summary": summary}
    try:
        Path(path).write_text(json.dumps(facts, default=str))
    except OSError as exc:
        log.warning("run report: could not write the run's facts to %s (%s)", path, exc)


def summary_of(job: str, counters: Mapping[str, Mapping[str, int]], given: Any, **extra: Any) -> dict[str, Any]:
    """The twin's summary in the words the Spark job's summary uses, so the
    report draws the same charts: ingest's input = good + rejected by reason
    (and the skipped lines), score's rows in = scored + ingest's rejects it
    skipped, stats' rows per table, enrich's own summary (its driver's totals)."""
    if isinstance(given, dict):
        return {**given, **extra}
    group = dict(counters.get(job) or {})
    if job == "ingest":
        return {
            "input": group.get("input", 0),
            "good": group.get("good", 0),
            "rejected": group.get("rejected", 0),
            "reasons": {k.removeprefix("reason "): v for k, v in sorted(group.items()) if k.startswith("reason ")},
            "skipped": {k.removeprefix("skipped "): v for k, v in sorted(group.items()) if k.startswith("skipped ")},
            **extra,
        }
    if job == "score":
        rows, skipped = group.pop("rows", 0), group.pop("skipped_rejects", 0)
        return {"rows_in": rows + skipped, "rows": rows, "skipped_rejects": skipped, **group, **extra}
    if job == "stats":
        return {"rows_in": group.pop("rows", 0), "rows": group, **extra}
    return {**group, **extra}


def report_data(
    job: str,
    facts: Mapping[str, Any] | None,
    *,
    run_id: str,
    started_at: float,
    seconds: float,
    inputs: list[str],
    outputs: Mapping[str, str],
    settings: list[str],
    runner: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What jobs/report.py draws of a twin's run that succeeded. facts: what
    the driver noted (write_facts), None where it noted nothing: the page
    then has the run's paths and time and says that the counts are missing."""
    from jobs import report as R

    facts = facts or {}
    counters = facts.get("counters") or {}
    runner = facts.get("runner") or runner
    named = {"input": inputs[0]} if len(inputs) == 1 else {f"{i + 1}": p for i, p in enumerate(inputs)}
    note = NO_SPARK.format(runner=runner)
    if not facts:
        note += "; the job noted no counters or steps, so its counts are missing"
    return R.report_data(
        job=f"mr {job}",
        run_id=run_id,
        started_at=started_at,
        seconds=seconds,
        inputs=named,
        outputs=outputs,
        settings=settings,
        summary=summary_of(job, counters, facts.get("summary"), **(extra or {})) if facts else None,
        spark={"app_id": None, "stages": [], "slowest_tasks": [], "note": note},
        mrjob={"runner": runner, "steps": facts.get("steps") or [], "counters": counters},
    )


def read_facts(path: Path) -> dict[str, Any] | None:
    try:
        facts = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("run report: the job noted no facts in %s (%s)", path, exc)
        return None
    return facts if isinstance(facts, dict) else None
