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
from udfs.records import in_sample

from .support import (
    CANARY,
    INJECTION,
    comparable,
    enrich_settings,
    read_jsonl_dir,
    read_parquet_dir,
    read_twin_outputs,
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
    return printed, *read_twin_outputs(out)


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


# Deliberate differences between the two commands' options: each engine's own paths and tuning.
SPARK_ONLY = {"--input", "--output", "--input-format", "--output-format", "--tasks", "--chunk-rows", "--overwrite"}
TWIN_ONLY = {
    "--batch-rows",
    "--job-id",
    "--run-output",
}  # mrjob's: INPUT..., --output-dir, -r; the launcher's: --overwrite


def spark_options() -> set[str]:
    return {s for a in enrich.parser()._actions for s in a.option_strings} - {"-h", "--help"}


def twin_options() -> set[str]:
    """The twin's own options (mrjob's runner options left out), shown by --help."""
    job = mr_enrich_rows.MREnrichRows(args=[])
    own = job._passthru_arg_dests | job._file_arg_dests
    return {s for a in job.arg_parser._actions if a.dest in own and a.help != "==SUPPRESS==" for s in a.option_strings}


def test_both_commands_offer_the_same_options():
    assert spark_options() - SPARK_ONLY == twin_options() - TWIN_ONLY
    enrich_options = {"--dead-letters", "--retry-dead-letters", "--sample-percent", "--dry-run", "--cancel", "--cache"}
    assert enrich_options | {"--progress", "--no-progress", "--config", "--set"} <= twin_options()
    twin_help = mr_enrich_rows.MREnrichRows(args=[]).arg_parser.format_help()
    for option in enrich_options:
        assert option in enrich.parser().format_help() and option in twin_help, option
    assert "--dead-letters-dir" not in twin_help and "--retry-ids" not in twin_help  # internal


SAMPLED = [r for r in ROWS if in_sample(r["id"], 50.0)]


def test_sample_and_retry_dead_letters_agree_on_both_engines(spark, gateway, tmp_path, monkeypatch):
    """--sample-percent 50, then --retry-dead-letters, on Spark and on the twin (through
    ./submit.sh mr's launcher, -r inline): equal outputs, dead letters and totals. The first
    runs' max_tokens cuts the longer answers short (no repair), so the same rows fail on both
    engines (the gateway's answers are a function of the prompt); the retries' does not."""
    monkeypatch.setenv(gateway.env_name("plain"), gateway.keys["plain"])
    src = write_parquet(ROWS, tmp_path / "scored")
    src_jsonl = write_jsonl(ROWS, tmp_path / "scored.jsonl")
    sample = ("--sample-percent", "50")

    def configs(engine):
        tight = enrich_settings(gateway, "plain", tmp_path / f"{engine}-store", repair_attempts=0)
        tight["provider"]["max_tokens"] = 27
        roomy = enrich_settings(gateway, "plain", tmp_path / f"{engine}-store")
        return write_config(tmp_path / f"{engine}-tight.toml", tight), write_config(
            tmp_path / f"{engine}-ok.toml", roomy
        )

    def on_spark(cfg, *extra):
        args = ["--config", str(cfg), "--input", src, "--output", str(tmp_path / "spark-out"), *sample, *extra]
        summary = common.run_main(enrich.main, spark, enrich.parser().parse_args(args))
        out = tmp_path / "spark-out"
        return summary["lines"][:2], read_parquet_dir(out), read_parquet_dir(f"{out}_dead_letters")

    def on_twin(cfg, *extra):
        out = tmp_path / "twin-out"
        args = ["--config", str(cfg), src_jsonl, "--output-dir", str(out), *sample, *extra]
        done = run_twin("inline", args, submit_env(gateway, "plain"))
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"output committed to {out}, {out}_dead_letters" in done.stderr
        return done.stdout.splitlines()[:2], *read_twin_outputs(out)

    spark_tight, spark_ok = configs("spark")
    twin_tight, twin_ok = configs("twin")
    expected = sorted(r["id"] for r in SAMPLED if r["predicted"] == "negative")

    lines1, s_rows1, s_dead1 = on_spark(spark_tight)
    t_lines1, t_rows1, t_dead1 = on_twin(twin_tight)
    assert s_rows1 and s_dead1, "the tight max_tokens fails some rows, not all"
    assert sorted(r["id"] for r in s_rows1 + s_dead1) == expected
    assert comparable(s_rows1, COMPARED) == comparable(t_rows1, COMPARED)
    assert comparable(s_dead1, COMPARED) == comparable(t_dead1, COMPARED)
    assert t_lines1 == lines1 and f"dead-lettered {len(s_dead1)} " in lines1[0]

    lines2, s_rows2, s_dead2 = on_spark(spark_ok, "--retry-dead-letters")
    t_lines2, t_rows2, t_dead2 = on_twin(twin_ok, "--retry-dead-letters")
    assert s_dead2 == [] == t_dead2 and sorted(r["id"] for r in s_rows2) == expected
    assert comparable(s_rows2, COMPARED) == comparable(t_rows2, COMPARED)
    assert t_lines2 == lines2
    assert lines2[0] == (
        f"enrich: rows in {len(SAMPLED)} = enriched {len(expected)} + dead-lettered 0 "
        f"+ not selected {len(SAMPLED) - len(expected)}"
    )
    assert lines2[1].startswith(f"  calls made {len(s_dead1)}, cache hits 0,")  # only the failed rows
    kept = {r["id"]: r["request_id"] for r in t_rows1}
    assert {r["id"]: r["request_id"] for r in t_rows2 if r["id"] in kept} == kept  # kept as they were


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
        listed = webhdfs.list(f"{base}/out")
        for part in (p for p in listed if p.startswith("part-")):
            with webhdfs.read(f"{base}/out/{part}") as fh:
                twin_rows += [__import__("json").loads(x) for x in fh.read().splitlines() if x.strip()]
        assert "_SUCCESS" in listed and "_report.html" in listed, listed
        # the dead letters (none here) committed beside it, written through WebHDFS by the twin's driver
        assert "_SUCCESS" in webhdfs.list(f"{base}/out_dead_letters")
        with webhdfs.read(f"{base}/out_dead_letters/part-00000") as fh:
            assert fh.read() == b""
    else:
        twin_rows = read_jsonl_dir(out)
        assert (tmp_path / "twin-out" / "_SUCCESS").exists()  # committed by the launcher
        assert (tmp_path / "twin-out_dead_letters" / "_SUCCESS").exists() and read_jsonl_dir(
            f"{out}_dead_letters"
        ) == []
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
