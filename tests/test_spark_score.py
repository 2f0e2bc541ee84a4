"""Spark score job: the pandas UDF equals the model called directly, literal
expected labels, lineage, empty and bad input, unknown model names."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from jobs.spark import common, score
from tests.model_store import TestStore
from udfs.config import EncoderConfig, load_config
from udfs.predict import ScoreSettings, score_texts
from udfs.spark import score_udf

LINEAGE = {
    "encoder": "all-MiniLM-L6-v2",
    "encoder_version": "v",
    "head": "sentiment@1",
    "head_version": "h",
    "model_uri": "models:/sentiment/1",
    "model_run_id": "m",
    "run_id": "r",
    "scored_at": None,
}


@pytest.fixture(scope="module")
def head(trained):
    cfg = load_config(trained["config"])
    return TestStore(cfg.registry_path(common.home())).load(trained["model"])


def test_udf_equals_direct_python_to_1e5(spark, trained, head):
    records = spark.read.parquet(trained["records"]).orderBy("id").limit(120).repartition(3)
    settings = ScoreSettings.from_config(EncoderConfig(), dict(head.arrays), head.labels)
    scored = score.score_frame(records, score_udf(settings, with_embedding=True), LINEAGE, with_embedding=True)
    rows = sorted(scored.select("id", "text", "predicted", "probability", "embedding").collect(), key=lambda r: r["id"])
    direct = score_texts([r["text"] for r in rows], settings, with_embedding=True)
    assert [r["predicted"] for r in rows] == direct["predicted"].tolist()
    np.testing.assert_allclose([r["probability"] for r in rows], direct["probability"], atol=1e-5)
    np.testing.assert_allclose(
        np.array([r["embedding"] for r in rows]), np.array(direct["embedding"].tolist()), atol=1e-5
    )


def test_transform_on_literal_frame(spark, head):
    records = spark.createDataFrame(
        [
            ("a", "s", "An absolutely wonderful, delightful film. I loved it.", None, None),
            ("b", "s", "A boring, awful, painfully bad mess. I hated it.", "negative", -3.0),
            ("c", "s", None, None, None),
        ],
        "id string, source string, text string, label string, rating double",
    )
    settings = ScoreSettings.from_config(EncoderConfig(), dict(head.arrays), head.labels)
    scored = score.score_frame(records, score_udf(settings), LINEAGE)
    assert scored.columns == [
        "id",
        "source",
        "text",
        "label",
        "rating",
        "predicted",
        "probability",
        "probabilities",
        *score.LINEAGE_COLUMNS,
    ]
    expected = spark.createDataFrame(
        [("a", "positive", "sentiment@1", "r"), ("b", "negative", "sentiment@1", "r"), ("c", None, "sentiment@1", "r")],
        "id string, predicted string, head string, run_id string",
    )
    assertDataFrameEqual(scored.select("id", "predicted", "head", "run_id"), expected)
    probs = {r["id"]: r["probability"] for r in scored.collect()}
    assert probs["a"] > 0.5 and probs["b"] > 0.5 and probs["c"] is None


def test_end_to_end_on_hdfs(spark, trained, hdfs):
    out = f"{hdfs.hdfs_url}/user/{hdfs.user}/tests/scored"
    args = score.parser().parse_args(
        [
            "--config",
            trained["config"],
            "--input",
            trained["records"],
            "--output",
            out,
            "--model",
            trained["model"],
            "--set",
            "score.with_embedding=true",
        ]
    )
    summary = common.run_main(score.main, spark, args)
    records = spark.read.parquet(trained["records"])
    scored = spark.read.parquet(out)
    assert summary["rows"] == records.count() == scored.count()
    assertDataFrameEqual(scored.select("id", "source", "text", "label", "rating"), records)
    lineage = scored.select(*score.LINEAGE_COLUMNS).distinct().collect()
    assert len(lineage) == 1 and lineage[0]["head"] == trained["model"]
    assert lineage[0]["model_uri"] == trained["summary"]["model_uri"]
    assert lineage[0]["model_run_id"] == trained["summary"]["mlflow_run_id"]
    assert lineage[0]["encoder_version"] == trained["summary"]["encoder"]["version"]
    assert scored.where(F.size("embedding") != 384).count() == 0
    assert scored.where(F.col("predicted").isNull()).count() == 0


def test_empty_input(spark, tmp_path, trained, head):
    empty = spark.createDataFrame([], "id string, source string, text string, label string, rating double")
    empty.write.parquet(str(tmp_path / "in"))
    args = score.parser().parse_args(
        [
            "--config",
            trained["config"],
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
            "--model",
            trained["model"],
        ]
    )
    assert common.run_main(score.main, spark, args, head=head)["rows"] == 0
    assert spark.read.parquet(str(tmp_path / "out")).columns[-len(score.LINEAGE_COLUMNS) :] == list(
        score.LINEAGE_COLUMNS
    )


def test_bad_input_without_text_column_fails(spark, tmp_path, trained, head):
    spark.createDataFrame([("x", "hello")], "id string, body string").write.parquet(str(tmp_path / "in"))
    args = score.parser().parse_args(
        ["--config", trained["config"], "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    )
    with pytest.raises(Exception, match="text"):
        common.run_main(score.main, spark, args, head=head)


def test_unknown_model_fails_before_spark_starts(trained, monkeypatch, capsys):
    class NoSpark:
        @property
        def builder(self):
            raise AssertionError("Spark must not start for an unknown model")

    monkeypatch.setattr(common, "SparkSession", NoSpark())
    rc = score.cli(["--config", trained["config"], "--input", "x", "--output", "y", "--model", "sentiment@99"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown model 'models:/sentiment/99'" in err and "registered: sentiment (versions 1)" in err


def test_head_trained_on_other_encoder_weights_fails(spark, tmp_path, trained, head):
    import dataclasses

    other = dataclasses.replace(
        head, meta={**head.meta, "encoder": {**head.meta["encoder"], "version": "000000000000"}}
    )
    args = score.parser().parse_args(
        ["--config", trained["config"], "--input", trained["records"], "--output", str(tmp_path / "out")]
    )
    with pytest.raises(ValueError, match="trained on encoder weights 000000000000"):
        common.run_main(score.main, spark, args, head=other)
