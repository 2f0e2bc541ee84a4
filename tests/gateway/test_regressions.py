"""Regression tests for defects found when the gateway was tried as an outside
user would (issue 8, part 3); each failed before its fix."""

from __future__ import annotations

import json
import os
import secrets
import select
import socket
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from gateway.ratelimit import ANTHROPIC, KeyLimits, go_duration
from gateway.running import GatewayProcess
from gateway.tokens import TokenCounter
from tests.gateway.conftest import FakeClock, make_raw_config, run_gateway
from tests.gateway.test_limiter import key

MiB = 1024 * 1024
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
MSG = {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def read_response(sock: socket.socket, wait: float) -> bytes:
    """Whatever the server answers within `wait` seconds (until it closes or the body is complete)."""
    sock.setblocking(True)
    sock.settimeout(wait)
    data = b""
    try:
        while True:
            head, sep, body = data.partition(b"\r\n\r\n")
            length = [
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
            ]
            if sep and length and len(body) >= length[0]:
                return data
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except (TimeoutError, ConnectionResetError):
        return data


@pytest.mark.parametrize(
    "path,extra", [("/v1/chat/completions", ""), ("/v1/messages", "anthropic-version: 2023-06-01\r\n")]
)
def test_chunked_body_over_the_limit_is_refused_while_it_streams(gateway, path, extra):
    # No Content-Length: the body comes chunked. The client sends the limit plus
    # 512 KiB without ending the body, then waits: the 413 must come now, not
    # after a body of any size has been read into memory.
    limit = gateway.config.max_request_bytes
    url = urlsplit(gateway.base_url)
    piece = b"x" * 65536
    framed = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    with socket.create_connection((url.hostname, url.port)) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nx-api-key: {gateway.key()}\r\n{extra}"
            "content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        sock.sendall(head.encode())
        sent = 0
        answered = False
        while sent < limit + 512 * 1024:
            if select.select([sock], [], [], 0)[0]:
                answered = True
                break
            sock.sendall(framed)
            sent += len(piece)
        response = read_response(sock, wait=10)
    assert sent <= limit + MiB
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), (answered, response[:300])
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    if path == "/v1/messages":
        assert body["type"] == "error" and body["error"]["type"] == "request_too_large"
    else:
        assert body["error"]["type"] == "invalid_request_error" and "maximum size" in body["error"]["message"]
    # The server is still serving.
    assert (
        httpx.post(
            f"{gateway.base_url}/v1/chat/completions", json=CHAT, headers={"x-api-key": gateway.key()}
        ).status_code
        == 200
    )


def test_deeply_nested_json_gets_the_providers_400():
    depth = 100_000
    raw = make_raw_config([{"name": "main"}], max_request_bytes=4 * MiB)
    with run_gateway(raw) as gw, httpx.Client(base_url=gw.base_url, headers={"x-api-key": gw.key()}) as http:
        nested = b'{"model": "gpt-4o-mini", "metadata": ' + b"[" * depth + b"]" * depth + b"}"
        r = http.post("/v1/chat/completions", content=nested, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text[:200]
        assert (
            set(r.json()["error"]) == {"message", "type", "param", "code"} and "nested" in r.json()["error"]["message"]
        )
        r = http.post(
            "/v1/messages",
            content=b"[" * depth + b"]" * depth,
            headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
        )
        assert r.status_code == 400 and r.json()["type"] == "error"
        assert (
            r.json()["error"]["type"] == "invalid_request_error" and r.json()["request_id"] == r.headers["request-id"]
        )
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200


@pytest.mark.parametrize(
    "seconds,text",
    [
        (0.0, "0s"),
        (-1.0, "0s"),
        (0.0004, "1ms"),  # never earlier than the truth: up to the next millisecond
        (0.02, "20ms"),
        (0.9999, "1s"),
        (1.5, "1.5s"),
        (59.9996, "1m0s"),
        (60.0, "1m0s"),
        (61.25, "1m1.25s"),
        (119.9999, "2m0s"),
        (3599.9999, "1h0m0s"),
        (3723.0, "1h2m3s"),
    ],
)
def test_reset_durations_in_go_format(seconds, text):
    assert go_duration(seconds) == text


def test_anthropic_token_remaining_headers_round_to_the_nearest_thousand():
    clock = FakeClock(1_800_000_000.0)
    kl = KeyLimits(key(algorithm="fixed_window", requests=10, input_tokens=100_000, output_tokens=40_000), clock)
    kl.admit(ANTHROPIC, input_tokens=1_499, max_output=12_600)  # 98,501 and 27,400 left
    h = kl.headers(ANTHROPIC)
    assert h["anthropic-ratelimit-input-tokens-remaining"] == "99000"
    assert h["anthropic-ratelimit-output-tokens-remaining"] == "27000"
    assert h["anthropic-ratelimit-tokens-remaining"] == "27000"  # output is the tighter one
    assert h["anthropic-ratelimit-requests-remaining"] == "9"  # requests stay exact
    kl.admit(ANTHROPIC, input_tokens=1, max_output=500)  # 98,500 and 26,900 left: halves round up
    assert kl.headers(ANTHROPIC)["anthropic-ratelimit-input-tokens-remaining"] == "99000"
    # The admin counters keep the exact values.
    assert kl.remaining() == {"requests": 8, "tokens": 40_000, "input_tokens": 98_500, "output_tokens": 26_900}


def test_health_is_open_and_docs_are_off_by_default():
    raw = make_raw_config([{"name": "main"}])
    with run_gateway(raw) as gw:
        assert httpx.get(f"{gw.base_url}/health").json() == {"status": "ok"}
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"{gw.base_url}{path}", headers={"x-api-key": gw.key()}).status_code == 404
        assert httpx.get(f"{gw.base_url}/v1/models").status_code == 401
    raw = make_raw_config([{"name": "main"}], docs=True)
    with run_gateway(raw) as gw:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"{gw.base_url}{path}").status_code == 200


def test_query_strings_never_reach_the_access_log():
    key_value = "sk-cli-" + secrets.token_hex(16)
    leaked = "sk-leak-" + secrets.token_hex(16)
    env = {**os.environ, "AIBATCH_GATEWAY_KEY": key_value}
    with GatewayProcess("conf/gateway.toml", env=env, log_level="debug", capture=True) as gw:
        base = gw.base_url
        assert httpx.get(f"{base}/v1/models?api_key={leaked}").status_code == 401
        ok = httpx.get(f"{base}/v1/models?api_key={leaked}&x=1", headers={"x-api-key": key_value})
        assert ok.status_code == 200
    output = gw.output
    assert '"GET /v1/models HTTP/1.1" 401' in output and '"GET /v1/models HTTP/1.1" 200' in output
    assert leaked not in output and "api_key" not in output and key_value not in output


class FailingCounter(TokenCounter):
    """The real tokenizer, except that counting a prompt fails: an unexpected server error."""

    def messages(self, messages: list[tuple[str, str]], system: str = "") -> int:
        raise RuntimeError("counter broke")


def test_an_unexpected_error_gets_the_providers_500_shape():
    raw = make_raw_config([{"name": "main"}])
    environ = {entry["env"]: "sk-test-main" for entry in raw["keys"]}
    app = create_app(parse_config(raw, environ), counter=FailingCounter())
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": "sk-test-main"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        r = client.post(
            "/v1/messages", json=MSG, headers={"x-api-key": "sk-test-main", "anthropic-version": "2023-06-01"}
        )
        assert r.status_code == 500 and r.json()["error"]["type"] == "api_error" and "counter broke" not in r.text
