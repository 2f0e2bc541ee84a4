"""Conformance with the official openai SDK, strict response validation on."""

from __future__ import annotations

import json

import httpx
import httpx2
import jsonschema
import openai
import pytest

from gateway.tokens import default_counter
from tests.gateway.conftest import MODELS


def client(gw, key: str = "main", **kw) -> openai.OpenAI:
    return openai.OpenAI(api_key=gw.key(key), base_url=f"{gw.base_url}/v1", _strict_response_validation=True, **kw)


def test_plain_completion_parses_into_sdk_types(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there, gateway"}],
        max_tokens=50,
    )
    resp = raw.parse()
    assert isinstance(resp, openai.types.chat.ChatCompletion)
    assert resp.model == "gpt-4o-mini-2024-07-18"  # the versioned model actually used
    assert resp.choices[0].message.content == "You said: Hello there, gateway"
    assert resp.choices[0].finish_reason == "stop"
    counter = default_counter()
    assert resp.usage.prompt_tokens == counter.messages([("user", "Hello there, gateway")], "Be brief.")
    assert resp.usage.completion_tokens == counter.count("You said: Hello there, gateway")
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert raw.headers["x-ratelimit-limit-requests"] == "10000"
    assert int(raw.headers["x-ratelimit-remaining-requests"]) < 10000
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    assert raw.headers["x-request-id"].startswith("req_")


def test_max_tokens_truncates_with_finish_reason_length(gateway):
    resp = client(gateway).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "one two three four five six seven eight nine ten"}],
        max_tokens=4,
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 4
    assert resp.choices[0].message.content == "You said: one"


def test_stop_sequence_cuts_the_answer(gateway):
    resp = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "red, green, blue"}], stop=[", g"]
    )
    assert resp.choices[0].message.content == "You said: red"
    assert resp.choices[0].finish_reason == "stop"


def test_stream_with_usage_matches_plain_answer(gateway):
    c = client(gateway)
    messages = [{"role": "user", "content": "Stream me a few words please"}]
    plain = c.chat.completions.create(model="gpt-4o-mini", messages=messages)
    chunks = list(
        c.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(isinstance(ch, openai.types.chat.ChatCompletionChunk) for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 3  # really incremental
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    assert {ch.id for ch in chunks} == {chunks[0].id}


def test_stream_wire_format_ends_with_done(gateway):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {gateway.key()}"},
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in json.loads(lines[0][6:])  # no include_usage: no usage field at all


SENTIMENT_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "aspects": {
            "type": "array",
            "minItems": 1,
            "maxItems": 4,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "polarity": {"type": "integer", "minimum": -1, "maximum": 1},
                },
                "required": ["name", "polarity"],
                "additionalProperties": False,
            },
        },
        "meta": {
            "type": "object",
            "properties": {"lang": {"type": ["string", "null"]}},
            "required": ["lang"],
            "additionalProperties": False,
        },
    },
    "required": ["label", "confidence", "aspects", "meta"],
    "additionalProperties": False,
}


def test_structured_output_validates_against_the_schema(gateway):
    c = client(gateway)
    kwargs = dict(
        model="gpt-4.1-nano",
        messages=[{"role": "user", "content": "Great battery, awful screen."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "sentiment", "schema": SENTIMENT_SCHEMA, "strict": True},
        },
        max_tokens=400,
    )
    first = c.chat.completions.create(**kwargs)
    value = json.loads(first.choices[0].message.content)
    jsonschema.validate(value, SENTIMENT_SCHEMA)
    assert value["label"] in ("positive", "negative", "neutral")
    assert first.model == "gpt-4.1-nano-2025-04-14"
    again = c.chat.completions.create(**kwargs)
    assert again.choices[0].message.content == first.choices[0].message.content  # reproducible


def test_json_object_mode(gateway):
    resp = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], response_format={"type": "json_object"}
    )
    assert json.loads(resp.choices[0].message.content) == {"reply": "x"}


