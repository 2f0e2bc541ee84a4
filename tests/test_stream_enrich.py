"""The stream job (issue 23) with a model that is not encoder + head and with
--enrich, run in this process (the session fixture has Spark's Kafka
connector on its class path) against a real Kafka broker and the real
gateway, both started by fixtures; outputs in a local dir (tests/test_stream.py
covers HDFS):

- a pretrained classifier (tiny, registered as the register command does)
  scores each micro-batch as score.main scores the same records;
- --enrich: every selected scored row enriched or dead-lettered, counts adding
  up per micro-batch and in total, the calls the gateway received those the
  summary counts, the rows what enrich.main gives on the same scored rows;
- a replayed micro-batch (its commit removed from the checkpoint, as a kill
  between the write and Spark's commit leaves it) replaces its outputs and
  pays nothing: its calls are answered from the cache;
- enrich.mode = "batch" (--set): the rows answered through the provider's
  Batch API, no online call, the same answers as online mode.

The module is skipped, naming the version, where setup found no connector."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pyspark
import pytest

from jobs import register
from jobs.spark import common, enrich, score, stream
from scripts.stream_messages import BAD, produce, review_messages
from scripts.toml_text import toml_text
from udfs.config import load_config
from udfs.enrich.result import RESULT_FIELDS, RUN_VARYING_FIELDS

from .conftest import kafka_connector_jars, private_config
from .enrich.support import comparable, enrich_settings, start_gateway
from .tiny_models import tiny_classifier

LABELS = ["negative", "positive"]
N_GOOD = 40
# 40 real records, one not JSON (a reject), one empty value (skipped)
MESSAGES = [*review_messages(N_GOOD), BAD[0][0], b""]
SELECT = {"column": "rating", "op": "lt", "values": [0.0]}  # about half, whatever the random classifier says
COMPARED = tuple(f for f in RESULT_FIELDS if f not in RUN_VARYING_FIELDS)
FAST = {"validating_seconds": 0.05, "processing_seconds": 0.3, "finalizing_seconds": 0.05}

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not kafka_connector_jars(),
        reason=f"no spark-sql-kafka-0-10 connector for Spark {pyspark.__version__} (docs/streams.md)",
    ),
]


@pytest.fixture(scope="module")
def gateway():
    with start_gateway({"good": {}, "batch": {"batches": FAST}}) as gw:
        yield gw


@pytest.fixture(scope="module")
def setup(kafka, gateway, tmp_path_factory) -> dict:
    """A private config (registry, [enrich] at the gateway's "good" key), the
    tiny classifier registered in it, the messages on a two-partition topic."""
    tmp = tmp_path_factory.mktemp("stream-enrich")
    config = private_config(tmp)
    settings = enrich_settings(gateway, "good", tmp / "store", select=SELECT)
    config.write_text(config.read_text() + "\n" + toml_text({"enrich": settings}))
    clf = tiny_classifier(tmp / "tiny-clf-dir", LABELS)
    argv = ["--config", str(config), "--kind", "classifier", "--model-dir", str(clf), "--name", "tiny-clf"]
    assert register.main(argv) == 0
    produce(kafka.bootstrap, "stream-enrich", MESSAGES)
    return {"config": str(config), "model": "models:/tiny-clf/1", "tmp": tmp}


def run_stream(spark, kafka, setup, output: Path, *extra: str) -> dict:
    argv = ["--config", setup["config"], "--bootstrap", kafka.bootstrap, "--topic", "stream-enrich"]
    argv += ["--source", "reviews", "--rating-field", "rating", "--model", setup["model"], "--output", str(output)]
    return common.run_main(stream.main, spark, stream.parser().parse_args([*argv, *extra]))


def admitted(gateway, key: str, ledger: str = "prompts") -> int:
    """What the gateway admitted on a key: online calls (prompts) or Batch API lines (batch_lines)."""
    reply = httpx.get(
        f"{gateway.base_url}/v1/admin/keys/{key}/{ledger}", headers={"x-api-key": gateway.keys["admin"]}, timeout=10
    )
    reply.raise_for_status()
    return reply.json()["admitted"]


def rows_by_id(spark, path: Path) -> dict[str, dict]:
    return {r["id"]: r.asDict() for r in spark.read.parquet(str(path)).collect()}


def per_batch(spark, path: Path) -> dict[int, int]:
    if not path.exists():
        return {}
    return {r["batch"]: r["count"] for r in spark.read.parquet(str(path)).groupBy("batch").count().collect()}


@pytest.fixture(scope="module")
def streamed(spark, kafka, gateway, setup) -> dict:
    """One drain with the classifier and --enrich in micro-batches of 25 messages."""
    out = setup["tmp"] / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(gateway.env_name("good"), gateway.keys["good"])
        before = admitted(gateway, "good")
        summary = run_stream(spark, kafka, setup, out, "--max-per-batch", "25", "--enrich")
    return {"summary": summary, "out": out, "calls": admitted(gateway, "good") - before}


def test_a_classifier_scores_as_the_score_job(spark, setup, streamed, tmp_path):
    out, summary = streamed["out"], streamed["summary"]
    assert summary["kind"] == "classifier" and summary["model"] == "tiny-clf@1"
    assert (summary["good"], summary["rejected"], summary["skipped"]) == (N_GOOD, 1, 1)
    assert summary["batches"] >= 2
    argv = ["--config", setup["config"], "--input", str(out / "records"), "--output", str(tmp_path / "scored")]
    common.run_main(score.main, spark, score.parser().parse_args([*argv, "--model", setup["model"]]))
    want, got = rows_by_id(spark, tmp_path / "scored"), rows_by_id(spark, out / "scored")
    cfg = load_config(setup["config"])
    head = score.resolve_model(
        cfg, score.parser().parse_args(["--input", "i", "--output", "o", "--model", setup["model"]])
    )
    # what the stream's prepare checks --enrich's template and filter against, before Spark starts
    assert (
        stream.scored_columns(cfg, head["head"], None) == spark.read.parquet(str(out / "scored")).drop("batch").columns
    )
    assert got.keys() == want.keys() and len(got) == N_GOOD
    for rid, w in want.items():
        g = got[rid]
        assert g["predicted"] == w["predicted"] and abs(g["probability"] - w["probability"]) < 1e-5, rid
        assert sorted(g["probabilities"]) == LABELS
        assert all(abs(g["probabilities"][k] - v) < 1e-5 for k, v in w["probabilities"].items()), rid
        assert (g["head"], g["head_version"]) == (w["head"], w["head_version"]) and g["head"] == "tiny-clf@1"
        assert g["run_id"] == summary["run_id"] != w["run_id"]


def test_enrich_counts_add_up_per_batch_and_in_total(spark, streamed, capsys):
    out, summary = streamed["out"], streamed["summary"]
    scored = spark.read.parquet(str(out / "scored"))
    selected = {r["id"] for r in scored.where("rating < 0").select("id").collect()}
    assert 0 < len(selected) < N_GOOD
    not_selected = {r["batch"]: r["count"] for r in scored.where("NOT (rating < 0)").groupBy("batch").count().collect()}
    n_scored, n_enriched, n_dead = (per_batch(spark, out / t) for t in ("scored", "enriched", "dead_letters"))
    for batch, n in n_scored.items():
        assert n == n_enriched.get(batch, 0) + n_dead.get(batch, 0) + not_selected.get(batch, 0), batch
    enriched = rows_by_id(spark, out / "enriched")
    dead = rows_by_id(spark, out / "dead_letters") if (out / "dead_letters").exists() else {}
    assert enriched.keys() | dead.keys() == selected and not enriched.keys() & dead.keys()
    assert dead == {} and {r["status"] for r in enriched.values()} == {"enriched"}
    e = summary["enrich"]
    assert (e["rows_in"], e["enriched"], e["dead_letter"]) == (N_GOOD, len(enriched), len(dead))
    assert e["not_selected"] == N_GOOD - len(selected) and e["mode"] == "online"
    assert e["calls"] == streamed["calls"] == len(selected) and e["cache_hits"] == 0
    assert e["input_tokens"] > 0 and e["output_tokens"] > 0 and e["cost_usd"] > 0
    assert summary["on_disk"] == {
        "records": N_GOOD,
        "rejects": 1,
        "scored": N_GOOD,
        "enriched": len(enriched),
        "dead_letters": len(dead),
    }
    stream.report(summary)
    printed = capsys.readouterr().out
    assert f"enrich: rows in {N_GOOD} = enriched {len(enriched)} + dead-lettered 0" in printed
    assert f"calls made {len(selected)}, cache hits 0" in printed


def test_enriched_rows_are_the_enrich_jobs(spark, gateway, setup, streamed, tmp_path, monkeypatch):
    """enrich.main on the stream's scored rows, with the same settings and cache."""
    monkeypatch.setenv(gateway.env_name("good"), gateway.keys["good"])
    before = admitted(gateway, "good")
    argv = ["--config", setup["config"], "--input", str(streamed["out"] / "scored"), "--output", str(tmp_path / "e")]
    job = common.run_main(enrich.main, spark, enrich.parser().parse_args(argv))
    assert admitted(gateway, "good") == before and job["calls"] == 0  # answered from the cache
    want = comparable(list(rows_by_id(spark, tmp_path / "e").values()), ("id", *COMPARED))
    got = comparable(list(rows_by_id(spark, streamed["out"] / "enriched").values()), ("id", *COMPARED))
    assert got == want and job["enriched"] == streamed["summary"]["enrich"]["enriched"]


def test_a_replayed_micro_batch_pays_nothing(spark, gateway, kafka, setup, streamed, monkeypatch):
    """The last micro-batch's commit removed from the checkpoint (a kill after
    the outputs were committed, before Spark recorded the batch): the rerun
    replays it with the same offsets, replaces its outputs, calls nothing."""
    out = streamed["out"]
    commits = out / "_checkpoint" / "commits"
    last = max(int(p.name) for p in commits.iterdir() if p.name.isdigit())
    (commits / str(last)).unlink()
    (commits / f".{last}.crc").unlink(missing_ok=True)
    before_rows = {t: rows_by_id(spark, out / t) for t in ("scored", "enriched")}
    monkeypatch.setenv(gateway.env_name("good"), gateway.keys["good"])
    calls = admitted(gateway, "good")
    again = run_stream(spark, kafka, setup, out, "--max-per-batch", "25", "--enrich")
    assert admitted(gateway, "good") == calls and again["enrich"]["calls"] == 0
    assert again["batches"] == 1 and again["enrich"]["cache_hits"] == again["enrich"]["enriched"] > 0
    for t, rows in before_rows.items():
        assert rows_by_id(spark, out / t).keys() == rows.keys(), t
    assert again["on_disk"] == streamed["summary"]["on_disk"]


def test_batch_mode_answers_through_the_batch_api(spark, gateway, kafka, setup, streamed, tmp_path, monkeypatch):
    monkeypatch.setenv(gateway.env_name("batch"), gateway.keys["batch"])
    sets = {
        "mode": "batch",
        "provider.api_key_env": gateway.env_name("batch"),
        "store.path": str(tmp_path / "store" / "store.sqlite"),  # a cache of its own: nothing answered yet
        "batch.poll_interval_s": "0.05",
        "batch.poll_max_s": "0.3",
    }
    overrides = [a for k, v in sets.items() for a in ("--set", f"enrich.{k}={v}")]
    out = tmp_path / "out"
    summary = run_stream(spark, kafka, setup, out, "--enrich", *overrides)
    e = summary["enrich"]
    n = len(rows_by_id(spark, streamed["out"] / "enriched"))
    assert e["mode"] == "batch" and e["enriched"] == n and e["calls"] == 0 and e["cache_hits"] == n
    assert admitted(gateway, "batch") == 0  # no online call
    assert admitted(gateway, "batch", "batch_lines") == n
    assert any(f"{n} lines submitted, {n} answered" in line for line in e["lines"]), e["lines"]
    want = comparable(list(rows_by_id(spark, streamed["out"] / "enriched").values()), COMPARED)
    assert comparable(list(rows_by_id(spark, out / "enriched").values()), COMPARED) == want
    shutil.rmtree(out)


@pytest.mark.parametrize(
    ("sets", "named"),
    [
        ((), "ENRICH_TEST_KEY_GOOD"),
        (("--set", "enrich.template=no_such_template@1"), "no_such_template"),
        (("--set", "enrich.text_column=body"), "['body'] that a row scored with tiny-clf@1 (classifier)"),
    ],
    ids=["missing-key", "bad-template", "column-the-scored-rows-lack"],
)
def test_bad_enrich_settings_fail_in_one_line_before_spark(setup, sets, named, tmp_path, monkeypatch, capsys):
    """The enrich job's checks and the columns the template and filter read, before Spark starts."""
    monkeypatch.setenv("AIBATCH_JOB_LOG", str(tmp_path / "job.log"))
    if named.startswith("ENRICH_TEST_KEY"):
        monkeypatch.delenv(named, raising=False)
    else:
        monkeypatch.setenv("ENRICH_TEST_KEY_GOOD", "sk-unused")
    argv = ["--config", setup["config"], "--bootstrap", "127.0.0.1:9", "--topic", "t", "--output", str(tmp_path / "o")]
    assert stream.cli([*argv, "--model", setup["model"], "--enrich", *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not (tmp_path / "o").exists()
