"""Smoke job: read text lines from HDFS, count words, write Parquet back.

It proves the path every real job takes: Spark's bundled Hadoop client reads
`hdfs://` and writes Parquet there.

Run with: ./submit.sh hdfs_roundtrip --input hdfs://127.0.0.1:19820/user/$USER/smoke/in.txt \
              --output hdfs://127.0.0.1:19820/user/$USER/smoke/counts
"""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.spark import common
from udfs.config import PipelineConfig


def word_counts(lines: DataFrame) -> DataFrame:
    """Lower-cased word counts of a DataFrame with one string column `value`,
    ordered by count descending then word ascending."""
    words = lines.select(F.explode(F.split(F.lower(F.col("value")), r"[^a-z0-9']+")).alias("word"))
    return (
        words.where(F.col("word") != "")
        .groupBy("word")
        .agg(F.count("*").cast("long").alias("count"))
        .orderBy(F.col("count").desc(), F.col("word").asc())
    )


def roundtrip(spark: SparkSession, input_path: str, output_path: str) -> int:
    """Word counts of input_path written as Parquet to output_path; the number
    of distinct words read back."""
    counts = word_counts(spark.read.text(input_path))
    counts.coalesce(1).write.mode("overwrite").parquet(output_path)
    return spark.read.parquet(output_path).count()


def main(spark: SparkSession, config: PipelineConfig, args) -> dict:
    return {"words": roundtrip(spark, args.input, args.output), "output": args.output}


def parser() -> argparse.ArgumentParser:
    p = common.base_parser("hdfs_roundtrip", __doc__)
    p.add_argument("--input", required=True, help="text file or dir (hdfs:// or local)")
    p.add_argument("--output", required=True, help="Parquet output dir (overwritten)")
    return p


def report(out: dict) -> None:
    print(f"wrote {out['words']} word counts to {out['output']}")


def cli(argv=None) -> int:
    return common.run_cli("hdfs_roundtrip", parser(), main, report, argv)


if __name__ == "__main__":
    sys.exit(cli())
