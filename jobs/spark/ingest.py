"""Ingest raw files (CSV, TSV, JSON Lines, Parquet; local or hdfs://, .gz and
.bz2 read as such) into one record schema (id, source, text, label, rating),
written as Parquet (or JSON Lines); rows that cannot be parsed go to a
rejects output (id, source, reason, raw). Prints input = good + rejected.

Run with (the default data, named in conf/pipeline.toml, under one dir):
    ./submit.sh ingest --input hdfs://127.0.0.1:19820/user/$USER/aibatch/raw \
        --output hdfs://127.0.0.1:19820/user/$USER/aibatch/records \
        --rejects hdfs://127.0.0.1:19820/user/$USER/aibatch/rejects
or one file or dir of one format:
    ./submit.sh ingest --input data.jsonl --format jsonl --source mine --output OUT --rejects REJ
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import re
import sys

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.spark import common
from udfs import ingest_batches as B
from udfs import records as R
from udfs.config import ConfigError, PipelineConfig, parse_label_map, parse_labels
from udfs.input_files import UnreadableInputError

log = logging.getLogger(__name__)

RECORD_SCHEMA = T.StructType(
    [
        T.StructField("id", T.StringType(), False),
        T.StructField("source", T.StringType(), False),
        T.StructField("text", T.StringType(), False),
        T.StructField("label", T.StringType(), True),
        T.StructField("rating", T.DoubleType(), True),
    ]
)
REJECT_SCHEMA = T.StructType(
    [
        T.StructField("id", T.StringType(), False),
        T.StructField("source", T.StringType(), False),
        T.StructField("reason", T.StringType(), False),
        T.StructField("raw", T.StringType(), False),
    ]
)


# Input splits are at most this many bytes while ingest runs, whatever the
# session's spark.sql.files.maxPartitionBytes (Spark's default is 128 MiB):
# measured on local[2] with Spark's default 1 GB heap, a 200 MB JSON Lines
# file in 128 MiB splits ran the JVM out of heap (java.lang.OutOfMemoryError,
# about 660 MB of byte arrays in the two parse tasks) and passed in 16 or
# 32 MiB splits; small splits also keep both cores busy to the end.
MAX_SPLIT_BYTES = 16 * 2**20

# Up to this many duplicated ids go to every task as a broadcast hash table
# (16 hex digits and a count each: tens of MB); more are joined by shuffle.
BROADCAST_DUPLICATE_IDS = 2_000_000


@dataclasses.dataclass(frozen=True)
class Tally:
    """Counts of the parsed rows, taken in the one job that parses the input:
    enough to know the outputs' counts without reading them back."""

    rows: dict[tuple[str, str | None], int]  # (kind, reason or None): raw records or skipped lines
    duplicated_ids: int  # record ids seen more than once
    duplicated_rows: int  # the records that carry them

    def input(self) -> int:
        return sum(n for (kind, _), n in self.rows.items() if kind != R.SKIP)

    def skipped(self) -> dict[str, int]:
        return {str(reason): n for (kind, reason), n in self.rows.items() if kind == R.SKIP}


@dataclasses.dataclass(frozen=True)
class IngestResult:
    records: DataFrame
    rejects: DataFrame
    # Every raw record and skipped line, parsed (kind record, reject or skip),
    # cached: read once to count and find duplicated ids, then once by each output.
    parsed: DataFrame
    tally: Tally
    # The records whose id was seen more than once, one row per distinct
    # record with its number of copies (cached; the records and the rejects
    # outputs both read it).
    duplicated: DataFrame
    cached: tuple[DataFrame, ...] = ()

    def counts(self) -> dict:
        """{'input': raw records parsed, 'skipped': {reason: lines}}."""
        return {"input": self.tally.input(), "skipped": self.tally.skipped()}

    def output_counts(self) -> dict:
        """{'good': records, 'rejected': rejects, 'reasons': {reason: rejects}}
        the outputs hold, from the tally and the duplicated records (a small
        job over their cache), without reading the outputs."""
        records = self.tally.rows.get((R.RECORD, None), 0)
        distinct = self.duplicated.count() if self.tally.duplicated_ids else 0
        copies = self.tally.duplicated_rows - distinct  # further copies: duplicate_record rejects
        reasons = {str(reason): n for (kind, reason), n in self.tally.rows.items() if kind == R.REJECT}
        if copies:
            reasons[R.DUPLICATE] = reasons.get(R.DUPLICATE, 0) + copies
        return {"good": records - copies, "rejected": sum(reasons.values()), "reasons": reasons}

    def release(self) -> None:
        for df in (self.duplicated, *self.cached, self.parsed):
            df.unpersist()


