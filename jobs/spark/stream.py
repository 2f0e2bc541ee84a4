"""Drain a Kafka topic with Spark Structured Streaming: each message's value is
one raw record (a JSON Lines line), ingested by the batch ingest's rules (the
same ids, rejects with reasons and raw bytes), scored with a registered model
of any kind (encoder + head, classifier, embedder, pyfunc: score.model_scorer,
the score job's own path) and, with --enrich, the rows the [enrich] filter
selects enriched by an LLM (online or enrich.mode = "batch", through the
enrich job's functions and its answer cache), written, per micro-batch, as
Parquet records, rejects, scored rows (and enriched rows and dead letters)
under --output, with the offsets in the checkpoint (default
OUTPUT/_checkpoint). Each micro-batch checks input = good + rejected (and,
with --enrich, scored = enriched + dead-lettered + not selected).

Exactly once: a micro-batch's outputs are committed together (jobs.commit)
to OUTPUT/{records,rejects,scored[,enriched,dead_letters]}/batch=N,
replacing what a killed run may have left for the same batch, which Spark
replays with the same offsets from the checkpoint; the replay's calls are
answered from the answer cache, and in batch mode its provider batches are
found again in the ledger (keyed by OUTPUT/enriched/batch=N), so nothing is
paid twice. A record whose id an earlier micro-batch already kept is
rejected as duplicate_record, as the batch ingest rejects a second copy. The
optional --output-topic copy of the scored rows is at-least-once, as Spark
documents for its Kafka sink.

Run with (Spark's Kafka connector must match the Spark runtime: docs/streams.md):
    ./submit.sh stream --bootstrap 127.0.0.1:19092 --topic reviews \
        --output hdfs://127.0.0.1:19820/user/$USER/aibatch/stream [--model sentiment@1] [--every 30s]
    AIBATCH_GATEWAY_KEY=... ./submit.sh stream ... --enrich [--set enrich.mode=batch]
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time

from pyspark import StorageLevel
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import commit
from jobs.spark import common, enrich, ingest, score
from udfs import records as R
from udfs.config import PipelineConfig
from udfs.enrich.accounting import EnrichTotals
from udfs.enrich.driver import job_id_for, summary
from udfs.models import LoadedModel
from udfs.scoring import plan_scoring

log = logging.getLogger(__name__)

TABLES = ("records", "rejects", "scored")
ENRICH_TABLES = ("enriched", "dead_letters")  # with --enrich


def parse_every(text: str) -> str:
    """'30s', '5m', '1h' -> Spark's processing-time interval ('30 seconds')."""
    found = re.fullmatch(r"(\d+)\s*(s|m|h)", text.strip())
    if not found or int(found[1]) == 0:
        raise argparse.ArgumentTypeError(f"--every takes a positive interval like 30s, 5m or 1h, got {text!r}")
    unit = {"s": "seconds", "m": "minutes", "h": "hours"}[found[2]]
    return f"{found[1]} {unit}"


def messages_to_lines(messages: DataFrame) -> DataFrame:
    """Kafka rows -> the batch ingest's lines (column raw, binary): the value
    is the raw record; a message without a value is an empty line."""
    return messages.select(F.coalesce(F.col("value"), F.lit(b"")).alias("raw"))


def mark_earlier(parsed: DataFrame, earlier_ids: DataFrame | None) -> DataFrame:
    """Parsed rows with each record whose id an earlier micro-batch kept
    turned into a duplicate_record reject (the batch ingest keeps the first
    copy of an id, and rejects the others with their raw bytes)."""
    if earlier_ids is None:
        return parsed
    seen = earlier_ids.select("id", F.lit(True).alias("_seen"))
    again = (F.col("kind") == R.RECORD) & F.col("_seen").isNotNull()
    return parsed.join(seen, "id", "left").select(
        F.when(again, F.lit(R.REJECT)).otherwise(F.col("kind")).alias("kind"),
        "id",
        "source",
        "text",
        "label",
        "rating",
        F.when(again, F.lit(R.DUPLICATE)).otherwise(F.col("reason")).alias("reason"),
        "raw",
    )


