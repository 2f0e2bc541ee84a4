"""Any label set, end to end: a 3-class file (real movie-review snippets
labelled negative / neutral / positive) and a 5-class file (real TREC
questions labelled with five topics) through ingest -> train -> score ->
stats on Spark, and the same records scored and counted by the mrjob twins
on -r inline (both files) and -r local (the 5-class file): equal records,
labels, probabilities within 1e-5 and equal stats. Plus the train job's
refusals (one class, a class below train.min_class_rows)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from jobs.mapreduce.mr_compute_stats import MRComputeStats
from jobs.mapreduce.mr_ingest_records import MRIngestRecords
from jobs.mapreduce.mr_score_records import MRScoreRecords
from jobs.spark import common, ingest, score, stats, train
from scripts.datasets import QUESTION_TOPICS, question_topics, three_way_sentiment
from udfs.head import LabelSetError
from udfs.ingest_rows import split_rows

from .conftest import private_config
from .mapreduce.conftest import json_lines, run_job

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

CASES = {
    # name: (rows, label field, model name)
    "three": (lambda: three_way_sentiment(24), "label", "sentiment3"),
    "five": (lambda: question_topics(16), "topic", "topics"),
}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    changes = (("epochs = 150", "epochs = 60"), ("min_class_rows = 5", "min_class_rows = 3"))
    return private_config(tmp_path_factory.mktemp("labelsets"), changes=changes)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def spark_job(spark, module, config: Path, *argv: str) -> dict:
    return common.run_main(module.main, spark, module.parser().parse_args(["--config", str(config), *argv]))


def read_jsonl_dir(path: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(path.glob("part-*")) for line in f.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def chains(spark, config, tmp_path_factory) -> dict:
    """Each case through the Spark chain: raw file, outputs, train summary."""
    out = {}
    for name, (make_rows, field, model) in CASES.items():
        base = tmp_path_factory.mktemp(name)
        raw = write_jsonl(base / "raw.jsonl", make_rows())
        io = ["--input-format", "jsonl"]
        spark_job(spark, ingest, config, "--input", str(raw), "--format", "jsonl", "--source", name,
                  "--label-field", field, "--output", str(base / "records"), "--rejects", str(base / "rejects"),
                  "--output-format", "jsonl")  # fmt: skip
        summary = spark_job(spark, train, config, "--input", str(base / "records"), *io, "--set", f"train.name={model}")
        spark_job(spark, score, config, "--input", str(base / "records"), *io, "--output", str(base / "scored"),
                  "--output-format", "jsonl", "--model", f"{model}@1")  # fmt: skip
        spark_job(spark, stats, config, "--input", str(base / "scored"), *io, "--output", str(base / "stats"))
        out[name] = {
            "raw": raw,
            "source": name,
            "field": field,
            "model": f"{model}@1",
            "train": summary,
            "records": read_jsonl_dir(base / "records"),
            "scored": read_jsonl_dir(base / "scored"),
            "stats": {t: read_jsonl_dir(base / "stats" / t) for t in ("counts", "term_freq", "top_terms")},
        }
    return out


def test_train_fits_a_head_for_the_labels_the_rows_hold(chains):
    three, five = chains["three"]["train"], chains["five"]["train"]
    assert three["labels"] == ["negative", "neutral", "positive"]
    assert five["labels"] == sorted(QUESTION_TOPICS)
    for summary in (three, five):
        k = len(summary["labels"])
        assert set(summary["per_class"]) == set(summary["labels"])
        assert len(summary["confusion_matrix"]) == k and all(len(row) == k for row in summary["confusion_matrix"])
        assert sum(map(sum, summary["confusion_matrix"])) == summary["test_rows"]
        assert sum(m["support"] for m in summary["per_class"].values()) == summary["test_rows"]
        assert 0 < summary["majority_baseline"] < 1


def test_score_writes_every_class_probability(chains):
    for case in chains.values():
        labels = case["train"]["labels"]
        assert len(case["scored"]) == len(case["records"])
        for row in case["scored"]:
            probs = row["probabilities"]
            assert sorted(probs) == labels
            assert abs(sum(probs.values()) - 1) < 1e-6
            assert row["predicted"] == max(probs, key=probs.get)
            assert row["probability"] == pytest.approx(probs[row["predicted"]], abs=1e-9)
    # the stats count under the predicted label names, whatever they are
    five = chains["five"]
    assert {r["label"] for r in five["stats"]["counts"]} <= set(QUESTION_TOPICS)


def mr_chain(case: dict, config: Path, runner: str, tmp_path: Path) -> dict:
    # One map slot, one bucket: -r local starts a Python process (torch and
    # the encoder loaded) per task, which dominates on a 2-core machine.
    base = ["--no-conf", "--config", str(config), "-r", runner, "--set", "score.partitions_per_core=1"]
    out, _ = run_job(
        MRIngestRecords, [*base, "--source", case["source"], "--label-field",
                          case["field"], str(case["raw"])],
    )  # fmt: skip
    records, rejects = split_rows(json_lines(out))
    (tmp_path / "records.jsonl").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    out, _ = run_job(
        MRScoreRecords, [*base, "--map-slots", "1", "--model", case["model"], str(tmp_path / "records.jsonl")]
    )
    scored = json_lines(out)
    (tmp_path / "scored.jsonl").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in scored))
    out, _ = run_job(MRComputeStats, [*base, str(tmp_path / "scored.jsonl")])
    tables: dict[str, list] = {}
    for line in b"".join(out).splitlines():
        table, row = line.split(b"\t", 1)
        tables.setdefault(json.loads(table), []).append(json.loads(row))
    return {"records": records, "rejects": rejects, "scored": scored, "stats": tables}


@pytest.mark.parametrize("name, runner", [("three", "inline"), ("five", "inline"), ("five", "local")])
def test_mrjob_twins_give_the_spark_answers(name, runner, chains, config, tmp_path):
    spark = chains[name]
    mr = mr_chain(spark, config, runner, tmp_path)
    key = lambda r: r["id"]  # noqa: E731
    fields = ("id", "source", "text", "label", "rating")
    assert mr["rejects"] == []
    assert sorted(({f: r.get(f) for f in fields} for r in mr["records"]), key=key) == sorted(
        ({f: r.get(f) for f in fields} for r in spark["records"]), key=key
    )
    s_scored = {r["id"]: r for r in spark["scored"]}
    assert {r["id"] for r in mr["scored"]} == set(s_scored)
    for m in mr["scored"]:
        s = s_scored[m["id"]]
        assert (m["predicted"], m["head"]) == (s["predicted"], s["head"]), m["id"]
        assert abs(m["probability"] - s["probability"]) <= 1e-5
        assert sorted(m["probabilities"]) == sorted(s["probabilities"])
        assert all(abs(m["probabilities"][k] - v) <= 1e-5 for k, v in s["probabilities"].items())
    assert mr["stats"] == spark["stats"]


def test_the_five_class_head_scores_alike_on_hadoop(chains, config, hdfs, webhdfs):
    # -r hadoop once (real Hadoop Streaming, the records and the scores on
    # the session's HDFS): the twin's labels and every class's probability
    # equal the Spark job's.
    spark = chains["five"]
    base = f"/user/{hdfs.user}/labelsets-{uuid.uuid4().hex[:8]}"
    webhdfs.write(f"{base}/records.jsonl", data="".join(json.dumps(r) + "\n" for r in spark["records"]))
    out = f"{hdfs.hdfs_url}{base}/scored"
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.mapreduce.launch", "score", "-r", "hadoop", "--config", str(config),
         "--set", "score.partitions_per_core=1", "--model", spark["model"], f"{hdfs.hdfs_url}{base}/records.jsonl",
         "--output-dir", out],
        cwd=ROOT, env=hdfs.env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    scored = []
    for part in sorted(p for p in webhdfs.list(f"{base}/scored") if p.startswith("part-")):
        with webhdfs.read(f"{base}/scored/{part}") as reader:
            scored += [json.loads(line) for line in reader.read().splitlines() if line.strip()]
    s_scored = {r["id"]: r for r in spark["scored"]}
    assert {r["id"] for r in scored} == set(s_scored)
    for m in scored:
        s = s_scored[m["id"]]
        assert (m["predicted"], m["head"]) == (s["predicted"], s["head"]), m["id"]
        assert all(abs(m["probabilities"][k] - v) <= 1e-5 for k, v in s["probabilities"].items())


def labelled_file(tmp_path: Path, counts: dict[str, int]) -> Path:
    rows = [{"text": f"{label} example number {i}", "label": label} for label, n in counts.items() for i in range(n)]
    return write_jsonl(tmp_path / "raw.jsonl", rows)


@pytest.mark.parametrize(
    "counts, message",
    [
        ({"only": 12}, r"1 class\(es\) \{'only': 12\}: a head needs 2 or more"),
        ({"big": 12, "small": 2}, r"fewer than train.min_class_rows=3 labelled rows: \{'small': 2\}"),
    ],
)
def test_train_refuses_a_label_set_it_cannot_fit(counts, message, spark, config, tmp_path):
    raw = labelled_file(tmp_path, counts)
    spark_job(spark, ingest, config, "--input", str(raw), "--format", "jsonl", "--label-field", "label",
              "--output", str(tmp_path / "rec"), "--rejects", str(tmp_path / "rej"))  # fmt: skip
    with pytest.raises(LabelSetError, match=message) as err:
        spark_job(spark, train, config, "--input", str(tmp_path / "rec"))
    assert str(tmp_path / "rec") in str(err.value)  # names the input


def test_the_training_run_is_in_mlflow_and_its_model_loads_as_pyfunc(chains, config):
    import mlflow
    import pandas as pd

    from udfs import models
    from udfs.config import load_config

    store = models.open_store(load_config(config), ROOT)
    summary = chains["five"]["train"]
    run = store.client.get_run(summary["mlflow_run_id"])
    metrics = run.data.metrics
    assert metrics["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert metrics["majority_baseline"] == pytest.approx(summary["majority_baseline"])
    for i, label in enumerate(summary["labels"]):
        assert metrics[f"class{i}.{label}.f1"] == pytest.approx(summary["per_class"][label]["f1"])
    assert run.data.params["head_weights_sha256"] == summary["weights_sha256"]
    path = store.client.download_artifacts(run.info.run_id, "confusion_matrix.json", str(chains["five"]["raw"].parent))
    confusion = json.loads(Path(path).read_text())
    assert (confusion["labels"], confusion["matrix"]) == (summary["labels"], summary["confusion_matrix"])
    # the registered version is an MLflow pyfunc anyone can load and call
    model = mlflow.pyfunc.load_model(summary["model_uri"])
    out = model.predict(pd.DataFrame({"text": ["Where is the Eiffel Tower ?", "How many feet are in a mile ?"]}))
    assert set(out["predicted"]) <= set(summary["labels"]) and list(out.columns)[:2] == ["predicted", "probability"]
