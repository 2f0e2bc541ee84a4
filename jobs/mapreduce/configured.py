"""The base of every mrjob twin: it receives the pipeline settings the way the
Spark jobs do. `--config FILE` names the settings file, which mrjob ships with
the job (each task reads its own copy); `--set KEY=VALUE` (repeatable)
overrides a key. Both are validated into the one typed object
(udfs.config.PipelineConfig) on the driver before any work, and again in each
task's *_init, so no setting is re-declared here with a default of its own.

With --report-facts FILE (the launcher sets it; the driver's only) the
driver notes its run for the run's report there (jobs.mapreduce.twin_report)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mrjob.job import MRJob

from udfs import input_files
from udfs.config import PipelineConfig, load_config


class ConfiguredJob(MRJob):
    def configure_args(self):
        super().configure_args()
        self.add_file_arg(
            "--config", help="pipeline settings file, shipped with the job (default: the built-in defaults)"
        )
        self.add_passthru_arg(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a setting, e.g. --set encoder.max_length=128 (repeatable)",
        )
        # Internal, the driver's only (not passed to tasks): where it notes its run for the report.
        self.arg_parser.add_argument("--report-facts", default="", help=argparse.SUPPRESS)

    def load_args(self, args):
        super().load_args(args)
        self._pipeline_config: PipelineConfig | None = None
        if not self.is_task():
            self.pipeline_config()  # a bad file or key fails here, before any task starts

    def reads_local_files(self) -> bool:
        """The inline and local runners read local input files themselves."""
        return (self.options.runner or "inline") in ("inline", "local")

    def visible_inputs(self) -> list[str]:
        """The input files Hadoop would read: a named dir's files without the
        hidden and `_` ones (Spark's .crc files, _SUCCESS)."""
        return [f for p in self.options.args for f in input_files.visible_files(p)]

    def _runner_class(self):
        # -r hadoop: mrjob's Hadoop runner without a JVM per file:// call (jobs.mapreduce.hadoop_runner)
        if (self.options.runner or "inline") == "hadoop":
            from jobs.mapreduce.hadoop_runner import HadoopRunner

            return HadoopRunner
        return super()._runner_class()

    def make_runner(self):
        # Every twin reads what Hadoop reads, on every runner: a Spark output
        # chained into a twin on -r local must not feed it Spark's .crc files.
        if self.reads_local_files():
            self.options.args = self.visible_inputs()
        self.runner = super().make_runner()
        return self.runner

    def run_job(self):
        if not self.options.report_facts:
            return super().run_job()
        from jobs.mapreduce import twin_report

        with twin_report.StepTimer() as timer:
            super().run_job()
        twin_report.write_facts(
            self.options.report_facts,
            self.options.runner or "inline",
            timer.steps(),
            twin_report.summed_counters(self.runner.counters()),
        )

    def pipeline_config(self) -> PipelineConfig:
        """The validated settings (loaded once per process)."""
        if self._pipeline_config is None:
            self._pipeline_config = load_config(self.options.config, self.options.overrides)
        return self._pipeline_config

    @staticmethod
    def home() -> Path:
        """What relative settings (registry_dir) resolve against, as in the
        Spark jobs: $AIBATCH_HOME (the launcher sets it), else the working dir."""
        return Path(os.environ.get("AIBATCH_HOME") or os.getcwd())