def read_lines(spark: SparkSession, path: str) -> DataFrame:
    """(raw, file, block_start): every line of every file under path, read
    by Spark's text source. It reads as Hadoop's TextInputFormat does (the
    same LineRecordReader): an uncompressed or bzip2 file is split into
    tasks of at most spark.sql.files.maxPartitionBytes at line boundaries, a
    gzip file is streamed in one task, and no task holds a whole file.
    Its strings are the line's bytes as read (Spark's UTF8String is never
    decoded on the way), so the cast to binary gives the raw bytes back,
    invalid UTF-8 included. Files named _* or .* are skipped, as by Hadoop."""
    return spark.read.text(path).select(
        F.col("value").cast("binary").alias("raw"),
        F.col("_metadata.file_path").alias("file"),
        F.col("_metadata.file_block_start").alias("block_start"),
    )


def input_files(spark: SparkSession, path: str) -> list[str]:
    return sorted(spark.read.text(path).inputFiles())


def read_header(spark: SparkSession, path: str, spec: R.SourceSpec) -> tuple[str, list[str]] | None:
    """(file, field names) from the first non-blank line of one CSV/TSV
    file (one small job that reads only the file's start), or None for a
    file without one; a ValueError names a file whose header is unreadable
    or lacks the text field, before any parsing starts."""
    blank = F.regexp_replace(F.col("value"), "[ \\t\\x0B\\f\\uFEFF]", "") == ""
    first = (
        spark.read.text(path)
        .where(~blank)
        .select(F.col("value").cast("binary").alias("raw"), F.col("_metadata.file_path").alias("file"))
        .limit(1)
        .collect()
    )
    if not first:
        return None
    raw = bytes(first[0]["raw"])
    return first[0]["file"], R.file_header(spec, first[0]["file"], R.strip_boms(raw))


def parse_lines(lines: DataFrame, spec: R.SourceSpec, headers: dict[str, list[str]] | None = None) -> DataFrame:
    """The parsed rows (udfs.ingest_batches.PARSED_DDL) of a line format's
    lines, in as many tasks as the lines' DataFrame has partitions."""
    cols = ["raw"] if headers is None else ["raw", "file"]
    return lines.select(*cols).mapInArrow(B.line_parser(spec, headers), B.PARSED_DDL)


def parse_csv_file(spark: SparkSession, path: str, spec: R.SourceSpec, header: list[str]) -> DataFrame:
    """The parsed rows of one CSV file: its splits read in order by one task
    (coalesce(1)), since a quoted field may hold newlines."""
    lines = read_lines(spark, path).select("raw", "block_start").coalesce(1)
    return lines.mapInArrow(B.csv_parser(spec, path, header), B.PARSED_DDL)


def parse_table(spark: SparkSession, table: DataFrame, spec: R.SourceSpec) -> DataFrame:
    """The parsed rows of a Parquet (or any) table's rows."""

    def rows(part):
        for kind, row, raw in R.parse_rows(spec, (r.asDict(recursive=True) for r in part)):
            row = {**row, "raw": row.get("raw") or R.raw_to_str(raw)}
            yield tuple([kind] + [row.get(f) for f in B.PARSED_SCHEMA.names[1:]])

    return spark.createDataFrame(table.rdd.mapPartitions(rows), B.PARSED_DDL)


