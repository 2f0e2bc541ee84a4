"""A batch run as the service receives it (RunRequest, a typed model) and as
the job takes it (JobCall): the job's own argparse parser is given a list of
`--name=value` items built from the request's fields, one per field, never a
command line split from a string; an option the job does not have is a 422
naming it. The checks a job makes before Spark starts that need no model or
Spark (settings with their overrides, inputs exist, outputs may be written)
run here too, so the client hears of them at once (409 for an output that
exists)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import errors

JOBS = ("ingest", "train", "score", "stats", "enrich", "pipeline")
Job = Literal["ingest", "train", "score", "stats", "enrich", "pipeline"]
Scalar = str | int | float | bool
MASTER = re.compile(r"^(local(\[(\*|[0-9]+)(,[0-9]+)?\])?|spark://[A-Za-z0-9.-]+:[0-9]+|yarn)$")
# Options the request's own fields set; `options` may not set them again.
RESERVED = {"config", "set", "overrides", "overwrite", "dry_run", "help", "master"}
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class RunRequest(BaseModel):
    """POST /api/v1/runs."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    job: Job
    inputs: dict[str, str] = Field(default_factory=dict, description="the job's input options, e.g. {'input': PATH}")
    outputs: dict[str, str] = Field(
        default_factory=dict, description="the job's output options, e.g. {'output': PATH, 'rejects': PATH}"
    )
    options: dict[str, Scalar] = Field(
        default_factory=dict,
        description="other options of the job by name, e.g. {'format': 'jsonl', 'source': 'mine'}; true: a flag",
    )
    overrides: dict[str, Scalar] = Field(
        default_factory=dict, alias="set", description="settings of the pipeline config, as --set KEY=VALUE"
    )
    overwrite: bool = False
    dry_run: bool = Field(
        default=False,
        description="run the job's checks (settings, model, inputs, outputs) and start no Spark; "
        "enrich: its --dry-run (calls, tokens and cost estimated, nothing called)",
    )
    master: str | None = Field(default=None, description="local[N], spark://HOST:PORT or yarn (default: local mode)")

    @field_validator("master")
    @classmethod
    def _master(cls, value: str | None) -> str | None:
        if value is not None and not MASTER.match(value):
            raise ValueError("must be local[N], spark://HOST:PORT or yarn")
        return value

    @field_validator("inputs", "outputs", "options")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not NAME.match(name) or name in RESERVED:
                raise ValueError(f"{name!r} is not an option name this field may set")
        return value

    @field_validator("inputs", "outputs")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not (path.startswith("hdfs://") or Path(path).is_absolute()):
                raise ValueError(f"{name}: {path!r}: give an absolute local path or an hdfs:// URL")
        return value


class ParserError(Exception):
    pass


def _raise(message: str) -> None:
    raise ParserError(message)


def job_module(job: str) -> Any:
    return importlib.import_module(f"jobs.spark.{job}")


def _item(name: str, value: Scalar) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else []
    return [f"{flag}={value}"]  # one item: a value starting with '-' stays a value


def _setting(key: str, value: Scalar) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return f"--set={key}={text}"


@dataclasses.dataclass(frozen=True)
class JobCall:
    """What the job is given: its arguments (after the config), and what they mean."""

    job: str
    config: str
    args: list[str]  # the job's own arguments, --config excluded
    namespace: argparse.Namespace
    outputs: dict[str, str]
    inputs: list[str]


def build(request: RunRequest, config: str) -> JobCall:
    """The job's arguments from the request, checked by the job's own parser;
    a 422 problem naming what the job does not take."""
    args: list[str] = []
    for name, value in [*request.inputs.items(), *request.outputs.items(), *request.options.items()]:
        args += _item(name, value)
    args += [_setting(k, v) for k, v in request.overrides.items()]
    if request.overwrite:
        args.append("--overwrite")
    if request.dry_run and request.job == "enrich":
        args.append("--dry-run")
    parser = job_module(request.job).parser()
    parser.error = _raise  # argparse's documented hook; it would exit
    parser.exit_on_error = False
    try:
        namespace = parser.parse_args([f"--config={config}", *args])
    except (ParserError, argparse.ArgumentError) as exc:
        raise errors.invalid(f"{request.job}: {exc}") from None
    output_dests = tuple(getattr(namespace, "output_dests", ()))
    for name in request.outputs:
        if name not in output_dests:
            known = ", ".join(output_dests) or "none"
            raise errors.invalid(f"outputs.{name}: not an output of {request.job} (its outputs: {known})")
    for name in request.inputs:
        if name in output_dests:
            raise errors.invalid(f"inputs.{name}: an output of {request.job}; give it under outputs")
    outputs = {d: getattr(namespace, d) for d in output_dests if getattr(namespace, d, None)}
    if request.dry_run and request.job == "enrich":
        outputs = {}  # enrich's dry run writes nothing
    return JobCall(request.job, config, args, namespace, outputs, list(request.inputs.values()))


def check(call: JobCall, overrides: list[str], overwrite: bool) -> None:
    """The job's checks that need no Spark and no model: the settings with
    their overrides (422), inputs exist (422), outputs may be written (409
    for one that exists, 422 for one that overlaps an input)."""
    from jobs import commit
    from udfs.config import ConfigError, load_config

    try:
        load_config(call.config, overrides)
    except ConfigError as exc:
        raise errors.invalid(str(exc)) from None
    try:
        for path in call.inputs:
            if not any(c in path for c in "*?[{") and not commit.filesystem(path).exists(path):
                raise errors.invalid(f"input {path} does not exist")
        commit.check_outputs(call.outputs, call.inputs, overwrite=True)  # overlaps
        if not overwrite:
            for name, path in call.outputs.items():
                if commit.filesystem(path).exists(path):
                    raise errors.conflict(
                        f"output {name} {path} exists: send overwrite: true to replace it (only once the run "
                        "has succeeded), or choose a new path"
                    )
    except commit.OutputError as exc:
        raise errors.invalid(str(exc)) from None
    except OSError as exc:  # an HDFS that cannot be reached
        raise errors.Problem(503, f"cannot check the paths: {exc}") from None


def command(call: JobCall, repo: Path, master: str | None, dry_run: bool) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) of the child process: ./submit.sh, which
    runs the job's checks then spark-submit, as a person would; a dry run
    (but enrich's, which is the job's own) runs the checks only."""
    if dry_run and call.job != "enrich":
        argv = [sys.executable, "-m", f"jobs.spark.{call.job}", f"--config={call.config}", *call.args]
        return argv, {"AIBATCH_PREFLIGHT": "1", "PYTHONPATH": str(repo), "AIBATCH_HOME": str(repo)}
    argv = [str(repo / "submit.sh"), "--config", call.config]
    if master:
        argv += ["--master", master]
    return [*argv, call.job, *call.args], {}
