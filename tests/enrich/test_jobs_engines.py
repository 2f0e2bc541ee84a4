"""The enrich job on both engines against the real gateway: OpenAI and
Anthropic, plain and streaming, on Spark (local[2], in this process) and on
the mrjob twin (inline runner), outputs equal joined on id; -r local and
-r hadoop once each. Also: the selection, the totals line, a prompt
injection ending schema-valid, empty input, and bad input."""

from __future__ import annotations

import pytest

from jobs.mapreduce import mr_enrich_rows
from jobs.spark import common, enrich
from udfs.enrich.accounting import format_cost
from udfs.enrich.result import RESULT_FIELDS, RUN_VARYING_FIELDS

from .support import (
    CANARY,
    INJECTION,
    comparable,
    enrich_settings,
    read_jsonl_dir,
    read_parquet_dir,
    run_twin,
    scored_rows,
    start_gateway,
    submit_env,
    write_config,
    write_jsonl,
    write_parquet,
)

ROWS = scored_rows(30)
SELECTED = sorted(r["id"] for r in ROWS if r["predicted"] == "negative")
COMPARED = tuple(f for f in RESULT_FIELDS if f not in RUN_VARYING_FIELDS)
COMBOS = [("openai", False), ("openai", True), ("anthropic", False), ("anthropic", True)]


@pytest.fixture(scope="module")
def gateway():
    with start_gateway({"plain": {}}) as gw:
        yield gw


def spark_run(spark, gw, tmp, provider, stream, monkeypatch, extra=()):
    monkeypatch.setenv(gw.env_name("plain"), gw.keys["plain"])
    cfg = write_config(tmp / "spark.toml", enrich_settings(gw, "plain", tmp / "spark-store", provider, stream))
    src = write_parquet(ROWS, tmp / "scored")
    args = ["--config", str(cfg), "--input", src, "--output", str(tmp / "spark-out"), *extra]
    summary = common.run_main(enrich.main, spark, enrich.parser().parse_args(args))
    return summary, read_parquet_dir(tmp / "spark-out"), read_parquet_dir(tmp / "spark-out_dead_letters")


def twin_inline(gw, tmp, provider, stream, monkeypatch, capsys, extra=()):
    monkeypatch.setenv(gw.env_name("plain"), gw.keys["plain"])
    cfg = write_config(tmp / "twin.toml", enrich_settings(gw, "plain", tmp / "twin-store", provider, stream))
    src = write_jsonl(ROWS, tmp / "scored.jsonl")
    out = tmp / "twin-out"
    args = ["-r", "inline", "--no-conf", "--config", str(cfg), src, "--output-dir", str(out), *extra]
    code = mr_enrich_rows.main(args)
    assert code == 0
    printed = capsys.readouterr().out
    rows = read_jsonl_dir(out)  # the twin writes both statuses to its one output
    return printed, [r for r in rows if r["status"] == "enriched"], [r for r in rows if r["status"] != "enriched"]


def check_rows(rows, provider, stream):
    for r in rows:
        assert r["status"] == "enriched", r
        assert 1 <= r["severity"] <= 5 and 1 <= len(r["topic"]) <= 40 and 1 <= len(r["summary"]) <= 200
        assert r["provider"] == provider and r["template"] == "review_enrich@1"
        assert r["model"] in ("gpt-4o-mini-2024-07-18", "claude-3-5-haiku-20241022")
        assert r["input_tokens"] > 0 and r["output_tokens"] > 0 and r["attempts"] >= 1
        assert r["request_id"] and r["raw_answer"]
        assert (r["ttft_ms"] is not None) == stream
        assert r["cached"] is False or r["cached"] == 0


