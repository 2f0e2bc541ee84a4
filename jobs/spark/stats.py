"""MapReduce-shaped statistics over the scored output with the RDD API: term
frequencies per predicted label, counts per source and predicted label, and
the top terms per label (count descending, then term ascending). Each table
is one JSON Lines file in a fixed order, so the mrjob twin's output can be
compared line by line.

Run with:
    ./submit.sh stats --input hdfs://127.0.0.1:19820/user/$USER/aibatch/scored \
        --output hdfs://127.0.0.1:19820/user/$USER/aibatch/stats [--top-k 25]
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from operator import add

from pyspark import RDD
from pyspark.sql import DataFrame, SparkSession

from jobs.spark import common
from udfs import terms
from udfs.config import PipelineConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Stats:
    """Each table as an RDD of tuples, sorted by its sort key."""

    term_freq: RDD  # (label, term, count)
    counts: RDD  # (source, label, count)
    top_terms: RDD  # (label, rank, term, count)


def compute_stats(scored: DataFrame, top_k: int) -> Stats:
    rows = scored.select("source", "text", "predicted").rdd
    counts = (
        rows.map(lambda r: ((r["source"], terms.label_key(r["predicted"])), 1))
        .reduceByKey(add)
        .map(lambda kv: (kv[0][0], kv[0][1], kv[1]))
        .sortBy(lambda t: terms.counts_sort_key(*t))
    )
    term_freq = (
        rows.flatMap(lambda r: (((terms.label_key(r["predicted"]), t), 1) for t in terms.tokenize(r["text"] or "")))
        .reduceByKey(add)
        .map(lambda kv: (kv[0][0], kv[0][1], kv[1]))
    )
    top = (
        term_freq.map(lambda t: (t[0], (t[1], t[2])))
        .groupByKey()
        .flatMap(lambda kv: terms.ranked_top_terms(kv[0], kv[1], top_k))
        .sortBy(lambda t: terms.top_terms_sort_key(*t))
    )
    term_freq = term_freq.sortBy(lambda t: terms.term_freq_sort_key(*t))
    return Stats(term_freq=term_freq, counts=counts, top_terms=top)


def to_json_lines(stats: Stats) -> dict[str, RDD]:
    """Each table's rows in the shared JSON form (udfs.terms), still sorted."""
    return {
        "term_freq": stats.term_freq.map(lambda t: terms.term_freq_row(*t)),
        "counts": stats.counts.map(lambda t: terms.counts_row(*t)),
        "top_terms": stats.top_terms.map(lambda t: terms.top_terms_row(*t)),
    }


def main(spark: SparkSession, config: PipelineConfig, args) -> dict:
    top_k = config.stats.top_k
    scored = common.read_table(spark, args.input, args.input_format)
    tables = to_json_lines(compute_stats(scored, top_k))
    sizes = {}
    with common.committed_outputs(
        spark, {"output": args.output}, overwrite=args.overwrite, inputs=[args.input]
    ) as staging:
        for name, lines in tables.items():
            path = f"{staging['output']}/{name}"
            # coalesce(1) merges the sorted partitions in order (no shuffle): one
            # ordered file.
            frame = spark.createDataFrame(lines.map(lambda line: (line,)), "value string")
            frame.coalesce(1).write.mode("errorifexists").text(path)
            sizes[name] = spark.read.text(path).count()
    summary = {"output": args.output, "rows": sizes, "counts": tables["counts"].collect()}
    log.info("stats: %s", sizes)
    return summary


def parser():
    p = common.base_parser("stats", __doc__)
    p.add_argument("--input", required=True, help="scored records (Parquet or JSON Lines dir)")
    p.add_argument(
        "--output",
        required=True,
        help="output dir: term_freq/, counts/, top_terms/ (must not exist unless --overwrite)",
    )
    common.add_output_args(p)
    p.add_argument("--input-format", choices=common.TABLE_FORMATS, default="parquet")
    return p


def report(out: dict) -> None:
    rows = out["rows"]
    print(
        f"stats: {rows['term_freq']} term counts, {rows['counts']} source/label counts, "
        f"{rows['top_terms']} top-term rows"
    )
    for line in out["counts"]:
        print(f"  {line}")
    print(f"stats: {out['output']}")


def cli(argv=None) -> int:
    return common.run_cli("stats", parser(), main, report, argv)


if __name__ == "__main__":
    sys.exit(cli())
