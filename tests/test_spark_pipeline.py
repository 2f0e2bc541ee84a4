"""The pipeline job (ingest -> score -> stats in one application) in local
mode: the same records as the ingest job on the same input, every record
scored, stats over exactly those rows; and its outputs checked before Spark
starts."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from jobs.spark import common, pipeline
from udfs import records as R

pytestmark = pytest.mark.slow  # three jobs on the real sample: about a minute


def test_pipeline_equals_the_three_jobs(spark, trained, hdfs_sample, tmp_path):
    out = tmp_path / "p"
    args = pipeline.parser().parse_args(
        ["--config", trained["config"], "--input", hdfs_sample, "--model", trained["model"]]
        + ["--output", str(out / "records"), "--rejects", str(out / "rejects")]
        + ["--scored", str(out / "scored"), "--stats", str(out / "stats")]
    )
    summary = common.run_main(pipeline.main, spark, args)

    by_id = lambda df: {r["id"]: r.asDict() for r in df.collect()}  # noqa: E731
    fields = lambda rows: {k: {f: v[f] for f in R.RECORD_FIELDS} for k, v in rows.items()}  # noqa: E731
    records = by_id(spark.read.parquet(str(out / "records")))
    assert fields(records) == fields(by_id(spark.read.parquet(trained["records"])))  # what the ingest job wrote
    ing = summary["ingest"]
    assert ing["input"] == ing["good"] + ing["rejected"] and ing["good"] == len(records)

    scored = by_id(spark.read.parquet(str(out / "scored")))
    assert set(scored) == set(records) and summary["score"]["rows"] == len(records)
    assert {row["head"] for row in scored.values()} == {trained["model"]}  # name@N

    counts = [json.loads(r["value"]) for r in spark.read.text(str(out / "stats" / "counts")).collect()]
    assert sum(c["count"] for c in counts) == len(scored)
    per_label: Counter[str] = Counter()
    for c in counts:
        per_label[c["label"]] += c["count"]
    assert per_label == Counter(row["predicted"] for row in scored.values())


def test_pipeline_checks_every_output_before_spark(tmp_path, trained, capsys):
    # the model is resolved first (a registered one, so the output check is reached)
    (tmp_path / "stats").mkdir()
    (tmp_path / "raw.jsonl").write_text('{"text": "fine"}\n')
    argv = ["--config", trained["config"], "--input", str(tmp_path / "raw.jsonl"), "--format", "jsonl"]
    argv += ["--output", str(tmp_path / "r"), "--rejects", str(tmp_path / "j")]
    argv += ["--scored", str(tmp_path / "s"), "--stats", str(tmp_path / "stats")]
    assert pipeline.cli(argv) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "stats") in err and "exists" in err
