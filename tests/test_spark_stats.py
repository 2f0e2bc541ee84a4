"""Spark stats job (RDD API): exact, ordered tables from a literal scored
frame; end to end on HDFS; empty and bad input."""

from __future__ import annotations

import json

from jobs.spark import common, stats

SCHEMA = "id string, source string, text string, predicted string"
ROWS = [
    ("1", "a", "Great fun, great cast.", "positive"),
    ("2", "a", "The cast was dull.", "negative"),
    ("3", "b", "Fun fun FUN!", "positive"),
    ("4", "b", None, None),  # bad row: no text, no prediction
]


def test_tables_on_literal_frame(spark):
    result = stats.compute_stats(spark.createDataFrame(ROWS, SCHEMA), top_k=2)
    assert result.counts.collect() == [("a", "negative", 1), ("a", "positive", 1), ("b", "", 1), ("b", "positive", 1)]
    assert result.term_freq.collect() == [
        ("negative", "cast", 1),
        ("negative", "dull", 1),
        ("positive", "cast", 1),
        ("positive", "fun", 4),
        ("positive", "great", 2),
    ]
    assert result.top_terms.collect() == [
        ("negative", 1, "cast", 1),
        ("negative", 2, "dull", 1),
        ("positive", 1, "fun", 4),
        ("positive", 2, "great", 2),
    ]


def test_end_to_end_on_hdfs_writes_ordered_json_lines(spark, hdfs, tmp_path, pipeline_config):
    src = str(tmp_path / "scored")
    spark.createDataFrame(ROWS, SCHEMA).repartition(3).write.parquet(src)
    out = f"{hdfs.hdfs_url}/user/{hdfs.user}/tests/stats"
    args = stats.parser().parse_args(
        ["--config", str(pipeline_config), "--input", src, "--output", out, "--set", "stats.top_k=1"]
    )
    summary = common.run_main(stats.main, spark, args)
    assert summary["rows"] == {"term_freq": 5, "counts": 4, "top_terms": 2}
    lines = [r["value"] for r in spark.read.text(f"{out}/top_terms").collect()]
    assert [json.loads(x) for x in lines] == [
        {"label": "negative", "rank": 1, "term": "cast", "count": 1},
        {"label": "positive", "rank": 1, "term": "fun", "count": 4},
    ]
    counts = [r["value"] for r in spark.read.text(f"{out}/counts").collect()]
    assert counts[0] == '{"source": "a", "label": "negative", "count": 1}' and len(counts) == 4


def test_empty_input(spark, tmp_path, pipeline_config):
    src = str(tmp_path / "scored")
    spark.createDataFrame([], SCHEMA).write.parquet(src)
    args = stats.parser().parse_args(
        ["--config", str(pipeline_config), "--input", src, "--output", str(tmp_path / "o")]
    )
    assert common.run_main(stats.main, spark, args)["rows"] == {"term_freq": 0, "counts": 0, "top_terms": 0}