def test_models_list_and_retrieve(gateway):
    c = client(gateway)
    models = c.models.list()
    ids = [m.id for m in models]
    assert ids == [m["id"] for m in MODELS]
    assert all(isinstance(m, openai.types.Model) and m.object == "model" for m in models)
    got = c.models.retrieve("gpt-4o-mini")
    assert got.id == "gpt-4o-mini-2024-07-18" and got.owned_by == "openai"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-9")


def test_errors_parse_into_sdk_exceptions(gateway):
    with pytest.raises(openai.AuthenticationError) as auth:
        openai.OpenAI(
            api_key="sk-wrong", base_url=f"{gateway.base_url}/v1", _strict_response_validation=True, max_retries=0
        ).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert auth.value.status_code == 401 and auth.value.code == "invalid_api_key"
    c = client(gateway, max_retries=0)
    with pytest.raises(openai.NotFoundError) as nf:
        c.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert nf.value.code == "model_not_found" and "gpt-9" in nf.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], temperature=3)
    assert bad.value.param == "temperature" and "temperature" in bad.value.message
    with pytest.raises(openai.BadRequestError) as ctx:
        c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "word " * 3500}], max_tokens=1000
        )
    assert ctx.value.code == "context_length_exceeded"


def test_sdk_retries_injected_429_until_it_gives_up(gateway):
    c = client(gateway, key="fault-rate_limit", max_retries=2)
    with pytest.raises(openai.RateLimitError) as err:
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert err.value.response.headers["retry-after-ms"] == "200"
    assert err.value.response.request.headers["x-stainless-retry-count"] == "2"  # it retried twice


@pytest.mark.parametrize(
    "key,exc,status",
    [
        ("fault-server_error", openai.InternalServerError, 500),
        ("fault-unavailable", openai.InternalServerError, 503),
        ("fault-overloaded", openai.InternalServerError, 503),  # OpenAI has no 529
    ],
)
def test_injected_server_errors(gateway, key, exc, status):
    with pytest.raises(exc) as err:
        client(gateway, key=key, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == status
    assert err.value.type == "server_error"


def test_injected_timeout_times_out_the_client(gateway):
    with pytest.raises(openai.APITimeoutError):
        client(gateway, key="fault-timeout", max_retries=0, timeout=0.5).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )


def test_injected_malformed_json_is_not_accepted(gateway):
    with pytest.raises((openai.APIResponseValidationError, json.JSONDecodeError)):
        client(gateway, key="fault-malformed_json", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )


def test_stream_error_chunk_raises_api_error(gateway):
    stream = client(gateway, key="fault-stream_error", max_retries=0).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a fairly long sentence so the break lands mid stream"}],
        stream=True,
    )
    got = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            got.append(chunk)
    assert "injected fault" in err.value.message
    assert len(got) >= 2  # the 200 and some deltas came first


def test_dropped_stream_raises_connection_error(gateway):
    stream = client(gateway, key="fault-stream_drop", max_retries=0).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a fairly long sentence so the break lands mid stream"}],
        stream=True,
    )
    got = []
    with pytest.raises((httpx2.RemoteProtocolError, openai.APIConnectionError)):
        for chunk in stream:
            got.append(chunk)
    assert got and not any(ch.choices and ch.choices[0].finish_reason for ch in got)


def test_truncated_stream_ends_without_finish_or_usage(gateway):
    stream = client(gateway, key="fault-stream_truncate", max_retries=0).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a fairly long sentence so the break lands mid stream"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)  # the SDK sees a clean end...
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text and "You said: a fairly long sentence so the break lands mid stream".startswith(text)
    assert len(text) < len("You said: a fairly long sentence so the break lands mid stream")
    assert not any(ch.choices and ch.choices[0].finish_reason for ch in chunks)  # ...but no finish_reason
    assert all(ch.usage is None for ch in chunks)  # and no usage chunk


def test_parse_helper_returns_a_pydantic_object(gateway):
    from tests.gateway.test_anthropic_sdk import Review

    resp = client(gateway).chat.completions.parse(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "nice phone"}],
        response_format=Review,
        max_tokens=400,
    )
    review = resp.choices[0].message.parsed
    assert isinstance(review, Review) and review.aspects