_FAILED_READ = re.compile(r"FAILED_READ_FILE\.\w+\] Encountered error while reading file (\S+?)\.?\s")
_CAUSE = re.compile(r"Caused by: ([\w.$]+: [^\n]*)")


@contextlib.contextmanager
def named_read_failures():
    """Turn Spark's failure to read an input file to its end (a truncated or
    corrupt .gz/.bz2, plain text named .gz) into UnreadableInputError naming
    the file and the cause: a clear failure, the documented policy (the
    mrjob twin fails alike), rather than rows lost or a Java trace."""
    try:
        yield
    except Exception as exc:
        text = str(exc)
        found = _FAILED_READ.search(text)
        if not found:
            raise
        causes = _CAUSE.findall(text)
        cause = causes[-1][:300] if causes else "unreadable"
        raise UnreadableInputError(f"{found[1]}: cannot be read to its end ({cause})") from None


def parse_source(spark: SparkSession, path: str, spec: R.SourceSpec) -> DataFrame:
    """The parsed rows of one source (a file or a dir of files)."""
    if spec.format == "parquet":
        return parse_table(spark, spark.read.parquet(path), spec)
    if spec.format == "jsonl":
        return parse_lines(read_lines(spark, path), spec)
    with named_read_failures():
        found = {f: read_header(spark, f, spec) for f in input_files(spark, path)}
    if spec.format == "tsv":
        return parse_lines(read_lines(spark, path), spec, dict(h for h in found.values() if h))
    # A CSV file without a header line holds only blank lines (to count).
    parts = [parse_csv_file(spark, f, spec, h[1] if h else []) for f, h in found.items()]
    if not parts:
        return parse_lines(read_lines(spark, path), spec, {})  # no files: no rows, the schema
    return functools.reduce(DataFrame.unionByName, parts)


def tally_parsed(parsed: DataFrame) -> tuple[Tally, DataFrame]:
    """(tally, duplicated ids) of parsed rows in one job: rows counted by
    kind and reason, and records counted by id, so that only the records
    whose id is duplicated need a shuffle later (a few per cent of them on
    real data). The ids' counts are cached (rid, copies), for the ids with
    copies > 1 to be read again; call unpersist on the frame returned."""
    keyed = parsed.select("kind", "reason", F.when(F.col("kind") == R.RECORD, F.col("id")).alias("rid"))
    by_id = keyed.groupBy("kind", "reason", "rid").agg(F.count(F.lit(1)).alias("copies"))
    by_id = by_id.persist(StorageLevel.MEMORY_AND_DISK)
    duplicated = F.col("rid").isNotNull() & (F.col("copies") > 1)
    rows = by_id.groupBy("kind", "reason").agg(
        F.sum("copies").alias("rows"),
        F.count(F.when(duplicated, 1)).alias("duplicated_ids"),
        F.sum(F.when(duplicated, F.col("copies")).otherwise(0)).alias("duplicated_rows"),
    )
    found = rows.collect()
    tally = Tally(
        rows={(r["kind"], r["reason"]): r["rows"] for r in found},
        duplicated_ids=sum(r["duplicated_ids"] for r in found),
        duplicated_rows=sum(r["duplicated_rows"] for r in found),
    )
    return tally, by_id


def duplicated_records(parsed: DataFrame, duplicated_ids: DataFrame) -> DataFrame:
    """One row per distinct record whose id is in duplicated_ids (a frame
    of column `id`, broadcast or not), with its number of copies: only
    these records are shuffled."""
    recs = parsed.where(F.col("kind") == R.RECORD).join(duplicated_ids, "id", "left_semi")
    # Copies of a record are identical in every column, so grouping by all of
    # them groups by id; and unlike first(), a count over string keys runs
    # as a hash aggregate, combined map-side (first() of strings sorts).
    return recs.groupBy("id", "source", "text", "label", "rating", "raw").agg(F.count(F.lit(1)).alias("copies"))