class BatchWriter:
    """foreachBatch's function: one micro-batch -> committed outputs. Runs in
    the driver; it keeps this run's totals."""

    def __init__(
        self,
        spark: SparkSession,
        spec: R.SourceSpec,
        args,
        scorer: score.ModelScorer,
        enricher: enrich.Enricher | None = None,
    ):
        self.spark, self.spec, self.args = spark, spec, args
        self.scorer, self.enricher = scorer, enricher
        self.paths = {t: f"{args.output.rstrip('/')}/{t}" for t in tables(enricher is not None)}
        self.totals: dict = {"batches": 0, "messages": 0, "input": 0, "good": 0, "rejected": 0, "skipped": 0}
        self.reasons: dict[str, int] = {}
        self.enriched = EnrichTotals()  # this run's, all micro-batches together
        self.batch_lines: list[str] = []  # enrich.mode = "batch": each micro-batch's batches

    def earlier_ids(self, batch_id: int) -> DataFrame | None:
        path = self.paths["records"]
        if not commit.filesystem(path).exists(path):
            return None
        try:
            kept = self.spark.read.parquet(path)
        except AnalysisException:  # only the hidden staging dirs of a killed run: nothing kept yet
            return None
        return kept.where(F.col("batch") < batch_id).select("id").distinct()

    def __call__(self, messages: DataFrame, batch_id: int) -> None:
        started = time.perf_counter()
        parsed = ingest.parse_lines(messages_to_lines(messages), self.spec).persist(StorageLevel.DISK_ONLY)
        try:
            by_kind = {(r["kind"], r["reason"]): r["count"] for r in parsed.groupBy("kind", "reason").count().collect()}
            n_messages = sum(by_kind.values())
            skipped = sum(n for (kind, _), n in by_kind.items() if kind == R.SKIP)
            records, rejects = ingest.resolve_duplicates(mark_earlier(parsed, self.earlier_ids(batch_id)))
            scored = self.scorer.score(records)
            outputs = {t: f"{p}/batch={batch_id}" for t, p in self.paths.items()}
            enriched = None
            # A replayed batch (the run before was killed after writing it but
            # before Spark recorded it) replaces its own earlier outputs.
            with common.committed_outputs(self.spark, outputs, overwrite=True) as staging:
                common.write_table(records, staging["records"])
                common.write_table(rejects, staging["rejects"])
                common.write_table(scored, staging["scored"])
                good = self.spark.read.parquet(staging["records"]).count()
                rejected_rows = self.spark.read.parquet(staging["rejects"])
                rejected = rejected_rows.count()
                reasons = {r["reason"]: r["count"] for r in rejected_rows.groupBy("reason").count().collect()}
                n_scored = self.spark.read.parquet(staging["scored"]).count()
                total = n_messages - skipped
                if total != good + rejected or n_scored != good:
                    raise RuntimeError(
                        f"batch {batch_id}: count mismatch: input {total} != good {good} + rejected {rejected}"
                        f" (scored {n_scored})"
                    )
                if self.enricher is not None:
                    enriched = self.enrich(batch_id, staging, outputs["enriched"], n_scored)
            if self.args.output_topic and good:
                self.publish(self.spark.read.parquet(outputs["scored"]))
        finally:
            parsed.unpersist()
        for key, n in (("messages", n_messages), ("input", total), ("good", good), ("rejected", rejected)):
            self.totals[key] += n
        self.totals["skipped"] += skipped
        self.totals["batches"] += 1
        for reason, n in reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        if enriched is not None:
            self.enriched.merge(enriched)
        log.info(
            "stream batch %d: input %d = good %d + rejected %d (skipped %d)%s in %.1f s",
            batch_id,
            total,
            good,
            rejected,
            skipped,
            "" if enriched is None else f"; scored {good} = {enrich_counts(enriched)}",
            time.perf_counter() - started,
        )

    def enrich(self, batch_id: int, staging: dict[str, str], output: str, n_scored: int) -> EnrichTotals:
        """The enrich stage over this micro-batch's scored rows (as written to
        staging), into the staging enriched and dead-letter dirs of the same
        commit. `output` (the micro-batch's final enriched dir) keys batch
        mode's provider batches, so a replay of the micro-batch finds and
        reuses its own; a replay's calls are answered from the answer cache."""
        assert self.enricher is not None
        scored = self.spark.read.parquet(staging["scored"])
        flagged, todo, rows_in, selected = enrich.count_selected(scored, self.enricher.ecfg.select)
        try:
            tasks = self.spark.sparkContext.defaultParallelism
            results, lines = self.enricher.results(todo, output, tasks, self.args.enrich_chunk_rows)
            totals, _ = enrich.write_results(
                self.spark,
                results.withColumn(enrich.NEW, F.lit(True)),
                staging["enriched"],
                staging["dead_letters"],
                "parquet",
                rows_in,
                rows_in - selected,
            )
        finally:
            flagged.unpersist()
        if rows_in != n_scored:
            raise RuntimeError(f"batch {batch_id}: count mismatch: enrich read {rows_in} scored rows of {n_scored}")
        self.batch_lines += [f"micro-batch {batch_id}: {line.strip()}" for line in lines]
        return totals

    def publish(self, scored: DataFrame) -> None:
        """The scored rows to --output-topic, keyed by record id, as JSON
        (at-least-once: a replayed batch sends its rows again)."""
        value = F.to_json(F.struct(*[F.col(c) for c in scored.columns if c != "batch"]))
        (
            scored.select(F.col("id").alias("key"), value.alias("value"))
            .write.format("kafka")
            .option("kafka.bootstrap.servers", self.args.bootstrap)
            .option("topic", self.args.output_topic)
            .save()
        )


