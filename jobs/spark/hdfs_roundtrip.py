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


def roundtrip(spark: SparkSession, input_path: str, output_path: str, overwrite: bool = False) -> int:
    """Word counts of input_path written as Parquet to output_path (committed
    when the run succeeded); the number of distinct words read back."""
    counts = word_counts(spark.read.text(input_path))
    with common.committed_outputs(spark, {"output": output_path}, overwrite=overwrite, inputs=[input_path]) as staging:
        counts.coalesce(1).write.mode("errorifexists").parquet(staging["output"])
        return spark.read.parquet(staging["output"]).count()


def main(spark: SparkSession, config: PipelineConfig, args) -> dict:
    return {"words": roundtrip(spark, args.input, args.output, args.overwrite), "output": args.output}


def parser() -> argparse.ArgumentParser:
    p = common.base_parser("hdfs_roundtrip", __doc__)
    p.add_argument("--input", required=True, help="text file or dir (hdfs:// or local)")
    p.add_argument("--output", required=True, help="Parquet output dir (must not exist unless --overwrite)")
    common.add_output_args(p)
    return p


def report(out: dict) -> None:
    print(f"wrote {out['words']} word counts to {out['output']}")


def cli(argv=None) -> int:
    return common.run_cli("hdfs_roundtrip", parser(), main, report, argv)


if __name__ == "__main__":
    sys.exit(cli())
