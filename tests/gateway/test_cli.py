"""The one-command start (python -m gateway), loopback only, and keys never
appearing in logs or answers."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import openai

from gateway.running import GatewayProcess

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_start_with_one_command_and_keys_stay_out_of_logs(tmp_path):
    key = "sk-cli-" + secrets.token_hex(16)
    wrong = "sk-wrong-" + secrets.token_hex(16)
    env = {**os.environ, "AIBATCH_GATEWAY_KEY": key}
    with GatewayProcess("conf/gateway.toml", env=env, log_level="debug", capture=True) as gw:
        base = gw.base_url
        bodies = []
        client = openai.OpenAI(api_key=key, base_url=f"{base}/v1", _strict_response_validation=True)
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}])
        assert answer.choices[0].message.content == "You said: ping"
        bodies.append(answer.model_dump_json())
        for headers in ({"Authorization": f"Bearer {wrong}"}, {"x-api-key": wrong, "anthropic-version": "2023-06-01"}):
            r = httpx.post(f"{base}/v1/messages", json={"model": "x", "max_tokens": 1, "messages": []}, headers=headers)
            assert r.status_code == 401
            bodies.append(r.text + str(r.headers))
        usage = httpx.get(f"{base}/v1/admin/usage", headers={"Authorization": f"Bearer {key}"})
        bodies.append(usage.text)
        assert usage.json()["keys"]["dev"]["windows"][0]["requests"] == 1
    output = gw.output
    assert "Uvicorn running on http://127.0.0.1:" in output
    assert "AIBATCH_GATEWAY_KEY" in output  # it says where the key came from...
    assert "POST /v1/chat/completions -> 200" in output
    for secret in (key, wrong):  # ...but never the key, nor a wrong one
        assert secret not in output
        assert all(secret not in body for body in bodies)


def test_refuses_non_loopback_host():
    result = run_cli(
        "--config", "conf/gateway.toml", "--host", "0.0.0.0", env={**os.environ, "AIBATCH_GATEWAY_KEY": "k"}
    )
    assert result.returncode == 2 and "only loopback" in result.stderr


def test_missing_key_variable_is_named():
    env = {k: v for k, v in os.environ.items() if k != "AIBATCH_GATEWAY_KEY"}
    result = run_cli("--config", "conf/gateway.toml", env=env)
    assert result.returncode == 2 and "AIBATCH_GATEWAY_KEY" in result.stderr
