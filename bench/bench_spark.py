"""Benchmark of the score path on the same real rows and the same cores.

default workload: (a) the model in plain Python with the same batching (the
limit), (b) the Spark pandas-UDF job, (c) a row-at-a-time Python UDF; then
the precision setting: fp32 against bf16 (where the CPU supports it) on the
plain-Python path, with the minimum cosine to fp32 and the head's accuracy.

mixed workload: one Parquet file (one input partition) of --mixed-rows real
rows whose last lines are long Rotten Tomatoes plot summaries (10-20%), run
through the score job itself (jobs/spark/score.py: tasks per core, rows
dealt by token cost) for each --partitions-per-core, against the plain limit
on the same rows; --unbalanced adds the job as it was (one task per input
partition) for reference.

bound: rows/s and achieved GFLOP/s of the encoder (useful FLOPs of the true
token counts, udfs.model.encoder_flops) on short and long texts, per runtime
and precision, against a matrix-multiply peak measured on the same threads
in the same run (fp32; bf16 where the CPU has AVX512-BF16 or AMX).

Run with: .venv/bin/python bench/bench_spark.py [--workloads default,mixed,bound] [--rows 20000]
          [--mixed-rows 10000] [--partitions-per-core 1,2,4] [--unbalanced] [--model sentiment@latest]
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
os.environ.setdefault("AIBATCH_HOME", str(REPO))  # the score job resolves registry_dir against it
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

import bench_precision as precision  # noqa: E402

from scripts.datasets import package_file  # noqa: E402
from udfs import head as H  # noqa: E402
from udfs import model as M  # noqa: E402
from udfs import models  # noqa: E402
from udfs import records as R  # noqa: E402
from udfs.config import load_config  # noqa: E402
from udfs.predict import ScoreSettings, score_texts, set_threads  # noqa: E402

log = logging.getLogger("bench")
CORES = 2
ARROW_BATCH = 10_000


def default_rows(cfg, n: int) -> pd.DataFrame:
    """The first n records of the default data in id order (a hash order, so
    every source is mixed in), read from the installed packages."""
    frame = all_rows(cfg).head(n).reset_index(drop=True)
    if len(frame) < n:
        log.warning("only %d rows available (asked for %d)", len(frame), n)
    return frame


def all_rows(cfg) -> pd.DataFrame:
    """Every record of the default data, in id order."""
    rows = []
    for source in cfg.ingest.sources:
        path = package_file(source.package_file)
        for kind, row, _ in R.parse_file(cfg.ingest.spec(source), path.name, path.read_bytes()):
            if kind == "record":
                rows.append(row)
    return pd.DataFrame(rows).drop_duplicates("id").sort_values("id").reset_index(drop=True)


def mixed_rows(cfg, n: int, long_share: float = 0.15) -> pd.DataFrame:
    """n real rows in one table: short rows of the default data (id order),
    then in the last lines up to long_share of n Rotten Tomatoes plot
    summaries (all 1,083 of them at n = 10,000: 10.8%)."""
    frame = all_rows(cfg)
    is_plot = (frame["source"] == "rotten_tomatoes") & frame["label"].isna()
    n_long = min(int(is_plot.sum()), int(n * long_share))
    short = frame[~is_plot].head(n - n_long)
    long = frame[is_plot].head(n_long)
    return pd.concat([short, long], ignore_index=True)


def spark_session(cores: int = CORES):
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("aibatch-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH))
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def mixed_runs(frame: pd.DataFrame, config: str, ref: str, per_core: list[int], unbalanced: bool) -> dict:
    """Seconds of the score job (its own timing: scoring and writing, start-up
    excluded) on one Parquet file of frame, per partitions_per_core."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.spark import common, score
    from udfs.spark import score_udf

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "records"
        src.mkdir()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), src / "part-00000.parquet")
        cfg = load_config(config)
        head = models.load(models.open_store(cfg, REPO), ref)
        settings = ScoreSettings.from_config(cfg.encoder, dict(head.arrays), head.labels, torch_threads=1)
        spark = spark_session()
        try:
            # Warm-up: each Python worker loads the encoder once (cached), as in spark_runs.
            spark.createDataFrame(frame[["text"]].head(64)).repartition(CORES).select(
                score_udf(settings)("text").alias("s")
            ).write.format("noop").mode("overwrite").save()
            for k in per_core:
                args = score.parser().parse_args(
                    [
                        "--config",
                        config,
                        "--set",
                        f"score.partitions_per_core={k}",
                        "--input",
                        str(src),
                        "--output",
                        f"{tmp}/scored-{k}",
                        "--model",
                        ref,
                    ]
                )
                summary = common.run_main(score.main, spark, args)
                out[k] = {"seconds": summary["seconds"], "tasks": summary["partitions"], "rows": summary["rows"]}
            if unbalanced:
                records = spark.read.parquet(str(src))
                tasks = records.rdd.getNumPartitions()
                lineage = {c: "" for c in score.LINEAGE_COLUMNS}
                t = time.perf_counter()
                scored = score.score_frame(records, score_udf(settings), lineage)
                scored.write.mode("overwrite").parquet(f"{tmp}/scored-unbalanced")
                out["unbalanced"] = {"seconds": time.perf_counter() - t, "tasks": tasks, "rows": len(frame)}
        finally:
            spark.stop()
    return out


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


