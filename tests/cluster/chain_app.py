"""The ingest -> score -> stats chain as ONE Spark application (each
application on a standalone cluster unpacks the 5 GB environment again in
the driver and in every executor), followed by the environment probe of
infra/env_check.py on the same executors; writes the probe's reports as
JSON to --report.

Run with:
    ./submit.sh --master spark://127.0.0.1:17077 --config CONF tests/cluster/chain_app.py \
        --raw hdfs://.../raw --out hdfs://.../chain --model sentiment@1 --report /tmp/report.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pyspark.sql import SparkSession

from jobs.spark import common, ingest, score, stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="chain_app")
    p.add_argument("--config", default=os.environ.get("AIBATCH_CONFIG"))
    p.add_argument("--raw", required=True, help="raw JSON Lines input (file or dir)")
    p.add_argument("--out", required=True, help="base dir of the outputs")
    p.add_argument("--model", required=True)
    p.add_argument("--report", required=True, help="local JSON file for the probe's reports")
    args = p.parse_args(argv)

    # The probe lives in the checkout's infra/, which the code zip does not
    # ship: send its functions to the executors by value.
    sys.path.append(os.environ["AIBATCH_HOME"])
    from pyspark import cloudpickle

    import infra.env_check as env_check

    cloudpickle.register_pickle_by_value(env_check)

    cfg = ["--config", args.config]
    spark = SparkSession.builder.appName("aibatch-cluster-chain").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    try:
        common.run_main(
            ingest.main,
            spark,
            ingest.parser().parse_args(
                [*cfg, "--input", args.raw, "--format", "jsonl", "--source", "mine", "--rating-field", "sentiment"]
                + ["--output", f"{args.out}/records", "--rejects", f"{args.out}/rejects", "--output-format", "jsonl"]
            ),
        )
        common.run_main(
            score.main,
            spark,
            score.parser().parse_args(
                [*cfg, "--input", f"{args.out}/records", "--input-format", "jsonl", "--model", args.model]
                + ["--output", f"{args.out}/scored", "--output-format", "jsonl"]
            ),
        )
        common.run_main(
            stats.main,
            spark,
            stats.parser().parse_args(
                [*cfg, "--input", f"{args.out}/scored", "--input-format", "jsonl", "--output", f"{args.out}/stats"]
            ),
        )
        reports = env_check.main(spark, 8)
        driver = {"pid": os.getpid(), "prefix": sys.prefix, "master": spark.sparkContext.master}
    finally:
        spark.stop()
    with open(args.report, "w") as fh:
        json.dump({"workers": reports, "driver": driver}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
