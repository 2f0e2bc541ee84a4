"""How scoring work is cut into tasks: by estimated cost, not by row count
or by how the input happens to be stored in files.

A row's cost is the encoder's FLOPs for its token count (the tokenizer gives
that cheaply, about 1/50 of the encoder's time), plus a small per-row
overhead so empty rows also spread out. Rows are dealt to buckets greedily:
each row goes to the bucket with the least cost so far, so every bucket ends
within one row's cost of the others, whatever order the rows come in (a
file whose long texts all sit at its end included). Each bucket becomes one
task: a Spark partition (udfs/spark.balance_by_cost) or one map task of the
mrjob twin's scoring step (jobs/mapreduce/mr_score_records.py).

Also here: the two hash functions that route a bucket to its own partition
(Spark's Murmur3 of a long, Hadoop's Text hash), so no two buckets share a
task by a hash collision.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

import numpy as np

from . import model

# Per-row work besides the encoder's layers (tokenising, padding, pooling,
# the head, Arrow or JSON) in encoder-token equivalents; a rough figure, it
# only keeps null and empty rows from all landing in one bucket.
ROW_OVERHEAD_TOKENS = 4


def token_counts(texts: Sequence[str | None], model_dir: str | None, max_length: int) -> np.ndarray:
    """Tokens per text as the encoder sees them (special tokens included,
    truncated at max_length, 0: the encoder's own limit); 0 for a null or
    empty text."""
    out = np.zeros(len(texts), dtype=np.int64)
    present = [i for i, t in enumerate(texts) if isinstance(t, str) and t]
    if present:
        limit = model.effective_max_length(model.encoder_shape(model_dir), max_length)
        batch = [texts[i] for i in present]
        fast = model.counting_tokenizer(model_dir)
        if fast is not None:  # the same counts, without importing transformers (and torch)
            fast.enable_truncation(limit)
            out[present] = [len(e.ids) for e in fast.encode_batch(batch, add_special_tokens=True)]
        else:
            ids = model.load_tokenizer(model_dir)(batch, truncation=True, max_length=limit, add_special_tokens=True)
            out[present] = [len(x) for x in ids["input_ids"]]
    return out


def costs_of_tokens(tokens: np.ndarray, shape: model.EncoderShape) -> np.ndarray:
    """Estimated cost per row on an encoder of that shape, in MFLOP (int64, >= 1)."""
    flops = model.encoder_flops(np.asarray(tokens, dtype=np.int64) + ROW_OVERHEAD_TOKENS, shape)
    return np.maximum(1, np.round(flops / 1e6)).astype(np.int64)


def text_costs(texts: Sequence[str | None], model_dir: str | None, max_length: int) -> np.ndarray:
    """Estimated cost of scoring each text, in MFLOP."""
    return costs_of_tokens(token_counts(texts, model_dir, max_length), model.encoder_shape(model_dir))


class GreedyBuckets:
    """Deals rows to n buckets, each to the one with the least cost so far
    (ties: the lowest index counted from `start`, so tasks that each deal
    a few rows do not all favour bucket 0). Keeps its loads across calls."""

    def __init__(self, n: int, start: int = 0) -> None:
        if n < 1:
            raise ValueError(f"number of buckets must be >= 1, got {n}")
        self.n = n
        self._heap = [(0, (i - start) % n, i) for i in range(n)]
        heapq.heapify(self._heap)

    def assign(self, costs: Sequence[int] | np.ndarray) -> np.ndarray:
        out = np.empty(len(costs), dtype=np.int64)
        heap = self._heap
        for j, cost in enumerate(costs):
            load, rank, bucket = heap[0]
            heapq.heapreplace(heap, (load + int(cost), rank, bucket))
            out[j] = bucket
        return out

    @property
    def loads(self) -> list[int]:
        loads = [0] * self.n
        for load, _, bucket in self._heap:
            loads[bucket] = load
        return loads


def task_count(slots: int, per_core: int) -> int:
    """Tasks for the scoring stage: per_core for each task slot (core)."""
    if slots < 1 or per_core < 1:
        raise ValueError(f"slots and partitions per core must be >= 1, got {slots} and {per_core}")
    return slots * per_core


# ----- routing each bucket to its own partition ---------------------------

_M32 = 0xFFFFFFFF


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mix_k1(k1: int) -> int:
    k1 = (k1 * 0xCC9E2D51) & _M32
    k1 = _rotl32(k1, 15)
    return (k1 * 0x1B873593) & _M32


def _mix_h1(h1: int, k1: int) -> int:
    h1 ^= k1
    h1 = _rotl32(h1, 13)
    return (h1 * 5 + 0xE6546B64) & _M32


def spark_hash_long(value: int, seed: int = 42) -> int:
    """Spark's `hash()` of a LongType value (Murmur3_x86_32.hashLong, seed
    42): what HashPartitioning takes pmod of to place a row. Signed int32."""
    v = value & 0xFFFFFFFFFFFFFFFF
    h1 = _mix_h1(seed & _M32, _mix_k1(v & _M32))
    h1 = _mix_h1(h1, _mix_k1(v >> 32))
    h1 ^= 8
    h1 ^= h1 >> 16
    h1 = (h1 * 0x85EBCA6B) & _M32
    h1 ^= h1 >> 13
    h1 = (h1 * 0xC2B2AE35) & _M32
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 & 0x80000000 else h1


def spark_partition_keys(n: int) -> list[int]:
    """keys[b]: the smallest long that `repartition(n, key)` sends to
    partition b, so bucket b gets partition b to itself."""
    return _first_keys(n, lambda k: spark_hash_long(k) % n)


def hadoop_text_hash(data: bytes) -> int:
    """Hadoop's Text.hashCode (WritableComparator.hashBytes): what the
    default HashPartitioner uses for a streaming job's key."""
    h = 1
    for byte in data:
        h = (31 * h + (byte - 256 if byte > 127 else byte)) & _M32
    return h - (1 << 32) if h & 0x80000000 else h


def hadoop_reducer_keys(n: int) -> list[int]:
    """keys[b]: the smallest non-negative integer whose JSON text Hadoop's
    HashPartitioner sends to reducer b of n."""
    return _first_keys(n, lambda k: (hadoop_text_hash(str(k).encode()) & 0x7FFFFFFF) % n)


def _first_keys(n: int, place: Callable[[int], int]) -> list[int]:
    if n < 1:
        raise ValueError(f"number of partitions must be >= 1, got {n}")
    keys: list[int | None] = [None] * n
    missing, k = n, 0
    while missing:
        p = place(k)
        if keys[p] is None:
            keys[p] = k
            missing -= 1
        k += 1
    return [int(x) for x in keys if x is not None]
