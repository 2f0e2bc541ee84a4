"""The classifier and embedder model kinds (issue 19 §3), end to end:
registered in MLflow without training (jobs/register.py: the bundled
all-MiniLM-L6-v2 encoder as an embedder, a tiny randomly initialised
BertForSequenceClassification with three labels as a classifier, since no
installed package ships one), then scored on Spark and on the mrjob twin
from the same real movie-review snippets: equal labels, probabilities and
embeddings within 1e-5. Plus the bad input: a model dir without
config.json, refused in one line (exit 2) naming it, before Spark starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from jobs import register
from jobs.mapreduce.mr_score_records import MRScoreRecords
from jobs.spark import common, ingest, score
from scripts.datasets import three_way_sentiment
from udfs import model as M
from udfs import models
from udfs.config import load_config

from .conftest import private_config
from .mapreduce.conftest import json_lines, run_job
from .tiny_models import tiny_classifier

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["calm", "excited", "sad"]  # id order: id2label 0, 1, 2


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return private_config(tmp_path_factory.mktemp("kinds"))


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("clf") / "tiny-bert-clf", LABELS)


@pytest.fixture(scope="module")
def uris(config, classifier_dir) -> dict:
    """Each kind registered through the register command's main()."""
    minilm = str(M.default_model_dir())
    commands = {
        "embedder": ["--kind", "embedder", "--model-dir", minilm, "--name", "minilm"],
        "raw": ["--kind", "embedder", "--model-dir", minilm, "--name", "minilm-raw", "--no-normalize"],
        "classifier": ["--kind", "classifier", "--model-dir", str(classifier_dir), "--name", "tiny-clf"],
    }
    for argv in commands.values():
        assert register.main(["--config", str(config), *argv]) == 0
    return {key: f"models:/{argv[argv.index('--name') + 1]}/1" for key, argv in commands.items()}


@pytest.fixture(scope="module")
def records(spark, config, tmp_path_factory) -> Path:
    """Real movie-review snippets, ingested on Spark (JSON Lines)."""
    base = tmp_path_factory.mktemp("records")
    raw = base / "raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in three_way_sentiment(6)))
    spark_job(spark, ingest, config, "--input", str(raw), "--format", "jsonl", "--label-field", "label",
              "--output", str(base / "records"), "--rejects", str(base / "rejects"), "--output-format", "jsonl")  # fmt: skip
    return base / "records"


def spark_job(spark, module, config: Path, *argv: str) -> dict:
    return common.run_main(module.main, spark, module.parser().parse_args(["--config", str(config), *argv]))


def read_jsonl_dir(path: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(path.glob("part-*")) for line in f.read_text().splitlines() if line]


def score_both(spark, config: Path, records: Path, uri: str, runner: str, tmp_path: Path) -> tuple[dict, dict]:
    """The same records scored with uri on Spark and on the mrjob twin: rows by id."""
    spark_job(spark, score, config, "--input", str(records), "--input-format", "jsonl", "--output",
              str(tmp_path / "scored"), "--output-format", "jsonl", "--model", uri)  # fmt: skip
    lines = tmp_path / "records.jsonl"
    lines.write_text("".join(f.read_text() for f in sorted(records.glob("part-*"))))
    out, _ = run_job(MRScoreRecords, ["--no-conf", "--config", str(config), "-r", runner, "--map-slots", "1",
                                      "--set", "score.partitions_per_core=1", "--model", uri, str(lines)])  # fmt: skip
    by_id = lambda rows: {r["id"]: r for r in rows}  # noqa: E731
    return by_id(read_jsonl_dir(tmp_path / "scored")), by_id(json_lines(out))


def test_register_records_the_kind_on_the_mlflow_model(uris, config, classifier_dir):
    store = models.open_store(load_config(config), ROOT)
    for key, kind in (("embedder", "embedder"), ("classifier", "classifier")):
        mv = store.client.get_model_version(uris[key].split("/")[1], "1")
        run = store.client.get_run(mv.run_id)
        assert run.data.params["kind"] == run.data.tags["aibatch.kind"] == kind
        local = Path(store.client.download_artifacts(mv.run_id, "model/MLmodel", str(classifier_dir.parent)))
        assert f"{models.KIND_METADATA_KEY}: {kind}" in local.read_text()
    clf = store.client.get_run(store.client.get_model_version("tiny-clf", "1").run_id)
    assert clf.data.params["labels"] == ",".join(LABELS)  # id2label's order
    assert clf.data.params["weights_version"] == M.weights_version(str(classifier_dir))


