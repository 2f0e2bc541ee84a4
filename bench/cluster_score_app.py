"""The score job as bench/bench_cluster.py runs it on each master: one Spark
application that first scores a small warm-up input (every executor starts,
unpacks the packed environment where the cluster does that per
application, and loads the model), then scores the measured input; prints
one JSON line with the measured job's seconds (start-up excluded).

Run with (bench_cluster.py does):
    ./submit.sh --master MASTER --config CONF bench/cluster_score_app.py \
        --warmup hdfs://.../warmup --input hdfs://.../records --output hdfs://.../scored --model sentiment@1
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pyspark.sql import SparkSession

from jobs.spark import common, score


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="cluster_score_app")
    p.add_argument("--config", default=os.environ.get("AIBATCH_CONFIG"))
    p.add_argument("--warmup", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--model", required=True)
    args = p.parse_args(argv)
    spark = SparkSession.builder.appName("aibatch-bench-cluster").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")

    def run(src: str, out: str) -> dict:
        argv = ["--config", args.config, "--input", src, "--input-format", "jsonl", "--output", out]
        return common.run_main(score.main, spark, score.parser().parse_args([*argv, "--model", args.model]))

    try:
        warm = run(args.warmup, args.output + "-warmup")
        measured = run(args.input, args.output)
    finally:
        spark.stop()
    sys.stdout.write(
        "bench-result: "
        + json.dumps({"rows": measured["rows"], "seconds": measured["seconds"], "warmup_seconds": warm["seconds"]})
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
