"""Score records with a model of any kind (encoder + trained head, a
pretrained classifier, an embedder, any other MLflow pyfunc model:
docs/models.md) through an iterator pandas UDF (model loaded once per
Python worker, batches sorted by length for the transformer kinds),
keeping every input column and id, adding the predicted label, its
probability, every class's probability (a map), optionally the embedding
(an embedder: the embedding alone; a pyfunc model: its signature's output
columns), and lineage (encoder and version, head and version, run id, time).

Run with:
    ./submit.sh score --input hdfs://127.0.0.1:19820/user/$USER/aibatch/records \
        --output hdfs://127.0.0.1:19820/user/$USER/aibatch/scored [--model sentiment@1] [--sample-percent 25]
"""

from __future__ import annotations

import atexit
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.spark import common
from udfs import lineage as L
from udfs import model as M
from udfs import models
from udfs.config import PipelineConfig
from udfs.models import PYFUNC_KIND, LoadedModel, ModelError
from udfs.partitioning import task_count
from udfs.predict import output_fields
from udfs.scoring import ScoringPlan, plan_scoring
from udfs.spark import balance_by_cost, in_sample_udf, pyfunc_udf, score_udf, ship_model_dir, task_slots

log = logging.getLogger(__name__)

LINEAGE_COLUMNS = L.LINEAGE_COLUMNS


def written_fields(
    kind: str, with_embedding: bool, fields: tuple[tuple[str, str], ...] = ()
) -> tuple[tuple[str, str], ...]:
    """(name, type) of what a model of `kind` writes: a pyfunc model's own
    `fields`, else its kind's (udfs.predict.output_fields)."""
    return fields if kind == PYFUNC_KIND else tuple(output_fields(kind, with_embedding))


def score_frame(
    records: DataFrame,
    scorer,
    lineage: dict,
    with_embedding: bool = False,
    kind: str = "head",
    fields: tuple[tuple[str, str], ...] = (),
) -> DataFrame:
    """records' columns + what the model's kind writes (predicted,
    probability, probabilities[, embedding], or an embedder's embedding;
    fields: a pyfunc model's columns, its scorer taking id and text) + lineage."""
    if kind == PYFUNC_KIND:
        clash = sorted({name for name, _ in fields} & set(records.columns))
        if clash:
            raise ModelError(f"{lineage['head']} writes {clash}, which the input records hold already")
        scored = records.withColumn("_score", scorer(F.col("id"), F.col("text")))
    else:
        scored = records.withColumn("_score", scorer(F.col("text")))
    extra: list[Column] = [
        F.col(f"_score.{name}").alias(name) for name, _ in written_fields(kind, with_embedding, fields)
    ]
    extra += [F.lit(lineage[c]).alias(c) for c in LINEAGE_COLUMNS]
    return scored.select(*[F.col(c) for c in records.columns], *extra)


def resolve_model(cfg: PipelineConfig, args) -> dict:
    """The model named by --model or the config (an MLflow model URI, a
    local model dir, or name@N), of any kind (encoder + head, classifier,
    embedder), downloaded and loaded (weights checked); ModelError, naming
    what the registry holds or the damaged dir, before Spark starts."""
    common.check_encoder(cfg)
    ref = args.model or cfg.score.model
    store = None if models.is_local(ref) else models.open_store(cfg, common.home())
    # the files stay for the job: a classifier's or embedder's are shipped from here
    dest = Path(tempfile.mkdtemp(prefix="aibatch-model-"))
    atexit.register(shutil.rmtree, dest, True)
    model = models.download_to(store, ref, dest)
    # a kind that cannot write these columns or use these settings fails here, not in Spark
    plan_scoring(cfg, model, "check", precision=getattr(args, "precision", None))
    return {"head": model}


@dataclass(frozen=True)
class ModelScorer:
    """One run's way of scoring records with one model of any kind: the plan
    (settings, lineage, kind, columns), the UDF and the task count, made once
    per run by model_scorer (a batch job scores once, a stream job once per
    micro-batch with the same scorer)."""

    plan: ScoringPlan
    udf: Any
    partitions: int
    with_embedding: bool
    shipped: str = ""

    def score(self, records: DataFrame) -> DataFrame:
        """records -> score_frame's columns, the rows spread over the tasks."""
        settings = self.plan.settings
        if self.plan.pyfunc is not None:
            # its own predict: no tokenizer to estimate costs with, so the rows
            # are spread by a hash of their id (parallelism, not cost balance)
            spread = records.repartition(self.partitions, "id")
        else:
            spread = balance_by_cost(
                records, self.partitions, settings.model_dir, settings.max_length, shipped=self.shipped
            )
        return score_frame(spread, self.udf, self.plan.lineage, self.with_embedding, self.plan.kind, self.plan.fields)


