"""The generic pyfunc model kind (issue 19 §3-§5): a team's own small torch
module logged the MLflow way (`mlflow.pyfunc.log_model` from code, with a
signature, registered by MLflow itself, not by ./submit.sh register) and
scored by `score --model models:/NAME/N` on Spark and on the mrjob twin:
equal outputs, equal to the model's own predict, typed from the
signature, with lineage. And the bad input: a predict that raises (the
error names the model and the batch; nothing committed), a signature score
cannot write (one line, exit 2, before Spark or Hadoop starts), a tracking
server that cannot be reached (one line, exit 2, within seconds)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from jobs.mapreduce import launch
from jobs.mapreduce.mr_score_records import MRScoreRecords
from jobs.spark import common, score
from scripts.datasets import three_way_sentiment
from udfs import models
from udfs.config import load_config
from udfs.pyfunc_kind import PyfuncError, signature_columns

from .conftest import private_config
from .mapreduce.conftest import json_lines, run_job
from .tiny_models import char_trigram_signature, log_char_trigram

ROOT = Path(__file__).resolve().parent.parent
JVM_NOTICE = "WARNING: Using incubator modules: jdk.incubator.vector"  # the JVM's own, not ours
LABELS = ["calm", "excited", "sad"]


def signature(outputs: list, inputs: list | None = None):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    ins = Schema(inputs if inputs is not None else [ColSpec("string", "text")])
    return ModelSignature(inputs=ins, outputs=Schema(outputs) if outputs else None)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return private_config(tmp_path_factory.mktemp("pyfunc"))


@pytest.fixture(scope="module")
def uris(config, tmp_path_factory) -> dict:
    """The torch model logged and registered with MLflow's own API: as it
    is (torch-text), broken (torch-broken: its predict raises), without a
    signature, and with an output of a type score cannot write."""
    from mlflow.types.schema import ColSpec

    store = models.open_store(load_config(config), ROOT)  # (also points mlflow's fluent API at it)
    base = tmp_path_factory.mktemp("weights")
    cases = {
        "torch-text": (char_trigram_signature(), False),
        "torch-broken": (char_trigram_signature(), True),
        "no-signature": (None, False),
        "bytes-out": (signature([ColSpec("binary", "digest")]), False),
    }
    return {name: log_char_trigram(store, name, LABELS, base / name, sig, fail) for name, (sig, fail) in cases.items()}


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    """18 real movie-review snippets (and one row without text) as records (JSON Lines)."""
    base = tmp_path_factory.mktemp("pyfunc-records")
    rows = [{"id": f"r{i:02d}", "source": "s", "text": r["text"], "label": r["label"]}
            for i, r in enumerate(three_way_sentiment(6))]  # fmt: skip
    rows.append({"id": "r99", "source": "s", "text": None, "label": None})
    (base / "records").mkdir()
    (base / "records" / "part-00000.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return base / "records"


def spark_score(spark, config: Path, records: Path, uri: str, out: Path) -> dict:
    args = score.parser().parse_args(["--config", str(config), "--input", str(records), "--input-format", "jsonl",
                                      "--output", str(out), "--model", uri])  # fmt: skip
    return common.run_main(score.main, spark, args)


def twin_args(config: Path, records: Path, uri: str) -> list[str]:
    return ["--no-conf", "--config", str(config), "-r", "inline", "--map-slots", "1",
            "--set", "score.partitions_per_core=1", "--model", uri, str(records / "part-00000.json")]  # fmt: skip


def test_signature_rule():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Map, Object, Property, Schema, TensorSpec

    assert signature_columns(char_trigram_signature(), "m") == (
        "text",
        (("predicted", "string"), ("probability", "double"), ("scores", "array<double>"), ("chars", "bigint")),
    )
    # one unnamed output (a column, or a scikit-learn-like 1-d tensor) is `predicted`; any one string input
    assert signature_columns(signature([ColSpec("string")], [ColSpec("string", "review")]), "m") == (
        "review",
        (("predicted", "string"),),
    )
    tensor = ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema([TensorSpec(np.dtype("int64"), (-1,))]))  # fmt: skip
    assert signature_columns(tensor, "m")[1] == (("predicted", "bigint"),)
    assert signature_columns(signature([ColSpec(Map("double"), "by_class")]), "m")[1] == (
        ("by_class", "map<string, double>"),
    )
    refused = {
        "no output signature": signature([]),
        "type binary": signature([ColSpec("binary", "digest")]),
        "output 'nested' has type {": signature([ColSpec(Object([Property("a", "string")]), "nested")]),
        "writes a column of that name already": signature([ColSpec("string", "model_uri")]),
        "plain identifier": signature([ColSpec("string", "two words")]),
        "have no name": signature([ColSpec("string"), ColSpec("double")]),
        "one string column": signature([ColSpec("string", "p")], [ColSpec("string", "a"), ColSpec("string", "b")]),
        "shape (-1, 3)": ModelSignature(
            inputs=Schema([ColSpec("string", "text")]), outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 3))])
        ),
    }
    for why, sig in refused.items():
        with pytest.raises(models.ModelError, match=f"pyfunc model m.*{re.escape(why)}"):
            signature_columns(sig, "m")
    with pytest.raises(models.ModelError, match="no output signature"):
        signature_columns(None, "m")


def test_predict_frame_types_outputs_and_checks_what_predict_returns(monkeypatch):
    import pandas as pd

    from udfs import pyfunc_kind as K

    outputs = (("predicted", "string"), ("score", "double"), ("n", "bigint"), ("top", "array<float>"))
    settings = K.PyfuncSettings("unused", "m@1", "review", outputs)
    seen = []
    answer = {}

    class Fake:
        def predict(self, frame):
            seen.append((list(frame.columns), frame["review"].tolist()))
            return answer["out"](len(frame))

    monkeypatch.setattr(K, "load_model", lambda model_dir: Fake())
    answer["out"] = lambda n: pd.DataFrame(
        {
            "n": np.arange(3, 3 + n),
            "predicted": ["a"] * n,
            "score": [np.float32(0.5), np.nan][:n],
            "top": [np.array([0.25, 0.75], dtype=np.float32)] * n,
            "extra": [1] * n,
        }  # fmt: skip
    )
    out = K.predict_frame(["x", "y", "z"], ["good", None, "fine"], settings)
    assert seen == [(["review"], ["good", "fine"])]  # rows without text are not given to the model
    assert out.to_dict("records") == [
        {"predicted": "a", "score": 0.5, "n": 3, "top": [0.25, 0.75]},
        {"predicted": None, "score": None, "n": None, "top": None},
        {"predicted": "a", "score": None, "n": 4, "top": [0.25, 0.75]},  # NaN written as null
    ]
    assert type(out["n"][0]) is int and type(out["top"][0][0]) is float  # plain values, for Arrow and JSON alike
    answer["out"] = lambda n: pd.DataFrame({"predicted": ["a"] * n})
    with pytest.raises(PyfuncError, match=r"m@1 on the batch of 3 rows from id x: .*missing \['score', 'n', 'top'\]"):
        K.predict_frame(["x", "y", "z"], ["good", None, "fine"], settings)
    answer["out"] = lambda n: pd.DataFrame({"predicted": ["a"], "score": [0.1], "n": [1], "top": [[0.1]]})
    with pytest.raises(PyfuncError, match=r"predict returned 1 values of 'predicted' for 2 rows"):
        K.predict_frame(["x", "y", "z"], ["good", None, "fine"], settings)
    assert K.predict_frame(["x"], [None], settings).to_dict("records") == [
        dict.fromkeys(["predicted", "score", "n", "top"])
    ]


@pytest.mark.slow
def test_pyfunc_scores_the_same_on_spark_and_the_twin(spark, config, records, uris, tmp_path):
    import mlflow
    import pandas as pd

    summary = spark_score(spark, config, records, uris["torch-text"], tmp_path / "scored")
    assert summary["kind"] == "pyfunc" and summary["rows"] == 19
    table = spark.read.parquet(str(tmp_path / "scored"))
    types = dict(table.dtypes)
    assert (types["predicted"], types["probability"], types["scores"], types["chars"]) == (
        "string", "double", "array<double>", "bigint")  # fmt: skip
    s_rows = {r["id"]: r.asDict() for r in table.collect()}
    lines, counters = run_job(MRScoreRecords, twin_args(config, records, uris["torch-text"]))
    m_rows = {r["id"]: r for r in json_lines(lines)}
    assert set(s_rows) == set(m_rows) and len(s_rows) == 19
    assert counters[-1]["score"]["rows"] == 19
    # the model's own predict, called by MLflow on the same texts
    texts = [s_rows[rid]["text"] for rid in sorted(s_rows) if s_rows[rid]["text"]]
    own = mlflow.pyfunc.load_model(uris["torch-text"]).predict(pd.DataFrame({"text": texts}))
    expected = dict(zip(texts, own.to_dict("records"), strict=True))
    for rid, s in s_rows.items():
        m = m_rows[rid]
        if s["text"] is None:  # not given to the model: nulls, as for the other kinds
            assert all(s[c] is None and m[c] is None for c in ("predicted", "probability", "scores", "chars"))
            continue
        want = expected[s["text"]]
        assert s["predicted"] == m["predicted"] == want["predicted"] and s["predicted"] in LABELS
        assert (
            abs(s["probability"] - want["probability"]) <= 1e-6 and abs(m["probability"] - want["probability"]) <= 1e-6
        )
        assert np.allclose(s["scores"], want["scores"], atol=1e-6) and np.allclose(
            m["scores"], want["scores"], atol=1e-6
        )
        assert s["chars"] == m["chars"] == len(s["text"])
        for column in ("head", "head_version", "encoder", "encoder_version", "model_uri", "model_run_id"):
            assert s[column] == m[column], column
    row = next(iter(s_rows.values()))
    assert (row["head"], row["model_uri"], row["encoder"]) == (
        "torch-text@1",
        uris["torch-text"],
        "mlflow.pyfunc.loaders.code_model",  # (a model logged from code; a pickled PythonModel: mlflow.pyfunc.model)
    )
    assert row["head_version"] == row["encoder_version"] and len(row["head_version"]) == 12
    mv = models.open_store(load_config(config), ROOT).client.get_model_version("torch-text", "1")
    assert row["model_run_id"] == mv.run_id


@pytest.mark.slow
def test_a_predict_that_raises_names_the_model_and_the_batch(config, records, uris, tmp_path):
    # Through ./submit.sh on local[1]: one attempt per task (the test
    # session's local[2,4] would retry it 4 times, each in a new Python worker).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["AIBATCH_JOB_LOG"] = str(tmp_path / "job.log")
    argv = [str(ROOT / "submit.sh"), "--master", "local[1]", "score", "--config", str(config), "--input", str(records),
            "--input-format", "jsonl", "--output", str(tmp_path / "scored"), "--model", uris["torch-broken"],
            "--set", "score.partitions_per_core=1"]  # fmt: skip
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    lines = [x for x in (r.stdout + r.stderr).strip().splitlines() if x != JVM_NOTICE]
    # One line from us. Spark's Python worker, torn down with its task, has
    # been seen (once in four runs) to print its own EOFError traceback after
    # it: that, and only that, may follow.
    assert r.returncode == 1 and lines, (r.stdout + r.stderr)[-3000:]
    assert len(lines) == 1 or lines[-1].startswith("EOFError"), (r.stdout + r.stderr)[-3000:]
    assert lines[0].startswith("error: score failed: udfs.pyfunc_kind.PyfuncError: pyfunc model torch-broken@1 "), lines
    assert re.search(r"failed on the batch of \d+ rows from id r\d\d: ", lines[0]), lines[0]
    assert "ValueError: the trigram table is corrupt" in lines[0] and "nothing written to" in lines[0]
    assert not (tmp_path / "scored").exists()  # nothing committed
    with pytest.raises(PyfuncError, match=r"pyfunc model torch-broken@1 failed on the batch of \d+ rows from id r"):
        run_job(MRScoreRecords, twin_args(config, records, uris["torch-broken"]))


@pytest.mark.parametrize("model", ["no-signature", "bytes-out"])
def test_a_signature_score_cannot_write_is_refused_before_spark_or_hadoop(
    model, config, records, uris, tmp_path, capsys, monkeypatch
):
    why = {
        "no-signature": "pyfunc model no-signature@1 has no output signature",
        "bytes-out": "pyfunc model bytes-out@1: output 'digest' has type binary, which score cannot write",
    }[model]
    monkeypatch.setattr(common, "SparkSession", SimpleNamespace(builder=None))  # a started session: exit 1
    monkeypatch.setenv("AIBATCH_JOB_LOG", str(tmp_path / "job.log"))
    rc = score.cli(["--config", str(config), "--input", str(records), "--input-format", "jsonl",
                    "--output", str(tmp_path / "out"), "--model", uris[model]])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and why in err[0], err
    # the twin's launcher, from the MLmodel file alone, before the job's process starts
    monkeypatch.setattr(launch, "_run_job", lambda *a: pytest.fail("the job must not start"))
    rc = launch.main(["score", "-r", "inline", "--config", str(config), "--model", uris[model],
                      str(records), "--output-dir", str(tmp_path / "mr-out")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and why in err[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "mr-out").exists()


def test_settings_a_pyfunc_cannot_use_are_refused_before_spark(config, records, uris, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(common, "SparkSession", SimpleNamespace(builder=None))
    monkeypatch.setenv("AIBATCH_JOB_LOG", str(tmp_path / "job.log"))
    rc = score.cli(["--config", str(config), "--input", str(records), "--input-format", "jsonl",
                    "--output", str(tmp_path / "out"), "--model", uris["torch-text"],
                    "--set", "score.with_embedding=true", "--set", "encoder.runtime=onnxruntime"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "torch-text@1 is a pyfunc model" in err[0]
    assert "score.with_embedding = true" in err[0] and "encoder.runtime = onnxruntime" in err[0]


class DroppingServer:
    """A loopback port that accepts each connection and closes it at once,
    counting them: how many times a client tried."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("server", ["refusing", "dropping"])