def split_outputs(
    parsed: DataFrame, duplicated_ids: DataFrame, duplicated: DataFrame, partitions: int | None = None
) -> tuple[DataFrame, DataFrame]:
    """(records, rejects): the records whose id is not duplicated as they
    were parsed, one of each duplicated record, and as rejects the parse
    rejects and each further copy (`duplicate_record`)."""
    once = parsed.where(F.col("kind") == R.RECORD).join(duplicated_ids, "id", "left_anti")
    records = once.select(*R.RECORD_FIELDS).unionByName(duplicated.select(*R.RECORD_FIELDS))
    if partitions:
        records = records.repartition(partitions, "id")
    copies = duplicated.where(F.col("copies") > 1).select(
        "id",
        "source",
        F.lit(R.DUPLICATE).alias("reason"),
        "raw",
        F.explode(F.sequence(F.lit(2), F.col("copies"))).alias("copy"),
    )
    rejects = parsed.where(F.col("kind") == R.REJECT).select(*R.REJECT_FIELDS)
    return records, rejects.unionByName(copies.select(*R.REJECT_FIELDS))


def resolve_duplicates(parsed: DataFrame, partitions: int | None = None) -> tuple[DataFrame, DataFrame]:
    """(records, rejects) of parsed rows: records grouped by id, the first
    of each kept and every further copy rejected as `duplicate_record`
    (identical raw records of one source parse alike: udfs.records); parse
    rejects all stay rejects. ingest() does the same with the duplicated ids
    it counted while parsing."""
    recs = parsed.where(F.col("kind") == R.RECORD)
    ids = recs.groupBy("id").count().where(F.col("count") > 1).select("id")
    return split_outputs(parsed, ids, duplicated_records(parsed, ids), partitions)


def ingest(spark: SparkSession, sources: list[tuple[str, R.SourceSpec]], partitions: int | None = None) -> IngestResult:
    """The records and rejects of (path, spec) sources. Call release() on
    the result when its frames are written."""
    parsed = functools.reduce(DataFrame.unionByName, [parse_source(spark, path, spec) for path, spec in sources])
    # In memory where it fits: read by the tally and by each output once.
    parsed = parsed.persist(StorageLevel.MEMORY_AND_DISK)
    with named_read_failures():
        tally, by_id = tally_parsed(parsed)  # every input read and parsed once, here
    ids = by_id.where(F.col("rid").isNotNull() & (F.col("copies") > 1)).select(F.col("rid").alias("id"))
    if tally.duplicated_ids <= BROADCAST_DUPLICATE_IDS:
        ids = F.broadcast(ids)
    duplicated = duplicated_records(parsed, ids).persist(StorageLevel.MEMORY_AND_DISK)
    records, rejects = split_outputs(parsed, ids, duplicated, partitions)
    return IngestResult(records, rejects, parsed, tally, duplicated, cached=(by_id,))


@contextlib.contextmanager
def bounded_splits(spark: SparkSession, limit: int = MAX_SPLIT_BYTES):
    """spark.sql.files.maxPartitionBytes at most limit inside the block (a
    smaller setting is kept), restored after it. Spark reads the setting when
    a job runs, not when a frame is built, so the block must cover the writes."""
    key = "spark.sql.files.maxPartitionBytes"
    before = spark.conf.get(key)
    if before is not None and _bytes(before) <= limit:
        yield
        return
    spark.conf.set(key, str(limit))
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)


def _bytes(size: str) -> int:
    """A Spark byte size ('134217728b', '16m', '1g', '4096') in bytes."""
    text = size.strip().lower().removesuffix("b")
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(spark: SparkSession, cfg: PipelineConfig, args) -> dict:
    with bounded_splits(spark):
        return ingest_and_write(spark, cfg, args)


