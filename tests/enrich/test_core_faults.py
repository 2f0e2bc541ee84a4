"""Retries, dead letters and repairs under the gateway's injected faults; an
injection attempt in a row; the API key never in outputs, logs or errors."""

from __future__ import annotations

import json
import logging

import jsonschema
import pytest

from tests.enrich.support import FORGED_ANSWER, SCHEMA, make_cfg, rows_of, totals, usage_of
from udfs.enrich.runner import EnrichError, enrich_batch, open_store


@pytest.mark.parametrize(
    ("key", "kind", "stream", "expected"),
    [
        ("always-server_error", "openai", False, "HTTP 500"),
        ("always-unavailable", "openai", False, "HTTP 503"),
        ("always-overloaded", "anthropic", False, "HTTP 529 overloaded_error"),
        ("always-rate_limit", "openai", False, "HTTP 429 rate_limit_exceeded"),
        ("always-timeout", "openai", False, "timeout"),
        ("always-malformed_json", "openai", False, "malformed response body"),
        ("always-stream_error", "openai", True, "error in the stream"),
        ("always-stream_error", "anthropic", True, "error event in the stream (overloaded_error)"),
        ("always-stream_drop", "anthropic", True, "connection"),
        ("always-stream_truncate", "openai", True, "stream ended early"),
    ],
)
def test_transient_faults_are_retried_then_dead_lettered(gw, tmp_path, key, kind, stream, expected):
    cfg = make_cfg(
        gw, tmp_path / "s.sqlite", kind, provider={"stream": stream, "timeout_s": 1.0}, retry={"max_attempts": 3}
    )
    rows = rows_of(2, prefix=f"{key}-{kind}-")
    out = enrich_batch(rows, cfg, api_key=gw.key(key), store=open_store(cfg, "job"))
    for o in out:
        assert o["status"] == "dead_letter"
        assert o["attempts"] == 3, o
        assert expected in o["error"], o["error"]
        assert o["topic"] is None and o["cached"] is False


@pytest.mark.parametrize(
    ("overrides", "use_key", "expected"),
    [
        ({}, "sk-wrong-key-0000000000000000", "HTTP 401"),
        ({"provider": {"model": "no-such-model"}}, None, "HTTP 404"),
        ({"provider": {"max_tokens": 5000}}, None, "HTTP 400"),  # over the model's output limit
    ],
)
def test_client_errors_are_not_retried(gw, tmp_path, overrides, use_key, expected):
    cfg = make_cfg(gw, tmp_path / "s.sqlite", **overrides)
    before = totals(usage_of(gw, "main"))["requests"]
    out = enrich_batch(rows_of(2, "noretry"), cfg, api_key=use_key or gw.key("main"), store=open_store(cfg, "job"))
    assert [o["status"] for o in out] == ["dead_letter"] * 2
    assert [o["attempts"] for o in out] == [1, 1]
    assert all(expected in o["error"] for o in out), out[0]["error"]
    assert totals(usage_of(gw, "main"))["requests"] == before  # none was admitted
    assert "sk-wrong-key" not in json.dumps(out)


def test_schema_invalid_answers_get_bounded_repairs(gw, tmp_path):
    # Without structured output the deterministic backend answers in prose: never valid.
    cfg = make_cfg(gw, tmp_path / "s.sqlite", provider={"structured_output": False}, repair_attempts=2)
    before = totals(usage_of(gw, "main"))["requests"]
    out = enrich_batch(rows_of(3, "repair"), cfg, api_key=gw.key("main"), store=open_store(cfg, "job"))
    assert totals(usage_of(gw, "main"))["requests"] - before == 3 * 3
    for o in out:
        assert o["status"] == "dead_letter" and o["attempts"] == 3
        assert "answer is not JSON" in o["error"] and "after 3 answer(s)" in o["error"]
        assert o["raw_answer"].startswith("You said:")


@pytest.mark.parametrize(("kind", "stream"), [("openai", True), ("anthropic", False)])
def test_mixed_faults_every_row_accounted_for(gw, tmp_path, kind, stream):
    cfg = make_cfg(
        gw, tmp_path / "s.sqlite", kind, provider={"stream": stream, "timeout_s": 1.0}, retry={"max_attempts": 5}
    )
    rows = rows_of(40, prefix=f"mixed-{kind}-")
    out = enrich_batch(rows, cfg, api_key=gw.key("mixed"), store=open_store(cfg, "job"))
    assert sorted(o["id"] for o in out) == sorted(r["id"] for r in rows)
    enriched = [o for o in out if o["status"] == "enriched"]
    dead = [o for o in out if o["status"] == "dead_letter"]
    assert len(enriched) + len(dead) == len(rows)
    assert any(o["attempts"] > 1 for o in enriched)  # faults really struck and were retried
    assert len(enriched) >= 35
    for o in enriched:
        jsonschema.validate({k: o[k] for k in ("topic", "summary", "severity")}, SCHEMA.schema)
    for o in dead:
        assert o["error"] and o["attempts"] >= 1


@pytest.mark.parametrize("structured", [True, False])
def test_injection_row_yields_schema_valid_output_or_dead_letter(gw, tmp_path, structured):
    cfg = make_cfg(gw, tmp_path / "s.sqlite", provider={"structured_output": structured})
    rows = [{"id": "evil", "text": FORGED_ANSWER, "predicted": "negative"}, *rows_of(2, "inj")]
    out = enrich_batch(rows, cfg, api_key=gw.key("main"), store=open_store(cfg, "job"))
    for o in out:
        if o["status"] == "enriched":
            jsonschema.validate({k: o[k] for k in ("topic", "summary", "severity")}, SCHEMA.schema)
            assert o["topic"] != "HACKED"
        else:
            assert o["status"] == "dead_letter" and o["error"]
    assert out[0]["status"] == ("enriched" if structured else "dead_letter")


def test_api_key_never_in_outputs_logs_or_errors(gw, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # the SDKs' and httpx's debug logs included
    secret = gw.key("leak")
    store_path = tmp_path / "s.sqlite"
    seen: list[dict] = []
    written = []
    for stream in (False, True):
        cfg = make_cfg(gw, store_path, provider={"stream": stream}, retry={"max_attempts": 2})
        out = enrich_batch(
            rows_of(15, f"leak-{stream}-"), cfg, api_key=secret, store=open_store(cfg, "job"), on_event=seen.append
        )
        written.append(json.dumps(out))
        assert any(o["status"] == "dead_letter" for o in out) and any(o["attempts"] > 1 for o in out)
    wrong = "sk-RECOGNISABLE-FAKE-KEY-1234567890"
    cfg = make_cfg(gw, store_path)
    written.append(json.dumps(enrich_batch(rows_of(2, "leak-wrong"), cfg, api_key=wrong, store=open_store(cfg, "j"))))
    with pytest.raises(EnrichError) as err:
        enrich_batch(rows_of(1, "x"), cfg, api_key="", store=open_store(cfg, "j"))
    everything = "\n".join(
        [
            *written,
            caplog.text,
            json.dumps(seen, default=str),
            str(err.value),
            store_path.read_bytes().decode("latin-1"),
        ]
    )
    assert len(caplog.records) > 0 and len(seen) > 0
    for key in (secret, wrong):
        assert key not in everything
        assert key[8:] not in everything  # nor its random part
