"""The base of every mrjob twin: it receives the pipeline settings the way the
Spark jobs do. `--config FILE` names the settings file, which mrjob ships with
the job (each task reads its own copy); `--set KEY=VALUE` (repeatable)
overrides a key. Both are validated into the one typed object
(udfs.config.PipelineConfig) on the driver before any work, and again in each
task's *_init, so no setting is re-declared here with a default of its own."""

from __future__ import annotations

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

    def make_runner(self):
        # Every twin reads what Hadoop reads, on every runner: a Spark output
        # chained into a twin on -r local must not feed it Spark's .crc files.
        if self.reads_local_files():
            self.options.args = self.visible_inputs()
        return super().make_runner()

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