def ingest_and_write(spark: SparkSession, cfg: PipelineConfig, args) -> dict:
    if args.format:
        specs = [(args.input, cli_spec(cfg, args))]
    else:
        names = args.sources.split(",") if args.sources else [s.name for s in cfg.ingest.sources]
        chosen = [cfg.source(n) for n in names]
        specs = [(args.input.rstrip("/") + "/" + s.file, cfg.ingest.spec(s)) for s in chosen]
    result = ingest(spark, specs, args.partitions)
    # Records and rejects are one commit: both in place, or neither touched.
    outputs = {"records": args.output, "rejects": args.rejects}
    with common.committed_outputs(spark, outputs, overwrite=args.overwrite, inputs=[args.input]) as staging:
        try:
            common.write_table(result.records, staging["records"], args.output_format)
            common.write_table(result.rejects, staging["rejects"], args.output_format)
            # Counted from the parsed rows (input rows before duplicates are
            # resolved), not by reading the outputs back.
            counts = result.counts()
            written = result.output_counts()
        finally:
            result.release()
    total, good, rejected, reasons = counts["input"], written["good"], written["rejected"], written["reasons"]
    summary = {
        "input": total,
        "good": good,
        "rejected": rejected,
        "reasons": reasons,
        "skipped": counts["skipped"],
        "output": args.output,
        "rejects": args.rejects,
    }
    log.info("ingest: %s", summary)
    return summary


def parser():
    p = common.base_parser("ingest", __doc__)
    p.add_argument(
        "--input", required=True, help="dir holding the configured sources' files, or (with --format) a file or dir"
    )
    p.add_argument("--output", required=True, help="records output dir (must not exist unless --overwrite)")
    p.add_argument("--rejects", required=True, help="rejects output dir (must not exist unless --overwrite)")
    common.add_output_args(p, outputs=("output", "rejects"))
    p.add_argument("--output-format", choices=common.TABLE_FORMATS, default="parquet")
    p.add_argument("--sources", help="comma-separated configured source names (default: all)")
    p.add_argument("--format", choices=R.FORMATS, help="read --input as one source of this format")
    p.add_argument("--source", default="input", help="source name with --format (default 'input')")
    p.add_argument("--text-field", default="text")
    p.add_argument("--rating-field")
    p.add_argument("--label-field")
    p.add_argument(
        "--label-map",
        type=parse_label_map_arg,
        help="with --format: rename raw labels, e.g. 'neutral=,pos=positive' (empty: unlabelled; others kept)",
    )
    p.add_argument(
        "--labels",
        type=parse_labels_arg,
        help="with --format: the label vocabulary, e.g. 'negative,neutral,positive' (others: unknown_label; "
        "default: keep every label)",
    )
    p.add_argument("--partitions", type=int, help="partitions to parse and deduplicate in")
    return p


def parse_label_map_arg(text: str) -> dict:
    try:
        return parse_label_map(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_labels_arg(text: str) -> tuple[str, ...]:
    try:
        return parse_labels(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cli_spec(cfg: PipelineConfig, args) -> R.SourceSpec:
    """The one source that --format and its options describe; ConfigError
    where they contradict each other (a --label-map value outside --labels)."""
    try:
        return cfg.ingest.source_spec(
            source=args.source,
            format=args.format,
            text_field=args.text_field,
            rating_field=args.rating_field,
            label_field=args.label_field,
            label_map=args.label_map,
            labels=args.labels,
        )
    except ValueError as exc:
        raise ConfigError(f"ingest options: {exc}") from None


def report(out: dict) -> None:
    print(f"ingest: input rows {out['input']} = good {out['good']} + rejected {out['rejected']}")
    for reason, n in sorted(out["reasons"].items()):
        print(f"  rejected {reason}: {n}")
    for what, n in sorted(out.get("skipped", {}).items()):
        print(f"  skipped, not records ({what}): {n}")
    print(f"records: {out['output']}\nrejects: {out['rejects']}")


def check_sources(cfg: PipelineConfig, args) -> dict:
    """Before Spark starts: every --sources name is configured (ConfigError
    naming it and the known ones), and the --format options agree."""
    if args.format:
        cli_spec(cfg, args)
    if not args.format and args.sources:
        for name in args.sources.split(","):
            cfg.source(name)
    return {}


def cli(argv=None) -> int:
    return common.run_cli("ingest", parser(), main, report, argv, prepare=check_sources)


if __name__ == "__main__":
    sys.exit(cli())
