"""Train and score through a real MLflow tracking server (`mlflow server`
on loopback, SQLite backend, artifacts proxied by the server), as a team
that already runs one would: MLFLOW_TRACKING_URI points the jobs at it. The
run's metrics, parameters and confusion matrix and the registered version
are read back through the server with MLflow's own client, and the model
registered there scores on Spark and on the mrjob twin with equal answers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.hdfs import free_ports
from jobs.mapreduce.mr_score_records import MRScoreRecords
from jobs.spark import common, ingest, score, train
from scripts.datasets import question_topics

from .conftest import private_config
from .mapreduce.conftest import json_lines, run_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """`mlflow server` on a free loopback port; its URL."""
    base = tmp_path_factory.mktemp("mlflow-server")
    (port,) = free_ports(1)
    argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
            "--artifacts-destination", str(base / "artifacts"), "--workers", "1"]  # fmt: skip
    log = open(base / "server.log", "wb")
    proc = subprocess.Popen(argv, cwd=base, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited {proc.returncode}: {(base / 'server.log').read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{url}/health", timeout=2).text.strip() == "OK":
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer: {(base / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    # The embedded store's directory is set somewhere empty: were the jobs to
    # ignore the server and use it, the server would hold nothing.
    changes = (("epochs = 150", "epochs = 60"), ("min_class_rows = 5", "min_class_rows = 3"))
    return private_config(tmp_path_factory.mktemp("mlflow-server-config"), "unused-local-store", changes)


def spark_job(spark, module, config: Path, *argv: str) -> dict:
    return common.run_main(module.main, spark, module.parser().parse_args(["--config", str(config), *argv]))


def test_train_and_score_through_a_tracking_server(server, config, spark, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    raw = tmp_path / "topics.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in question_topics(16)))
    io = ["--input-format", "jsonl"]
    spark_job(spark, ingest, config, "--input", str(raw), "--format", "jsonl", "--source", "topics",
              "--label-field", "topic", "--output", str(tmp_path / "records"), "--rejects", str(tmp_path / "rejects"),
              "--output-format", "jsonl")  # fmt: skip
    summary = spark_job(spark, train, config, "--input", str(tmp_path / "records"), *io, "--set", "train.name=topics")
    assert summary["model_uri"] == "models:/topics/1"

    # What the server holds, read through it by MLflow's own client.
    client = MlflowClient(tracking_uri=server, registry_uri=server)
    version = client.get_model_version("topics", "1")
    assert version.run_id == summary["mlflow_run_id"]
    run = client.get_run(version.run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert run.data.metrics["majority_baseline"] == pytest.approx(summary["majority_baseline"])
    assert run.data.params["head_weights_sha256"] == summary["weights_sha256"]
    matrix = json.loads(
        Path(client.download_artifacts(run.info.run_id, "confusion_matrix.json", str(tmp_path))).read_text()
    )
    assert (matrix["labels"], matrix["matrix"]) == (summary["labels"], summary["confusion_matrix"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # stored by the server, not on this side
    assert not (Path(str(config)).parent / "unused-local-store" / "mlflow.db").exists()

    # Score with the version registered on the server, on both engines.
    spark_job(spark, score, config, "--input", str(tmp_path / "records"), *io, "--output", str(tmp_path / "scored"),
              "--output-format", "jsonl", "--model", "models:/topics/1")  # fmt: skip
    scored = {
        row["id"]: row
        for f in sorted((tmp_path / "scored").glob("part-*"))
        for row in map(json.loads, f.read_text().splitlines())
    }
    records = tmp_path / "records.jsonl"
    records.write_bytes(b"".join(f.read_bytes() for f in sorted((tmp_path / "records").glob("part-*"))))
    out, _ = run_job(
        MRScoreRecords,
        ["--no-conf", "--config", str(config), "-r", "inline", "--model", "models:/topics/1", str(records)],
    )
    twin = {row["id"]: row for row in json_lines(out)}
    assert scored and set(twin) == set(scored)
    for rid, row in scored.items():
        assert twin[rid]["predicted"] == row["predicted"]
        assert twin[rid]["probability"] == pytest.approx(row["probability"], abs=1e-5)
        assert row["model_uri"] == "models:/topics/1" and row["model_run_id"] == summary["mlflow_run_id"]
        assert row["predicted"] in summary["labels"]
