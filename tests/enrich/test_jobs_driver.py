"""The enrich drivers' own pieces (udfs/enrich/accounting.py, driver.py,
progress.py, result.py), without a server: totals and their check, the price
table and cost, the progress counters in the store and the bar that polls
them, the key wrapper, job ids."""

from __future__ import annotations

import io
import pickle

import pytest

from udfs.enrich.accounting import EnrichTotals, PriceError, PriceTable, dry_run_report
from udfs.enrich.driver import ApiKeyMissing, add_progress_arg, job_id_for, read_api_key
from udfs.enrich.progress import Progress, ProgressBar, ProgressFeed, snapshot
from udfs.enrich.result import result_fields
from udfs.enrich.store_sqlite import SqliteStore

from .support import ROOT


def row(
    status: str,
    cached: bool = False,
    attempts: int = 1,
    tin: int = 100,
    tout: int = 20,
    model: str = "gpt-4o-mini-2024-07-18",
):
    return {
        "status": status,
        "cached": cached,
        "attempts": attempts,
        "input_tokens": tin,
        "output_tokens": tout,
        "model": model,
    }


def test_totals_add_up_and_price_only_this_runs_calls():
    prices = PriceTable.load(ROOT / "conf" / "llm_prices.toml")
    totals = EnrichTotals(rows_in=10, not_selected=5).add_all(
        [
            row("enriched"),
            row("enriched", attempts=3),
            row("enriched", cached=True),
            row("dead_letter", attempts=6, tin=0, tout=0),
            row("enriched"),
        ]
    )
    totals.check()
    assert (totals.enriched, totals.dead_letter, totals.cache_hits, totals.calls) == (4, 1, 1, 11)
    assert (totals.input_tokens, totals.output_tokens) == (300, 60)  # the cached row was paid before
    assert totals.cost(prices) == pytest.approx((300 * 0.15 + 60 * 0.60) / 1e6)
    lines = totals.report(prices)
    assert lines[0] == "enrich: rows in 10 = enriched 4 + dead-lettered 1 + not selected 5"
    assert "calls made 11, cache hits 1, tokens 300 in + 60 out, estimated cost $0.0001" in lines[1]
    totals.not_selected = 4
    with pytest.raises(RuntimeError, match="rows in 10 != enriched 4"):
        totals.check()


def test_unknown_model_costs_unknown_and_bad_tables_name_the_entry(tmp_path):
    prices = PriceTable.load(ROOT / "conf" / "llm_prices.toml")
    assert EnrichTotals().add_all([row("enriched", model="mystery-1")]).cost(prices) is None
    assert "unknown" in dry_run_report(3, 2, 2, 100, 240, "mystery-1", prices)[1]
    assert prices.price("gpt-4o-mini") == prices.price("gpt-4o-mini-2024-07-18")  # aliases
    bad = tmp_path / "p.toml"
    bad.write_text('[models."m"]\ninput_per_mtok = "cheap"\noutput_per_mtok = 1\n')
    with pytest.raises(PriceError, match="models.m"):
        PriceTable.load(bad)
    with pytest.raises(PriceError, match="no such price table"):
        PriceTable.load(tmp_path / "missing.toml")


def test_results_must_answer_rows_one_for_one():
    rows = [{"id": "a"}, {"id": "b"}]
    ok = [{"id": "a", "status": "enriched"}, {"id": "b", "status": "dead_letter"}]
    assert [f["status"] for f in result_fields(rows, ok)] == ["enriched", "dead_letter"]
    with pytest.raises(RuntimeError, match="1 results for 2 rows"):
        result_fields(rows, ok[:1])
    with pytest.raises(RuntimeError, match="where row 'a' was expected"):
        result_fields(rows, ok[::-1])
    with pytest.raises(RuntimeError, match="status 'lost'"):
        result_fields(rows[:1], [{"id": "a", "status": "lost"}])


def test_progress_counters_in_the_store_feed_the_bar(tmp_path):
    store = SqliteStore(tmp_path / "store.sqlite")
    writer = ProgressFeed(store, "job-1", flush_s=0.0)
    for event in [
        {"type": "call"},
        {"type": "call"},
        {"type": "call_done", "status": 429},
        {"type": "call_done", "status": 200},
        {"type": "row"},
        {"type": "throttle"},
    ]:
        writer.on_event(event)
    writer.flush()
    reader = SqliteStore(tmp_path / "store.sqlite")  # another process's view
    assert snapshot(reader, "job-1") == Progress(done=1, in_flight=0, rate_limited=1)
    assert snapshot(reader, "job-2") == Progress(0, 0, 0)
    out = io.StringIO()
    with ProgressBar(4, lambda: snapshot(reader, "job-1"), enabled=True, every=0.01, stream=out):
        pass
    assert "enrich" in out.getvalue() and "http_429=1" in out.getvalue() and "1/4" in out.getvalue()
    reader.progress_reset("job-1")
    assert snapshot(reader, "job-1") == Progress(0, 0, 0)


def test_the_bar_is_switched_by_an_argument(monkeypatch):
    import argparse

    monkeypatch.delenv("AIBATCH_PROGRESS", raising=False)
    parser = argparse.ArgumentParser()
    add_progress_arg(parser)
    assert not parser.parse_args([]).progress
    assert parser.parse_args(["--progress"]).progress
    monkeypatch.setenv("AIBATCH_PROGRESS", "1")  # submit.sh saw a terminal
    parser = argparse.ArgumentParser()
    add_progress_arg(parser)
    assert parser.parse_args([]).progress and not parser.parse_args(["--no-progress"]).progress
    out = io.StringIO()
    with ProgressBar(4, lambda: Progress(1, 0, 0), enabled=False, stream=out):
        pass
    assert out.getvalue() == ""


def test_key_is_read_from_the_named_variable_and_never_shown():
    key = read_api_key("MY_KEY_VAR", {"MY_KEY_VAR": " sk-FAKE-aibatch-canary-unit "})
    assert key.get_secret_value() == "sk-FAKE-aibatch-canary-unit"
    assert "canary" not in repr(key) + str(key) + repr(pickle.loads(pickle.dumps(key)))
    with pytest.raises(ApiKeyMissing, match="MY_KEY_VAR"):
        read_api_key("MY_KEY_VAR", {})


def test_key_from_the_shipped_file_where_the_variable_is_unset(tmp_path):
    """YARN tasks do not inherit the client's variables: they read the file
    the twin's driver ships; the variable wins where both are there."""
    shipped = tmp_path / "api_key"
    shipped.write_text("sk-FAKE-from-file\n")
    assert read_api_key("MY_KEY_VAR", {}, key_file=str(shipped)).get_secret_value() == "sk-FAKE-from-file"
    both = read_api_key("MY_KEY_VAR", {"MY_KEY_VAR": "sk-FAKE-env"}, key_file=str(shipped))
    assert both.get_secret_value() == "sk-FAKE-env"
    shipped.write_text(" \n")
    with pytest.raises(ApiKeyMissing, match="MY_KEY_VAR"):
        read_api_key("MY_KEY_VAR", {}, key_file=str(shipped))


def test_job_id_is_the_same_for_the_same_output():
    assert job_id_for("hdfs:///x/enriched") == job_id_for("hdfs:///x/enriched/") != job_id_for("hdfs:///x/other")
