"""Train a classification head: embed the labelled records (pandas UDF over
the encoder), split train/test by a hash of the id, fit a small torch head
for the 2..N classes the labelled rows hold on the driver, report its test
accuracy, per-class precision / recall / F1 and the majority-class baseline,
and log it all as an MLflow run whose model is registered as the next
version of train.name (models:/NAME/N; docs/models.md).

Run with:
    ./submit.sh train --input hdfs://127.0.0.1:19820/user/$USER/aibatch/records [--sample-percent 25]
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.spark import common
from udfs import head as H
from udfs import model as M
from udfs import models
from udfs.config import PipelineConfig
from udfs.spark import embed_udf, in_sample_udf, split_udf

log = logging.getLogger(__name__)


def labelled_rows(records: DataFrame, test_percent: int, sample_percent: float = 100.0) -> DataFrame:
    """id, text, label, split of the labelled records in the sample."""
    rows = records.where(F.col("label").isNotNull() & F.col("text").isNotNull())
    if sample_percent < 100:
        rows = rows.where(in_sample_udf(sample_percent)(F.col("id")))
    return rows.select("id", "text", "label", split_udf(test_percent)(F.col("id")).alias("split"))


def fit_and_evaluate(labels, splits, embeddings: np.ndarray, cfg, encoder_settings, where: str) -> tuple[dict, dict]:
    """Train on the train split, evaluate on the test split: (arrays, report).
    The classes are the labelled rows' vocabulary, sorted (H.LabelSetError
    naming `where` and the counts for one class or a class too small)."""
    splits = np.asarray(splits)
    labels = np.asarray(labels, dtype=object)
    vocab = H.check_label_set(list(labels), cfg.min_class_rows, where)
    tr, te = splits == "train", splits == "test"
    if not tr.any() or not te.any():
        raise ValueError(f"need labelled rows in both splits, got train {int(tr.sum())}, test {int(te.sum())}")
    arrays = H.train_head(embeddings[tr], list(labels[tr]), vocab, cfg)
    predicted, _, _ = H.predict_labels(arrays, vocab, embeddings[te])
    truth = list(labels[te])
    acc = H.accuracy(predicted, truth)
    majority, base = H.majority_baseline(list(labels[tr]), truth)
    matrix = H.confusion_matrix(predicted, truth, vocab)
    report = {
        "train_rows": int(tr.sum()),
        "test_rows": int(te.sum()),
        "labels": vocab,
        "label_counts": H.label_counts(list(labels)),
        "test_accuracy": round(acc, 6),
        "majority_label": majority,
        "majority_baseline": round(base, 6),
        "per_class": H.per_class_metrics(matrix, vocab),
        "confusion_matrix": matrix,
        "train_settings": cfg.model_dump(include={"hidden", "epochs", "learning_rate", "weight_decay", "seed"}),
        "encoder": encoder_settings,
    }
    return arrays, report


def main(spark: SparkSession, cfg: PipelineConfig, args, store: models.Store | None = None) -> dict:
    enc = cfg.encoder
    model_dir = enc.model_dir or None
    records = common.read_table(spark, args.input, args.input_format)
    rows = labelled_rows(records, cfg.train.test_percent, args.sample_percent)
    embedder = embed_udf(model_dir, enc.precision, enc.batch_size, enc.max_length, enc.torch_threads)
    collected = rows.select("id", "label", "split", embedder(F.col("text")).alias("embedding")).collect()
    collected.sort(key=lambda r: r["id"])  # training order independent of partitioning
    if not collected:
        raise ValueError(f"no labelled rows in {args.input}")
    embeddings = np.asarray([r["embedding"] for r in collected], dtype=np.float32)
    version_id = M.weights_version(str(M.resolve_model_dir(model_dir).resolve()))
    encoder_settings = {
        "name": M.encoder_shape(model_dir).name,
        "version": version_id,
        "precision": M.effective_precision(enc.precision),
        "max_length": M.effective_max_length(M.encoder_shape(model_dir), enc.max_length),
    }
    arrays, report = fit_and_evaluate(
        [r["label"] for r in collected],
        [r["split"] for r in collected],
        embeddings,
        cfg.train,
        encoder_settings,
        args.input,
    )
    meta = dict(
        report,
        trained_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        input=args.input,
        sample_percent=args.sample_percent,
    )
    store = store or models.open_store(cfg, common.home())
    version = store.log_trained(cfg.train.name, arrays, meta, *run_record(report, args))
    return dict(
        report,
        model=version.ref,
        model_uri=version.uri,
        mlflow_run_id=version.run_id,
        weights_sha256=version.weights_sha256,
        registry=store.uri,
    )


def run_record(report: dict, args) -> tuple[dict, dict, dict]:
    """(params, metrics, confusion matrix) of the MLflow run."""
    params = {
        **{f"train.{k}": v for k, v in report["train_settings"].items()},
        "encoder.name": report["encoder"]["name"],
        "encoder.weights_version": report["encoder"]["version"],
        "encoder.precision": report["encoder"]["precision"],
        "encoder.max_length": report["encoder"]["max_length"],
        "input": args.input,
        "sample_percent": args.sample_percent,
        "labels": ",".join(report["labels"]),
    }
    metrics: dict[str, float] = {
        "test_accuracy": report["test_accuracy"],
        "majority_baseline": report["majority_baseline"],
        "train_rows": report["train_rows"],
        "test_rows": report["test_rows"],
    }
    for i, (label, m) in enumerate(report["per_class"].items()):
        # MLflow metric names allow letters, digits and _-./ and spaces: any
        # other label character is replaced, with the class index to keep it unique.
        safe = "".join(c if c.isalnum() or c in "_-. " else "_" for c in label)
        for key in ("precision", "recall", "f1"):
            metrics[f"class{i}.{safe}.{key}"] = m[key]
    confusion = {
        "labels": report["labels"],
        "matrix": report["confusion_matrix"],
        "rows": "true",
        "columns": "predicted",
    }
    return params, metrics, confusion


def check_store(cfg: PipelineConfig, args) -> dict:
    """Before Spark starts: the encoder is there and the MLflow store answers."""
    common.check_encoder(cfg)
    store = models.open_store(cfg, common.home())
    store.check()
    return {"store": store}


def parser():
    p = common.base_parser("train", __doc__)
    p.add_argument("--input", required=True, help="ingested records (Parquet or JSON Lines dir)")
    p.add_argument("--input-format", choices=common.TABLE_FORMATS, default="parquet")
    p.add_argument(
        "--sample-percent",
        type=float,
        default=100.0,
        help="train on the subset of records whose id hashes below this per cent (default 100)",
    )
    return p


def report(out: dict) -> None:
    print(
        f"train: registered {out['model_uri']} (run {out['mlflow_run_id']}, weights {out['weights_sha256'][:12]}) "
        f"in {out['registry']}"
    )
    print(f"  rows: train {out['train_rows']}, test {out['test_rows']}; labels {out['label_counts']}")
    print(
        f"  test accuracy {out['test_accuracy']:.4f} vs majority baseline "
        f"{out['majority_baseline']:.4f} (always '{out['majority_label']}')"
    )
    width = max(len(label) for label in out["per_class"])
    print(f"  {'class':<{width}}  precision  recall  f1      support")
    for label, m in out["per_class"].items():
        print(f"  {label:<{width}}  {m['precision']:.4f}     {m['recall']:.4f}  {m['f1']:.4f}  {m['support']}")
    print("  " + json.dumps({k: out[k] for k in ("model", "test_accuracy", "majority_baseline")}))


def cli(argv=None) -> int:
    return common.run_cli("train", parser(), main, report, argv, prepare=check_store)


if __name__ == "__main__":
    sys.exit(cli())
