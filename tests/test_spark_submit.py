"""./submit.sh, the one door: help, argument errors, an unknown model, and
the whole chain (ingest, train, score, stats) on HDFS, run from a directory
outside the repository so the jobs can import only the code submit.sh ships."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

SUBMIT = Path(__file__).resolve().parent.parent / "submit.sh"


def submit(args, cwd, timeout=900):
    """Run submit.sh; spark-submit merges the Python driver's stderr into
    stdout, so messages are looked for in `out` (both together)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the checkout must not be importable
    r = subprocess.run(
        [str(SUBMIT), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    r.out = r.stdout + r.stderr
    return r


def test_help_lists_jobs_and_their_arguments(tmp_path):
    r = submit(["--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    for job in ("ingest", "train", "score", "stats", "hdfs_roundtrip"):
        assert f"=== {job} ===" in r.stdout
    for arg in ("--rejects", "--sample-percent", "--model", "--set", "--master", "--spark-conf"):
        assert arg in r.stdout


def test_unknown_job_and_option(tmp_path):
    r = submit(["nosuchjob"], tmp_path)
    assert r.returncode == 2 and "unknown job 'nosuchjob'" in r.stderr
    r = submit(["--bogus", "ingest"], tmp_path)
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr


def test_bad_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[encoder]\nprecision = "fp16"\n')
    r = submit(["--config", bad, "stats", "--input", "x", "--output", "y"], tmp_path)
    assert r.returncode == 2 and "encoder.precision" in r.out


def test_unknown_model_fails_before_spark_starts(tmp_path, pipeline_config):
    r = submit(["--config", pipeline_config, "score", "--input", "x", "--output", "y", "--model", "nosuch@3"], tmp_path)
    assert r.returncode == 2
    assert "unknown model 'models:/nosuch/3'" in r.out and "registered:" in r.out
    assert "SparkContext" not in r.out


@pytest.mark.slow
def test_chain_from_outside_the_repository(tmp_path, hdfs, hdfs_sample, pipeline_config):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    base = f"{hdfs.hdfs_url}/user/{hdfs.user}/tests/submit"
    conf = ["--config", pipeline_config]

    r = submit(
        [
            *conf,
            "ingest",
            "--input",
            hdfs_sample,
            "--output",
            f"{base}/records",
            "--rejects",
            f"{base}/rejects",
            "--output-format",
            "jsonl",
        ],
        cwd,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    n_in, good, rejected = map(int, re.search(r"input rows (\d+) = good (\d+) \+ rejected (\d+)", r.stdout).groups())
    assert n_in == good + rejected and good > 600

    r = submit([*conf, "train", "--input", f"{base}/records", "--input-format", "jsonl"], cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    registered = re.search(r"registered models:/(\S+)/(\d+) ", r.stdout)
    assert registered, r.stdout[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    model = report["model"]  # name@N, the version the line names as models:/name/N
    assert model == "{}@{}".format(*registered.groups())
    assert report["test_accuracy"] > report["majority_baseline"] - 0.1

    r = submit(
        [
            *conf,
            "score",
            "--input",
            f"{base}/records",
            "--input-format",
            "jsonl",
            "--output",
            f"{base}/scored",
            "--model",
            model,
        ],
        cwd,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(re.search(r"score: (\d+) rows", r.stdout).group(1)) == good

    r = submit([*conf, "stats", "--input", f"{base}/scored", "--output", f"{base}/stats"], cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    counts = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("  {")]
    assert sum(c["count"] for c in counts) == good
    assert counts == sorted(counts, key=lambda c: (c["source"], c["label"]))
    assert not list(cwd.iterdir()) or all(p.name in ("spark-warehouse", "derby.log") for p in cwd.iterdir())
