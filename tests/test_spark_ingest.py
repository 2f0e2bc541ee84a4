"""Spark ingest job: transform on literal DataFrames, end to end on HDFS with
a real sample, partition-count invariance, empty and bad input."""

from __future__ import annotations

import pytest
from pyspark.testing import assertDataFrameEqual

from jobs.spark import common, ingest
from udfs import records as R
from udfs.records import record_id

BAD_JSONL = [
    b'{"text": "A fine, funny film.", "label": "positive", "rating": 2.5}',
    b'{"text": "A fine, funny film.", "label": "positive", "rating": 2.5}',  # duplicate
    b'{"text": "broken',  # malformed JSON
    b'{"label": "negative"}',  # missing text
    b'{"text": 17}',  # wrong type
    b'{"text": "ok", "rating": "very"}',  # wrong type
    b'{"text": "na\xefve"}',  # invalid UTF-8 (latin-1 byte)
    b'["not", "an", "object"]',
    b'{"text": "Unlabelled but fine."}',
]
SPEC = R.SourceSpec("mine", "jsonl", rating_field="rating", label_field="label")


def lines_frame(spark, lines):
    return spark.createDataFrame([(bytearray(line),) for line in lines], "raw binary")


def run_transform(spark, lines, spec=SPEC, partitions=None):
    return ingest.resolve_duplicates(ingest.parse_lines(lines_frame(spark, lines), spec), partitions)


def test_transform_on_literal_frame(spark):
    records, rejects = run_transform(spark, BAD_JSONL)
    expected_records = spark.createDataFrame(
        [
            (record_id("mine", BAD_JSONL[0]), "mine", "A fine, funny film.", "positive", 2.5),
            (record_id("mine", BAD_JSONL[8]), "mine", "Unlabelled but fine.", None, None),
        ],
        ingest.RECORD_SCHEMA,
    )
    assertDataFrameEqual(records, expected_records)
    raw = [line.decode("utf-8", "backslashreplace") for line in BAD_JSONL]
    expected_rejects = spark.createDataFrame(
        [
            (record_id("mine", BAD_JSONL[1]), "mine", "duplicate_record", raw[1]),
            (record_id("mine", BAD_JSONL[2]), "mine", "malformed_json", raw[2]),
            (record_id("mine", BAD_JSONL[3]), "mine", "missing_text", raw[3]),
            (record_id("mine", BAD_JSONL[4]), "mine", "wrong_type:text", raw[4]),
            (record_id("mine", BAD_JSONL[5]), "mine", "wrong_type:rating", raw[5]),
            (record_id("mine", BAD_JSONL[6]), "mine", "invalid_utf8", '{"text": "na\\xefve"}'),
            (record_id("mine", BAD_JSONL[7]), "mine", "not_a_json_object", raw[7]),
        ],
        ingest.REJECT_SCHEMA,
    )
    assertDataFrameEqual(rejects, expected_rejects)


def test_ids_equal_across_partition_counts(spark, sample_dir, pipeline_config):
    from udfs.config import load_config

    cfg = load_config(pipeline_config)
    sources = [(str(sample_dir / s.file), cfg.ingest.spec(s)) for s in cfg.ingest.sources]
    one = ingest.ingest(spark, sources, partitions=1)
    four = ingest.ingest(spark, sources, partitions=4)
    assert one.records.rdd.getNumPartitions() == 1 and four.records.rdd.getNumPartitions() == 4
    assertDataFrameEqual(one.records, four.records)
    assertDataFrameEqual(one.rejects, four.rejects)
    assert one.records.count() > 250


def args(*extra):
    return ingest.parser().parse_args(list(extra))


def test_end_to_end_on_hdfs_with_real_sample(spark, trained, hdfs_sample, sample_dir, pipeline_config):
    # the `trained` fixture ran the ingest job on the sample; read its outputs
    from udfs.config import load_config

    raw_records = 0
    for s in load_config(pipeline_config).ingest.sources:
        data = R.decompress(s.file, (sample_dir / s.file).read_bytes())
        raw_records += sum(1 for _ in R.split_records(s.format, data)) - 1  # less the header
    base = hdfs_sample.rsplit("/raw", 1)[0]
    records = spark.read.parquet(f"{base}/records")
    rejects = spark.read.parquet(f"{base}/rejects")
    assert records.count() + rejects.count() == raw_records > 600
    assert {r["source"] for r in records.select("source").distinct().collect()} == {
        "vader_tweets",
        "vader_movie_reviews",
        "vader_amazon_reviews",
        "vader_nyt_editorials",
        "rotten_tomatoes",
    }
    assert records.where("label is not null").count() > 150
    assert records.select("id").distinct().count() == records.count()
    assert records.dtypes == [(f.name, f.dataType.simpleString()) for f in ingest.RECORD_SCHEMA]


