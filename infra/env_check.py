"""Where a cluster's executors run Python from: a Spark application that runs
small tasks on every executor and reports, per Python worker, its process,
its executor JVM, its working dir, sys.prefix, torch.__file__, the
encoder's directory and the providers' SDKs (the enrich tasks' clients);
it fails unless each of them lies inside the worker's
own work (standalone) or container (YARN) directory, in the packed
environment, and not in the driver's environment.

Run with:
    ./submit.sh --master spark://127.0.0.1:17077 env-check
    ./submit.sh --master yarn env-check [--tasks 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pyspark.sql import SparkSession

from jobs.spark import session
from udfs.worker_env import probe


def problems(report: dict, driver_prefix: str) -> list[str]:
    """Why one worker's report does not show the packed environment."""
    found = []
    cwd = report["cwd"].rstrip("/") + "/"
    places = {key: report[key] for key in ("prefix", "torch", "encoder_dir")}
    places |= {f"SDK {name}": where for name, where in report["sdks"].items()}  # the enrich clients'
    for what, where in places.items():
        if not where.startswith(cwd):
            found.append(f"{what} {where} is not inside the worker's dir {cwd}")
    if os.path.realpath(report["prefix"]) == os.path.realpath(driver_prefix):
        found.append(f"sys.prefix {report['prefix']} is the driver's environment")
    if report["pid"] == os.getpid() or report["executor_jvm_pid"] is None:
        found.append(f"pid {report['pid']} is not a Python worker under an executor JVM")
    return found


def main(spark: SparkSession, tasks: int) -> list[dict]:
    sc = spark.sparkContext
    reports = sc.parallelize(range(tasks), tasks).map(probe).collect()
    unique = {(r["pid"], r["cwd"]): r for r in reports}
    return list(unique.values())


def cli(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="env-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=8, help="tasks to spread over the executors (default 8)")
    args = parser.parse_args(argv)
    spark = session.start("aibatch-env-check")
    spark.sparkContext.setLogLevel("WARN")
    try:
        reports = main(spark, args.tasks)
        driver = {"pid": os.getpid(), "prefix": sys.prefix, "master": spark.sparkContext.master}
    finally:
        spark.stop()
    bad, out = [], sys.stdout
    for report in reports:
        report["problems"] = problems(report, driver["prefix"])
        bad += report["problems"]
        out.write("env-check worker: " + json.dumps(report, sort_keys=True) + "\n")
    out.write("env-check driver: " + json.dumps(driver, sort_keys=True) + "\n")
    executors = {r["executor_jvm_pid"] for r in reports}
    if bad:
        out.write(f"env-check: FAILED: {'; '.join(sorted(set(bad)))}\n")
        return 1
    out.write(
        f"env-check: ok: {len(reports)} Python workers under {len(executors)} executor JVMs, "
        f"each running the packed environment inside its own dir\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli())
