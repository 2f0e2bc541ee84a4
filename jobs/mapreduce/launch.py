"""Launches an mrjob twin the way `./submit.sh mr <job> ...` does: the job
script runs in a fresh Python that imports only the shipped zip of the
project code (udfs/, jobs/), with conf/mrjob.conf, the project's Python for
the tasks, the project's Hadoop home, and the pipeline config's defaults
(model registry and version, top-k).

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

ROOT = Path(__file__).resolve().parent.parent.parent
JOBS = {
    "ingest": "mr_ingest_records.py",
    "score": "mr_score_records.py",
    "stats": "mr_compute_stats.py",
    "enrich": "mr_enrich_rows.py",
}


def _has(args: list[str], *flags: str) -> bool:
    return any(a == f or a.startswith(f + "=") for a in args for f in flags)


def job_command(job: str, args: list[str], config_path: str | None = None) -> tuple[list[str], dict]:
    """The command line and environment that run one twin."""
    if job not in JOBS:
        raise SystemExit(f"submit.sh mr: unknown job {job!r}; the jobs are: {', '.join(JOBS)}")
    from udfs.config import load_config

    config = Path(config_path or os.environ.get("AIBATCH_CONFIG") or ROOT / "conf" / "pipeline.toml")
    cfg = load_config(config)
    python = os.environ.get("AIBATCH_PYTHON") or sys.executable
    zip_path = build_zip(Path(os.environ.get("AIBATCH_BUILD_DIR") or ROOT / "var" / "build") / "aibatch-pyfiles.zip")
    extra: list[str] = []
    if not _has(args, "--conf-path", "-c", "--no-conf"):
        extra += ["--conf-path", str(ROOT / "conf" / "mrjob.conf")]
    if not _has(args, "--python-bin"):
        extra += ["--python-bin", python]
    extra += ["--py-files", str(zip_path)]
    if job == "score":
        registry_dir = cfg.registry_path(ROOT)
        if not _has(args, "--registry-dir"):
            extra += ["--registry-dir", str(registry_dir)]
        if not _has(args, "--model"):
            extra += ["--model", cfg.score.model]
        if not _has(args, "--precision"):
            extra += ["--precision", cfg.encoder.precision]
        if cfg.encoder.model_dir and not _has(args, "--encoder-dir"):
            extra += ["--encoder-dir", str(cfg.encoder.model_dir)]
    if job == "stats" and not _has(args, "--top-k"):
        extra += ["--top-k", str(cfg.stats.top_k)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(zip_path)  # the job imports only the shipped code
    env["AIBATCH_ROOT"] = str(ROOT)
    env.setdefault("HADOOP_HOME", str(ROOT / "var" / "hadoop-3.5.0"))
    default_conf = ROOT / "var" / "hdfs" / "conf"
    if "HADOOP_CONF_DIR" not in env and default_conf.is_dir():
        env["HADOOP_CONF_DIR"] = str(default_conf)
    env.update(TQDM_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return [python, str(ROOT / "jobs" / "mapreduce" / JOBS[job]), *extra, *args], env


def _check_model(args: list[str], cmd: list[str]) -> str | None:
    """An unknown model fails here, before any MapReduce work, listing the
    known versions."""
    from udfs.registry import Registry, RegistryError

    def value(flag: str) -> str | None:
        found = None  # the last occurrence wins, as in argparse
        for i, a in enumerate(cmd):
            if a == flag and i + 1 < len(cmd):
                found = cmd[i + 1]
            elif a.startswith(flag + "="):
                found = a.split("=", 1)[1]
        return found

    try:
        Registry(value("--registry-dir")).resolve(value("--model"))
    except RegistryError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    job, args = argv[0], argv[1:]
    cmd, env = job_command(job, args)
    if job == "score" and not _has(args, "-h", "--help"):
        error = _check_model(args, cmd)
        if error:
            print(f"submit.sh mr score: {error}", file=sys.stderr)
            return 2
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
