"""Server-side limits over HTTP: the exact request that crosses a limit gets 429
with the right headers (fake clock), concurrency, and the SDKs' retries."""

from __future__ import annotations

import asyncio
import time

import anthropic
import httpx
import openai
import pytest

from gateway.ratelimit import rfc3339
from tests.gateway.conftest import FakeClock, make_raw_config, run_gateway

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 10}
MSG = {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 10}


@pytest.mark.parametrize(
    "algorithm,reset_openai,reset_anthropic",
    [
        # 3 requests at t0+1.5; window 10 s aligned to t0 (a multiple of 10)
        ("fixed_window", "8.5s", 1_800_000_010.0),
        ("sliding_window", "10s", 1_800_000_011.5),
        ("token_bucket", "10s", 1_800_000_011.5),  # 3 tokens at 0.3/s
    ],
)
def test_exact_crossing_request_gets_429_with_right_headers(algorithm, reset_openai, reset_anthropic):
    clock = FakeClock(1_800_000_000.0)
    raw = make_raw_config([{"name": "main"}], limits={"algorithm": algorithm, "window_seconds": 10, "requests": 3})
    with run_gateway(raw, clock=clock) as gw:
        oa = {"Authorization": f"Bearer {gw.key()}"}
        an = {"x-api-key": gw.key(), "anthropic-version": "2023-06-01"}
        clock.advance(1.5)
        with httpx.Client(base_url=gw.base_url) as http:
            first = http.post("/v1/chat/completions", json=CHAT, headers=oa)
            second = http.post("/v1/messages", json=MSG, headers=an)
            third = http.post("/v1/chat/completions", json=CHAT, headers=oa)
            assert [r.status_code for r in (first, second, third)] == [200, 200, 200]
            assert [
                first.headers["x-ratelimit-remaining-requests"],
                second.headers["anthropic-ratelimit-requests-remaining"],
                third.headers["x-ratelimit-remaining-requests"],
            ] == ["2", "1", "0"]
            assert third.headers["x-ratelimit-reset-requests"] == reset_openai
            fourth = http.post("/v1/chat/completions", json=CHAT, headers=oa)
            assert fourth.status_code == 429
            err = fourth.json()["error"]
            assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
            assert "Limit 3" in err["message"]
            assert fourth.headers["x-ratelimit-remaining-requests"] == "0"
            expected_wait = {"fixed_window": 8.5, "sliding_window": 10.0, "token_bucket": 10 / 3}[algorithm]
            assert int(fourth.headers["retry-after-ms"]) == pytest.approx(expected_wait * 1000, abs=1)
            fifth = http.post("/v1/messages", json=MSG, headers=an)
            assert fifth.status_code == 429 and fifth.json()["error"]["type"] == "rate_limit_error"
            assert fifth.headers["anthropic-ratelimit-requests-reset"] == rfc3339(reset_anthropic)
            assert fifth.headers["retry-after"] == str(int(-(-expected_wait // 1)))
            clock.advance(expected_wait)  # exactly when the server said to come back
            assert http.post("/v1/chat/completions", json=CHAT, headers=oa).status_code == 200
            usage = gw.state.callers[0].limits.ledger.snapshot()
            assert sum(w["requests"] for w in usage) == 4 and sum(w["rate_limited"] for w in usage) == 2


def test_token_limits_and_reservation_over_http():
    clock = FakeClock(1_800_000_000.0)
    raw = make_raw_config(
        [{"name": "main"}],
        limits={"algorithm": "fixed_window", "window_seconds": 60, "tokens": 100, "output_tokens": 30},
    )
    with run_gateway(raw, clock=clock) as gw:
        with httpx.Client(
            base_url=gw.base_url, headers={"Authorization": f"Bearer {gw.key()}", "anthropic-version": "2023-06-01"}
        ) as http:
            r = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 60})
            used = r.json()["usage"]["total_tokens"]  # the 60 reserved came back down to the real output
            assert r.headers["x-ratelimit-remaining-tokens"] == str(100 - r.json()["usage"]["prompt_tokens"] - 60)
            too_big = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 200})
            assert too_big.status_code == 429 and too_big.headers["x-should-retry"] == "false"
            assert (
                "Request too large" in too_big.json()["error"]["message"]
                and too_big.json()["error"]["type"] == "tokens"
            )
            ok = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 100 - used - 8})
            assert ok.status_code == 200, ok.text
            m = http.post("/v1/messages", json={**MSG, "max_tokens": 25})
            assert m.status_code == 200
            out = m.json()["usage"]["output_tokens"]
            m2 = http.post("/v1/messages", json={**MSG, "max_tokens": 30 - out + 1})  # one more than is left
            assert m2.status_code == 429 and "output_tokens" in m2.json()["error"]["message"]


