"""GPU benchmark of udfs scoring (encoder.device = "cuda"): rows/s of
udfs.predict.score_texts on a GPU in fp32 and fp16 (gpu_precision) at a few
batch sizes, on ~2,000 real rows of the bundled data (short posts plus 10-20%
long Rotten Tomatoes plot summaries), against the CPU in fp32 on the same
machine; the minimum cosine of each GPU run's embeddings to CPU fp32 and
the labels that differ. With --spark, also a Spark run with GPU scheduling
(local-cluster, one executor with one GPU shared by its tasks) that checks
each task saw the GPU Spark assigned (TaskContext.resources()["gpu"]).

Self-contained: needs only the project's .venv (a CUDA build of torch) and
the bundled data packages; no trained head in var/models (it trains a small
one on the rows' CPU embeddings), no network.

Run with: .venv/bin/python bench/bench_gpu.py [--rows 2000] [--batch-sizes 64,256,512] [--spark] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from udfs import head as H  # noqa: E402
from udfs import model as M  # noqa: E402
from udfs.config import EncoderConfig, TrainConfig, load_config  # noqa: E402
from udfs.predict import ScoreSettings, score_texts, set_threads  # noqa: E402


def rows(n: int) -> tuple[list[str], list, int]:
    """(texts, labels, n_short): short rows, then ~10.8% plot summaries (the
    mixed workload's share)."""
    from bench_spark import mixed_rows

    frame = mixed_rows(load_config(REPO / "conf" / "pipeline.toml"), 10_000)
    plots = (frame["source"] == "rotten_tomatoes") & frame["label"].isna()
    n_long = int(n * 0.108)
    short, long = frame[~plots].head(n - n_long), frame[plots].head(n_long)
    return list(short["text"]) + list(long["text"]), list(short["label"]) + [None] * len(long), len(short)


def timed(texts, settings, with_embedding: bool, rounds: int) -> tuple[float, Any]:
    score_texts(texts[:256], settings, with_embedding)  # load + warm-up (kernels, allocator)
    best, out = float("inf"), None
    for _ in range(rounds):
        _sync()
        t = time.perf_counter()
        out = score_texts(texts, settings, with_embedding)
        _sync()
        best = min(best, time.perf_counter() - t)
    return best, out


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def spark_check(texts, arrays, vocab) -> dict:
    """A Spark run with GPU scheduling; what each task saw."""
    import tempfile

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from udfs.spark import score_udf, task_gpus

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    discovery = REPO / "conf" / "gpu-discovery.sh"
    with tempfile.TemporaryDirectory():
        spark = (
            SparkSession.builder.master("local-cluster[1,2,4096]")
            .appName("aibatch-bench-gpu")
            .config("spark.ui.enabled", "false")
            .config("spark.worker.resource.gpu.amount", "1")
            .config("spark.worker.resource.gpu.discoveryScript", str(discovery))
            .config("spark.executor.resource.gpu.amount", "1")
            .config("spark.executor.resource.gpu.discoveryScript", str(discovery))
            .config("spark.task.resource.gpu.amount", "0.5")
            .config("spark.executor.cores", "2")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
            .getOrCreate()
        )
        try:
            from pyspark.sql.functions import pandas_udf

            @pandas_udf("string")
            def seen(ids):
                import pandas as pd

                return pd.Series([",".join(task_gpus()) or "none"] * len(ids))

            settings = ScoreSettings.from_config(EncoderConfig(device="auto"), arrays, vocab)
            df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "id long, text string").repartition(2)
            t = time.perf_counter()
            out = df.select("id", seen("id").alias("gpu"), score_udf(settings)("text").alias("s")).cache()
            n = out.count()
            seconds = time.perf_counter() - t
            gpus = sorted(r["gpu"] for r in out.select("gpu").distinct().collect())
            labelled = out.where(F.col("s.predicted").isNotNull()).count()
            return {"rows": n, "seconds_with_model_load": seconds, "task_gpus": gpus, "scored": labelled}
        finally:
            spark.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--batch-sizes", default="64,256,512")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cpu-rows", type=int, default=512, help="rows for the CPU fp32 reference (it is slow)")
    p.add_argument("--spark", action="store_true", help="also a Spark local-cluster run with GPU scheduling")
    p.add_argument("--json")
    p.add_argument("--dry-run-on-cpu", action="store_true", help="check the script without a GPU (fp32 on CPU)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    texts, labels, n_short = rows(args.rows)
    cuda = M.cuda_devices()
    name = torch.cuda.get_device_name(0) if cuda else "none"
    print(
        f"bench_gpu: {len(texts)} real rows, torch {torch.__version__} (CUDA {torch.version.cuda}), GPUs: {cuda} ({name})"
    )
    device, precisions = "cuda", ["fp32", "fp16"]
    if args.dry_run_on_cpu:
        device, precisions = "cpu", ["fp32"]
    elif not cuda:
        print("no CUDA device: nothing to measure")
        return 1
    enc = EncoderConfig()
    threads = os.cpu_count() or 1
    set_threads(threads)
    cpu_enc = M.load_encoder(None, "fp32", "cpu")
    # the CPU reference: short rows and long ones (7 to 1, as in the data)
    ref_idx = list(range(min(n_short, args.cpu_rows * 7 // 8))) + list(
        range(n_short, min(len(texts), n_short + args.cpu_rows // 8))
    )
    ref_texts = [texts[i] for i in ref_idx]
    t = time.perf_counter()
    ref = M.embed(cpu_enc, ref_texts, enc.batch_size, enc.max_length)
    cpu_s = time.perf_counter() - t
    print(
        f"  cpu  fp32 batch {enc.batch_size:4d}: {len(ref_texts) / cpu_s:9.1f} rows/s "
        f"({threads} threads, {len(ref_texts)} rows, {sum(i >= n_short for i in ref_idx)} long)"
    )
    lab = [j for j, i in enumerate(ref_idx) if isinstance(labels[i], str)]
    vocab = H.vocabulary([labels[ref_idx[j]] for j in lab])
    arrays = H.train_head(ref[lab], [labels[ref_idx[j]] for j in lab], vocab, TrainConfig())
    results: dict = {"rows": len(texts), "gpu": name, "cpu_fp32_rows_per_s": len(ref_texts) / cpu_s, "runs": []}
    cpu_probs = H.predict_proba(arrays, ref)
    for precision in precisions:
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            settings = ScoreSettings.from_config(
                enc,
                arrays,
                vocab,
                device=device,
                gpu_precision=precision,
                gpu_batch_size=batch,
                batch_size=batch,
                torch_threads=1,
            )
            seconds, out = timed(texts, settings, True, args.rounds)
            emb = np.array(out["embedding"].tolist(), dtype=np.float32)[ref_idx]
            cos = float((emb * ref).sum(axis=1).min())
            probs = H.predict_proba(arrays, emb)
            differ = int((np.argmax(probs, axis=1) != np.argmax(cpu_probs, axis=1)).sum())
            near = int((np.abs(cpu_probs.max(axis=1) - 0.5) <= 1e-3).sum())
            run = {
                "precision": precision,
                "batch_size": batch,
                "rows_per_s": len(texts) / seconds,
                "min_cosine_to_cpu_fp32": cos,
                "labels_differ": differ,
                "rows_within_1e3_of_half": near,
            }
            results["runs"].append(run)
            print(
                f"  {device} {precision} batch {batch:4d}: {run['rows_per_s']:9.1f} rows/s, "
                f"min cosine to CPU fp32 {cos:.6f}, labels differ {differ} of {len(ref_texts)}"
            )
    fp32 = max(r["rows_per_s"] for r in results["runs"] if r["precision"] == "fp32")
    fp16 = max((r["rows_per_s"] for r in results["runs"] if r["precision"] == "fp16"), default=float("nan"))
    print(
        f"  best fp16 / best fp32: {fp16 / fp32:.2f}x; best GPU / CPU fp32: {max(fp32, fp16 if fp16 == fp16 else 0) / results['cpu_fp32_rows_per_s']:.1f}x"
    )
    if args.spark:
        try:
            results["spark"] = spark_check(texts, arrays, vocab)
            print(f"  spark GPU scheduling: {results['spark']}")
        except Exception as exc:  # report, keep the figures above
            results["spark"] = {"error": repr(exc)[:2000]}
            print(f"  spark GPU scheduling failed: {exc!r}"[:2000])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
