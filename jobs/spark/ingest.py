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
import dataclasses
import logging
import sys

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from jobs.spark import common
from udfs import records as R
from udfs.config import ConfigError, PipelineConfig, parse_label_map

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


@dataclasses.dataclass(frozen=True)
class IngestResult:
    records: DataFrame
    rejects: DataFrame


def parse_files(files: DataFrame, spec: R.SourceSpec):
    """RDD of (kind, row, raw) for a DataFrame of files (path, content) of
    one CSV/TSV/JSON Lines source; kind is 'record' or 'reject'."""
    return files.rdd.flatMap(lambda row: R.parse_file(spec, row.path, bytes(row.content)))


def parse_table(table: DataFrame, spec: R.SourceSpec):
    """RDD of (kind, row, raw) for the rows of a Parquet (or any) table."""
    return table.rdd.mapPartitions(lambda rows: R.parse_rows(spec, (r.asDict(recursive=True) for r in rows)))


def resolve_duplicates(parsed, partitions: int | None = None):
    """RDD of (kind, row): every parsed raw record grouped by id, copies of a
    record rejected as duplicates (udfs.records.resolve_id_group)."""
    # One shuffle for records and rejects alike: its output is all the next
    # stage reads (a union of HDFS-read and shuffled partitions left Spark's
    # delay scheduling waiting for a host that never came, on one node).
    keyed = parsed.map(lambda krr: (krr[1]["id"], krr))
    grouped = keyed.groupByKey(numPartitions=partitions) if partitions else keyed.groupByKey()
    return grouped.flatMap(lambda kv: R.resolve_id_group(kv[1]))


def to_frames(spark: SparkSession, parsed) -> IngestResult:
    """Split an RDD of (kind, row) into the records and rejects DataFrames."""
    recs = parsed.filter(lambda kr: kr[0] == "record").map(lambda kr: tuple(kr[1][f] for f in R.RECORD_FIELDS))
    rejs = parsed.filter(lambda kr: kr[0] == "reject").map(lambda kr: tuple(kr[1][f] for f in R.REJECT_FIELDS))
    return IngestResult(spark.createDataFrame(recs, RECORD_SCHEMA), spark.createDataFrame(rejs, REJECT_SCHEMA))


def read_files(spark: SparkSession, path: str) -> DataFrame:
    """(path, content) of every file under path, read whole: compressed files
    cannot be split anyway; one file must stay under Spark's 2 GiB limit."""
    return spark.read.format("binaryFile").load(path).select("path", "content")


def ingest_source(spark: SparkSession, path: str, spec: R.SourceSpec):
    """RDD of (kind, row, raw) of one source."""
    if spec.format == "parquet":
        return parse_table(spark.read.parquet(path), spec)
    return parse_files(read_files(spark, path), spec)


def ingest(spark: SparkSession, sources: list[tuple[str, R.SourceSpec]], partitions: int | None = None) -> IngestResult:
    """The records and rejects of (path, spec) sources."""
    parsed = None
    for path, spec in sources:
        one = ingest_source(spark, path, spec)
        parsed = one if parsed is None else parsed.union(one)
    return to_frames(spark, resolve_duplicates(parsed, partitions))


def main(spark: SparkSession, cfg: PipelineConfig, args) -> dict:
    if args.format:
        specs = [
            (
                args.input,
                R.SourceSpec(
                    source=args.source,
                    format=args.format,
                    text_field=args.text_field,
                    rating_field=args.rating_field,
                    label_field=args.label_field,
                    label_map=args.label_map,
                    positive_min=cfg.ingest.positive_min,
                    negative_max=cfg.ingest.negative_max,
                ),
            )
        ]
    else:
        names = args.sources.split(",") if args.sources else [s.name for s in cfg.ingest.sources]
        chosen = [cfg.source(n) for n in names]
        specs = [(args.input.rstrip("/") + "/" + s.file, cfg.ingest.spec(s)) for s in chosen]
    result = ingest(spark, specs, args.partitions)
    common.write_table(result.records, args.output, args.output_format)
    common.write_table(result.rejects, args.rejects, args.output_format)
    good = common.read_table(spark, args.output, args.output_format, RECORD_SCHEMA).count()
    rejected_rows = common.read_table(spark, args.rejects, args.output_format, REJECT_SCHEMA)
    rejected = rejected_rows.count()
    # Input rows counted independently of the outputs: every raw record parsed.
    total = sum(ingest_source(spark, path, spec).count() for path, spec in specs)
    reasons = {r["reason"]: r["count"] for r in rejected_rows.groupBy("reason").count().collect()}
    if total != good + rejected:
        raise RuntimeError(f"count mismatch: input {total} != good {good} + rejected {rejected}")
    summary = {
        "input": total,
        "good": good,
        "rejected": rejected,
        "reasons": reasons,
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
    p.add_argument("--output", required=True, help="records output dir (overwritten)")
    p.add_argument("--rejects", required=True, help="rejects output dir (overwritten)")
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
        help="with --format: map raw labels, e.g. 'neutral=,pos=positive' (empty: unlabelled)",
    )
    p.add_argument("--partitions", type=int, help="partitions to parse and deduplicate in")
    return p


def parse_label_map_arg(text: str) -> dict:
    try:
        return parse_label_map(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def report(out: dict) -> None:
    print(f"ingest: input rows {out['input']} = good {out['good']} + rejected {out['rejected']}")
    for reason, n in sorted(out["reasons"].items()):
        print(f"  rejected {reason}: {n}")
    print(f"records: {out['output']}\nrejects: {out['rejects']}")


def cli(argv=None) -> int:
    return common.run_cli("ingest", parser(), main, report, argv)


if __name__ == "__main__":
    sys.exit(cli())
