"""Per-key limits against the real service on loopback: requests per minute,
texts per minute on /score, concurrent runs and core-seconds of runs per day,
each answered 429 with retry-after and rate-limit headers once exceeded and
never before; shared through a real Redis by two services."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import pytest

from gateway.running import serve_in_thread
from infra.redis import LocalRedis
from service.app import create_app
from service.config import ConfigError, named_keys
from service.ratelimits import run_cores

from .conftest import assert_problem, service_config
from .test_service_api import wait_for_end

KEYS = ("requests:sk-limit-requests", "texts:sk-limit-texts", "runs:sk-limit-runs", "budget:sk-limit-budget")
LIMITS = {
    "default": {"requests_per_minute": 1000, "texts_per_minute": 1000, "concurrent_runs": 10},
    "keys": {
        "requests": {"requests_per_minute": 5},
        "texts": {"texts_per_minute": 5},
        "runs": {"concurrent_runs": 1},
        "budget": {"core_seconds_per_day": 1000},
    },
}


@pytest.fixture(scope="module")
def limited(service_base, tmp_path_factory) -> Iterator[tuple[str, object]]:
    base = tmp_path_factory.mktemp("limited")
    config = service_config(service_base, limits=LIMITS, runs={"db": str(base / "runs.db"), "dir": str(base / "runs")})
    app = create_app(config, KEYS)
    with serve_in_thread(app, timeout=60) as url:
        yield url, app


def as_key(url: str, name: str) -> httpx.Client:
    key = dict(k.split(":", 1) for k in KEYS)[name]
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=120)


def assert_429(response: httpx.Response, kind: str, limit: int) -> int:
    body = assert_problem(response, 429)
    assert body["type"].endswith("/rate-limited") and body["limit"] == kind and body["limit_value"] == limit
    retry = int(response.headers["retry-after"])
    assert retry >= 1 and body["retry_after"] == retry
    assert response.headers["ratelimit-limit"] == str(limit)
    return retry


def dry_run(tmp_path, name: str) -> dict:
    (tmp_path / "in.jsonl").write_text('{"text": "fine"}\n')
    return {
        "job": "ingest",
        "inputs": {"input": str(tmp_path / "in.jsonl")},
        "outputs": {"output": str(tmp_path / name / "o"), "rejects": str(tmp_path / name / "r")},
        "options": {"format": "jsonl", "source": "mine"},
        "dry_run": True,
    }


def test_requests_per_minute_the_sixth_is_429_not_the_fifth(limited):
    url, _ = limited
    assert_problem(httpx.get(f"{url}/api/v1/runs", headers={"x-api-key": "sk-limit-requestsX"}), 401)  # not counted
    assert httpx.get(f"{url}/api/v1/health").status_code == 200  # no key, not counted
    with as_key(url, "requests") as c:
        for i in range(1, 6):
            r = c.get("/api/v1/runs")
            assert r.status_code == 200, (i, r.text)
            assert (r.headers["ratelimit-limit"], r.headers["ratelimit-remaining"]) == ("5", str(5 - i))
            assert 0 <= int(r.headers["ratelimit-reset"]) <= 60 and "retry-after" not in r.headers
        r = c.get("/api/v1/models")  # every endpoint counts
        assert 1 <= assert_429(r, "requests_per_minute", 5) <= 60
        assert r.headers["ratelimit-remaining"] == "0"
    with as_key(url, "texts") as other:  # another key has its own count
        assert other.get("/api/v1/runs").status_code == 200


def test_texts_per_minute_on_score_counts_texts_across_v1_and_v2(limited):
    url, _ = limited
    with as_key(url, "texts") as c:
        assert_problem(c.post("/api/v2/score", json={"model": "sentiment", "texts": ["a"] * 9}), 422)  # not counted
        assert c.post("/api/v2/score", json={"model": "sentiment", "texts": ["good", "bad", "fine"]}).status_code == 200
        r = c.post("/api/v1/score", json={"model": "sentiment", "texts": ["good", "bad", "fine"]})  # 6 > 5
        assert 1 <= assert_429(r, "texts_per_minute", 5) <= 60
        assert r.headers["ratelimit-remaining"] == "2"
        r = c.post("/api/v1/score", json={"model": "sentiment", "texts": ["good", "bad"]})  # exactly 5
        assert r.status_code == 200, r.text
        assert_429(c.post("/api/v2/score", json={"model": "sentiment", "texts": ["one more"]}), "texts_per_minute", 5)
        limits = c.get("/api/v1/limits").json()["limits"]
        assert limits["texts_per_minute"] == {"limit": 5, "remaining": 0}


def test_concurrent_runs_the_second_is_429_while_the_first_runs(limited, tmp_path):
    url, _ = limited
    with as_key(url, "runs") as c:
        first = c.post("/api/v1/runs", json=dry_run(tmp_path, "1"))
        assert first.status_code == 202, first.text
        r = c.post("/api/v1/runs", json=dry_run(tmp_path, "2"))
        assert assert_429(r, "concurrent_runs", 1) == 5
        assert c.get(f"/api/v1/runs/{first.json()['id']}").json()["state"] == "running"  # refused while it ran
        assert wait_for_end(c, first.json()["id"])["state"] == "succeeded"
        second = c.post("/api/v1/runs", json=dry_run(tmp_path, "2"))
        assert second.status_code == 202, second.text
        wait_for_end(c, second.json()["id"])


def test_core_seconds_per_day_refuses_runs_once_spent(limited, tmp_path):
    url, app = limited
    app.state.limiter.charge("budget", 999)  # what runs that ended earlier today were charged
    with as_key(url, "budget") as c:
        r = c.post("/api/v1/runs", json=dry_run(tmp_path, "1"))  # 999 of 1000: allowed
        assert r.status_code == 202, r.text
        run = wait_for_end(c, r.json()["id"])
        # a dry run is one process: its seconds x 1 core, rounded up
        assert run["resources"] == {"cores": 1, "core_seconds": math.ceil(run["timings"]["seconds"])}
        assert run["resources"]["core_seconds"] >= 1
        budget = c.get("/api/v1/limits").json()["limits"]["core_seconds_per_day"]
        assert (budget["limit"], budget["remaining"], budget["used"]) == (1000, 0, 1000)
        r = c.post("/api/v1/runs", json=dry_run(tmp_path, "2"))
        assert 86_000 <= assert_429(r, "core_seconds_per_day", 1000) <= 86_400


def test_two_services_share_their_counts_through_redis(service_base, tmp_path):
    with LocalRedis(tmp_path / "redis") as redis:
        limits = {"storage": redis.url, "default": {"requests_per_minute": 4}}
        apps = [
            create_app(
                service_config(
                    service_base, limits=limits, runs={"db": str(tmp_path / f"{i}.db"), "dir": str(tmp_path / f"r{i}")}
                ),
                ("one:sk-shared",),
            )
            for i in range(2)
        ]
        with serve_in_thread(apps[0], timeout=60) as a, serve_in_thread(apps[1], timeout=60) as b:
            headers = {"x-api-key": "sk-shared"}
            assert [httpx.get(f"{u}/api/v1/runs", headers=headers).status_code for u in (a, b, a, b)] == [200] * 4
            assert_429(httpx.get(f"{b}/api/v1/runs", headers=headers), "requests_per_minute", 4)


def test_limit_settings_are_validated():
    with pytest.raises(ConfigError, match="limits.storage"):
        service_config_only(limits={"storage": "memcached://127.0.0.1:11211"})
    with pytest.raises(ConfigError, match="limits.default.requests_per_minute"):
        service_config_only(limits={"default": {"requests_per_minute": 0}})
    with pytest.raises(ConfigError, match="limits.keys.x.texts_per_minte"):
        service_config_only(limits={"keys": {"x": {"texts_per_minte": 5}}})
    with pytest.raises(ConfigError, match="two API keys are named 'a'"):
        named_keys(["a:sk-1", "a:sk-2"])
    named = named_keys(["dash:sk-1", "sk-2", "abc+/de=="])
    assert named["dash"] == "sk-1" and list(named.values())[1:] == ["sk-2", "abc+/de=="]
    assert all(n.startswith("key-") and len(n) == 16 for n in list(named)[1:])


def test_limits_keys_must_name_a_key(service_base):
    config = service_config(service_base, limits={"keys": {"dashbord": {"concurrent_runs": 1}}})
    with pytest.raises(ConfigError, match=r"limits.keys.dashbord: no API key of that name .*dashboard"):
        create_app(config, ("dashboard:sk-1",))


@pytest.mark.parametrize(
    ("master", "dry", "job", "cores"),
    [("local[3]", False, "ingest", 3), ("local", False, "ingest", 1), ("local[2,4]", False, "score", 2),
     ("yarn", False, "ingest", 7), ("spark://h:7077", False, "ingest", 7), ("local[4]", True, "ingest", 1)],
)  # fmt: skip
def test_run_cores(master, dry, job, cores):
    assert run_cores(master, dry, job, cluster_cores=7) == cores


def service_config_only(**changes):
    from service.config import parse_config

    return parse_config(changes)