@pytest.mark.parametrize(("provider", "stream"), COMBOS, ids=[f"{p}-{'stream' if s else 'plain'}" for p, s in COMBOS])
def test_spark_and_twin_agree(spark, gateway, tmp_path, monkeypatch, capsys, provider, stream):
    summary, spark_rows, spark_dead = spark_run(spark, gateway, tmp_path, provider, stream, monkeypatch)
    printed, twin_rows, twin_dead = twin_inline(gateway, tmp_path, provider, stream, monkeypatch, capsys)

    assert spark_dead == [] and twin_dead == []
    assert sorted(r["id"] for r in spark_rows) == SELECTED == sorted(r["id"] for r in twin_rows)
    check_rows(spark_rows, provider, stream)
    check_rows(twin_rows, provider, stream)
    assert comparable(spark_rows, COMPARED) == comparable(twin_rows, COMPARED)
    # the input columns travel through unchanged
    by_id = {r["id"]: r for r in ROWS}
    for r in spark_rows + twin_rows:
        assert r["text"] == by_id[r["id"]]["text"] and r["rating"] == by_id[r["id"]]["rating"]
    # the injected instructions are data: the answer is schema-valid, nothing else happened
    injected = [r for r in spark_rows if r["text"] == INJECTION]
    assert len(injected) == 1 and injected[0]["status"] == "enriched"

    n = len(SELECTED)
    assert summary["rows_in"] == len(ROWS) and summary["enriched"] == n and summary["dead_letter"] == 0
    assert summary["not_selected"] == len(ROWS) - n and summary["calls"] == n and summary["cache_hits"] == 0
    assert (
        summary["lines"][0]
        == f"enrich: rows in {len(ROWS)} = enriched {n} + dead-lettered 0 + not selected {len(ROWS) - n}"
    )
    assert f"enrich: rows in {len(ROWS)} = enriched {n} + dead-lettered 0 + not selected {len(ROWS) - n}" in printed
    assert f"calls made {n}, cache hits 0" in printed
    # what the run report draws: every call's latency and tokens binned, the cost as the line prints it
    hists = summary["histograms"]
    assert sum(hists["latency_ms"]["counts"]) == sum(hists["output_tokens"]["counts"]) == n
    assert len(hists["input_tokens"]["edges"]) == len(hists["input_tokens"]["counts"]) + 1
    assert f"estimated cost {format_cost(summary['cost_usd'])}" in summary["lines"][1]


def test_sample_percent_selects_the_same_rows_on_both_engines(spark, gateway, tmp_path, monkeypatch, capsys):
    from udfs.records import in_sample

    summary, spark_rows, _ = spark_run(
        spark, gateway, tmp_path, "openai", False, monkeypatch, ("--sample-percent", "50")
    )
    printed, twin_rows, _ = twin_inline(
        gateway, tmp_path, "openai", False, monkeypatch, capsys, ("--sample-percent", "50")
    )
    sampled = [r for r in ROWS if in_sample(r["id"], 50.0)]
    expected = sorted(r["id"] for r in sampled if r["predicted"] == "negative")
    assert 0 < len(expected) < len(SELECTED)
    assert sorted(r["id"] for r in spark_rows) == expected == sorted(r["id"] for r in twin_rows)
    assert summary["rows_in"] == len(sampled)
    assert f"enrich: rows in {len(sampled)} = enriched {len(expected)}" in printed


def test_both_commands_offer_the_same_options():
    spark_help = enrich.parser().format_help()
    twin_help = mr_enrich_rows.MREnrichRows(args=[]).arg_parser.format_help()
    for option in ("--cache", "--dry-run", "--sample-percent", "--progress", "--no-progress", "--overwrite"):
        assert option in spark_help, option
        assert option in twin_help or option == "--overwrite", option  # the launcher takes --overwrite