def test_an_unreachable_tracking_server_is_one_line_after_one_try(
    server, config, records, tmp_path, capsys, monkeypatch
):
    """Refused, or accepted and dropped: one line naming the store, and (where
    the attempts can be counted) one connection per job, not mlflow's minutes
    of retries."""
    from infra.hdfs import free_ports

    dropping = DroppingServer() if server == "dropping" else None
    port = dropping.port if dropping else free_ports(1)[0]  # nothing listens on a free port
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AIBATCH_JOB_LOG", str(tmp_path / "job.log"))
    monkeypatch.setattr(common, "SparkSession", SimpleNamespace(builder=None))
    monkeypatch.setattr(launch, "_run_job", lambda *a: pytest.fail("the job must not start"))
    spark_argv = ["--config", str(config), "--input", str(records), "--output", str(tmp_path / "out"),
                  "--model", "models:/torch-text/1"]  # fmt: skip
    mr_argv = ["score", "-r", "inline", "--config", str(config), "--model", "models:/torch-text/1", str(records),
               "--output-dir", str(tmp_path / "mr-out")]  # fmt: skip
    try:
        for run in (lambda: score.cli(spark_argv), lambda: launch.main(mr_argv)):
            before = dropping.connections if dropping else 0
            rc = run()
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 2 and len(err) == 1, err
            assert f"MLflow tracking store http://127.0.0.1:{port} cannot be reached" in err[0]
            if dropping:
                assert dropping.connections - before == 1, "mlflow's HTTP retries are not bounded"
    finally:
        if dropping:
            dropping.close()
