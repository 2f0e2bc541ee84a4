"""The Spark side of udfs/: pandas UDF factories over the plain functions.

The only module of udfs/ that imports pyspark. Each factory closes over plain
values (arrays, strings, numbers) that travel to the executors with the UDF;
the encoder itself loads there, once per Python worker (udfs.model caches it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pandas as pd
from pyspark.sql import Column
from pyspark.sql.functions import pandas_udf

from .predict import ScoreSettings, embed_texts, score_texts, set_threads
from .records import in_sample, split_of


def score_udf(settings: ScoreSettings, with_embedding: bool = False) -> Callable[..., Column]:
    """Iterator pandas UDF: text -> struct(predicted, probability[, embedding])."""
    fields = "predicted string, probability double"
    if with_embedding:
        fields += ", embedding array<float>"

    @pandas_udf(fields)
    def score(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        for texts in batches:
            yield score_texts(texts.tolist(), settings, with_embedding)

    return score


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
