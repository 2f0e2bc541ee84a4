"""Fixtures for the enrich tests: the real gateway (reusing tests/gateway's
server fixture) on a free loopback port and a real redis-server. The tables
and helpers the tests share are in support.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.redis import LocalRedis
from tests.gateway.conftest import RunningGateway, make_raw_config, run_gateway

from .support import core_keys


@pytest.fixture(scope="session")
def gw() -> Iterator[RunningGateway]:
    with run_gateway(make_raw_config(core_keys())) as gateway:
        yield gateway


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with LocalRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url
