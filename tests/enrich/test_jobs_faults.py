"""The enrich job under tight limits and 20 % mixed injected faults (429 with
retry-after, 500, 503, 529, timeouts, malformed JSON, broken streams), on
Spark (Anthropic, streaming) and on the mrjob twin (OpenAI, plain): every
selected row ends enriched or dead-lettered with its reason, none vanish or
double, and the gateway's own counters never exceed requests, tokens or
concurrency per window. The keys are recognisable fakes that must appear
nowhere in what the jobs wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.mapreduce import mr_enrich_rows
from jobs.spark import common, enrich

from .support import (
    CANARY,
    MIXED_FAULTS,
    client_limits,
    enrich_settings,
    read_parquet_dir,
    read_twin_outputs,
    scored_rows,
    start_gateway,
    write_config,
    write_jsonl,
    write_parquet,
)

ROWS = scored_rows(70)
SELECTED = sorted(r["id"] for r in ROWS if r["predicted"] == "negative")
WINDOW = 2
SERVER_LIMITS = {
    "algorithm": "sliding_window",
    "window_seconds": WINDOW,
    "requests": 14,
    "tokens": 7000,
    "input_tokens": 5000,
    "output_tokens": 2000,
    "concurrent": 4,
}
CLIENT_LIMITS = client_limits(SERVER_LIMITS)
# The mixed table on the gateway's default seed, with longer holds and waits.
FAULTS = {
    **{k: v for k, v in MIXED_FAULTS.items() if k != "seed"},
    "timeout_hold_seconds": 4,
    "retry_after_seconds": 0.3,
}


@pytest.fixture(scope="module")
def gateway():
    keys = {name: {"limits": SERVER_LIMITS, "faults": FAULTS} for name in ("faulty-spark", "faulty-twin")}
    with start_gateway(keys) as gw:
        yield gw


def check_accounting(rows: list[dict], dead: list[dict]) -> None:
    ids = [r["id"] for r in rows] + [r["id"] for r in dead]
    assert sorted(ids) == SELECTED  # each selected row exactly once: none vanished, none doubled
    assert all(r["status"] == "enriched" and 1 <= r["severity"] <= 5 for r in rows)
    for r in dead:
        assert r["status"] == "dead_letter" and r["error"] and r["attempts"] >= 1, r


def check_server_limits(usage: dict, anthropic: bool) -> None:
    peaks = usage["peaks"]
    assert peaks["requests"]["any_window"] <= SERVER_LIMITS["requests"]
    if anthropic:
        assert peaks["input_tokens"]["any_window"] <= SERVER_LIMITS["input_tokens"]
        assert peaks["output_tokens"]["any_window"] <= SERVER_LIMITS["output_tokens"]
    else:
        assert peaks["tokens"]["any_window"] <= SERVER_LIMITS["tokens"]
    assert usage["peak_concurrent"] <= SERVER_LIMITS["concurrent"]
    assert peaks["requests"]["any_window"] > 0


def no_canary_under(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            assert CANARY.encode() not in f.read_bytes(), f


def test_spark_anthropic_stream_with_faults(spark, gateway, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(gateway.env_name("faulty-spark"), gateway.keys["faulty-spark"])
    settings = enrich_settings(gateway, "faulty-spark", tmp_path / "store", "anthropic", True, CLIENT_LIMITS)
    cfg = write_config(tmp_path / "c.toml", settings)
    src = write_parquet(ROWS, tmp_path / "scored")
    args = ["--config", str(cfg), "--input", src, "--output", str(tmp_path / "out"), "--tasks", "2"]
    summary = common.run_main(enrich.main, spark, enrich.parser().parse_args(args))
    rows, dead = read_parquet_dir(tmp_path / "out"), read_parquet_dir(tmp_path / "out_dead_letters")
    check_accounting(rows, dead)
    assert summary["enriched"] == len(rows) and summary["dead_letter"] == len(dead)
    usage = gateway.key_usage("faulty-spark")
    check_server_limits(usage, anthropic=True)
    # the faults really happened and were retried: more calls than rows
    assert summary["calls"] > len(SELECTED)
    captured = capfd.readouterr()
    assert CANARY not in captured.out + captured.err
    no_canary_under(tmp_path)


def test_twin_openai_plain_with_faults(gateway, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(gateway.env_name("faulty-twin"), gateway.keys["faulty-twin"])
    settings = enrich_settings(gateway, "faulty-twin", tmp_path / "store", "openai", False, CLIENT_LIMITS)
    cfg = write_config(tmp_path / "c.toml", settings)
    src = write_jsonl(ROWS, tmp_path / "scored.jsonl")
    code = mr_enrich_rows.main(
        ["-r", "inline", "--no-conf", "--config", str(cfg), src, "--output-dir", str(tmp_path / "out")]
    )
    assert code == 0
    rows, dead = read_twin_outputs(tmp_path / "out")
    check_accounting(rows, dead)
    captured = capfd.readouterr()
    printed = captured.out
    assert (
        f"enrich: rows in {len(ROWS)} = enriched {len(rows)} + dead-lettered {len(dead)} + not selected {len(ROWS) - len(SELECTED)}"
        in printed
    )
    check_server_limits(gateway.key_usage("faulty-twin"), anthropic=False)
    assert CANARY not in captured.out + captured.err
    no_canary_under(tmp_path)
