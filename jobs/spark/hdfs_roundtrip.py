"""Smoke job: read text lines from HDFS, count words, write Parquet back.

It proves the path every real job takes: Spark's bundled Hadoop client reads
`hdfs://` and writes Parquet there.

Run with: ./submit.sh hdfs_roundtrip --input hdfs://127.0.0.1:19820/user/$USER/smoke/in.txt \
              --output hdfs://127.0.0.1:19820/user/$USER/smoke/counts
"""

from __future__ import annotations

import argparse

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F


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


def main(spark: SparkSession, input_path: str, output_path: str) -> int:
    counts = word_counts(spark.read.text(input_path))
    counts.coalesce(1).write.mode("overwrite").parquet(output_path)
    return spark.read.parquet(output_path).count()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hdfs_roundtrip", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="text file or dir (hdfs:// or local)")
    parser.add_argument("--output", required=True, help="Parquet output dir (overwritten)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    session = SparkSession.builder.appName("aibatch-hdfs-roundtrip").getOrCreate()
    try:
        n = main(session, args.input, args.output)
        print(f"wrote {n} word counts to {args.output}")
    finally:
        session.stop()
