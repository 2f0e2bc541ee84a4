"""Scoring parallelism follows the cluster, not the input's files: a single
file whose long texts all sit in its last 15% of lines, scored on local[2],
runs as several tasks of about equal estimated cost. Also the pieces: the
greedy dealer, and the two hash functions that give each bucket its own
partition (checked against Spark's own hash)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from jobs.spark import common, score
from tests.model_store import TestStore
from udfs import model as M
from udfs import partitioning as P
from udfs import records as R
from udfs.config import EncoderConfig, TrainConfig, load_config
from udfs.spark import COST_COLUMN, balance_by_cost

from .conftest import private_config

REPO = Path(__file__).resolve().parent.parent
MAX_SHARE = 0.6


def _rows(cfg, source: str, keep) -> list[dict]:
    from scripts.datasets import package_file

    spec = cfg.source(source)
    path = package_file(spec.package_file)
    return [
        row
        for kind, row, _ in R.parse_file(cfg.ingest.spec(spec), path.name, path.read_bytes())
        if kind == "record" and keep(row)
    ]


def skewed_rows(cfg, n: int = 200, long_share: float = 0.15) -> list[dict]:
    """n real rows: short movie-review snippets, then (the last long_share
    of the lines) Rotten Tomatoes plot summaries of 100+ tokens."""
    n_long = int(n * long_share)
    tok = M.load_tokenizer()
    plots = _rows(cfg, "rotten_tomatoes", lambda r: r.get("label") is None)
    long = [r for r in plots if len(tok(r["text"])["input_ids"]) >= 100][:n_long]
    short = _rows(cfg, "vader_movie_reviews", lambda r: True)[: n - n_long]
    assert len(long) == n_long and len(short) == n - n_long
    return short + long


def costs_of(rows) -> np.ndarray:
    enc = EncoderConfig()
    return P.text_costs([r["text"] for r in rows], None, enc.max_length)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A pipeline config with a private registry holding a small head, and a
    single Parquet file of skewed rows."""
    from udfs import head as H
    from udfs.predict import embed_texts

    base = tmp_path_factory.mktemp("partitions")
    config = private_config(base)
    cfg = load_config(config)
    rows = skewed_rows(cfg)
    labelled = [r for r in rows if r.get("label")][:60]
    enc = EncoderConfig()
    emb = embed_texts([r["text"] for r in labelled], None, enc.precision, enc.batch_size, enc.max_length)
    vocab = H.vocabulary([r["label"] for r in labelled])
    arrays = H.train_head(emb, [r["label"] for r in labelled], vocab, TrainConfig(hidden=8, epochs=30))
    version = M.weights_version(str(M.resolve_model_dir(None).resolve()))
    TestStore(cfg.registry_path(REPO)).register(
        "sentiment",
        arrays,
        {"encoder": {"name": M.DEFAULT_ENCODER_NAME, "version": version, "precision": "fp32"}, "labels": vocab},
    )
    table = pa.Table.from_pylist(rows)
    (base / "records").mkdir()
    pq.write_table(table, base / "records" / "part-00000.parquet")
    return {"config": str(config), "rows": rows, "input": str(base / "records"), "base": base}


