"""Benchmark of the score path on the same real rows and the same cores:
(a) the model in plain Python with the same batching (the limit), (b) the
Spark pandas-UDF job, (c) a row-at-a-time Python UDF; then the precision
setting: fp32 against bf16 (where the CPU supports it) on the plain-Python
path, with the minimum cosine to fp32 and the head's accuracy under each.

Run with: .venv/bin/python bench/bench_spark.py [--rows 20000] [--model sentiment@latest]
          [--row-udf-rows N] [--precision-rows 2048] [--force-bf16] [--json out.json]
(needs a trained head: ./scripts/demo.sh or ./submit.sh train first)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

import bench_precision as precision  # noqa: E402

from scripts.datasets import package_file  # noqa: E402
from udfs import model as M  # noqa: E402
from udfs import records as R  # noqa: E402
from udfs.config import load_config  # noqa: E402
from udfs.predict import ScoreSettings, score_texts, set_threads  # noqa: E402
from udfs.registry import Registry  # noqa: E402

log = logging.getLogger("bench")
CORES = 2
ARROW_BATCH = 10_000


def default_rows(cfg, n: int) -> pd.DataFrame:
    """The first n records of the default data in id order (a hash order, so
    every source is mixed in), read from the installed packages."""
    rows = []
    for source in cfg.ingest.sources:
        path = package_file(source.package_file)
        for kind, row, _ in R.parse_file(cfg.ingest.spec(source), path.name, path.read_bytes()):
            if kind == "record":
                rows.append(row)
    frame = pd.DataFrame(rows).drop_duplicates("id").sort_values("id").head(n).reset_index(drop=True)
    if len(frame) < n:
        log.warning("only %d rows available (asked for %d)", len(frame), n)
    return frame


def plain_python(texts: list[str], settings: ScoreSettings) -> tuple[float, pd.DataFrame]:
    """(seconds, output): the model in one process on all cores, fed in
    chunks of the Arrow batch size so the length sort sees the same groups."""
    set_threads(CORES)
    started = time.perf_counter()
    parts = [
        score_texts(texts[i : i + ARROW_BATCH], settings, with_embedding=False)
        for i in range(0, len(texts), ARROW_BATCH)
    ]
    return time.perf_counter() - started, pd.concat(parts, ignore_index=True)


def spark_runs(frame: pd.DataFrame, settings: ScoreSettings, row_udf_rows: int) -> dict:
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import udf

    from udfs.spark import score_udf

    t0 = time.perf_counter()
    spark = (
        SparkSession.builder.master(f"local[{CORES}]")
        .appName("aibatch-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH))
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        df = spark.createDataFrame(frame[["id", "text"]]).repartition(CORES).cache()
        df.count()
        vectorised = score_udf(settings)
        # Warm-up: each Python worker loads the encoder once (cached).
        spark.createDataFrame(frame[["id", "text"]].head(64)).repartition(CORES).select(
            vectorised("text").alias("s")
        ).write.format("noop").mode("overwrite").save()
        t1 = time.perf_counter()
        out = df.select("id", vectorised("text").alias("s")).select("id", "s.predicted", "s.probability")
        out.write.format("noop").mode("overwrite").save()
        t2 = time.perf_counter()
        # the same rows' results, for the check against plain Python
        check = out.toPandas().sort_values("id").reset_index(drop=True)

        def score_one(text):
            row = score_texts([text], settings).iloc[0]
            return (row["predicted"], float(row["probability"]))

        row_udf = udf(score_one, "struct<predicted:string, probability:double>")
        small = df.limit(row_udf_rows).repartition(CORES).cache()
        n_small = small.count()
        t3 = time.perf_counter()
        small.select(row_udf("text").alias("s")).write.format("noop").mode("overwrite").save()
        t4 = time.perf_counter()
    finally:
        spark.stop()
    return {
        "pandas_udf_s": t2 - t1,
        "pandas_udf_with_startup_s": t2 - t0,
        "startup_s": t1 - t0,
        "row_udf_s": t4 - t3,
        "row_udf_rows": n_small,
        "check": check,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--model", default="sentiment@latest")
    p.add_argument("--config", default=str(REPO / "conf" / "pipeline.toml"))
    p.add_argument("--row-udf-rows", type=int, help="rows for the row-at-a-time UDF (default: --rows)")
    p.add_argument("--precision-rows", type=int, default=2048)
    p.add_argument("--force-bf16", action="store_true", help="measure bf16 even where the CPU lacks support (emulated)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    head = Registry(cfg.registry_path(REPO)).load(args.model)
    settings = ScoreSettings.from_config(cfg.encoder, dict(head.arrays), precision="fp32", torch_threads=1)
    frame = default_rows(cfg, args.rows)
    texts = frame["text"].tolist()
    n = len(texts)
    print(
        f"bench: {n} real rows of the default data, {CORES} cores, {M.ENCODER_NAME} fp32 + head {head.ref}, "
        f"batches of {cfg.encoder.batch_size} sorted by length, torch {__import__('torch').__version__}"
    )

    M.load_encoder()  # load outside the timing, as the Spark warm-up does
    a_s, a_out = plain_python(texts, ScoreSettings(**{**settings.__dict__, "torch_threads": CORES}))
    b = spark_runs(frame, settings, args.row_udf_rows or n)
    check = b.pop("check")
    merged = frame[["id"]].assign(pa=a_out["predicted"], qa=a_out["probability"]).merge(check, on="id")
    same = bool((merged["pa"] == merged["predicted"]).all())
    max_diff = float(np.abs(merged["qa"] - merged["probability"]).max()) if len(merged) else 0.0

    ra = n / a_s
    rb, rb_all = n / b["pandas_udf_s"], n / b["pandas_udf_with_startup_s"]
    rc = b["row_udf_rows"] / b["row_udf_s"]
    print(f"(a) plain Python, {CORES} torch threads: {ra:8.1f} rows/s  ({a_s:.1f} s)")
    print(f"(b) Spark pandas UDF, local[{CORES}]:    {rb:8.1f} rows/s  ({b['pandas_udf_s']:.1f} s, start-up excluded)")
    print(
        f"    including start-up:              {rb_all:8.1f} rows/s  ({b['pandas_udf_with_startup_s']:.1f} s, "
        f"of which session + data + model load {b['startup_s']:.1f} s)"
    )
    print(
        f"(c) row-at-a-time Python UDF:        {rc:8.1f} rows/s  ({b['row_udf_s']:.1f} s on {b['row_udf_rows']} rows)"
    )
    print(f"ratios: b/a {rb / ra:.2f} (steady state), {rb_all / ra:.2f} (with start-up); c/a {rc / ra:.2f}")
    print(f"check: Spark labels equal plain Python: {same}; max probability difference {max_diff:.2e}")

    sub = frame.head(args.precision_rows)
    prec = precision.measure(
        sub["text"].tolist(), sub["label"].tolist(), head.arrays, None, CORES, args.force_bf16, cfg.encoder.batch_size
    )
    print("\n".join(precision.report(prec)))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": n,
                    "a_rows_per_s": ra,
                    "b_rows_per_s": rb,
                    "b_with_startup_rows_per_s": rb_all,
                    "c_rows_per_s": rc,
                    "b_over_a": rb / ra,
                    "b_with_startup_over_a": rb_all / ra,
                    "c_over_a": rc / ra,
                    "labels_equal": same,
                    "max_probability_diff": max_diff,
                    **b,
                    "precision": prec,
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
