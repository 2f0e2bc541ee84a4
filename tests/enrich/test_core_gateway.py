"""The enrich core against the real gateway: both providers, plain and streaming,
the answer cache and the claims (identical prompts sent once)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import jsonschema
import pytest

from tests.enrich.support import SCHEMA, make_cfg, rows_of, totals, usage_of
from udfs.enrich.assets import load_assets, prepared_text, prompt_hash, request_params
from udfs.enrich.runner import enrich_batch, open_store

OUTPUT_KEYS = {
    "id", "status", "topic", "summary", "severity", "raw_answer", "input_tokens", "output_tokens", "latency_ms",
    "ttft_ms", "attempts", "provider", "model", "template", "request_id", "cached", "prompt_hash", "error",
}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "stream", "model_id"),
    [
        ("openai", False, "gpt-4o-mini-2024-07-18"),
        ("openai", True, "gpt-4o-mini-2024-07-18"),
        ("anthropic", False, "claude-3-5-haiku-20241022"),
        ("anthropic", True, "claude-3-5-haiku-20241022"),
    ],
)
def test_every_row_enriched_with_schema_valid_answer(gw, tmp_path, kind, stream, model_id):
    cfg = make_cfg(gw, tmp_path / "store.sqlite", kind, provider={"stream": stream})
    rows = rows_of(12, prefix=f"{kind}-{stream}-")
    before = totals(usage_of(gw, "main"))
    store = open_store(cfg, "job-1")
    out = enrich_batch(rows, cfg, api_key=gw.key("main"), store=store)
    after = totals(usage_of(gw, "main"))

    assert [o["id"] for o in out] == [r["id"] for r in rows]
    for o in out:
        assert set(o) == OUTPUT_KEYS
        assert o["status"] == "enriched", o["error"]
        jsonschema.validate({k: o[k] for k in ("topic", "summary", "severity")}, SCHEMA.schema)
        assert (o["provider"], o["model"], o["template"]) == (kind, model_id, "review_enrich@1")
        assert o["attempts"] == 1 and o["cached"] is False and o["error"] is None
        assert o["input_tokens"] > 0 and o["output_tokens"] > 0 and o["request_id"]
        assert (o["ttft_ms"] is not None) == stream
    # The server counted exactly our calls and the tokens we report.
    assert after["requests"] - before["requests"] == len(rows)
    assert after["input_tokens"] - before["input_tokens"] == sum(o["input_tokens"] for o in out)
    assert after["output_tokens"] - before["output_tokens"] == sum(o["output_tokens"] for o in out)


def test_rerun_sends_nothing_and_identical_prompts_are_sent_once(gw, tmp_path):
    cfg = make_cfg(gw, tmp_path / "store.sqlite")
    rows = rows_of(6, prefix="c")
    twins = [{**r, "id": r["id"] + "-twin"} for r in rows]  # same text: the same prompt
    store = open_store(cfg, "job-cache")
    before = totals(usage_of(gw, "cache"))["requests"]
    first = enrich_batch(rows + twins, cfg, api_key=gw.key("cache"), store=store)
    mid = totals(usage_of(gw, "cache"))["requests"]
    assert mid - before == len(rows)
    assert [o["cached"] for o in first] == [False] * len(rows) + [True] * len(twins)
    for a, b in zip(first[: len(rows)], first[len(rows) :], strict=True):
        assert (a["topic"], a["summary"], a["severity"]) == (b["topic"], b["summary"], b["severity"])

    # A rerun (a new process would open the same file) sends nothing and gives the same answers.
    again = enrich_batch(rows, cfg, api_key=gw.key("cache"), store=open_store(cfg, "job-cache"))
    assert totals(usage_of(gw, "cache"))["requests"] == mid
    assert all(o["cached"] for o in again)
    assert [o["summary"] for o in again] == [o["summary"] for o in first[: len(rows)]]


def test_concurrent_batches_claim_before_calling(gw, tmp_path):
    """Two tasks with the same rows at once, sharing the store: each prompt is sent once."""
    cfg = make_cfg(gw, tmp_path / "store.sqlite")
    rows = rows_of(10, prefix="claim")
    before = totals(usage_of(gw, "cache"))["requests"]
    results: list[list[dict]] = []

    def task() -> None:
        results.append(enrich_batch(rows, cfg, api_key=gw.key("cache"), store=open_store(cfg, "job-claim")))

    threads = [threading.Thread(target=task) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert totals(usage_of(gw, "cache"))["requests"] - before == len(rows)
    assert len(results) == 2
    called = [sum(not o["cached"] for o in res) for res in results]
    assert sum(called) == len(rows)
    assert [o["summary"] for o in results[0]] == [o["summary"] for o in results[1]]


def test_claims_left_by_dead_or_silent_owners_are_taken_over(gw, tmp_path):
    """A claim whose process died (same machine) is taken over at once; one from
    elsewhere that stops renewing is taken over when its lease lapses."""
    cfg = make_cfg(gw, tmp_path / "store.sqlite", store={"claim_ttl_s": 1.0})
    rows = rows_of(2, prefix="orphan")
    store = open_store(cfg, "job-orphan")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = f"{socket.gethostname()}/{int(dead.stdout)}/gone"
    elsewhere = "another-host/1/silent"
    params = request_params(cfg, load_assets(cfg))
    assets = load_assets(cfg)
    # The dead process's lease would last 5 minutes: only seeing that it died frees it in time.
    for row, owner, ttl in zip(rows, (dead_owner, elsewhere), (300.0, 1.0), strict=True):
        h = prompt_hash("openai", cfg.provider.model, assets.template.id, params, prepared_text(assets.template, row))
        assert store.claim(h, owner, time.time(), ttl)
    before = totals(usage_of(gw, "cache"))["requests"]
    out = enrich_batch(rows, cfg, api_key=gw.key("cache"), store=store)
    assert [o["status"] for o in out] == ["enriched", "enriched"]
    assert [o["cached"] for o in out] == [False, False]
    assert totals(usage_of(gw, "cache"))["requests"] - before == 2


def test_rows_without_text_are_dead_letters_without_a_call(gw, tmp_path):
    cfg = make_cfg(gw, tmp_path / "store.sqlite")
    rows = [
        {"id": "none", "text": None, "predicted": "negative"},
        {"id": "blank", "text": "  \n", "predicted": "negative"},
        *rows_of(1, "withtext"),
    ]
    before = totals(usage_of(gw, "cache"))["requests"]
    out = enrich_batch(rows, cfg, api_key=gw.key("cache"), store=open_store(cfg, "job-empty"))
    assert totals(usage_of(gw, "cache"))["requests"] - before == 1
    assert [o["id"] for o in out] == ["none", "blank", "withtext0"]
    assert [o["status"] for o in out] == ["dead_letter", "dead_letter", "enriched"]
    assert all("no text" in o["error"] and o["attempts"] == 0 for o in out[:2])
