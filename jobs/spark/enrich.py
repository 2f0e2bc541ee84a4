"""Enrich the scored rows that the configured filter selects with an LLM
(OpenAI Chat Completions or Anthropic Messages, conf/pipeline.toml [enrich]):
one prompt per row from a versioned template, a schema-checked JSON answer
(topic, summary, severity) plus raw answer, tokens, latency, attempts,
provider, model, template, request id and whether it came from the cache.
Rows that still fail after the retries go to the dead letters with their
last error; rows in = enriched + dead-lettered + not selected.

The calls run in udfs.enrich.runner (asyncio inside each task, one budget
shared by the whole job through the store); this job is the thin Spark edge:
select, spread the rows over the tasks (mapInPandas), write every result to
a hidden staging dir, write the output and the dead letters from it, and
commit both together only when all of that succeeded (jobs.commit: an
existing output is replaced only with --overwrite, never merged into). A rerun of the same command (after a crash, say) answers the
rows already answered from the cache, without a call.

Run with:
    AIBATCH_GATEWAY_KEY=... ./submit.sh enrich --input hdfs://127.0.0.1:19820/user/$USER/aibatch/scored \
        --output hdfs://127.0.0.1:19820/user/$USER/aibatch/enriched [--dead-letters DL] [--overwrite] [--dry-run] \
        [--retry-dead-letters] [--cache DIR] [--tasks N] [--sample-percent P] [--set enrich.KEY=VALUE]
    ... --set enrich.mode=batch [--cancel]   (the providers' Batch APIs; docs/enrichment.md "Batch mode")
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs import commit
from jobs.spark import common
from udfs.enrich.accounting import EnrichTotals, PriceError, PriceTable
from udfs.enrich.batch_mode import batches_for, cancel_batches, obtain_batch_answers
from udfs.enrich.driver import (
    ApiKeyMissing,
    add_enrich_args,
    add_progress_arg,
    count_kept,
    dead_letters_path,
    dry_run_summary,
    job_id_for,
    read_api_key,
    resolved_settings,
    summary,
)
from udfs.enrich.progress import ProgressBar, snapshot
from udfs.enrich.result import DEAD_LETTER, ENRICHED, RESULT_FIELDS
from udfs.enrich.settings import EnrichConfig
from udfs.spark import enrich_partitions, enrich_result_fields, in_sample_udf, select_udf

log = logging.getLogger(__name__)

NEW = "_enriched_now"  # staging-only column: the row was processed by this run


def enrich_settings(cfg, cache: str | None):
    return resolved_settings(cfg.enrich, common.home(), cache)


def select_rows(scored: DataFrame, flt) -> DataFrame:
    """scored + a boolean `_selected` by the configured filter (the same
    udfs function the twin calls)."""
    return scored.withColumn("_selected", select_udf(flt)(F.struct(*[F.col(c) for c in scored.columns])))


def output_schema(inputs: T.StructType) -> T.StructType:
    clash = sorted(set(inputs.fieldNames()) & set(RESULT_FIELDS))
    if clash:
        raise ValueError(f"enrich: the input already has column(s) {clash} that the enrich output adds")
    return T.StructType(list(inputs.fields) + enrich_result_fields())


def enrich_frame(
    rows: DataFrame, ecfg, assets, job_id: str, api_key, tasks: int, chunk_rows: int, progress: bool = False
) -> DataFrame:
    """rows (selected) -> rows + result fields, spread over `tasks` tasks by id."""
    return rows.repartition(tasks, "id").mapInPandas(
        enrich_partitions(ecfg, assets, job_id, api_key, chunk_rows, progress), output_schema(rows.schema)
    )


def totals_of(staged: DataFrame, rows_in: int, not_selected: int) -> EnrichTotals:
    totals = EnrichTotals(rows_in=rows_in, not_selected=not_selected)
    groups = staged.groupBy("status", "cached", "model", NEW).agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum("attempts").alias("attempts"),
        F.sum("input_tokens").alias("input_tokens"),
        F.sum("output_tokens").alias("output_tokens"),
    )
    for g in groups.collect():
        if g[NEW]:
            totals.add_group(
                g["status"],
                bool(g["cached"]),
                g["model"],
                g["rows"],
                g["attempts"],
                g["input_tokens"],
                g["output_tokens"],
            )
        else:  # kept from the previous output by --retry-dead-letters: no call in this run
            count_kept(totals, g["status"], g["model"], g["rows"])
    return totals


HISTOGRAMS = ("latency_ms", "input_tokens", "output_tokens")


def call_histograms(staged: DataFrame, bins: int = 20) -> dict:
    """{column: {"edges": [bins + 1], "counts": [bins]}} of the rows this run
    answered by a call (the run's report draws them): equal-width bins from
    each column's min to max, counted in one Spark job after one for the range."""
    called = staged.where(F.col(NEW) & ~F.coalesce(F.col("cached"), F.lit(False)))
    ranges = called.agg(
        *[F.min(c).alias(f"min_{c}") for c in HISTOGRAMS], *[F.max(c).alias(f"max_{c}") for c in HISTOGRAMS]
    ).collect()[0]
    shape = {}
    for c in HISTOGRAMS:
        lo, hi = ranges[f"min_{c}"], ranges[f"max_{c}"]
        if lo is not None:
            n = bins if hi > lo else 1
            shape[c] = (float(lo), (float(hi) - float(lo)) / n if hi > lo else 1.0, n)
    if not shape:
        return {}
    buckets = [
        F.struct(
            F.lit(c).alias("column"),
            F.least(F.floor((F.col(c) - lo) / width), F.lit(n - 1)).cast("int").alias("bin"),
        )
        for c, (lo, width, n) in shape.items()
    ]
    counted = (
        called.select(F.explode(F.array(*buckets)).alias("b"))
        .where(F.col("b.bin").isNotNull())
        .groupBy("b.column", "b.bin")
        .count()
        .collect()
    )
    out = {}
    for c, (lo, width, n) in shape.items():
        counts = [0] * n
        for row in counted:
            if row["column"] == c:
                counts[row["bin"]] = int(row["count"])
        out[c] = {"edges": [round(lo + i * width, 3) for i in range(n + 1)], "counts": counts}
    return out


def dry_run(selected: DataFrame, ecfg, assets, job_id: str, rows_in: int, n_selected: int, prices) -> dict:
    from udfs.spark import estimate_partitions

    parts = selected.mapInPandas(
        estimate_partitions(ecfg, assets, job_id), "calls long, input_tokens long, output_tokens long"
    )
    row = parts.agg(*[F.sum(c).alias(c) for c in ("calls", "input_tokens", "output_tokens")]).collect()[0]
    calls, tin, tout = (int(row[c] or 0) for c in ("calls", "input_tokens", "output_tokens"))
    batches = batches_for(ecfg, assets, calls, tin) if ecfg.mode == "batch" else None
    return dry_run_summary(rows_in, n_selected, calls, tin, tout, ecfg.provider.model, prices, batches)


def batch_phase(todo: DataFrame, ecfg, assets, api_key, store, prices, output: str, retry: bool) -> list[str]:
    """enrich.mode = "batch": the tasks turn the rows into request lines (in parallel), the
    driver streams them (toLocalIterator) into udfs.enrich.batch_mode, which fills the answer
    cache through the Batch API; the usual path below then answers the rows from the cache.
    The run's batches are keyed by `output`, the final output (udfs.enrich.batch_mode.run_key);
    `retry` (--retry-dead-letters) gives the rows it re-runs their batch attempts again."""
    from udfs.spark import batch_lines_partitions

    lines = todo.mapInPandas(batch_lines_partitions(ecfg, assets), "custom_id string, line string, tokens long")
    stream = ((r["custom_id"], r["line"], r["tokens"]) for r in lines.toLocalIterator())
    return obtain_batch_answers(ecfg, assets, api_key.get_secret_value(), store, stream, prices, output, retry)


def count_selected(scored: DataFrame, flt) -> tuple[DataFrame, DataFrame, int, int]:
    """(flagged, todo, rows in, selected): scored with `_selected` (cached:
    the caller unpersists it when done), the selected rows, and both counts
    from one Spark job."""
    flagged = select_rows(scored, flt).cache()
    counts = flagged.agg(F.count(F.lit(1)).alias("rows"), F.sum(F.col("_selected").cast("long")).alias("selected"))
    first = counts.collect()[0]
    return flagged, flagged.where("_selected").drop("_selected"), int(first["rows"]), int(first["selected"] or 0)


@dataclass
class Enricher:
    """One run's enrich stage, loaded once on the driver: the settings (paths
    resolved), the price table, the template and schema (checked here and
    shipped to the tasks), then (open) the key and the shared store. The
    enrich job runs it once over its input; the stream job once per
    micro-batch over the scored rows."""

    ecfg: EnrichConfig
    prices: PriceTable
    assets: Any
    job_id: str
    api_key: SecretStr | None = None
    store: Any = None

    @classmethod
    def load(cls, config, cache: str | None, job_id: str) -> Enricher:
        from udfs.enrich.assets import load_assets

        ecfg = enrich_settings(config, cache)
        return cls(ecfg, PriceTable.load(ecfg.prices), load_assets(ecfg), job_id)

    def open(self) -> None:
        from udfs.enrich.runner import open_store

        self.api_key = read_api_key(self.ecfg.provider.api_key_env)
        self.store = open_store(self.ecfg, self.job_id)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def results(
        self, todo: DataFrame, output: str, tasks: int, chunk_rows: int, retry: bool = False, progress: bool = False
    ) -> tuple[DataFrame, list[str]]:
        """The selected rows + result fields (lazy: the calls happen when it
        is written), and batch mode's report lines: with enrich.mode =
        "batch" the provider's batches for `output` (the final output, which
        keys them in the ledger) are obtained first, so the rows are then
        answered from the cache."""
        batch_lines = []
        if self.ecfg.mode == "batch":
            batch_lines = batch_phase(
                todo, self.ecfg, self.assets, self.api_key, self.store, self.prices, output, retry
            )
        if progress:
            self.store.progress_reset(self.job_id)
        frame = enrich_frame(todo, self.ecfg, self.assets, self.job_id, self.api_key, tasks, chunk_rows, progress)
        return frame, batch_lines

    def watch(self, rows: int, enabled: bool) -> ProgressBar:
        return ProgressBar(rows, lambda: snapshot(self.store, self.job_id), enabled=enabled)


def write_results(
    spark: SparkSession,
    results: DataFrame,
    enriched: str,
    dead_letters: str,
    fmt: str,
    rows_in: int,
    not_selected: int,
    watch: contextlib.AbstractContextManager = contextlib.nullcontext(),
    histograms: bool = False,
) -> tuple[EnrichTotals, dict]:
    """Inside a committed_outputs block (enriched, dead_letters: its staging
    paths): every result (with the NEW column) goes to a hidden dir beside
    the enriched output first (the calls happen in this write, under
    `watch`); the two outputs are written from it, so they are committed
    together only when all of this succeeded. The checked totals, and the
    call histograms where asked."""
    everything = enriched + ".results"
    try:
        with watch:
            common.write_table(results, everything, "parquet")
        staged = spark.read.parquet(everything)
        final = staged.drop(NEW)
        common.write_table(final.where(F.col("status") == ENRICHED), enriched, fmt)
        common.write_table(final.where(F.col("status") == DEAD_LETTER), dead_letters, fmt)
        totals = totals_of(staged, rows_in, not_selected)
        totals.check()
        shapes = call_histograms(staged) if histograms else {}
    finally:
        commit.filesystem(everything).delete(everything)
    return totals, shapes


def main(spark: SparkSession, config, args) -> dict:
    job_id = job_id_for(args.output)
    stage = Enricher.load(config, args.cache, job_id)
    ecfg, prices, assets = stage.ecfg, stage.prices, stage.assets
    dead_letters = dead_letters_path(args.output, args.dead_letters)
    scored = common.read_table(spark, args.input, args.input_format)
    if "id" not in scored.columns:
        raise ValueError(f"enrich: the input {args.input} has no id column (columns: {', '.join(scored.columns)})")
    if args.sample_percent < 100:  # the same id hash as score --sample-percent, so a smaller sample nests in it
        scored = scored.where(in_sample_udf(args.sample_percent)(F.col("id")))
    input_columns = scored.columns
    kept = None
    if args.retry_dead_letters:
        rows_in = scored.count()
        previous = common.read_table(spark, args.output, args.output_format)
        failed = common.read_table(spark, dead_letters, args.output_format)
        todo = scored.join(failed.select("id"), "id", "left_semi").select(*input_columns)
        kept = previous.select(*input_columns, *RESULT_FIELDS)
        n_selected = previous.count() + failed.count()
        n_todo = todo.count()
    else:
        _, todo, rows_in, n_selected = count_selected(scored, ecfg.select)
        n_todo = n_selected
    not_selected = rows_in - n_selected
    if args.dry_run:
        return dry_run(todo, ecfg, assets, job_id, rows_in, n_selected, prices)

    tasks = args.tasks or spark.sparkContext.defaultParallelism
    show = args.progress and spark.conf.get("spark.ui.showConsoleProgress", "false") != "true"
    stage.open()
    if args.cancel:
        assert stage.api_key is not None
        lines = cancel_batches(ecfg, stage.api_key.get_secret_value(), stage.store, args.output)
        stage.close()
        return {"dry_run": True, "lines": lines}
    results, batch_lines = stage.results(todo, args.output, tasks, args.chunk_rows, args.retry_dead_letters, show)
    if kept is not None:  # the previous output's rows, typed like the new ones (JSON Lines reads longs)
        kept = kept.select(*[F.col(f.name).cast(f.dataType) for f in results.schema.fields])
        results = kept.withColumn(NEW, F.lit(False)).unionByName(results.withColumn(NEW, F.lit(True)))
    else:
        results = results.withColumn(NEW, F.lit(True))
    outputs = {"output": args.output, "dead_letters": dead_letters}
    # --retry-dead-letters replaces the outputs it read by design; else an existing output needs --overwrite.
    overwrite = args.overwrite or args.retry_dead_letters
    with common.committed_outputs(spark, outputs, overwrite=overwrite, inputs=[args.input]) as staging:
        totals, histograms = write_results(
            spark,
            results,
            staging["output"],
            staging["dead_letters"],
            args.output_format,
            rows_in,
            not_selected,
            watch=stage.watch(n_todo, show),
            histograms=True,
        )
    stage.close()
    out = summary(totals, prices, args.output, dead_letters)
    out["lines"] += batch_lines
    out["histograms"] = histograms
    log.info("enrich: %s", {k: v for k, v in out.items() if k != "lines"})
    return out


def parser():
    p = common.base_parser("enrich", __doc__)
    p.add_argument("--input", required=True, help="scored rows (the score job's output)")
    p.add_argument("--output", required=True, help="enriched rows (overwritten when the run succeeded)")
    add_enrich_args(p.add_argument)  # the options the twin offers too (udfs.enrich.driver)
    common.add_output_args(p, outputs=("output", "dead_letters"))
    p.add_argument("--input-format", choices=common.TABLE_FORMATS, default="parquet")
    p.add_argument("--output-format", choices=common.TABLE_FORMATS, default="parquet")
    p.add_argument("--tasks", type=int, help="Spark tasks making calls (default: the default parallelism)")
    p.add_argument("--chunk-rows", type=int, default=5000, help="rows handed to the runner at once per task")
    add_progress_arg(p)
    return p


def prepare(config, args) -> dict:
    """Checks that need no Spark, so a bad template, schema, price table or a
    missing key fails in one line before the session starts."""
    ecfg = enrich_settings(config, args.cache)
    args.dead_letters = dead_letters_path(
        args.output, args.dead_letters
    )  # so the output checks before Spark starts see it
    if args.dry_run or args.cancel:
        args.output_dests = ()  # a dry run (or --cancel) writes nothing
    elif args.retry_dead_letters:
        args.overwrite = True  # it replaces the outputs it reads, by design
    check_settings(ecfg, need_key=not args.dry_run)  # --cancel needs the key too
    return {}


def check_settings(ecfg: EnrichConfig, need_key: bool = True) -> Any:
    """The price table, template and schema load, and (need_key) the key's
    variable is set; else ConfigError, one line (run_cli prints it before
    Spark starts). The enrich job's and the stream job's --enrich prepare.
    Returns the loaded assets (template and schema)."""
    from udfs.enrich.answers import SchemaFileError
    from udfs.enrich.assets import load_assets
    from udfs.enrich.prompts import PromptError

    try:
        PriceTable.load(ecfg.prices)
        assets = load_assets(ecfg)
        if need_key:
            read_api_key(ecfg.provider.api_key_env)
    except (PriceError, ApiKeyMissing, PromptError, SchemaFileError) as exc:
        raise common.ConfigError(str(exc)) from None
    return assets


def check_columns(ecfg: EnrichConfig, assets: Any, columns: Iterable[str], what: str) -> None:
    """The columns the template (in assets, as check_settings loaded them)
    and the filter read are among `columns` (what the input will hold, known
    before Spark starts); else ConfigError, one line naming them (a stream
    scoring with an embedder writes no `predicted`, which the shipped
    template reads)."""
    reads = [*assets.template.fields, ecfg.text_column]
    if ecfg.select.op != "all":
        reads.append(ecfg.select.column)
    missing = sorted(set(reads) - set(columns))
    if missing:
        raise common.ConfigError(
            f"enrich: the template {ecfg.template} and enrich.select read column(s) {missing} that {what} "
            f"does not have (it has {', '.join(columns)})"
        )


def report(out: dict) -> None:
    print("\n".join(out["lines"]))
    if not out["dry_run"]:
        print(f"enriched: {out['output']}\ndead letters: {out['dead_letters']}")


def cli(argv=None) -> int:
    return common.run_cli("enrich", parser(), main, report, argv, prepare=prepare)


if __name__ == "__main__":
    sys.exit(cli())
