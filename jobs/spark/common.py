"""Edges shared by the Spark jobs: the one command-line runner every job's
cli() delegates to (options every job takes, settings validated once, checks
before Spark starts, session start and stop), and reading/writing tables in
Parquet or JSON Lines (local paths or hdfs://)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from udfs.config import ConfigError, PipelineConfig, load_config
from udfs.registry import RegistryError

log = logging.getLogger(__name__)

TABLE_FORMATS = ("parquet", "jsonl")


def home() -> Path:
    """The project root that relative settings (registry_dir) are resolved
    against: $AIBATCH_HOME (submit.sh sets it), else the working directory."""
    return Path(os.environ.get("AIBATCH_HOME") or os.getcwd())


def default_config() -> str:
    """$AIBATCH_CONFIG (submit.sh --config sets it), else conf/pipeline.toml."""
    return os.environ.get("AIBATCH_CONFIG") or str(home() / "conf" / "pipeline.toml")


def base_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A job's parser; its description is the first paragraph of the job's
    docstring, on one line."""
    description = " ".join(doc.strip().split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--config",
        default=default_config(),
        help="pipeline settings file (default $AIBATCH_CONFIG, else conf/pipeline.toml)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting of the config file, e.g. --set encoder.max_length=128 (repeatable)",
    )
    return parser


# Errors in what the user asked for, found before Spark starts: one line, exit 2.
USAGE_ERRORS: tuple[type[Exception], ...] = (ConfigError, RegistryError)


def run_main(main: Callable[..., dict], spark: SparkSession, args: argparse.Namespace, **extra) -> dict:
    """main(spark, config, args, **extra) with the settings that args name
    (--config, --set): what run_cli does inside a session someone else owns
    (tests, notebooks)."""
    return main(spark, load_config(args.config, args.overrides), args, **extra)


def run_cli(
    app: str,
    parser: argparse.ArgumentParser,
    main: Callable[..., dict],
    report: Callable[[dict], None],
    argv: list[str] | None = None,
    prepare: Callable[[PipelineConfig, argparse.Namespace], dict] | None = None,
) -> int:
    """The one runner behind every Spark job's cli(): parse the arguments,
    validate the settings once (file + --set), run prepare(config, args)
    (checks that need no Spark, such as resolving a model version; it
    returns extra keyword arguments for main), then start a session, run
    main(spark, config, args, **extra), stop the session (also when main
    fails) and print report(summary)."""
    setup_logging()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        extra = prepare(config, args) if prepare else {}
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    spark = SparkSession.builder.appName(f"aibatch-{app}").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    try:
        summary = main(spark, config, args, **extra)
    finally:
        spark.stop()
    report(summary)
    return 0


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def read_table(spark: SparkSession, path: str, fmt: str = "parquet", schema=None) -> DataFrame:
    if fmt == "parquet":
        return spark.read.parquet(path)
    if fmt == "jsonl":
        reader = spark.read
        if schema is not None:
            reader = reader.schema(schema)
        return reader.json(path)
    raise ValueError(f"table format must be one of {TABLE_FORMATS}, got {fmt!r}")


def write_table(df: DataFrame, path: str, fmt: str = "parquet") -> None:
    writer = df.write.mode("overwrite")
    if fmt == "parquet":
        writer.parquet(path)
    elif fmt == "jsonl":
        # nulls written out, so both engines' JSON Lines carry every field
        writer.option("ignoreNullFields", "false").json(path)
    else:
        raise ValueError(f"table format must be one of {TABLE_FORMATS}, got {fmt!r}")


def setup_logging() -> None:
    """Log to stderr at $AIBATCH_LOG_LEVEL (default WARNING). Under
    spark-submit the Python driver's stderr joins its stdout."""
    level = os.environ.get("AIBATCH_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str) -> int:
    """Report a settings or model-name error found before Spark starts; exit status 2."""
    sys.stderr.write(f"error: {message}\n")
    return 2