def test_rerun_answers_from_the_cache(spark, gateway, tmp_path, monkeypatch):
    first, rows1, _ = spark_run(spark, gateway, tmp_path, "openai", False, monkeypatch)
    admitted = gateway.key_usage("plain")["prompts"]["admitted"]
    second, rows2, _ = spark_run(spark, gateway, tmp_path, "openai", False, monkeypatch, ("--overwrite",))
    assert gateway.key_usage("plain")["prompts"]["admitted"] == admitted  # nothing sent again
    assert second["calls"] == 0 and second["cache_hits"] == len(SELECTED) == first["calls"]
    assert all(r["cached"] for r in rows2)
    assert comparable(rows1, COMPARED) == comparable(rows2, COMPARED)


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["local", "hadoop"])
def test_twin_on_local_and_hadoop_runners(spark, gateway, tmp_path, monkeypatch, runner, request):
    """Same rows as the Spark run, through ./submit.sh mr's launcher; -r hadoop
    reads and writes the test run's HDFS."""
    _, spark_rows, _ = spark_run(spark, gateway, tmp_path, "openai", False, monkeypatch)
    cfg = write_config(tmp_path / "twin.toml", enrich_settings(gateway, "plain", tmp_path / "twin-store"))
    env = submit_env(gateway, "plain")
    src = write_jsonl(ROWS, tmp_path / "scored.jsonl")
    if runner == "hadoop":
        hdfs, webhdfs = request.getfixturevalue("hdfs"), request.getfixturevalue("webhdfs")
        base = f"/user/{hdfs.user}/enrich-{tmp_path.name}"
        webhdfs.upload(f"{base}/scored.jsonl", src)
        src, out = f"{hdfs.hdfs_url}{base}/scored.jsonl", f"{hdfs.hdfs_url}{base}/out"
        env.update(hdfs.env())
    else:
        out = str(tmp_path / "twin-out")
    done = run_twin(runner, ["--config", str(cfg), src, "--output-dir", out], env)
    assert done.returncode == 0, done.stderr[-3000:]
    if runner == "hadoop":
        twin_rows = []
        for part in webhdfs.list(f"{base}/out"):
            with webhdfs.read(f"{base}/out/{part}") as fh:
                twin_rows += [__import__("json").loads(x) for x in fh.read().splitlines() if x.strip()]
        assert "_SUCCESS" in webhdfs.list(f"{base}/out")
    else:
        twin_rows = read_jsonl_dir(out)
        assert (tmp_path / "twin-out" / "_SUCCESS").exists()  # committed by the launcher
    assert comparable(spark_rows, COMPARED) == comparable(twin_rows, COMPARED)
    assert f"enriched {len(SELECTED)} + dead-lettered 0" in done.stdout
    assert CANARY not in done.stdout + done.stderr


def test_empty_input(spark, gateway, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(gateway.env_name("plain"), gateway.keys["plain"])
    cfg = write_config(tmp_path / "c.toml", enrich_settings(gateway, "plain", tmp_path / "store"))
    src = write_parquet(ROWS, tmp_path / "scored")
    empty = tmp_path / "empty"
    spark.read.parquet(src).limit(0).write.parquet(str(empty))
    summary = common.run_main(
        enrich.main,
        spark,
        enrich.parser().parse_args(["--config", str(cfg), "--input", str(empty), "--output", str(tmp_path / "o")]),
    )
    assert (summary["rows_in"], summary["enriched"], summary["dead_letter"], summary["calls"]) == (0, 0, 0, 0)
    assert read_parquet_dir(tmp_path / "o") == []
    code = mr_enrich_rows.main(
        [
            "-r",
            "inline",
            "--no-conf",
            "--config",
            str(cfg),
            write_jsonl([], tmp_path / "e.jsonl"),
            "--output-dir",
            str(tmp_path / "mo"),
        ]
    )
    assert code == 0 and "rows in 0 = enriched 0 + dead-lettered 0 + not selected 0" in capsys.readouterr().out


def test_bad_input_names_the_fault(spark, gateway, tmp_path, monkeypatch):
    monkeypatch.setenv(gateway.env_name("plain"), gateway.keys["plain"])
    cfg = write_config(tmp_path / "c.toml", enrich_settings(gateway, "plain", tmp_path / "store"))
    no_id = write_parquet([{k: v for k, v in r.items() if k != "id"} for r in ROWS], tmp_path / "noid")
    with pytest.raises(ValueError, match="has no id column"):
        common.run_main(
            enrich.main,
            spark,
            enrich.parser().parse_args(["--config", str(cfg), "--input", no_id, "--output", str(tmp_path / "o")]),
        )
    no_column = write_parquet([{k: v for k, v in r.items() if k != "predicted"} for r in ROWS], tmp_path / "nocol")
    with pytest.raises(Exception, match="enrich.select.column: no column 'predicted'"):
        common.run_main(
            enrich.main,
            spark,
            enrich.parser().parse_args(["--config", str(cfg), "--input", no_column, "--output", str(tmp_path / "o")]),
        )
    bad = write_jsonl(ROWS[:2], tmp_path / "bad.jsonl")
    with open(bad, "a") as fh:
        fh.write('["not", "a row"]\n')
    with pytest.raises(Exception, match="not a scored row with an id"):
        mr_enrich_rows.main(
            ["-r", "inline", "--no-conf", "--config", str(cfg), bad, "--output-dir", str(tmp_path / "mo")]
        )
