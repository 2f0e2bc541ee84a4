"""The Spark jobs ./submit.sh can run, and the help text listing them with
their arguments (./submit.sh --help)."""

from __future__ import annotations

import contextlib
import importlib
import io
import sys

# name -> one line of purpose; each is jobs/spark/<name>.py
JOBS = {
    "ingest": "raw CSV/TSV/JSON Lines/Parquet files -> records + rejects",
    "train": "embed labelled records, fit and register the sentiment head (name@N)",
    "score": "records -> predicted label, probability, lineage (pandas UDF)",
    "stats": "scored records -> term frequencies, counts, top terms (RDD API)",
    "pipeline": "ingest -> score -> stats in one application (one executor start-up on a cluster)",
    "stream": "Kafka topic -> records + rejects + scored, per micro-batch (Structured Streaming, checkpointed)",
    "enrich": "scored records -> LLM topic, summary, severity per selected row + dead letters",
    "hdfs_roundtrip": "smoke job: word counts of a text file, HDFS in and out",
}


def job_help(name: str) -> str:
    module = importlib.import_module(f"jobs.spark.{name}")
    if hasattr(module, "parser"):
        return module.parser().format_help()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        module.parse_args(["--help"])
    return buf.getvalue()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--is-job"]:  # submit.sh asks before running a job
        return 0 if len(argv) == 2 and argv[1] in JOBS else 2
    names = argv or list(JOBS)
    for name in names:
        if name not in JOBS:
            sys.stderr.write(f"unknown job {name!r}; jobs: {', '.join(JOBS)}\n")
            return 2
    out = sys.stdout
    if not argv:
        out.write("Spark jobs:\n")
        for name, purpose in JOBS.items():
            out.write(f"  {name:<15} {purpose}\n")
    for name in names:
        out.write(f"\n=== {name} ===\n")
        out.write(job_help(name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