def test_concurrency_limit():
    raw = make_raw_config(
        [{"name": "main"}], limits={"concurrent": 2}, latency={"distribution": "fixed", "fixed_ms": 400}
    )

    async def burst(gw):
        async with httpx.AsyncClient(base_url=gw.base_url, headers={"Authorization": f"Bearer {gw.key()}"}) as http:
            return await asyncio.gather(*[http.post("/v1/chat/completions", json=CHAT) for _ in range(5)])

    with run_gateway(raw) as gw:
        responses = asyncio.run(burst(gw))
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 200, 429, 429, 429]
        refused = [r for r in responses if r.status_code == 429][0]
        assert "concurrent" in refused.json()["error"]["message"] and refused.headers["retry-after"] == "1"
        assert gw.state.callers[0].limits.concurrency.peak == 2
        assert gw.state.callers[0].limits.concurrency.in_flight == 0


class Recorder:
    """Event hooks for the SDKs' HTTP clients: when each request left and each answer came."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, dict]] = []

    def on_request(self, request) -> None:
        self.events.append(("request", time.monotonic(), dict(request.headers)))

    def on_response(self, response) -> None:
        self.events.append(("response", time.monotonic(), {"status": response.status_code, **response.headers}))

    def hooks(self) -> dict:
        return {"request": [self.on_request], "response": [self.on_response]}


def test_sdks_retry_after_the_servers_retry_after():
    # 2 requests per 1 s fixed window, 8 requests in a row through each SDK with one
    # retry allowed: every refused request must get through on its single retry,
    # sent no sooner than the server's retry-after-ms said.
    raw = make_raw_config(
        [{"name": "main", "admin": True}], limits={"algorithm": "fixed_window", "window_seconds": 1, "requests": 2}
    )
    with run_gateway(raw) as gw:
        rec = Recorder()
        oa = openai.OpenAI(
            api_key=gw.key(),
            base_url=f"{gw.base_url}/v1",
            _strict_response_validation=True,
            max_retries=1,
            http_client=openai.DefaultHttpxClient(event_hooks=rec.hooks()),
        )
        an = anthropic.Anthropic(
            api_key=gw.key(),
            base_url=gw.base_url,
            _strict_response_validation=True,
            max_retries=1,
            http_client=anthropic.DefaultHttpxClient(event_hooks=rec.hooks()),
        )
        retries = 0
        for _ in range(4):
            retries += oa.chat.completions.with_raw_response.create(**CHAT).retries_taken
            retries += an.messages.with_raw_response.create(**MSG).retries_taken
        assert retries >= 2  # 8 requests at 2 per 1 s cannot all pass first time
        waits = []
        for (kind, at, info), (next_kind, next_at, next_info) in zip(rec.events, rec.events[1:], strict=False):
            if kind == "response" and info["status"] == 429:
                assert next_kind == "request" and next_info["x-stainless-retry-count"] == "1"
                waits.append((next_at - at, int(info["retry-after-ms"]) / 1000))
        assert len(waits) == retries
        assert all(waited >= told for waited, told in waits)  # sleep never returns early
        usage = httpx.get(f"{gw.base_url}/v1/admin/usage", headers={"x-api-key": gw.key()}).json()
        windows = usage["keys"]["main"]["windows"]
        assert all(w["requests"] <= 2 for w in windows)
        assert sum(w["requests"] for w in windows) == 8
        assert sum(w["rate_limited"] for w in windows) == retries
