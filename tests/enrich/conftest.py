"""Fixtures for the enrich core: the real gateway (reusing tests/gateway's
server fixture) on a free loopback port, a real redis-server, and settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.redis import LocalRedis
from tests.gateway.conftest import RunningGateway, make_raw_config, run_gateway
from udfs.enrich.settings import EnrichConfig

REPO = Path(__file__).resolve().parents[2]

MIXED_FAULTS = {
    "seed": 11,
    "rate_limit": 0.04,
    "server_error": 0.03,
    "unavailable": 0.03,
    "overloaded": 0.03,
    "timeout": 0.02,
    "malformed_json": 0.02,
    "stream_error": 0.01,
    "stream_drop": 0.01,
    "stream_truncate": 0.01,
    "timeout_hold_seconds": 3,
    "retry_after_seconds": 0.2,
}
# Tight limits per 2 s window, with some latency so calls overlap.
TIGHT = {
    "algorithm": "sliding_window",
    "window_seconds": 2,
    "requests": 12,
    "tokens": 6000,
    "input_tokens": 4000,
    "output_tokens": 1500,
    "concurrent": 4,
}
LATENCY = {"distribution": "uniform", "min_ms": 20, "max_ms": 80, "per_chunk_ms": 1, "seed": 3}


def _keys() -> list[dict[str, Any]]:
    keys: list[dict[str, Any]] = [{"name": "main", "admin": True}, {"name": "cache"}]
    keys.append(
        {
            "name": "leak",
            "faults": {
                "seed": 8,
                "rate_limit": 0.3,
                "server_error": 0.2,
                "stream_drop": 0.2,
                "retry_after_seconds": 0.1,
            },
        }
    )
    for kind in ("server_error", "unavailable", "overloaded", "rate_limit", "timeout", "malformed_json"):
        keys.append(
            {"name": f"always-{kind}", "faults": {kind: 1.0, "timeout_hold_seconds": 3, "retry_after_seconds": 0.1}}
        )
    for kind in ("stream_error", "stream_drop", "stream_truncate"):
        keys.append({"name": f"always-{kind}", "faults": {kind: 1.0}})
    keys.append({"name": "mixed", "faults": MIXED_FAULTS, "latency": LATENCY})
    for name in ("lim-sqlite", "lim-redis", "lim-anthropic", "lim-shared"):
        keys.append({"name": name, "limits": TIGHT, "latency": LATENCY})
    return keys


@pytest.fixture(scope="session")
def gw() -> Iterator[RunningGateway]:
    with run_gateway(make_raw_config(_keys())) as gateway:
        yield gateway


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with LocalRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


def make_cfg(gw: RunningGateway, store_path: Path, kind: str = "openai", **overrides: Any) -> EnrichConfig:
    """Settings pointing at the test gateway; sections in overrides are merged."""
    provider = {
        "kind": kind,
        "base_url": gw.base_url + "/v1" if kind == "openai" else gw.base_url,
        "model": "gpt-4o-mini" if kind == "openai" else "claude-3-5-haiku-latest",
        "api_key_env": "AIBATCH_TEST_KEY",
        "timeout_s": 10,
        "max_tokens": 120,
        **overrides.pop("provider", {}),
    }
    doc: dict[str, Any] = {
        "provider": provider,
        "prompts_dir": str(REPO / "conf" / "prompts"),
        "answer_schema": str(REPO / "conf" / "enrich_schema.json"),
        "store": {"backend": "sqlite", "path": str(store_path), **overrides.pop("store", {})},
        "retry": {"max_attempts": 4, "base_delay_s": 0.05, "max_delay_s": 0.5, **overrides.pop("retry", {})},
        "limits": {
            "requests_per_minute": 10_000,
            "tokens_per_minute": 10_000_000,
            "input_tokens_per_minute": 10_000_000,
            "output_tokens_per_minute": 10_000_000,
            "max_concurrency": 8,
            **overrides.pop("limits", {}),
        },
        **overrides,
    }
    return EnrichConfig.model_validate(doc)


def usage_of(gw: RunningGateway, key_name: str) -> dict[str, Any]:
    """The gateway's admin counters for one key."""
    reply = httpx.get(f"{gw.base_url}/v1/admin/usage", headers={"Authorization": f"Bearer {gw.key('main')}"})
    reply.raise_for_status()
    return reply.json()["keys"][key_name]


def totals(usage: dict[str, Any]) -> dict[str, int]:
    out = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "rate_limited": 0}
    for w in usage["windows"]:
        for k in out:
            out[k] += w[k]
    return out


TEXTS = [
    "The delivery was three weeks late and nobody answered my emails.",
    "Great battery life, the phone easily lasts two days.",
    "The app crashes every time I open the settings page.",
    "Billing charged me twice for the same order, please refund.",
    "Lovely staff and quick service, will come back.",
    "The screen cracked after one week of normal use.",
    "Manual is confusing but support helped me set it up.",
    "Package arrived damaged and the box was soaking wet.",
]


def rows_of(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}{i}", "text": f"{TEXTS[i % len(TEXTS)]} (case {prefix}{i})", "predicted": "negative"}
        for i in range(n)
    ]