def enrich_counts(t: EnrichTotals) -> str:
    return (
        f"enriched {t.enriched} + dead-lettered {t.dead_letter} + not selected {t.not_selected}"
        f" ({t.calls} calls, {t.cache_hits} cached)"
    )


def tables(with_enrich: bool) -> tuple[str, ...]:
    return TABLES + ENRICH_TABLES if with_enrich else TABLES


def read_messages(spark: SparkSession, args) -> DataFrame:
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.bootstrap)
        .option("subscribe", args.topic)
        # Only the first run: later runs start where the checkpoint says.
        .option("startingOffsets", args.starting_offsets)
    )
    if args.max_per_batch:
        reader = reader.option("maxOffsetsPerTrigger", str(args.max_per_batch))
    return reader.load()


def totals_on_disk(spark: SparkSession, output: str, with_enrich: bool = False) -> dict:
    """Rows in the outputs, all runs together."""
    out = {}
    for table in tables(with_enrich):
        path = f"{output.rstrip('/')}/{table}"
        out[table] = spark.read.parquet(path).count() if commit.filesystem(path).exists(path) else 0
    return out


def prepare(cfg: PipelineConfig, args) -> dict:
    """Before Spark starts: with --enrich, the enrich job's checks (price
    table, template, schema, the key's variable: one line each); the model,
    of any kind (score.resolve_model)."""
    ecfg = enrich.enrich_settings(cfg, None) if args.enrich else None
    assets = enrich.check_settings(ecfg) if ecfg is not None else None
    found = score.resolve_model(cfg, args)
    if ecfg is not None:
        columns = scored_columns(cfg, found["head"], args.precision)
        enrich.check_columns(ecfg, assets, columns, f"a row scored with {found['head'].ref} ({found['head'].kind})")
    return found


def scored_columns(cfg: PipelineConfig, head: LoadedModel, precision: str | None) -> list[str]:
    """The columns of the scored rows (score.score_frame's): the records',
    what the model's kind writes, lineage."""
    plan = plan_scoring(cfg, head, "check", precision=precision)
    fields = score.written_fields(plan.kind, cfg.score.with_embedding, plan.fields)
    return [*R.RECORD_FIELDS, *(name for name, _ in fields), *score.LINEAGE_COLUMNS]


