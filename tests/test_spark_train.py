"""Spark train job: labelled rows and splits on a literal frame, the trained
head's report and registry entry, empty and bad input."""

from __future__ import annotations

import pytest
from pyspark.testing import assertDataFrameEqual

from jobs.spark import common, train
from tests.model_store import TestStore
from udfs.config import load_config
from udfs.records import split_of


def test_labelled_rows_on_literal_frame(spark):
    records = spark.createDataFrame(
        [
            ("id1", "s", "good", "positive", 2.0),
            ("id2", "s", "meh", None, 0.1),
            ("id3", "s", "bad", "negative", None),
        ],
        "id string, source string, text string, label string, rating double",
    )
    expected = spark.createDataFrame(
        [("id1", "good", "positive", split_of("id1")), ("id3", "bad", "negative", split_of("id3"))],
        "id string, text string, label string, split string",
    )
    assertDataFrameEqual(train.labelled_rows(records, 20), expected)
    assert {split_of("id1"), split_of("id3")} <= {"train", "test"}


def test_trained_head_is_registered_with_report(trained, spark):
    summary = trained["summary"]
    labelled = spark.read.parquet(trained["records"]).where("label is not null").count()
    assert summary["train_rows"] + summary["test_rows"] == labelled
    assert 0.5 <= summary["majority_baseline"] <= 1 and 0 <= summary["test_accuracy"] <= 1
    head = TestStore(load_config(trained["config"]).registry_path(common.home())).load(trained["model"])
    assert head.meta["test_accuracy"] == summary["test_accuracy"]
    assert head.meta["encoder"]["name"] == "all-MiniLM-L6-v2" and head.meta["labels"] == ["negative", "positive"]
    assert set(head.arrays) == {"l0.weight", "l0.bias", "l1.weight", "l1.bias"}


def test_empty_input_is_an_error(spark, tmp_path, trained):
    spark.createDataFrame([], "id string, source string, text string, label string, rating double").write.parquet(
        str(tmp_path / "in")
    )
    args = train.parser().parse_args(["--config", trained["config"], "--input", str(tmp_path / "in")])
    with pytest.raises(ValueError, match="no labelled rows"):
        common.run_main(train.main, spark, args)


def test_one_split_only_is_an_error(spark, tmp_path, trained):
    ids = [f"id{i}" for i in range(100) if split_of(f"id{i}") == "train"][:2]
    spark.createDataFrame(
        [(ids[0], "s", "fine", "positive", None), (ids[1], "s", "poor", "negative", None)],
        "id string, source string, text string, label string, rating double",
    ).write.parquet(str(tmp_path / "in"))
    argv = ["--config", trained["config"], "--input", str(tmp_path / "in"), "--set", "train.min_class_rows=1"]
    args = train.parser().parse_args(argv)
    with pytest.raises(ValueError, match="both splits"):
        common.run_main(train.main, spark, args)
