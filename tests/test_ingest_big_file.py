"""Spark ingest of one JSON Lines file of over 200 MB on local[2] with the
default memory settings (a 1 GB heap, 128 MiB splits, which the job caps at
16 MiB): the file is split into several parse tasks (none
holds the whole file), input = good + rejected, and the counts equal the
mrjob twin's on -r local over the same file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.spark import common, ingest
from udfs import records as R
from udfs.ingest_rows import split_rows

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

SIZE = 200 * 2**20
BAD_LINES = [
    b'{"text": "broken',  # malformed_json
    b'{"text": "caf\xe9 cr\xe8me"}',  # invalid_utf8
    b'{"rating": 1.0}',  # missing_text
    b"",  # blank, skipped
    b'{"text": "   "}',  # empty_text
]


@pytest.fixture(scope="session")
def big_jsonl(tmp_path_factory) -> Path:
    """Over 200 MB of JSON Lines, written once per test session: real short
    texts of the default data, eight to a row (long rows keep the row count,
    and so the twin's run time, down; the bytes are what this test is
    about), every 50th row repeated, and the bad lines above every 20,000."""
    from scripts.datasets import package_file
    from udfs.config import load_config

    cfg = load_config(ROOT / "conf" / "pipeline.toml")
    texts = []
    for source in cfg.ingest.sources:
        path = package_file(source.package_file)
        for kind, row, _ in R.parse_file(cfg.ingest.spec(source), path.name, path.read_bytes()):
            if kind == R.RECORD:
                texts.append(row["text"])
    out = tmp_path_factory.mktemp("big") / "posts.jsonl"
    size = n = 0
    with open(out, "wb") as fh:
        while size < SIZE:
            text = " ".join(texts[(n * 8 + i) % len(texts)] for i in range(8))
            line = json.dumps({"n": n, "text": text, "rating": (n % 9) - 4.0}).encode() + b"\n"
            if n % 50 == 0:
                line += line
            if n % 20_000 == 0:
                line += b"\n".join(BAD_LINES) + b"\n"
            fh.write(line)
            size += len(line)
            n += 1
    return out


def twin_counts(path: Path, out: Path) -> tuple[dict, dict]:
    """(reject reasons and good count, skipped counters) of the mrjob twin
    on -r local, from its output and its counters."""
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.mapreduce.launch", "ingest", "-r", "local", "--source", "big"]
        + ["--rating-field", "rating", str(path), "--output-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    rows: list[dict] = []
    for part in sorted(out.glob("part-*")):
        with open(part, "rb") as fh:
            rows.extend(json.loads(line) for line in fh)
    records, rejects = split_rows(rows)
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    skipped = {m[1]: int(m[2]) for m in re.finditer(r"skipped (\w+)=(\d+)", proc.stderr.decode())}
    return {"good": len(records), "rejected": len(rejects), "reasons": reasons}, skipped


def test_a_200_mb_file_is_split_and_matches_the_twin(spark, big_jsonl, tmp_path, pipeline_config):
    assert big_jsonl.stat().st_size >= SIZE
    spark.sparkContext.setJobGroup("big-ingest", "ingest of the 200 MB file")
    try:
        summary = common.run_main(
            ingest.main,
            spark,
            ingest.parser().parse_args(
                ["--config", str(pipeline_config), "--input", str(big_jsonl), "--format", "jsonl"]
                + ["--source", "big", "--rating-field", "rating"]
                + ["--output", str(tmp_path / "records"), "--rejects", str(tmp_path / "rejects")]
            ),
        )
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert summary["input"] == summary["good"] + summary["rejected"] > 100_000

    # the parse stage: the first stage of the group's first job, one task per split
    tracker = spark.sparkContext.statusTracker()
    jobs = sorted(tracker.getJobIdsForGroup("big-ingest"))
    first_stage = min(tracker.getJobInfo(jobs[0]).stageIds)
    stage = tracker.getStageInfo(first_stage)
    assert stage.numTasks >= 2 and stage.numCompletedTasks == stage.numTasks
    with ingest.bounded_splits(spark):  # the job's splits: at most MAX_SPLIT_BYTES
        assert ingest.read_lines(spark, str(big_jsonl)).rdd.getNumPartitions() == stage.numTasks
    assert stage.numTasks >= SIZE // ingest.MAX_SPLIT_BYTES
    # the session's own setting is back (Spark's default 128 MiB in the tests)
    assert spark.conf.get("spark.sql.files.maxPartitionBytes") in ("128m", "134217728b", "134217728")

    twin, twin_skipped = twin_counts(big_jsonl, tmp_path / "twin")
    assert twin == {k: summary[k] for k in ("good", "rejected", "reasons")}
    assert twin_skipped == summary["skipped"] == {R.BLANK_LINE: summary["reasons"]["malformed_json"]}
    assert set(summary["reasons"]) == {
        "duplicate_record",
        "malformed_json",
        "invalid_utf8",
        "missing_text",
        "empty_text",
    }
