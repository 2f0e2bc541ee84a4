"""The admin endpoints: prompt hashes of admitted requests per key, and the
peak counters a client test asserts "never over the limit" with."""

from __future__ import annotations

import hashlib

import httpx

from tests.gateway.conftest import FakeClock, make_raw_config, run_gateway

T0 = 1_800_000_000.0  # a multiple of the 10 s window


def sha(canonical: str) -> str:
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_prompt_hashes_of_admitted_requests_per_key():
    raw = make_raw_config([{"name": "main", "admin": True}, {"name": "batch", "limits": {"requests": 3}}])
    with run_gateway(raw) as gw:
        oa = {"Authorization": f"Bearer {gw.key('batch')}"}
        an = {"x-api-key": gw.key("batch"), "anthropic-version": "2023-06-01"}
        chat = {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "héllo "}, {"type": "text", "text": "there"}]},
            ],
            "max_tokens": 20,
            "temperature": 0,
        }
        msg = {"model": "claude-3-5-haiku-latest", "max_tokens": 7, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=gw.base_url) as http:
            assert http.post("/v1/chat/completions", json=chat, headers=oa).status_code == 200
            assert http.post("/v1/chat/completions", json=chat, headers=oa).status_code == 200
            assert http.post("/v1/messages", json=msg, headers=an).status_code == 200
            # Not admitted: a bad request, and one over the key's 3 requests per window.
            assert http.post("/v1/messages", json={**msg, "max_tokens": 0}, headers=an).status_code == 400
            assert http.post("/v1/messages", json={**msg, "max_tokens": 8}, headers=an).status_code == 429
            admin = {"Authorization": f"Bearer {gw.key('main')}"}
            listed = http.get("/v1/admin/keys/batch/prompts", headers=admin)
            assert listed.status_code == 200, listed.text
            assert http.get("/v1/admin/keys/main/prompts", headers=admin).json()["prompts"] == {}
            missing = http.get("/v1/admin/keys/nobody/prompts", headers=admin)
            refused = http.get("/v1/admin/keys/batch/prompts", headers=oa)
            usage = http.get("/v1/admin/usage", headers=admin).json()
    chat_hash = sha(
        '{"max_tokens":20,"messages":[["user","héllo there"]],"model":"gpt-4o-mini","system":"Be brief.","temperature":0.0}'
    )
    msg_hash = sha(
        '{"max_tokens":7,"messages":[["user","hi"]],"model":"claude-3-5-haiku-latest","system":"","temperature":null}'
    )
    assert listed.json() == {
        "key": "batch",
        "admitted": 3,
        "distinct": 2,
        "repeated": 1,
        "prompts": {chat_hash: 2, msg_hash: 1},
    }
    assert missing.status_code == 404 and "nobody" in missing.json()["error"]["message"]
    assert refused.status_code == 403
    assert usage["keys"]["batch"]["prompts"] == {"admitted": 3, "distinct": 2, "repeated": 1}


def test_peaks_in_any_window_and_in_aligned_windows():
    # A fixed window of 3 per 10 s lets 3 in at the end of one window and 3 more at the
    # start of the next: 3 in every aligned window, 6 within one 10 s span.
    clock = FakeClock(T0)
    raw = make_raw_config(
        [{"name": "main", "admin": True}],
        limits={"algorithm": "fixed_window", "window_seconds": 10, "requests": 3, "concurrent": 4},
    )
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 30}
    with run_gateway(raw, clock=clock) as gw, httpx.Client(base_url=gw.base_url) as http:
        headers = {"Authorization": f"Bearer {gw.key()}"}
        totals = []
        for step in (7, 1, 1, 0.5, 0.7, 0.2, 0.2):  # t0+7, 8, 9, 9.5 (refused), 10.2, 10.4, 10.6
            clock.advance(step)
            r = http.post("/v1/chat/completions", json=chat, headers=headers)
            if r.status_code == 200:
                totals.append(r.json()["usage"]["total_tokens"])
        assert len(totals) == 6
        peaks = http.get("/v1/admin/usage", headers=headers).json()["keys"]["main"]["peaks"]
    assert peaks["window_seconds"] == 10
    assert peaks["requests"] == {"limit": 3, "any_window": 6, "aligned_window": 3}
    # Tokens held: input + the real output (the unused part of max_tokens was given back).
    assert peaks["tokens"]["any_window"] == sum(totals)
    assert peaks["tokens"]["aligned_window"] == max(sum(totals[:3]), sum(totals[3:]))
    assert peaks["input_tokens"]["any_window"] == 0  # the OpenAI endpoint counts tokens, not input/output
    assert peaks["concurrent"] == {"limit": 4, "peak": 1}
