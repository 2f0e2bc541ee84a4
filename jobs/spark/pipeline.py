"""ingest -> score -> stats as one Spark application: the three jobs, one after
the other in one session, with their own arguments, outputs and commits.
On a cluster the executors then start, unpack the packed environment and
load the model once instead of three times; on a Spark standalone cluster,
where every application unpacks the environment again in the driver and in
each executor, that is minutes and gigabytes per application saved.

Run with:
    ./submit.sh --master spark://127.0.0.1:17077 pipeline --input $H/raw --format jsonl \
        --output $H/records --rejects $H/rejects --scored $H/scored --stats $H/stats [--model sentiment@latest]
"""

from __future__ import annotations

import sys

from pyspark.sql import SparkSession

from jobs.spark import common, ingest, score, stats
from udfs import model as M
from udfs.config import PipelineConfig
from udfs.models import HeadVersion


def parser():
    p = ingest.parser()
    p.prog = "pipeline"
    p.description = " ".join(__doc__.strip().split("\n\n")[0].split())
    p.add_argument("--scored", required=True, help="scored output dir (must not exist unless --overwrite)")
    p.add_argument("--stats", required=True, help="stats output dir (must not exist unless --overwrite)")
    p.add_argument("--model", help="head version name@N or name@latest (default: score.model in the config)")
    p.add_argument("--precision", choices=M.PRECISIONS, help="override encoder.precision")
    # Every output is checked before Spark starts; the ingested records are
    # written in --output-format and read back from there by score.
    p.set_defaults(output_dests=("output", "rejects", "scored", "stats"))
    return p


def prepare(cfg: PipelineConfig, args) -> dict:
    """The checks of ingest (sources) and score (model) before Spark starts."""
    ingest.check_sources(cfg, args)
    return score.resolve_model(cfg, args)


def _args(job_parser, argv: list[str], overwrite: bool):
    return job_parser.parse_args(argv + (["--overwrite"] if overwrite else []))


def main(spark: SparkSession, cfg: PipelineConfig, args, head: HeadVersion | None = None) -> dict:
    fmt = args.output_format
    out = {"ingest": ingest.main(spark, cfg, args)}
    score_argv = ["--input", args.output, "--input-format", fmt, "--output", args.scored, "--output-format", fmt]
    score_argv += ["--model", args.model] if args.model else []
    score_argv += ["--precision", args.precision] if args.precision else []
    out["score"] = score.main(spark, cfg, _args(score.parser(), score_argv, args.overwrite), head=head)
    stats_argv = ["--input", args.scored, "--input-format", fmt, "--output", args.stats]
    out["stats"] = stats.main(spark, cfg, _args(stats.parser(), stats_argv, args.overwrite))
    return out


def report(out: dict) -> None:
    ingest.report(out["ingest"])
    score.report(out["score"])
    stats.report(out["stats"])


def cli(argv=None) -> int:
    return common.run_cli("pipeline", parser(), main, report, argv, prepare=prepare)


if __name__ == "__main__":
    sys.exit(cli())
