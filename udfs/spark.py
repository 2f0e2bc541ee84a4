"""The Spark side of udfs/: pandas UDF factories over the plain functions.

The only module of udfs/ that imports pyspark. Each factory closes over plain
values (arrays, strings, numbers) that travel to the executors with the UDF;
the encoder itself loads there, once per Python worker (udfs.model caches it).
"""

from __future__ import annotations

import atexit
import dataclasses
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import SecretStr
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import BooleanType, DoubleType, IntegerType, LongType, StringType, StructField, StructType

from . import partitioning as P
from .predict import ScoreSettings, embed_texts, output_fields, score_texts, set_threads
from .pyfunc_kind import PyfuncSettings, predict_frame
from .records import in_sample, split_of
from .worker_env import log_once


def score_udf(settings: ScoreSettings, with_embedding: bool = False, shipped: str = "") -> Callable[..., Column]:
    """Iterator pandas UDF: text -> struct of the columns the model's kind
    writes (predict.output_fields): predicted, probability, probabilities
    map<label, probability>[, embedding], or an embedder's embedding.
    shipped: the archive (ship_model_dir) holding settings.model_dir."""
    fields = ", ".join(f"{name} {kind}" for name, kind in output_fields(settings.kind, with_embedding))

    @pandas_udf(fields)
    def score(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        log_once()  # on a cluster: which Python this worker runs, in the executor's log
        gpus = task_gpus()
        here = dataclasses.replace(settings, model_dir=shipped_dir(shipped)) if shipped else settings
        for texts in batches:
            yield score_texts(texts.tolist(), here, with_embedding, gpus)

    return score


def pyfunc_udf(settings: PyfuncSettings, shipped: str = "") -> Callable[..., Column]:
    """Iterator pandas UDF: (id, text) -> struct of the pyfunc model's
    output columns (its signature: udfs.pyfunc_kind), its predict called
    once per Arrow batch, the model loaded once per Python worker from the
    shipped archive (ship_model_dir). The ids name the batch in an error."""
    fields = ", ".join(f"`{name}` {kind}" for name, kind in settings.outputs)  # (quoted: a name may be a keyword)

    @pandas_udf(fields)
    def predict(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        log_once()
        here = dataclasses.replace(settings, model_dir=shipped_dir(shipped)) if shipped else settings
        for ids, texts in batches:
            yield predict_frame(ids.tolist(), texts.tolist(), here)

    return predict


def ship_model_dir(spark: SparkSession, model_dir: str | Path) -> str:
    """Ship a model directory to the executors (a classifier's, an
    embedder's or a pyfunc model's files, downloaded on the driver) as an uncompressed tar
    archive Spark unpacks there; the archive's name, for shipped_dir."""
    src = Path(model_dir)
    archive = Path(tempfile.mkdtemp(prefix="aibatch-ship-")) / f"model-{uuid.uuid4().hex[:12]}.tar"
    atexit.register(shutil.rmtree, archive.parent, True)
    with tarfile.open(archive, "w") as tar:
        # one entry per child: Spark refuses an archive with a "./" entry
        for child in sorted(src.iterdir()):
            tar.add(child, arcname=child.name)
    spark.sparkContext.addArchive(str(archive))
    return archive.name


def shipped_dir(name: str) -> str:
    """Where a shipped archive (ship_model_dir) is unpacked on this executor."""
    from pyspark import SparkFiles

    return SparkFiles.get(name)


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
    shipped: str = "",
) -> DataFrame:
    """records in `partitions` partitions of about equal estimated scoring
    cost (udfs.partitioning), whatever their input layout; rows and columns
    unchanged (plus `_cost`, MFLOP, with keep_cost). One cheap pass
    tokenises each row where it is read and deals it to the bucket with the
    least cost so far; a hash shuffle on a key chosen per bucket
    (partitioning.spark_partition_keys) gives each bucket its own partition.
    model_dir: the transformer whose tokenizer and shape give the cost
    (shipped: the archive holding it, ship_model_dir)."""
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
        here = shipped_dir(shipped) if shipped else model_dir
        for batch in batches:
            costs = P.text_costs(batch.column(text_column).to_pylist(), here, max_length)
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


# ----- enrich: the LLM stage (udfs/enrich/ is the core; these are its Spark adapters) -----

_SPARK_TYPES = {"string": StringType(), "Int32": IntegerType(), "Float64": DoubleType(), "boolean": BooleanType()}


def enrich_result_fields() -> list[StructField]:
    """The Spark fields of the enrich result columns (udfs.enrich.result.RESULT_DTYPES)."""
    from .enrich.result import RESULT_DTYPES

    return [StructField(name, _SPARK_TYPES[dtype], True) for name, dtype in RESULT_DTYPES.items()]


def select_udf(flt: Any) -> Callable[..., Column]:
    """pandas UDF: struct of the row's columns -> whether the enrich filter
    selects the row (udfs.enrich.select.select_mask, the twin's rule too)."""
    from .enrich.select import select_mask

    @pandas_udf("boolean")
    def selected(rows: pd.DataFrame) -> pd.Series:
        return select_mask(rows, flt).astype(bool)

    return selected


PartitionFn = Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]


