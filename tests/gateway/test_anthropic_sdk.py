"""Conformance with the official anthropic SDK, strict response validation on."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

import anthropic
import httpx
import httpx2
import jsonschema
import pytest
from pydantic import BaseModel

from gateway.tokens import default_counter
from tests.gateway.test_openai_sdk import SENTIMENT_SCHEMA


def client(gw, key: str = "main", **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=gw.key(key), base_url=gw.base_url, _strict_response_validation=True, **kw)


def test_plain_message_parses_into_sdk_types(gateway):
    raw = client(gateway).messages.with_raw_response.create(
        model="claude-3-5-haiku-latest",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello Claude"}],
    )
    msg = raw.parse()
    assert isinstance(msg, anthropic.types.Message)
    assert msg.model == "claude-3-5-haiku-20241022"
    assert msg.content[0].type == "text" and msg.content[0].text == "You said: Hello Claude"
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    counter = default_counter()
    assert msg.usage.input_tokens == counter.messages([("user", "Hello Claude")], "Be brief.")
    assert msg.usage.output_tokens == counter.count("You said: Hello Claude")
    h = raw.headers
    for limit in ("requests", "input-tokens", "output-tokens", "tokens"):
        assert int(h[f"anthropic-ratelimit-{limit}-limit"]) >= int(h[f"anthropic-ratelimit-{limit}-remaining"])
        reset = datetime.fromisoformat(h[f"anthropic-ratelimit-{limit}-reset"].replace("Z", "+00:00"))
        assert reset.tzinfo is not None
    assert h["request-id"].startswith("req_")


def test_max_tokens_and_stop_sequences(gateway):
    c = client(gateway)
    cut = c.messages.create(
        model="claude-3-5-haiku-latest", max_tokens=3, messages=[{"role": "user", "content": "alpha beta gamma delta"}]
    )
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3
    stop = c.messages.create(
        model="claude-3-5-haiku-latest",
        max_tokens=50,
        stop_sequences=["gamma"],
        messages=[{"role": "user", "content": "alpha beta gamma delta"}],
    )
    assert stop.stop_reason == "stop_sequence" and stop.stop_sequence == "gamma"
    assert stop.content[0].text == "You said: alpha beta "


def test_stream_helper_builds_the_same_message(gateway):
    c = client(gateway)
    kwargs = dict(
        model="claude-3-5-haiku-latest",
        max_tokens=200,
        messages=[{"role": "user", "content": "Tell me something in a few words"}],
    )
    plain = c.messages.create(**kwargs)
    with c.messages.stream(**kwargs) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(texts) > 3
    assert "".join(texts) == plain.content[0].text == final.content[0].text
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.stop_reason == "end_turn"


def test_stream_wire_event_sequence(gateway):
    body = {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 200,
        "stream": True,
        "messages": [{"role": "user", "content": " ".join(["word"] * 20)}],
    }
    headers = {"x-api-key": gateway.key(), "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{gateway.base_url}/v1/messages", json=body, headers=headers) as r:
        lines = [line for line in r.iter_lines() if line]
    events = [line[7:] for line in lines if line.startswith("event: ")]
    datas = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in datas] == events  # every event line names its data's type
    core = [e for e in events if e != "ping"]
    assert core[:2] == ["message_start", "content_block_start"]
    assert set(core[2:-3]) == {"content_block_delta"}
    assert core[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events.count("ping") >= 2  # interleaved with the deltas
    delta = datas[events.index("message_delta")]
    assert delta["usage"]["output_tokens"] == default_counter().count("You said: " + body["messages"][0]["content"])
    assert delta["usage"]["input_tokens"] == datas[0]["message"]["usage"]["input_tokens"]


def test_structured_output(gateway):
    msg = client(gateway).messages.create(
        model="claude-3-5-haiku-latest",
        max_tokens=400,
        messages=[{"role": "user", "content": "Great battery, awful screen."}],
        output_config={"format": {"type": "json_schema", "schema": SENTIMENT_SCHEMA}},
    )
    jsonschema.validate(json.loads(msg.content[0].text), SENTIMENT_SCHEMA)


def test_models_list_in_anthropic_shape(gateway):
    c = client(gateway)
    page = c.models.list()
    infos = list(page)
    assert [m.id for m in infos][0] == "gpt-4o-mini-2024-07-18"
    assert all(isinstance(m, anthropic.types.ModelInfo) and m.type == "model" for m in infos)
    haiku = c.models.retrieve("claude-3-5-haiku-latest")
    assert haiku.id == "claude-3-5-haiku-20241022" and haiku.display_name == "Claude Haiku 3.5"
    assert haiku.created_at.year == 2024
    with pytest.raises(anthropic.NotFoundError) as err:
        c.models.retrieve("claude-0")
    assert err.value.body["error"]["type"] == "not_found_error"


def test_errors_parse_into_sdk_exceptions(gateway):
    bad_key = anthropic.Anthropic(
        api_key="sk-ant-wrong", base_url=gateway.base_url, _strict_response_validation=True, max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError) as auth:
        bad_key.messages.create(
            model="claude-3-5-haiku-latest", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert auth.value.body["error"]["type"] == "authentication_error"
    c = client(gateway, max_retries=0)
    with pytest.raises(anthropic.NotFoundError):
        c.messages.create(model="claude-0", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError) as bad:
        c.messages.create(model="claude-3-5-haiku-latest", max_tokens=5, messages=[{"role": "robot", "content": "x"}])
    assert "messages.0.role" in bad.value.message
    with pytest.raises(anthropic.BadRequestError) as temp:
        c.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=5,
            extra_body={"temperature": 1.5},
            messages=[{"role": "user", "content": "x"}],
        )
    assert "temperature" in temp.value.message


def test_injected_overloaded_is_529(gateway):
    with pytest.raises(anthropic.OverloadedError) as err:
        client(gateway, key="fault-overloaded", max_retries=0).messages.create(
            model="claude-3-5-haiku-latest", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == 529 and err.value.body["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize(
    "key,exc,status,kind",
    [
        ("fault-server_error", anthropic.InternalServerError, 500, "api_error"),
        ("fault-unavailable", anthropic.ServiceUnavailableError, 503, "api_error"),
        ("fault-rate_limit", anthropic.RateLimitError, 429, "rate_limit_error"),
    ],
)
def test_injected_errors(gateway, key, exc, status, kind):
    with pytest.raises(exc) as err:
        client(gateway, key=key, max_retries=0).messages.create(
            model="claude-3-5-haiku-latest", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == status and err.value.body["error"]["type"] == kind


def test_stream_error_event_raises(gateway):
    c = client(gateway, key="fault-stream_error", max_retries=0)
    texts = []
    with pytest.raises(anthropic.APIStatusError) as err:
        with c.messages.stream(
            model="claude-3-5-haiku-latest",
            max_tokens=200,
            messages=[{"role": "user", "content": "a fairly long sentence so the break lands mid stream"}],
        ) as stream:
            for text in stream.text_stream:
                texts.append(text)
    assert err.value.body["error"]["type"] == "overloaded_error"
    assert texts  # part of the answer came first


def test_dropped_stream_raises(gateway):
    c = client(gateway, key="fault-stream_drop", max_retries=0)
    with pytest.raises((httpx2.RemoteProtocolError, anthropic.APIConnectionError)):
        with c.messages.stream(
            model="claude-3-5-haiku-latest",
            max_tokens=200,
            messages=[{"role": "user", "content": "a fairly long sentence so the break lands mid stream"}],
        ) as stream:
            for _ in stream.text_stream:
                pass


def test_truncated_stream_has_no_message_stop(gateway):
    body = {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 200,
        "stream": True,
        "messages": [{"role": "user", "content": "a fairly long sentence so the break lands mid stream"}],
    }
    headers = {"x-api-key": gateway.key("fault-stream_truncate"), "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{gateway.base_url}/v1/messages", json=body, headers=headers) as r:
        assert r.status_code == 200
        events = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert events[0] == "message_start" and "content_block_delta" in events
    assert "message_delta" not in events and "message_stop" not in events
    c = client(gateway, key="fault-stream_truncate", max_retries=0)
    with c.messages.stream(**{k: v for k, v in body.items() if k != "stream"}) as stream:
        texts = list(stream.text_stream)
        snapshot = stream.current_message_snapshot
    assert texts and snapshot.stop_reason is None  # the SDK's message never got its ending


class Aspect(BaseModel):
    name: str
    polarity: Literal["pos", "neg"]


class Review(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    aspects: list[Aspect]


def test_parse_helper_and_count_tokens(gateway):
    c = client(gateway)
    parsed = c.messages.parse(
        model="claude-3-5-haiku-latest",
        max_tokens=300,
        messages=[{"role": "user", "content": "nice phone"}],
        output_format=Review,
    )
    assert isinstance(parsed.parsed_output, Review) and parsed.parsed_output.label in (
        "positive",
        "negative",
        "neutral",
    )
    count = c.messages.count_tokens(
        model="claude-3-5-haiku-latest", system="Be brief.", messages=[{"role": "user", "content": "Hello Claude"}]
    )
    assert count.input_tokens == default_counter().messages([("user", "Hello Claude")], "Be brief.")
    with pytest.raises(anthropic.NotFoundError):
        c.messages.count_tokens(model="claude-0", messages=[{"role": "user", "content": "x"}])