def model_scorer(
    spark: SparkSession, cfg: PipelineConfig, head: LoadedModel, run_id: str, precision: str | None = None
) -> ModelScorer:
    """The scorer of a run: the plan for head, the model's own files shipped
    to the executors once (a classifier's, an embedder's or a pyfunc
    model's; the head's arrays travel in the UDF), the UDF of its kind."""
    plan = plan_scoring(cfg, head, run_id, precision=precision)
    shipped = ship_model_dir(spark, str(plan.settings.model_dir)) if plan.kind != models.HEAD_KIND else ""
    # Parallelism follows the cluster, not the input's files: partitions_per_core
    # tasks per task slot, rows dealt to them by estimated cost (token count).
    partitions = task_count(task_slots(spark), cfg.score.partitions_per_core)
    with_embedding = cfg.score.with_embedding
    if plan.pyfunc is not None:
        udf = pyfunc_udf(plan.pyfunc, shipped)
    else:
        udf = score_udf(plan.settings, with_embedding, shipped)
    return ModelScorer(plan, udf, partitions, with_embedding, shipped)


def main(spark: SparkSession, cfg: PipelineConfig, args, head: LoadedModel | None = None) -> dict:
    head = head or resolve_model(cfg, args)["head"]
    scorer = model_scorer(spark, cfg, head, common.new_run_id(), args.precision)
    plan, lineage, precision = scorer.plan, scorer.plan.lineage, scorer.plan.settings.precision
    records = common.read_table(spark, args.input, args.input_format)
    if args.sample_percent < 100:
        records = records.where(in_sample_udf(args.sample_percent)(F.col("id")))
    scored = scorer.score(records)
    started = time.perf_counter()
    with common.committed_outputs(
        spark, {"output": args.output}, overwrite=args.overwrite, inputs=[args.input]
    ) as staging:
        common.write_table(scored, staging["output"], args.output_format)
        seconds = time.perf_counter() - started
        out = common.read_table(spark, staging["output"], args.output_format)
        rows = out.count()
        by_label: dict = {}
        n_lab = correct = 0
        if dict(out.dtypes).get("predicted") == "string":  # an embedder predicts no label, a regressor a number
            by_label = {r["predicted"]: r["count"] for r in out.groupBy("predicted").count().collect()}
            labelled = out.where(F.col("label").isNotNull() & F.col("predicted").isNotNull())
            n_lab = labelled.count()
            correct = labelled.where(F.col("label") == F.col("predicted")).count()
    summary = {
        "rows": rows,
        "seconds": round(seconds, 1),
        "rows_per_s": round(rows / seconds, 1) if seconds else None,
        "partitions": scorer.partitions,
        "by_label": by_label,
        "labelled": n_lab,
        "agreement": (correct / n_lab) if n_lab else None,
        "model": head.ref,
        "kind": plan.kind,
        "columns": [name for name, _ in plan.fields],
        "precision": precision,
        "output": args.output,
        **{k: str(v) for k, v in lineage.items()},
    }
    log.info("score: %s", summary)
    return summary


def parser():
    p = common.base_parser("score", __doc__)
    p.add_argument("--input", required=True, help="ingested records (Parquet or JSON Lines dir)")
    p.add_argument("--output", required=True, help="scored output dir (must not exist unless --overwrite)")
    common.add_output_args(p)
    p.add_argument("--input-format", choices=common.TABLE_FORMATS, default="parquet")
    p.add_argument("--output-format", choices=common.TABLE_FORMATS, default="parquet")
    p.add_argument(
        "--model",
        help="MLflow model URI (models:/NAME/N, models:/NAME@ALIAS, runs:/ID/model), a local model dir, "
        "or NAME@N (default: score.model in the config)",
    )
    p.add_argument("--precision", choices=M.PRECISIONS, help="override encoder.precision")
    p.add_argument(
        "--sample-percent",
        type=float,
        default=100.0,
        help="score the subset of records whose id hashes below this per cent (default 100)",
    )
    return p


def report(out: dict) -> None:
    print(
        f"score: {out['rows']} rows with {out['model']} ({out['precision']}) in {out['seconds']} s "
        f"({out['rows_per_s']} rows/s, Spark start-up excluded), {out['partitions']} tasks balanced by token cost"
    )
    if out.get("kind") == "embedder":
        print("  wrote embedding (array<float>) for every row with text")
    elif not out["by_label"]:
        print(f"  wrote {', '.join(out.get('columns') or [])} for every row with text")
    else:
        print(f"  predicted: {dict(sorted((str(k), v) for k, v in out['by_label'].items()))}")
    if out["agreement"] is not None:
        print(
            f"  agreement with the {out['labelled']} labelled rows: {out['agreement']:.4f} (train and test rows together)"
        )
    print(
        f"  run {out['run_id']}, encoder {out['encoder']}@{out['encoder_version']}, head {out['head']}@{out['head_version']}"
    )
    print(f"scored: {out['output']}")


def cli(argv=None) -> int:
    return common.run_cli("score", parser(), main, report, argv, prepare=resolve_model)


if __name__ == "__main__":
    sys.exit(cli())