def enrich_partitions(
    cfg: Any, assets: Any, job_id: str, api_key: SecretStr, chunk_rows: int, progress: bool
) -> PartitionFn:
    """mapInPandas function: a partition of selected rows -> the same rows with
    the runner's result fields (enrich_result_fields) appended.

    The whole partition goes to udfs.enrich.runner.enrich_batch in chunks of
    `chunk_rows`: calls run concurrently inside a chunk, so fewer, bigger
    chunks keep the job at its rate limit without a drain at each Arrow batch.
    `assets` (template and answer schema) were loaded on the driver, so the
    tasks read no conf files. The key arrives wrapped (SecretStr) so no repr
    of this closure shows it. With `progress`, the runner's events feed the
    counters the driver's progress bar polls."""

    def enrich(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from .enrich.progress import ProgressFeed
        from .enrich.result import results_frame
        from .enrich.runner import TaskState, enrich_batch, open_store

        store = open_store(cfg, job_id)
        state = TaskState()  # what this task learns (share, token estimate, constraint) carries over its chunks
        counters = ProgressFeed(store, job_id) if progress else None

        def run(frame: pd.DataFrame) -> pd.DataFrame:
            rows = frame.to_dict("records")
            results = enrich_batch(
                rows,
                cfg,
                api_key=api_key.get_secret_value(),
                store=store,
                on_event=None if counters is None else counters.on_event,
                assets=assets,
                state=state,
            )
            if counters is not None:
                counters.flush()
            return pd.concat([frame, results_frame(rows, results)], axis=1)

        try:
            pending: list[pd.DataFrame] = []
            size = 0
            for frame in batches:
                pending.append(frame)
                size += len(frame)
                if size >= chunk_rows:
                    yield run(pd.concat(pending, ignore_index=True))
                    pending, size = [], 0
            if pending:
                yield run(pd.concat(pending, ignore_index=True))
        finally:
            store.close()

    return enrich


def batch_lines_partitions(cfg: Any, assets: Any) -> PartitionFn:
    """mapInPandas function: selected rows -> (custom_id, line, tokens) request lines of batch mode
    (udfs.enrich.batch_lines.request_lines), made by the tasks in parallel."""

    def lines(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from .enrich.batch_lines import request_lines

        for frame in batches:
            made = list(request_lines(frame.to_dict("records"), cfg, assets))
            yield pd.DataFrame(made, columns=["custom_id", "line", "tokens"])

    return lines


def estimate_partitions(cfg: Any, assets: Any, job_id: str) -> PartitionFn:
    """mapInPandas function: selected rows -> one row (calls, input_tokens,
    output_tokens) per batch, what enriching them would cost (--dry-run;
    prompts already in the store's cache are not counted)."""

    def estimate(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from .enrich.accounting import estimate_counts
        from .enrich.runner import open_store

        store = open_store(cfg, job_id)
        try:
            for frame in batches:
                calls, tin, tout = estimate_counts(frame.to_dict("records"), cfg, assets, store)
                yield pd.DataFrame({"calls": [calls], "input_tokens": [tin], "output_tokens": [tout]})
        finally:
            store.close()

    return estimate