def default_workload(args, cfg, head, settings) -> dict:
    frame = default_rows(cfg, args.rows)
    texts = frame["text"].tolist()
    n = len(texts)
    print(
        f"bench: {n} real rows of the default data, {CORES} cores, {M.encoder_shape(cfg.encoder.model_dir or None).name} fp32 + head {head.ref}, "
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
    return {
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
    }


def mixed_workload(args, cfg, head, settings) -> dict:
    frame = mixed_rows(cfg, args.mixed_rows)
    texts = frame["text"].tolist()
    n = len(texts)
    n_long = int(((frame["source"] == "rotten_tomatoes") & frame["label"].isna()).sum())
    print(
        f"\nmixed workload: {n} real rows in one Parquet file, the last {n_long} ({n_long / n:.1%}) "
        f"Rotten Tomatoes plot summaries; {CORES} cores"
    )
    M.load_encoder()
    a_s, _ = plain_python(texts, ScoreSettings(**{**settings.__dict__, "torch_threads": CORES}))
    ra = n / a_s
    print(f"  plain Python, {CORES} torch threads (limit):   {ra:8.1f} rows/s  ({a_s:.1f} s)")
    runs = mixed_runs(frame, args.config, head.ref, args.partitions_per_core, args.unbalanced)
    for k, run in runs.items():
        what = f"score job, {k} per core" if k != "unbalanced" else "score as before (no balancing)"
        r = run["rows"] / run["seconds"]
        print(f"  {what:34s} {r:8.1f} rows/s  ({run['seconds']:.1f} s, {run['tasks']} tasks)   ratio {r / ra:.2f}")
    return {"rows": n, "long_rows": n_long, "limit_rows_per_s": ra, "runs": runs}


def matmul_peak(threads: int, dtype: str, size: int = 1024, seconds: float = 2.0) -> float:
    """GFLOP/s of a square matrix multiply on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a = torch.randn(size, size).to(kind)
    b = torch.randn(size, size).to(kind)
    torch.mm(a, b)
    done, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        torch.mm(a, b)
        done += 1
    return 2 * size**3 * done / (time.perf_counter() - t) / 1e9


def bound_workload(args, cfg, head, settings) -> dict:
    """rows/s and achieved GFLOP/s per runtime and precision, against the
    matrix-multiply peak on the same threads."""
    frame = mixed_rows(cfg, args.mixed_rows)
    tok = M.load_tokenizer()
    lengths = np.array([len(x) for x in tok(frame["text"].tolist(), truncation=True, max_length=256)["input_ids"]])
    sets = {
        "short": frame["text"][lengths <= 48].head(args.bound_rows).tolist(),
        "long": frame["text"][lengths >= 192].head(max(64, args.bound_rows // 8)).tolist(),
    }
    bf16 = M.bf16_supported() or args.force_bf16
    peaks = {"fp32": matmul_peak(CORES, "fp32")}
    if bf16:
        peaks["bf16"] = matmul_peak(CORES, "bf16")
    print(
        f"\nper-core bound, {CORES} threads: matrix-multiply peak "
        + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items())
        + f" (bf16 native: {M.bf16_supported()})"
    )
    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    combos = [(r, p) for r in args.runtimes for p in precisions if r == "torch" or p == "fp32"]
    tokens = {
        name: np.array([len(x) for x in tok(t, truncation=True, max_length=256)["input_ids"]])
        for name, t in sets.items()
    }
    set_threads(CORES)
    best: dict = {}
    emb: dict = {}
    # Interleaved rounds, best of each: the machine is shared, so a slow
    # moment should not decide a ratio.
    for _ in range(args.bound_rounds):
        for runtime, prec in combos:
            enc = M.load_encoder(None, prec, runtime=runtime)
            for name, texts in sets.items():
                M.embed(enc, texts[:16], cfg.encoder.batch_size, cfg.encoder.max_length)
                t = time.perf_counter()
                emb[runtime, prec, name] = M.embed(enc, texts, cfg.encoder.batch_size, cfg.encoder.max_length)
                sec = time.perf_counter() - t
                best[runtime, prec, name] = min(sec, best.get((runtime, prec, name), sec))
    out: dict = {"peaks": peaks, "runs": []}
    for (runtime, prec, name), sec in best.items():
        texts = sets[name]
        gflops = float(M.encoder_flops(tokens[name], M.encoder_shape(None)).sum()) / sec / 1e9
        run = {
            "runtime": runtime,
            "precision": prec,
            "texts": name,
            "rows": len(texts),
            "mean_tokens": float(tokens[name].mean()),
            "rows_per_s": len(texts) / sec,
            "gflops": gflops,
            "of_peak": gflops / peaks[prec],
            "x_torch_fp32": best["torch", "fp32", name] / sec,
        }
        if (runtime, prec) != ("torch", "fp32"):
            ref, got = emb["torch", "fp32", name], emb[runtime, prec, name]
            p_ref = H.predict_proba(head.arrays, ref)
            p_got = H.predict_proba(head.arrays, got)
            differ = np.argmax(p_ref, axis=1) != np.argmax(p_got, axis=1)
            near = np.abs(p_ref.max(axis=1) - 0.5) <= 1e-4
            run.update(
                min_cosine=float((ref * got).sum(axis=1).min()),
                labels_differ=int(differ.sum()),
                labels_differ_beyond_1e4_of_half=int((differ & ~near).sum()),
                within_1e4_of_half=int(near.sum()),
            )
        out["runs"].append(run)
        extra = ""
        if "min_cosine" in run:
            extra = (
                f"; min cosine to torch fp32 {run['min_cosine']:.6f}, labels differ {run['labels_differ']} "
                f"({run['within_1e4_of_half']} rows within 1e-4 of 0.5)"
            )
        print(
            f"  {runtime:11s} {prec} {name:5s} ({len(texts)} texts, {tokens[name].mean():5.1f} tokens): "
            f"{run['rows_per_s']:7.1f} rows/s, {gflops:6.1f} GFLOP/s = {run['of_peak']:.2f} of the {prec} peak, "
            f"{run['x_torch_fp32']:.2f}x torch fp32{extra}"
        )
    return out


WORKLOADS = {"default": default_workload, "mixed": mixed_workload, "bound": bound_workload}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="default,mixed,bound", help="comma-separated: default, mixed, bound")
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--mixed-rows", type=int, default=10_000)
    p.add_argument("--partitions-per-core", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4])
    p.add_argument("--unbalanced", action="store_true", help="mixed: also the job without balancing (one task)")
    p.add_argument("--bound-rows", type=int, default=1024, help="short texts for the bound (long: 1/8 of it)")
    p.add_argument("--runtimes", type=lambda v: v.split(","), default=available_runtimes())
    p.add_argument("--bound-rounds", type=int, default=3, help="interleaved rounds of the bound, best of each")
    p.add_argument("--model", default="sentiment@latest")
    p.add_argument("--config", default=str(REPO / "conf" / "pipeline.toml"))
    p.add_argument("--row-udf-rows", type=int, help="rows for the row-at-a-time UDF (default: --rows)")
    p.add_argument("--precision-rows", type=int, default=2048)
    p.add_argument("--force-bf16", action="store_true", help="measure bf16 even where the CPU lacks support (emulated)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    head = models.load(models.open_store(cfg, REPO), args.model)
    settings = ScoreSettings.from_config(cfg.encoder, dict(head.arrays), head.labels, precision="fp32", torch_threads=1)
    print(
        f"bench: {M.encoder_shape(cfg.encoder.model_dir or None).name} fp32 + head {head.ref}, {CORES} cores ({cpu_name()}), "
        f"batches of {cfg.encoder.batch_size} sorted by length, torch {__import__('torch').__version__}"
    )
    results = {w: WORKLOADS[w](args, cfg, head, settings) for w in args.workloads.split(",") if w}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


def available_runtimes() -> list[str]:
    import importlib.util

    return [r for r in M.RUNTIMES if r == "torch" or importlib.util.find_spec(r) is not None]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
