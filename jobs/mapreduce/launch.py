"""Launches an mrjob twin the way `./submit.sh mr <job> ...` does: the job
script runs in a fresh Python that imports only the shipped zip of the
project code (udfs/, jobs/), with conf/mrjob.conf, the project's Python for
the tasks, the project's Hadoop home, and the pipeline settings file
(--config, validated with the --set overrides before any work, shipped with
the job).

Run with:
    ./submit.sh mr ingest|score|stats -r inline|local|hadoop [job args] INPUT... [--output-dir DIR]
    ./submit.sh mr score --help
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from jobs.pyfiles import build_zip
from udfs.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent.parent
JOBS = {
    "ingest": "mr_ingest_records.py",
    "score": "mr_score_records.py",
    "stats": "mr_compute_stats.py",
}


def _has(args: list[str], *flags: str) -> bool:
    return any(a == f or a.startswith(f + "=") for a in args for f in flags)


def _values(args: list[str], flag: str) -> list[str]:
    """Every value given to flag in args (`--flag V` or `--flag=V`)."""
    found = []
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            found.append(args[i + 1])
        elif a.startswith(flag + "="):
            found.append(a.split("=", 1)[1])
    return found


def job_command(job: str, args: list[str], config_path: str | None = None) -> tuple[list[str], dict]:
    """The command line and environment that run one twin. The settings file
    (--config in args, else config_path, else $AIBATCH_CONFIG, else
    conf/pipeline.toml) is validated here with the --set overrides in args, so
    a bad key fails before any MapReduce work, and is shipped with the job."""
    if job not in JOBS:
        raise SystemExit(f"submit.sh mr: unknown job {job!r}; the jobs are: {', '.join(JOBS)}")
    from infra.settings import DEFAULT_HADOOP_HOME, load_settings
    from udfs.config import load_config

    given = _values(args, "--config")
    config = Path(
        given[-1] if given else config_path or os.environ.get("AIBATCH_CONFIG") or ROOT / "conf" / "pipeline.toml"
    )
    load_config(config, _values(args, "--set"))
    python = os.environ.get("AIBATCH_PYTHON") or sys.executable
    zip_path = build_zip(Path(os.environ.get("AIBATCH_BUILD_DIR") or ROOT / "var" / "build") / "aibatch-pyfiles.zip")
    extra: list[str] = []
    if not _has(args, "--conf-path", "-c", "--no-conf"):
        extra += ["--conf-path", str(ROOT / "conf" / "mrjob.conf")]
    if not _has(args, "--python-bin"):
        extra += ["--python-bin", python]
    extra += ["--py-files", str(zip_path)]
    if not given:
        extra += ["--config", str(config)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(zip_path)  # the job imports only the shipped code
    env["AIBATCH_HOME"] = str(ROOT)  # what relative settings (registry_dir) resolve against
    env.setdefault("HADOOP_HOME", str(DEFAULT_HADOOP_HOME))
    if "HADOOP_CONF_DIR" not in env:
        default_conf = load_settings().data_dir / "conf"
        if default_conf.is_dir():
            env["HADOOP_CONF_DIR"] = str(default_conf)
    env.update(TQDM_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return [python, str(ROOT / "jobs" / "mapreduce" / JOBS[job]), *extra, *args], env


def _check_model(args: list[str], cmd: list[str]) -> str | None:
    """An unknown model fails here, before any MapReduce work, listing the
    known versions."""
    from udfs.config import load_config
    from udfs.registry import Registry, RegistryError

    cfg = load_config(_values(cmd, "--config")[-1], _values(cmd, "--set"))
    models = _values(cmd, "--model")
    try:
        Registry(cfg.registry_path(ROOT)).resolve(models[-1] if models else cfg.score.model)
    except RegistryError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    job, args = argv[0], argv[1:]
    try:
        cmd, env = job_command(job, args)
    except ConfigError as exc:
        print(f"submit.sh mr {job}: {exc}", file=sys.stderr)
        return 2
    if job == "score" and not _has(args, "-h", "--help"):
        error = _check_model(args, cmd)
        if error:
            print(f"submit.sh mr score: {error}", file=sys.stderr)
            return 2
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