def test_the_input_is_skewed_by_row_count(setup):
    # Why the test can fail: split by rows into 2, the second half holds the long texts.
    costs = costs_of(setup["rows"])
    assert costs[len(costs) // 2 :].sum() / costs.sum() > MAX_SHARE


@pytest.mark.parametrize("per_core", [1, 2])
def test_single_file_scored_in_balanced_tasks(spark, setup, per_core):
    out = str(setup["base"] / f"scored-{per_core}")
    args = score.parser().parse_args(
        [
            "--config",
            setup["config"],
            "--set",
            f"score.partitions_per_core={per_core}",
            "--input",
            setup["input"],
            "--output",
            out,
            "--model",
            "sentiment@1",
        ]
    )
    assert spark.read.parquet(setup["input"]).rdd.getNumPartitions() == 1
    sc = spark.sparkContext
    group = f"score-partitions-{per_core}"
    sc.setJobGroup(group, "score of a skewed single file")
    try:
        summary = common.run_main(score.main, spark, args)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    expected_tasks = 2 * per_core  # local[2]: 2 task slots
    assert summary["rows"] == len(setup["rows"]) and summary["partitions"] == expected_tasks

    # The scoring stage (the write after the cost shuffle) ran expected_tasks tasks.
    tracker = sc.statusTracker()
    stage_tasks = [
        tracker.getStageInfo(s).numTasks
        for j in tracker.getJobIdsForGroup(group)
        for s in tracker.getJobInfo(j).stageIds
        if tracker.getStageInfo(s) is not None
    ]
    assert expected_tasks in stage_tasks and max(stage_tasks) == expected_tasks

    # Each task wrote one file: none holds more than MAX_SHARE of the estimated cost.
    parts = sorted(Path(out).glob("part-*.parquet"))
    assert len(parts) == expected_tasks
    per_task = [costs_of(pq.read_table(p).to_pylist()).sum() for p in parts]
    total = costs_of(setup["rows"]).sum()
    assert sum(per_task) == total
    assert max(per_task) / total <= MAX_SHARE
    # and the same ids, each once
    ids = [i for p in parts for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]
    assert sorted(ids) == sorted(r["id"] for r in setup["rows"])


def test_balance_keeps_rows_and_columns(spark, setup):
    records = spark.read.parquet(setup["input"])
    balanced = balance_by_cost(records, 3, None, 256, keep_cost=True)
    assert balanced.rdd.getNumPartitions() == 3
    assert balanced.drop(COST_COLUMN).schema == records.schema
    assert sorted(map(tuple, balanced.drop(COST_COLUMN).collect())) == sorted(map(tuple, records.collect()))
    loads = balanced.groupBy(F.spark_partition_id().alias("p")).agg(F.sum(COST_COLUMN).alias("c")).collect()
    assert len(loads) == 3
    costs = [r["c"] for r in loads]
    assert max(costs) - min(costs) <= costs_of(setup["rows"]).max()  # within one row's cost


def test_empty_input(spark, setup):
    records = spark.read.parquet(setup["input"]).limit(0)
    assert balance_by_cost(records, 2, None, 256).count() == 0


def test_spark_hash_long_is_sparks_hash(spark):
    values = [0, 1, 2, 7, 12345, -1, -(2**40), 2**62 + 3]
    got = spark.createDataFrame([(v,) for v in values], "v long").select("v", F.hash("v").alias("h")).collect()
    assert {r["v"]: r["h"] for r in got} == {v: P.spark_hash_long(v) for v in values}


def test_partition_keys_reach_every_partition():
    for n in (1, 2, 3, 8, 64):
        keys = P.spark_partition_keys(n)
        assert sorted(P.spark_hash_long(k) % n for k in keys) == list(range(n))
        keys = P.hadoop_reducer_keys(n)
        assert sorted((P.hadoop_text_hash(str(k).encode()) & 0x7FFFFFFF) % n for k in keys) == list(range(n))


def test_hadoop_text_hash_is_javas():
    # Text.hashCode starts at 1 where String.hashCode starts at 0:
    # "abc".hashCode() == 96354, so Text("abc") == 31**3 + 96354.
    assert P.hadoop_text_hash(b"abc") == 31**3 + 96354
    assert P.hadoop_text_hash(b"\xff") == 31 - 1  # bytes are signed in Java


def test_greedy_buckets_end_within_one_row():
    costs = [1] * 170 + [20] * 30  # long rows last
    buckets = P.GreedyBuckets(2)
    assigned = buckets.assign(costs)
    loads = [sum(c for c, b in zip(costs, assigned, strict=True) if b == k) for k in range(2)]
    assert loads == buckets.loads and abs(loads[0] - loads[1]) <= 20
    with pytest.raises(ValueError, match="buckets must be >= 1"):
        P.GreedyBuckets(0)
    with pytest.raises(ValueError, match=">= 1"):
        P.task_count(0, 2)


EDGE_TEXTS = [
    "Ünïcödé ÀÉÎ 東京 😀 " * 40,
    "x" * 5000,
    "  a  ",
    "\u200b\u00a0tab\tnew\nline",
    "İstanbul ß ﬁ",
    " ".join(["word"] * 600),
]


@pytest.mark.parametrize("max_length", [256, 0, 16])
def test_token_counts_are_the_transformers_tokenizers(tmp_path, max_length):
    """Cost estimates count tokens with tokenizer.json through `tokenizers`
    (no transformers, no torch in the process): the same counts as the
    transformers tokenizer the encoder runs, on real texts and odd ones, and
    through that tokenizer itself for a dir without tokenizer.json."""
    import shutil

    cfg = load_config(REPO / "conf" / "pipeline.toml")
    texts = [r["text"] for r in skewed_rows(cfg, n=400)] + EDGE_TEXTS + ["", None]
    encoder = M.resolve_model_dir(None).resolve()
    limit = M.effective_max_length(M.encoder_shape(None), max_length)
    present = [t for t in texts if t]
    expected = [len(x) for x in M.load_tokenizer()(present, truncation=True, max_length=limit)["input_ids"]]
    got = P.token_counts(texts, None, max_length)
    assert got[-2:].tolist() == [0, 0] and got[:-2].tolist() == expected
    assert max(expected) == limit  # truncation reached
    no_json = tmp_path / "encoder"
    shutil.copytree(encoder, no_json, ignore=shutil.ignore_patterns("tokenizer.json"))
    assert M.counting_tokenizer(no_json) is None
    assert P.token_counts(texts, str(no_json), max_length).tolist() == got.tolist()


def test_counting_tokens_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; from udfs import partitioning as P; "
        "print(P.token_counts(['a fine film', None], None, 256).tolist(), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[5,", "0]", "False"], out.stdout