def main(spark: SparkSession, cfg: PipelineConfig, args, head: LoadedModel | None = None) -> dict:
    head = head or score.resolve_model(cfg, args)["head"]
    run_id = common.new_run_id()
    # the one scoring path of score.main; a classifier's, embedder's or pyfunc
    # model's files are shipped here, once per run, not per micro-batch
    scorer = score.model_scorer(spark, cfg, head, run_id, args.precision)
    spec = cfg.ingest.source_spec(
        source=args.source or args.topic,
        format="jsonl",
        text_field=args.text_field,
        rating_field=args.rating_field,
        label_field=args.label_field,
    )
    enricher = None
    if args.enrich:
        enricher = enrich.Enricher.load(cfg, None, job_id_for(f"{args.output.rstrip('/')}/enriched"))
        enricher.open()
    writer = BatchWriter(spark, spec, args, scorer, enricher)
    checkpoint = args.checkpoint or f"{args.output.rstrip('/')}/_checkpoint"
    stream = read_messages(spark, args).writeStream.foreachBatch(writer).option("checkpointLocation", checkpoint)
    stream = stream.trigger(processingTime=args.every) if args.every else stream.trigger(availableNow=True)
    started = time.perf_counter()
    query = stream.queryName(f"aibatch-stream-{run_id}").start()
    try:
        query.awaitTermination()
    except KeyboardInterrupt:
        query.stop()
    finally:
        if enricher is not None:
            enricher.close()
    seconds = time.perf_counter() - started
    summary_out = {
        **writer.totals,
        "reasons": writer.reasons,
        "seconds": round(seconds, 1),
        "rows_per_s": round(writer.totals["messages"] / seconds, 1) if seconds else None,
        "on_disk": totals_on_disk(spark, args.output, enricher is not None),
        "model": head.ref,
        "kind": scorer.plan.kind,
        "run_id": run_id,
        "output": args.output,
        "checkpoint": checkpoint,
        "output_topic": args.output_topic,
    }
    if enricher is not None:
        # the enrich job's summary of this run's micro-batches together (rows in: their scored rows)
        done = summary(writer.enriched, enricher.prices, writer.paths["enriched"], writer.paths["dead_letters"])
        done["mode"] = enricher.ecfg.mode
        done["lines"] += writer.batch_lines
        summary_out["enrich"] = done
    log.info("stream: %s", summary_out)
    return summary_out


def parser():
    p = common.base_parser("stream", __doc__)
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port[,host:port]")
    p.add_argument("--topic", required=True, help="topic to read (each message value is one JSON record)")
    p.add_argument(
        "--output",
        required=True,
        help="dir of records/, rejects/, scored/ (and enriched/, dead_letters/ with --enrich), appended to per batch",
    )
    p.add_argument("--checkpoint", help="Structured Streaming checkpoint (default OUTPUT/_checkpoint)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--available-now",
        action="store_true",
        help="read up to the topic's current end, process, stop (the default)",
    )
    mode.add_argument("--every", type=parse_every, help="run continuously, a micro-batch every interval (30s, 5m)")
    p.add_argument("--max-per-batch", type=int, help="at most this many messages per micro-batch")
    p.add_argument(
        "--starting-offsets",
        choices=("earliest", "latest"),
        default="earliest",
        help="where a new checkpoint starts (default earliest)",
    )
    p.add_argument("--source", help="source name in record ids (default: the topic)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--rating-field")
    p.add_argument("--label-field")
    p.add_argument(
        "--model",
        help="a model of any kind: MLflow model URI (models:/NAME/N, models:/NAME@ALIAS, runs:/ID/model), "
        "a local model dir, or NAME@N (default: score.model in the config)",
    )
    p.add_argument("--precision", help="override encoder.precision")
    p.add_argument("--output-topic", help="also publish the scored rows here, keyed by id (at-least-once)")
    p.add_argument(
        "--enrich",
        action="store_true",
        help="also enrich each micro-batch's selected scored rows ([enrich] settings, --set enrich.KEY=VALUE; "
        "online or enrich.mode=batch) into enriched/ and dead_letters/",
    )
    p.add_argument(
        "--enrich-chunk-rows", type=int, default=5000, help="--enrich: rows handed to the runner at once per task"
    )
    p.set_defaults(output_dests=(), input_dests=())
    return p


def report(out: dict) -> None:
    print(
        f"stream: {out['batches']} micro-batches, {out['messages']} messages: input rows {out['input']} = "
        f"good {out['good']} + rejected {out['rejected']} (skipped, not records: {out['skipped']}) "
        f"in {out['seconds']} s ({out['rows_per_s']} messages/s)"
    )
    for reason, n in sorted(out["reasons"].items()):
        print(f"  rejected {reason}: {n}")
    disk = out["on_disk"]
    more = "".join(f", {t.replace('_', ' ')} {disk[t]}" for t in ENRICH_TABLES if t in disk)
    print(f"  all runs: records {disk['records']}, rejects {disk['rejects']}, scored {disk['scored']}{more}")
    print(f"  scored with {out['model']} ({out['kind']}), run {out['run_id']}")
    if "enrich" in out:
        print("\n".join(f"  {line}" for line in out["enrich"]["lines"]))
    print(f"output: {out['output']}\ncheckpoint: {out['checkpoint']}")
    if out["output_topic"]:
        print(f"scored rows also on topic {out['output_topic']} (at-least-once)")


def cli(argv=None) -> int:
    return common.run_cli("stream", parser(), main, report, argv, prepare=prepare)


if __name__ == "__main__":
    sys.exit(cli())
