"""The enrich job's options: --dry-run calls nothing and prices what a run
would send; --retry-dead-letters calls only for the failed rows and writes a
complete new output; a wrong or missing key fails rows or the job with a
reason that names the variable, never the key (searched for in everything
written, logs at DEBUG included)."""

from __future__ import annotations

import pytest

from jobs.mapreduce import mr_enrich_rows
from jobs.spark import common, enrich
from udfs.enrich.driver import ApiKeyMissing

from .support import (
    CANARY,
    enrich_settings,
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

ROWS = scored_rows(40)
SELECTED = sorted(r["id"] for r in ROWS if r["predicted"] == "negative")


@pytest.fixture(scope="module")
def gateway():
    keys = {
        "good": {},
        # about half the calls fail for good (with one attempt a row): a mix of rows and dead letters
        "flaky": {"faults": {"server_error": 0.5}},
    }
    with start_gateway(keys) as gw:
        yield gw


def run(spark, cfg, src, out, *extra):
    return common.run_main(
        enrich.main,
        spark,
        enrich.parser().parse_args(["--config", str(cfg), "--input", src, "--output", str(out), *extra]),
    )


def test_dry_run_calls_nothing(spark, gateway, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(gateway.env_name("good"), gateway.keys["good"])
    cfg = write_config(tmp_path / "c.toml", enrich_settings(gateway, "good", tmp_path / "store"))
    src = write_parquet(ROWS, tmp_path / "scored")
    before = gateway.key_usage("good")["prompts"]["admitted"]
    dry = run(spark, cfg, src, tmp_path / "out", "--dry-run")
    assert gateway.key_usage("good")["prompts"]["admitted"] == before
    assert not (tmp_path / "out").exists()
    n = len(SELECTED)
    assert dry["calls"] == n and dry["input_tokens"] > 20 * n and dry["output_tokens"] == n * 120
    assert dry["lines"][0] == f"enrich --dry-run: rows in {len(ROWS)}, selected {n} (not selected {len(ROWS) - n})"
    assert f"would make {n} calls to gpt-4o-mini" in dry["lines"][1] and "$" in dry["lines"][1]
    # the twin counts the same
    code = mr_enrich_rows.main(
        ["-r", "inline", "--no-conf", "--config", str(cfg), write_jsonl(ROWS, tmp_path / "s.jsonl"), "--dry-run"]
    )
    assert code == 0 and "\n".join(dry["lines"]) in capsys.readouterr().out
    # after a real run every prompt is cached: a dry run then finds nothing to send
    real = run(spark, cfg, src, tmp_path / "out")
    assert real["calls"] == n
    again = run(spark, cfg, src, tmp_path / "out", "--dry-run")
    assert again["calls"] == 0 and again["output_tokens"] == 0


def test_retry_dead_letters(spark, gateway, tmp_path, monkeypatch):
    monkeypatch.setenv(gateway.env_name("flaky"), gateway.keys["flaky"])
    monkeypatch.setenv(gateway.env_name("good"), gateway.keys["good"])
    src = write_parquet(ROWS, tmp_path / "scored")
    out = tmp_path / "out"
    flaky = enrich_settings(gateway, "flaky", tmp_path / "store", retry={"max_attempts": 1})
    first = run(spark, write_config(tmp_path / "flaky.toml", flaky), src, out)
    rows1, dead1 = read_parquet_dir(out), read_parquet_dir(str(out) + "_dead_letters")
    assert first["dead_letter"] == len(dead1) > 0 and first["enriched"] == len(rows1) > 0
    assert all("500" in r["error"] or "server" in r["error"].lower() for r in dead1)

    good = enrich_settings(gateway, "good", tmp_path / "store")
    before = gateway.key_usage("good")["prompts"]["admitted"]
    second = run(spark, write_config(tmp_path / "good.toml", good), src, out, "--retry-dead-letters")
    assert gateway.key_usage("good")["prompts"]["admitted"] - before == len(dead1)  # only the failed rows
    rows2, dead2 = read_parquet_dir(out), read_parquet_dir(str(out) + "_dead_letters")
    assert dead2 == [] and sorted(r["id"] for r in rows2) == SELECTED
    assert second["calls"] == len(dead1) and second["enriched"] == len(SELECTED)
    assert second["rows_in"] == len(ROWS) and second["not_selected"] == len(ROWS) - len(SELECTED)
    kept = {r["id"]: r["request_id"] for r in rows1}
    assert {r["id"]: r["request_id"] for r in rows2 if r["id"] in kept} == kept  # answered rows untouched


def test_wrong_key_dead_letters_without_the_key(gateway, tmp_path):
    """A key the server refuses (401, no retry): every selected row is a dead
    letter naming the refusal; the key is in no output, log or message."""
    cfg = write_config(tmp_path / "c.toml", enrich_settings(gateway, "good", tmp_path / "store"))
    src = write_jsonl(ROWS, tmp_path / "s.jsonl")
    wrong = CANARY + "wrong-0123456789abcdef"
    env = submit_env(gateway, "good", AIBATCH_LOG_LEVEL="DEBUG")
    env[gateway.env_name("good")] = wrong
    done = run_twin("inline", ["--config", str(cfg), src, "--output-dir", str(tmp_path / "out")], env)
    assert done.returncode == 0, done.stderr[-2000:]
    rows, dead = read_twin_outputs(tmp_path / "out")
    assert rows == [] and sorted(r["id"] for r in dead) == SELECTED and {r["status"] for r in dead} == {"dead_letter"}
    assert all("401" in r["error"] for r in dead) and all(r["attempts"] == 1 for r in dead)
    assert CANARY not in done.stdout + done.stderr
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert CANARY.encode() not in f.read_bytes(), f


def test_missing_key_names_the_variable(spark, gateway, tmp_path, monkeypatch):
    monkeypatch.delenv(gateway.env_name("good"), raising=False)
    cfg = write_config(tmp_path / "c.toml", enrich_settings(gateway, "good", tmp_path / "store"))
    with pytest.raises(ApiKeyMissing, match=gateway.env_name("good")):
        run(spark, cfg, write_parquet(ROWS, tmp_path / "scored"), tmp_path / "out")
    assert enrich.cli(["--config", str(cfg), "--input", "x", "--output", "y"]) == 2