def test_pyfunc_of_an_embedder_normalises_as_registered(uris):
    import mlflow

    texts = ["A quiet, moving film.", "Dull and far too long."]
    unit = np.array(mlflow.pyfunc.load_model(uris["embedder"]).predict(texts)["embedding"].tolist())
    raw = np.array(mlflow.pyfunc.load_model(uris["raw"]).predict(texts)["embedding"].tolist())
    assert np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1, atol=1e-2)
    assert np.allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)


@pytest.mark.slow
def test_embedder_scores_the_same_on_spark_and_the_twin(spark, config, records, uris, tmp_path):
    s_rows, m_rows = score_both(spark, config, records, uris["embedder"], "inline", tmp_path)
    assert set(m_rows) == set(s_rows) and len(s_rows) == 18
    dim = M.encoder_shape(None).dim
    for rid, s in s_rows.items():
        m = m_rows[rid]
        assert "predicted" not in s and "predicted" not in m  # an embedder writes the embedding alone
        assert len(s["embedding"]) == len(m["embedding"]) == dim
        assert abs(np.linalg.norm(s["embedding"]) - 1) < 1e-5
        assert np.max(np.abs(np.array(s["embedding"]) - np.array(m["embedding"]))) <= 1e-5
        assert (s["head"], s["model_uri"], s["encoder"]) == (m["head"], m["model_uri"], m["encoder"])
    row = next(iter(s_rows.values()))
    assert (row["head"], row["model_uri"]) == ("minilm@1", uris["embedder"])
    assert row["encoder"] == M.DEFAULT_ENCODER_NAME and row["encoder_version"] == M.weights_version(
        str(M.default_model_dir().resolve())
    )


@pytest.mark.slow
def test_classifier_scores_the_same_on_spark_and_the_twin(spark, config, records, uris, tmp_path):
    s_rows, m_rows = score_both(spark, config, records, uris["classifier"], "inline", tmp_path)
    assert set(m_rows) == set(s_rows) and len(s_rows) == 18
    for rid, s in s_rows.items():
        m = m_rows[rid]
        assert sorted(s["probabilities"]) == sorted(m["probabilities"]) == sorted(LABELS)
        assert abs(sum(s["probabilities"].values()) - 1) < 1e-6
        assert s["predicted"] == m["predicted"] == max(s["probabilities"], key=s["probabilities"].get)
        assert abs(s["probability"] - m["probability"]) <= 1e-5
        assert all(abs(m["probabilities"][k] - v) <= 1e-5 for k, v in s["probabilities"].items())
        assert (s["head"], s["head_version"]) == (m["head"], m["head_version"]) == ("tiny-clf@1", s["encoder_version"])


def test_a_model_dir_without_config_json_is_refused_naming_it(config, classifier_dir, tmp_path, capsys):
    broken = tmp_path / "no-config"
    shutil.copytree(classifier_dir, broken)
    (broken / "config.json").unlink()
    assert register.main(["--config", str(config), "--kind", "classifier", "--model-dir", str(broken),
                          "--name", "broken"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(broken) in err[0] and "config.json" in err[0]


def test_score_refuses_a_local_model_dir_without_config_json_before_spark(config, uris, tmp_path, capsys, monkeypatch):
    store = models.open_store(load_config(config), ROOT)
    copy = models.download_to(store, uris["classifier"], tmp_path / "copy")
    assert isinstance(copy, models.TransformerVersion)
    (copy.model_dir / "config.json").unlink()
    # a session started would fail as exit 1 ("could not start Spark"): exit 2 is the refusal before it
    monkeypatch.setattr(common, "SparkSession", SimpleNamespace(builder=None))
    rc = score.cli(["--config", str(config), "--input", str(tmp_path), "--output", str(tmp_path / "out"),
                    "--model", str(copy.model_dir)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and str(copy.model_dir) in err[0] and "config.json" in err[0]
