"""The Spark side of udfs/: pandas UDF factories over the plain functions.

The only module of udfs/ that imports pyspark. Each factory closes over plain
values (arrays, strings, numbers) that travel to the executors with the UDF;
the encoder itself loads there, once per Python worker (udfs.model caches it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import LongType, StructField, StructType

from . import partitioning as P
from .predict import ScoreSettings, embed_texts, score_texts, set_threads
from .records import in_sample, split_of


def score_udf(settings: ScoreSettings, with_embedding: bool = False) -> Callable[..., Column]:
    """Iterator pandas UDF: text -> struct(predicted, probability[, embedding])."""
    fields = "predicted string, probability double"
    if with_embedding:
        fields += ", embedding array<float>"

    @pandas_udf(fields)
    def score(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        gpus = task_gpus()
        for texts in batches:
            yield score_texts(texts.tolist(), settings, with_embedding, gpus)

    return score


def task_gpus() -> list[str]:
    """The GPU addresses Spark assigned to the running task
    (spark.task.resource.gpu.amount); empty without GPU scheduling."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return []
    gpu = context.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None else []


COST_COLUMN = "_cost"
_KEY_COLUMN = "_partition_key"


def task_slots(spark: SparkSession) -> int:
    """Tasks the application can run at once: SparkContext.defaultParallelism
    (the executors' cores, or spark.default.parallelism where set) divided
    by spark.task.cpus."""
    sc = spark.sparkContext
    return max(1, sc.defaultParallelism // int(sc.getConf().get("spark.task.cpus", "1")))


def balance_by_cost(
    records: DataFrame,
    partitions: int,
    model_dir: str | None,
    max_length: int,
    text_column: str = "text",
    keep_cost: bool = False,
) -> DataFrame:
    """records in `partitions` partitions of about equal estimated scoring
    cost (udfs.partitioning), whatever their input layout; rows and columns
    unchanged (plus `_cost`, MFLOP, with keep_cost). One cheap pass
    tokenises each row where it is read and deals it to the bucket with the
    least cost so far; a hash shuffle on a key chosen per bucket
    (partitioning.spark_partition_keys) gives each bucket its own partition."""
    keys = np.asarray(P.spark_partition_keys(partitions), dtype=np.int64)
    schema = StructType(
        [
            *records.schema.fields,
            StructField(_KEY_COLUMN, LongType(), False),
            StructField(COST_COLUMN, LongType(), False),
        ]
    )

    def deal(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        buckets = P.GreedyBuckets(partitions, start=context.partitionId() if context else 0)
        for batch in batches:
            costs = P.text_costs(batch.column(text_column).to_pylist(), model_dir, max_length)
            bucket = buckets.assign(costs)
            yield batch.append_column(_KEY_COLUMN, pa.array(keys[bucket])).append_column(COST_COLUMN, pa.array(costs))

    balanced = records.mapInArrow(deal, schema).repartition(partitions, _KEY_COLUMN).drop(_KEY_COLUMN)
    return balanced if keep_cost else balanced.drop(COST_COLUMN)


def embed_udf(
    model_dir: str | None,
    precision: str,
    batch_size: int,
    max_length: int,
    torch_threads: int,
) -> Callable[..., Column]:
    """Iterator pandas UDF: text -> array<float> (384-d, L2-normalised)."""

    @pandas_udf("array<float>")
    def embed(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        set_threads(torch_threads)
        for texts in batches:
            emb = embed_texts(texts.tolist(), model_dir, precision, batch_size, max_length)
            yield pd.Series([None if row[0] != row[0] else row.tolist() for row in emb], dtype=object)

    return embed


def in_sample_udf(percent: float) -> Callable[..., Column]:
    """pandas UDF: id -> whether the record is in the `percent` % subset."""

    @pandas_udf("boolean")
    def sample(ids: pd.Series) -> pd.Series:
        return ids.map(lambda rid: in_sample(rid, percent)).astype(bool)

    return sample


def split_udf(test_percent: int) -> Callable[..., Column]:
    """pandas UDF: id -> 'train' or 'test'."""

    @pandas_udf("string")
    def split(ids: pd.Series) -> pd.Series:
        return ids.map(lambda rid: split_of(rid, test_percent))

    return split
