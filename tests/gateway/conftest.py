"""Fixtures that start the real gateway (uvicorn in a background thread) on a
free loopback port and stop it at the end, plus a fake clock for limit tests."""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config
from gateway.running import serve_in_thread


def pytest_configure(config: pytest.Config) -> None:
    # The lead registers `slow` project-wide; register it here only if that is missing.
    if not any(line.split(":")[0].strip() == "slow" for line in config.getini("markers")):
        config.addinivalue_line("markers", "slow: takes more than about 20 s (still runs in CI)")


class FakeClock:
    """Unix seconds that move only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MODELS = [
    {
        "id": "gpt-4o-mini-2024-07-18",
        "aliases": ["gpt-4o-mini"],
        "display_name": "GPT-4o mini",
        "owned_by": "openai",
        "created": 1721260800,
        "context_window": 4096,
        "max_output_tokens": 1024,
        "default_max_tokens": 64,
    },
    {
        "id": "gpt-4.1-nano-2025-04-14",
        "aliases": ["gpt-4.1-nano"],
        "display_name": "GPT-4.1 nano",
        "owned_by": "openai",
        "created": 1744588800,
        "context_window": 4096,
        "max_output_tokens": 1024,
        "default_max_tokens": 64,
    },
    {
        "id": "claude-3-5-haiku-20241022",
        "aliases": ["claude-3-5-haiku-latest"],
        "display_name": "Claude Haiku 3.5",
        "owned_by": "anthropic",
        "created": 1729555200,
        "context_window": 4096,
        "max_output_tokens": 1024,
    },
    {
        "id": "smollm2-135m-instruct-q4_1",
        "aliases": ["smollm2"],
        "display_name": "SmolLM2 135M Instruct",
        "owned_by": "huggingfacetb",
        "created": 1730419200,
        "backend": "llama",
        "context_window": 2048,
        "max_output_tokens": 256,
        "default_max_tokens": 16,
    },
]

BIG_LIMITS = {
    "algorithm": "sliding_window",
    "window_seconds": 60,
    "requests": 10_000,
    "tokens": 10_000_000,
    "input_tokens": 10_000_000,
    "output_tokens": 10_000_000,
    "concurrent": 64,
}


def make_raw_config(keys: list[dict], limits: dict | None = None, latency: dict | None = None, **server: Any) -> dict:
    """A config document: each key entry needs name (its env var is derived)."""
    entries = []
    for k in keys:
        entry = {"env": f"GW_TEST_KEY_{k['name'].upper().replace('-', '_')}", **k}
        entries.append(entry)
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, **server},
        "limits": {**BIG_LIMITS, **(limits or {})},
        "latency": latency or {"distribution": "none"},
        "keys": entries,
        "models": copy.deepcopy(MODELS),
    }
    return raw


@dataclass
class RunningGateway:
    base_url: str
    config: GatewayConfig
    keys: dict[str, str] = field(repr=False)  # key name -> secret; kept out of test output
    app: Any

    @property
    def state(self):
        return self.app.state.gateway

    def key(self, name: str = "main") -> str:
        return self.keys[name]


@contextmanager
def run_gateway(raw: dict, clock: Callable[[], float] | None = None) -> Iterator[RunningGateway]:
    keys = {entry["name"]: "sk-test-" + secrets.token_hex(16) for entry in raw["keys"]}
    environ = {entry["env"]: keys[entry["name"]] for entry in raw["keys"]}
    config = parse_config(raw, environ)
    app = create_app(config, clock=clock or time.time)
    with serve_in_thread(app) as base_url:
        yield RunningGateway(base_url, config, keys, app)


FAULT_KINDS = [
    "rate_limit",
    "server_error",
    "unavailable",
    "overloaded",
    "timeout",
    "malformed_json",
    "stream_error",
    "stream_drop",
    "stream_truncate",
]


@pytest.fixture(scope="session")
def gateway() -> Iterator[RunningGateway]:
    """One shared server: an admin key with roomy limits, a second plain key, and
    one key per fault kind with that fault at probability 1."""
    keys: list[dict] = [{"name": "main", "admin": True}, {"name": "other"}]
    for kind in FAULT_KINDS:
        keys.append(
            {"name": f"fault-{kind}", "faults": {kind: 1.0, "timeout_hold_seconds": 5, "retry_after_seconds": 0.2}}
        )
    with run_gateway(make_raw_config(keys, max_request_bytes=65536, docs=True)) as gw:
        yield gw


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()