def test_bad_rows_on_hdfs_land_in_rejects_and_counts_add_up(spark, hdfs, webhdfs, pipeline_config):
    path = f"/user/{hdfs.user}/tests/ingest_bad/in.jsonl"
    webhdfs.write(path, data=b"\n".join(BAD_JSONL) + b"\n", overwrite=True)
    out = f"{hdfs.hdfs_url}/user/{hdfs.user}/tests/ingest_bad"
    summary = common.run_main(
        ingest.main,
        spark,
        args(
            "--config",
            str(pipeline_config),
            "--input",
            hdfs.hdfs_url + path,
            "--format",
            "jsonl",
            "--source",
            "mine",
            "--label-field",
            "label",
            "--rating-field",
            "rating",
            "--output",
            f"{out}/records",
            "--rejects",
            f"{out}/rejects",
            "--output-format",
            "jsonl",
        ),
    )
    assert (summary["input"], summary["good"], summary["rejected"]) == (9, 2, 7)
    assert summary["reasons"] == {
        "duplicate_record": 1,
        "malformed_json": 1,
        "missing_text": 1,
        "wrong_type:text": 1,
        "wrong_type:rating": 1,
        "invalid_utf8": 1,
        "not_a_json_object": 1,
    }
    back = spark.read.schema(ingest.RECORD_SCHEMA).json(f"{out}/records")
    assert sorted(r["text"] for r in back.collect()) == ["A fine, funny film.", "Unlabelled but fine."]


def test_empty_input(spark, hdfs, webhdfs, pipeline_config):
    path = f"/user/{hdfs.user}/tests/ingest_empty/in.jsonl"
    webhdfs.write(path, data=b"", overwrite=True)
    out = f"{hdfs.hdfs_url}/user/{hdfs.user}/tests/ingest_empty"
    summary = common.run_main(
        ingest.main,
        spark,
        args(
            "--config",
            str(pipeline_config),
            "--input",
            hdfs.hdfs_url + path,
            "--format",
            "jsonl",
            "--output",
            f"{out}/records",
            "--rejects",
            f"{out}/rejects",
        ),
    )
    assert (summary["input"], summary["good"], summary["rejected"]) == (0, 0, 0)
    assert spark.read.parquet(f"{out}/records").dtypes == [
        ("id", "string"),
        ("source", "string"),
        ("text", "string"),
        ("label", "string"),
        ("rating", "double"),
    ]


def test_parquet_input(spark, tmp_path, pipeline_config):
    src = tmp_path / "in.parquet"
    spark.createDataFrame([("Great fun.", 3.0), (None, 1.0)], "body string, score double").write.parquet(str(src))
    summary = common.run_main(
        ingest.main,
        spark,
        args(
            "--config",
            str(pipeline_config),
            "--input",
            str(src),
            "--format",
            "parquet",
            "--source",
            "pq",
            "--text-field",
            "body",
            "--rating-field",
            "score",
            "--output",
            str(tmp_path / "r"),
            "--rejects",
            str(tmp_path / "j"),
        ),
    )
    assert (summary["good"], summary["reasons"]) == (1, {"missing_text": 1})
    row = spark.read.parquet(str(tmp_path / "r")).collect()[0]
    raw = b'{"body": "Great fun.", "score": 3.0}'
    assert (row["id"], row["text"], row["label"], row["rating"]) == (
        record_id("pq", raw),
        "Great fun.",
        "positive",
        3.0,
    )


def test_unknown_source_name_is_an_error(spark, tmp_path, pipeline_config):
    from udfs.config import ConfigError

    with pytest.raises(ConfigError, match="unknown source 'nope'; known: vader_tweets"):
        common.run_main(
            ingest.main,
            spark,
            args(
                "--config",
                str(pipeline_config),
                "--input",
                str(tmp_path),
                "--sources",
                "nope",
                "--output",
                str(tmp_path / "r"),
                "--rejects",
                str(tmp_path / "j"),
            ),
        )
