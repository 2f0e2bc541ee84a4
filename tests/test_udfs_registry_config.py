"""Models in MLflow (versions, URIs, runs, bad references) and pipeline settings validation."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.model_store import TestStore
from udfs import models
from udfs.config import ConfigError, load_config, parse_config
from udfs.models import ModelError

REPO = Path(__file__).resolve().parent.parent


def arrays(v):
    return {"l0.weight": np.full((2, 3), v, dtype=np.float32), "l0.bias": np.zeros(2, dtype=np.float32)}


META = {"labels": ["a", "b"], "encoder": {"name": "e", "version": "v"}}


def test_train_registers_numbered_versions_found_by_every_uri_kind(tmp_path):
    reg = TestStore(tmp_path)
    one = reg.register("topics", arrays(1.0), {**META, "note": "a"})
    two = reg.register("topics", arrays(2.0), {**META, "note": "b"})
    assert (one.ref, two.ref, one.uri) == ("topics@1", "topics@2", "models:/topics/1")
    assert one.weights_sha256 != two.weights_sha256 and one.run_id != two.run_id
    reg.store.client.set_registered_model_alias("topics", "champion", "1")
    for ref, version in [
        ("models:/topics/1", 1),
        ("topics@1", 1),  # the old name@N form
        ("models:/topics/latest", 2),
        ("topics@latest", 2),
        ("models:/topics@champion", 1),
        (f"runs:/{two.run_id}/model", None),
    ]:
        head = reg.load(ref)
        assert (head.version, head.meta["note"]) == (version, "a" if version == 1 else "b"), ref
        assert head.labels == ["a", "b"]
        if version is not None:  # lineage names the version that scored, not the alias
            assert head.uri == f"models:/topics/{version}", ref
    np.testing.assert_array_equal(reg.load("topics@1").arrays["l0.weight"], arrays(1.0)["l0.weight"])
    # a local model dir (an MLflow model downloaded, or the head's own files)
    local = models.download_to(reg.store, "models:/topics/2", tmp_path / "copy")
    assert models.load(None, str(tmp_path / "copy" / "head")).weights_sha256 == local.weights_sha256


def test_the_run_holds_params_metrics_and_the_confusion_matrix(tmp_path):
    reg = TestStore(tmp_path)
    head = reg.store.log_trained(
        "topics", arrays(1.0), META, {"train.epochs": 3}, {"test_accuracy": 0.5}, {"matrix": [[1, 0], [1, 0]]}
    )
    run = reg.store.client.get_run(head.run_id)
    assert run.data.metrics["test_accuracy"] == 0.5
    assert run.data.params["train.epochs"] == "3" and run.data.params["head_weights_sha256"] == head.weights_sha256
    path = reg.store.client.download_artifacts(head.run_id, "confusion_matrix.json", str(tmp_path))
    assert json.loads(Path(path).read_text()) == {"matrix": [[1, 0], [1, 0]]}


def test_unknown_models_name_what_the_registry_holds(tmp_path):
    reg = TestStore(tmp_path)
    with pytest.raises(ModelError, match="no registered models"):
        reg.load("models:/topics/1")
    reg.register("topics", arrays(1.0), META)
    with pytest.raises(ModelError, match=r"unknown model 'models:/topics/7'.*registered: topics \(versions 1\)"):
        reg.load("topics@7")
    with pytest.raises(ModelError, match=r"unknown model 'models:/topics@gold'"):
        reg.load("models:/topics@gold")
    with pytest.raises(ModelError, match="not a model URI"):
        reg.load("topics")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a model directory"):
        models.load(None, str(tmp_path / "empty"))


def test_tampered_weights_fail_their_hash(tmp_path):
    reg = TestStore(tmp_path)
    reg.register("topics", arrays(1.0), META)
    models.download_to(reg.store, "topics@1", tmp_path / "copy")
    weights = tmp_path / "copy" / "head" / models.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="hash"):
        models.load(None, str(tmp_path / "copy" / "head"))


def test_an_unreachable_tracking_server_is_one_error(tmp_path):
    from infra.hdfs import free_ports

    (port,) = free_ports(1)
    store = models.Store(f"http://127.0.0.1:{port}")
    with pytest.raises(ModelError, match=rf"MLflow tracking store http://127.0.0.1:{port} cannot be reached"):
        store.check()


def test_project_config_loads_with_five_default_sources():
    cfg = load_config(REPO / "conf" / "pipeline.toml")
    assert [s.name for s in cfg.ingest.sources] == [
        "vader_tweets",
        "vader_movie_reviews",
        "vader_amazon_reviews",
        "vader_nyt_editorials",
        "rotten_tomatoes",
    ]
    assert cfg.ingest.spec(cfg.source("rotten_tomatoes")).label_map["plot"] is None


def test_config_errors_name_file_and_key():
    with pytest.raises(ConfigError) as err:
        parse_config({"encoder": {"precision": "fp16", "batch_size": 0}, "score": {"model": ""}, "bogus": 1}, "p.toml")
    text = str(err.value)
    for key in ("p.toml: encoder.precision", "p.toml: encoder.batch_size", "p.toml: score.model", "p.toml: bogus"):
        assert key in text
    with pytest.raises(ConfigError, match=r"ingest.sources\[0\].format"):
        parse_config({"ingest": {"sources": [{"name": "x", "file": "f", "format": "xml"}]}})
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("/nonexistent/pipeline.toml")


@pytest.mark.parametrize("job", ["train", "score"])
def test_jobs_stop_early_on_an_unreachable_store(job, tmp_path, monkeypatch, capsys):
    """One line, exit 2, before Spark starts (no session is created here)."""
    import importlib

    from infra.hdfs import free_ports

    (port,) = free_ports(1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AIBATCH_JOB_LOG", str(tmp_path / "job.log"))
    module = importlib.import_module(f"jobs.spark.{job}")
    argv = ["--config", str(REPO / "conf" / "pipeline.toml"), "--input", str(tmp_path)]
    if job == "score":
        argv += ["--output", str(tmp_path / "out"), "--model", "models:/topics/1"]
    assert module.cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"MLflow tracking store http://127.0.0.1:{port} cannot be reached" in err[0]


def test_opening_a_store_leaves_the_environment_alone(tmp_path, monkeypatch):
    # mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI: the first store
    # opened must not become every later store of the process (and of the
    # processes it starts, such as a job's tasks)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    models.Store(models.tracking_uri("", tmp_path / "a"), tmp_path / "a")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert models.tracking_uri("", tmp_path / "b") == f"sqlite:///{(tmp_path / 'b').resolve() / 'mlflow.db'}"
