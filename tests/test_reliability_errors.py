"""One line that says what to fix (issue 12): a missing input, an unreachable
HDFS, an unknown source, a missing encoder.model_dir, an existing output and
any twin settings error are found before Spark or Hadoop starts: one line
naming the path, address or key and what to do, exit status 2, the details in
the job's log file (whose path the line gives). A run that fails is one line
and exit status 1. And the HDFS settings refuse a non-loopback host unless
the user says they know what that exposes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra.hdfs import LocalHDFS, free_ports
from infra.settings import HdfsSettings, SettingsError, load_settings
from jobs.spark import common, ingest, score, stats, train

ROOT = Path(__file__).resolve().parent.parent
# Printed by the JVM itself when Spark 4 loads the Vector API module; not ours.
JVM_NOTICE = "WARNING: Using incubator modules: jdk.incubator.vector"


@pytest.fixture
def no_spark(monkeypatch, tmp_path):
    """Spark must not start; job logs go to tmp_path."""

    class NoSpark:
        @property
        def builder(self):
            raise AssertionError("Spark must not start for a usage error")

    monkeypatch.setattr(common, "SparkSession", NoSpark())
    monkeypatch.setenv("AIBATCH_JOB_LOG", str(tmp_path / "job.log"))
    return tmp_path / "job.log"


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line != JVM_NOTICE]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def details(line: str) -> Path:
    found = re.search(r"\((?:details|full trace|full log): (\S+)\)$", line)
    assert found, line
    return Path(found.group(1))


def test_missing_input_path(no_spark, capsys, tmp_path):
    missing = tmp_path / "nope"
    rc = stats.cli(["--input", str(missing), "--output", str(tmp_path / "out")])
    line = one_line(capsys.readouterr().err)
    assert rc == 2
    assert f"input {missing} does not exist" in line
    assert details(line) == no_spark and no_spark.is_file()


def test_unreachable_hdfs_address(no_spark, capsys, tmp_path):
    (port,) = free_ports(1)
    url = f"hdfs://127.0.0.1:{port}/user/x/records"
    rc = stats.cli(["--input", url, "--output", str(tmp_path / "out")])
    line = one_line(capsys.readouterr().err)
    assert rc == 2
    assert f"cannot reach HDFS for {url}" in line and "./scripts/hdfs.sh start" in line


def test_unknown_source_name(no_spark, capsys, tmp_path, pipeline_config):
    argv = ["--config", str(pipeline_config), "--input", str(tmp_path), "--sources", "vader_tweets,nosuch"]
    rc = ingest.cli([*argv, "--output", str(tmp_path / "r"), "--rejects", str(tmp_path / "j")])
    line = one_line(capsys.readouterr().err)
    assert rc == 2
    assert "unknown source 'nosuch'; known: vader_tweets" in line


@pytest.mark.parametrize("job", ["train", "score"])
def test_missing_encoder_model_dir(no_spark, capsys, tmp_path, pipeline_config, job):
    argv = ["--config", str(pipeline_config), "--input", str(tmp_path), "--set", f"encoder.model_dir={tmp_path}/m"]
    rc = train.cli(argv) if job == "train" else score.cli([*argv, "--output", str(tmp_path / "o")])
    line = one_line(capsys.readouterr().err)
    assert rc == 2
    assert f"encoder.model_dir: no model (config.json + model.safetensors) in {tmp_path}/m" in line


def test_existing_output_without_overwrite(no_spark, capsys, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    rc = stats.cli(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert rc == 2
    assert "exists: pass --overwrite" in one_line(capsys.readouterr().err)


def submit(args, cwd, log: Path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["AIBATCH_JOB_LOG"] = str(log)
    return subprocess.run([str(ROOT / "submit.sh"), *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_usage_error_through_submit_starts_no_jvm(tmp_path):
    r = submit(["stats", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")], tmp_path, tmp_path / "l")
    assert r.returncode == 2
    assert JVM_NOTICE not in r.stderr  # checked before spark-submit
    assert "does not exist" in one_line(r.stderr)


@pytest.mark.slow
def test_failed_spark_run_is_one_line_and_exit_1(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n')
    (tmp_path / "blocker").write_text("a file where the rejects' parent dir should be")
    log = tmp_path / "job.log"
    args = ["ingest", "--input", str(src), "--format", "jsonl", "--output", str(tmp_path / "r")]
    r = submit([*args, "--rejects", str(tmp_path / "blocker" / "rejects")], tmp_path, log)
    # spark-submit joins the Python driver's stderr to its stdout
    line = one_line(r.stdout + r.stderr)
    assert r.returncode == 1, r.stderr[-3000:]
    assert line.startswith("error: ingest failed: ") and f"nothing written to {tmp_path / 'r'}" in line
    assert f"Parent path is not a directory: file:{tmp_path / 'blocker'}" in line  # the cause, from the JVM
    assert details(line) == log
    text = log.read_text()
    assert "Traceback" in text and "SparkContext" in text  # the Python trace and Spark's own log
    assert not (tmp_path / "r").exists()


# ----- the twins (jobs/mapreduce/launch.py) -----


def launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.mapreduce.launch", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_twin_settings_error(tmp_path):
    r = launch("stats", "-r", "inline", "--set", "stats.top_kk=3", str(tmp_path))
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert "stats.top_kk" in line and "Traceback" not in r.stderr
    assert details(line).is_file()


def test_twin_missing_input_and_unreachable_hdfs(tmp_path):
    r = launch("stats", "-r", "inline", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o"))
    assert r.returncode == 2 and f"input {tmp_path / 'nope'} does not exist" in one_line(r.stderr)
    (port,) = free_ports(1)
    r = launch("stats", "-r", "inline", f"hdfs://127.0.0.1:{port}/x")
    assert r.returncode == 2 and f"cannot reach HDFS for hdfs://127.0.0.1:{port}/x" in one_line(r.stderr)


def test_twin_missing_encoder_model_dir(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "1", "text": "x"}\n')
    r = launch("score", "-r", "inline", "--set", f"encoder.model_dir={tmp_path}/m", str(src))
    assert r.returncode == 2
    assert f"encoder.model_dir: no model (config.json + model.safetensors) in {tmp_path}/m" in one_line(r.stderr)


# ----- security: HDFS on a non-loopback address -----


def test_non_loopback_hdfs_host_is_refused_unless_allowed():
    with pytest.raises(SettingsError, match=r"AIBATCH_HDFS_HOST: host '0.0.0.0' is not a loopback.*simple auth"):
        load_settings(env={"AIBATCH_HDFS_HOST": "0.0.0.0"})
    allowed = load_settings(env={"AIBATCH_HDFS_HOST": "0.0.0.0", "AIBATCH_HDFS_ALLOW_REMOTE_ACCESS": "true"})
    assert allowed.host == "0.0.0.0"
    assert load_settings(env={"AIBATCH_HDFS_HOST": "127.0.0.2"}).host == "127.0.0.2"
    assert load_settings(env={"AIBATCH_HDFS_HOST": "localhost"}).host == "localhost"


def test_local_hdfs_will_not_start_on_a_public_address(tmp_path):
    node = LocalHDFS(HdfsSettings(host="0.0.0.0", data_dir=tmp_path))
    with pytest.raises(SettingsError, match="allow_remote_access"):
        node.start()
    assert not (tmp_path / "conf").exists()  # nothing written, nothing started
