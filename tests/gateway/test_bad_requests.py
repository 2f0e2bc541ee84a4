"""Bad requests of every kind get the right status, the provider's error shape
and a message naming the problem; the server keeps serving."""

from __future__ import annotations

import json
import re

import httpx
import pytest

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MSG = {"model": "claude-3-5-haiku-latest", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def without(body: dict, key: str) -> dict:
    return {k: v for k, v in body.items() if k != key}


OPENAI_CASES = [
    # (body, status, words the message must contain, param)
    (b"{not json", 400, ["not valid JSON"], "body"),
    (b"[1, 2]", 400, ["JSON object"], "body"),
    (without(CHAT, "model"), 400, ["'model'"], "model"),
    (without(CHAT, "messages"), 400, ["'messages'"], "messages"),
    ({**CHAT, "messages": []}, 400, ["messages"], "messages"),
    ({**CHAT, "messages": "hi"}, 400, ["messages"], "messages"),
    ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, ["messages.0.role"], "messages.0.role"),
    (
        {**CHAT, "messages": [{"role": "system", "content": "only a system message"}]},
        400,
        ["non-system message"],
        "messages",
    ),
    (
        {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        400,
        ["messages.0.content.0.type"],
        "messages.0.content.0.type",
    ),
    ({**CHAT, "max_tokens": 0}, 400, ["max_tokens"], "max_tokens"),
    ({**CHAT, "max_tokens": "ten"}, 400, ["max_tokens"], "max_tokens"),
    ({**CHAT, "max_tokens": 5000}, 400, ["max_tokens", "at most 1024"], "max_tokens"),
    ({**CHAT, "temperature": -1}, 400, ["temperature"], "temperature"),
    ({**CHAT, "top_p": 2}, 400, ["top_p"], "top_p"),
    ({**CHAT, "n": 3}, 400, ["'n'"], "n"),
    ({**CHAT, "stream": "yes please"}, 400, ["stream"], "stream"),
    ({**CHAT, "response_format": {"type": "xml"}}, 400, ["response_format.type"], "response_format.type"),
    (
        {**CHAT, "response_format": {"type": "json_schema"}},
        400,
        ["response_format.json_schema"],
        "response_format.json_schema",
    ),
    (
        {
            **CHAT,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strange"}}},
        },
        400,
        ["response_format.json_schema.schema"],
        "response_format.json_schema.schema",
    ),
    ({**CHAT, "model": "gpt-unknown"}, 404, ["gpt-unknown"], "model"),
    ({**CHAT, "messages": [{"role": "user", "content": "x" * 70_000}]}, 413, ["maximum size"], None),
]


@pytest.mark.parametrize("body,status,words,param", OPENAI_CASES)
def test_openai_bad_requests(gateway, body, status, words, param):
    headers = {"Authorization": f"Bearer {gateway.key()}"}
    kwargs = (
        {"content": body, "headers": {**headers, "content-type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body, "headers": headers}
    )
    r = httpx.post(f"{gateway.base_url}/v1/chat/completions", **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param
    for word in words:
        assert word in err["message"]
    ok = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=CHAT, headers=headers)
    assert ok.status_code == 200  # still serving


ANTHROPIC_CASES = [
    (without(MSG, "max_tokens"), 400, ["max_tokens", "Field required"]),
    (without(MSG, "model"), 400, ["model"]),
    ({**MSG, "messages": [{"role": "system", "content": "x"}]}, 400, ["messages.0.role"]),
    ({**MSG, "messages": [{"role": "user"}]}, 400, ["messages.0.content"]),
    (
        {**MSG, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
        400,
        ["messages.0.content.0.type"],
    ),
    ({**MSG, "max_tokens": 99999}, 400, ["max_tokens", "1024"]),
    ({**MSG, "temperature": 1.5}, 400, ["temperature"]),
    ({**MSG, "stop_sequences": "END"}, 400, ["stop_sequences"]),
    ({**MSG, "messages": [{"role": "user", "content": "word " * 5000}]}, 400, ["prompt is too long"]),
    ({**MSG, "model": "claude-0"}, 404, ["claude-0"]),
]


@pytest.mark.parametrize("body,status,words", ANTHROPIC_CASES)
def test_anthropic_bad_requests(gateway, body, status, words):
    headers = {"x-api-key": gateway.key(), "anthropic-version": "2023-06-01"}
    r = httpx.post(f"{gateway.base_url}/v1/messages", json=body, headers=headers)
    assert r.status_code == status, r.text
    data = r.json()
    assert data["type"] == "error" and data["request_id"].startswith("req_")
    assert data["error"]["type"] == {400: "invalid_request_error", 404: "not_found_error"}[status]
    for word in words:
        assert word in data["error"]["message"]
    assert httpx.post(f"{gateway.base_url}/v1/messages", json=MSG, headers=headers).status_code == 200


def test_unsupported_schema_keyword_is_named(gateway):
    headers = {"x-api-key": gateway.key(), "anthropic-version": "2023-06-01"}
    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}},
        "required": ["code"],
    }
    r = httpx.post(
        f"{gateway.base_url}/v1/messages",
        json={**MSG, "output_config": {"format": {"type": "json_schema", "schema": schema}}},
        headers=headers,
    )
    assert r.status_code == 400 and "'pattern'" in r.json()["error"]["message"]


def test_anthropic_version_header_is_required_and_checked(gateway):
    url = f"{gateway.base_url}/v1/messages"
    missing = httpx.post(url, json=MSG, headers={"x-api-key": gateway.key()})
    assert missing.status_code == 400 and "anthropic-version" in missing.json()["error"]["message"]
    bad = httpx.post(url, json=MSG, headers={"x-api-key": gateway.key(), "anthropic-version": "latest"})
    assert bad.status_code == 400 and "anthropic-version" in bad.json()["error"]["message"]


def test_too_large_in_anthropic_shape(gateway):
    r = httpx.post(
        f"{gateway.base_url}/v1/messages",
        json={**MSG, "messages": [{"role": "user", "content": "x" * 70_000}]},
        headers={"x-api-key": gateway.key(), "anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"


@pytest.mark.parametrize(
    "headers,anthropic",
    [
        ({}, False),
        ({"Authorization": "Bearer sk-nope"}, False),
        ({"Authorization": "Basic abc"}, False),
        ({"x-api-key": "sk-nope", "anthropic-version": "2023-06-01"}, True),
        ({"anthropic-version": "2023-06-01"}, True),
    ],
)
def test_missing_or_unknown_key_is_401_in_provider_shape(gateway, headers, anthropic):
    path, body = ("/v1/messages", MSG) if anthropic else ("/v1/chat/completions", CHAT)
    r = httpx.post(f"{gateway.base_url}{path}", json=body, headers=headers)
    assert r.status_code == 401
    if anthropic:
        assert r.json()["error"]["type"] == "authentication_error"
    else:
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert "sk-nope" not in r.text


def test_models_endpoint_shape_follows_the_anthropic_version_header(gateway):
    oa = httpx.get(f"{gateway.base_url}/v1/models", headers={"Authorization": f"Bearer {gateway.key()}"}).json()
    an = httpx.get(
        f"{gateway.base_url}/v1/models", headers={"x-api-key": gateway.key(), "anthropic-version": "2023-06-01"}
    ).json()
    assert oa["object"] == "list" and oa["data"][0]["object"] == "model"
    assert an["has_more"] is False and an["data"][0]["type"] == "model" and an["first_id"] == an["data"][0]["id"]
    unauth = httpx.get(f"{gateway.base_url}/v1/models", headers={"anthropic-version": "2023-06-01"})
    assert unauth.status_code == 401 and unauth.json()["error"]["type"] == "authentication_error"


def test_admin_usage_needs_an_admin_key(gateway):
    r = httpx.get(f"{gateway.base_url}/v1/admin/usage", headers={"Authorization": f"Bearer {gateway.key('other')}"})
    assert r.status_code == 403
    ok = httpx.get(f"{gateway.base_url}/v1/admin/usage", headers={"Authorization": f"Bearer {gateway.key()}"})
    assert ok.status_code == 200 and "main" in ok.json()["keys"]
    for secret in gateway.keys.values():
        assert secret not in ok.text  # keys are reported by name only


def test_health_and_openapi(gateway):
    assert httpx.get(f"{gateway.base_url}/health").json() == {"status": "ok"}
    spec = httpx.get(f"{gateway.base_url}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/messages", "/v1/models", "/v1/admin/usage", "/health"} <= set(spec["paths"])
    body = spec["paths"]["/v1/messages"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "messages", "max_tokens"} <= set(body["required"])
    ref = body["properties"]["messages"]["items"]["$ref"]
    assert ref.endswith("/InputMessage")
    text = json.dumps(spec)
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text))
    assert refs and refs <= set(spec["components"]["schemas"])  # every reference resolves
