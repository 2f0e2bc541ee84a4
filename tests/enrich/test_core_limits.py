"""Job-wide limits: two processes sharing one store (SQLite, then Redis) stay
within the gateway's requests, tokens and concurrency limits, by the server's
own counters; two jobs with a store each collide, and adapt to the headers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.enrich.support import BURSTY, REPO, TIGHT, client_limits, make_cfg, rows_of, usage_of
from udfs.enrich.runner import enrich_batch, open_store
from udfs.enrich.settings import EnrichConfig

WORKERS = 2
ROWS_PER_WORKER = 15


def run_workers(tmp_path: Path, cfgs: list[EnrichConfig], key: str, prefix: str) -> list[dict]:
    procs = []
    for i, cfg in enumerate(cfgs):
        (tmp_path / f"cfg{i}.json").write_text(cfg.model_dump_json())
        (tmp_path / f"rows{i}.json").write_text(json.dumps(rows_of(ROWS_PER_WORKER, f"{prefix}-w{i}-")))
        args = [
            sys.executable,
            "-m",
            "tests.enrich.worker",
            *(str(tmp_path / f"{n}{i}.json") for n in ("cfg", "rows", "out")),
        ]
        env = {**os.environ, "AIBATCH_TEST_KEY": key, "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen(args, cwd=REPO, env=env))
    for p in procs:
        assert p.wait(timeout=120) == 0
    return [o for i in range(len(cfgs)) for o in json.loads((tmp_path / f"out{i}.json").read_text())]


def run_threads(cfgs: list[EnrichConfig], key: str, prefix: str, rows: int = ROWS_PER_WORKER) -> list[dict]:
    """The same in threads of this process (each with its own store object): quicker to start."""
    results: dict[int, list[dict]] = {}

    def task(i: int) -> None:
        cfg = cfgs[i]
        results[i] = enrich_batch(rows_of(rows, f"{prefix}-t{i}-"), cfg, api_key=key, store=open_store(cfg, "j"))

    threads = [threading.Thread(target=task, args=(i,)) for i in range(len(cfgs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [o for i in range(len(cfgs)) for o in results[i]]


def assert_within_limits(usage: dict, style: str) -> None:
    windows = usage["windows"]
    assert windows, "the server saw no requests"
    for w in windows:  # fixed windows of the server's ledger: any one holds at most the limit
        assert w["requests"] <= TIGHT["requests"], usage
        if style == "anthropic":
            assert w["input_tokens"] <= TIGHT["input_tokens"], usage
            assert w["output_tokens"] <= TIGHT["output_tokens"], usage
    assert usage["peak_concurrent"] <= TIGHT["concurrent"], usage


@pytest.mark.parametrize(
    ("backend", "kind", "key", "processes"),
    [
        ("sqlite", "openai", "lim-sqlite", True),
        ("redis", "openai", "lim-redis", True),
        ("sqlite", "anthropic", "lim-anthropic", False),  # input and output tokens limited separately
    ],
)
def test_two_tasks_share_one_budget(gw, tmp_path, redis_url, backend, kind, key, processes):
    store = {"backend": backend, "url": redis_url}
    cfg = make_cfg(gw, tmp_path / "store.sqlite", kind, store=store, limits=client_limits(TIGHT))
    if processes:
        out = run_workers(tmp_path, [cfg] * WORKERS, gw.key(key), f"{backend}-{kind}")
    else:
        out = run_threads([cfg] * WORKERS, gw.key(key), f"{backend}-{kind}")
    assert len(out) == WORKERS * ROWS_PER_WORKER
    assert all(o["status"] == "enriched" for o in out), [o["error"] for o in out if o["error"]][:3]
    usage = usage_of(gw, key)
    assert_within_limits(usage, kind)
    requests = sum(w["requests"] for w in usage["windows"])
    refused = sum(w["rate_limited"] for w in usage["windows"])
    assert requests == WORKERS * ROWS_PER_WORKER, usage  # each row sent once
    assert refused <= 0.01 * (requests + refused), usage
    # The limit was really the bottleneck: some span of one window's length
    # held the limit (or one short), by the server's own sliding count. A
    # fixed window of its ledger can hold less when a burst straddles its
    # boundary (seen: 10 of 12).
    assert usage["peaks"]["requests"]["any_window"] >= TIGHT["requests"] - 1, usage


def test_separate_stores_collide_then_adapt_to_the_headers(gw, tmp_path):
    """Two jobs on one key with a store each: each believes it has the whole quota, so the
    server refuses some calls (the counters see it); the refusals and the rate-limit headers
    then shrink each job's share, so the refusals stay a small part of the calls."""
    cfgs = [
        make_cfg(gw, tmp_path / f"own{i}.sqlite", limits=client_limits(TIGHT), retry={"max_attempts": 10})
        for i in range(WORKERS)
    ]
    out = run_threads(cfgs, gw.key("lim-shared"), "separate", rows=30)
    assert [o["status"] for o in out] == ["enriched"] * len(out)
    usage = usage_of(gw, "lim-shared")
    assert_within_limits(usage, "openai")
    requests = sum(w["requests"] for w in usage["windows"])
    refused = [w["rate_limited"] for w in usage["windows"]]
    assert requests == len(out)
    # The collision costs about a window's worth of refusals at the start
    # (seen: 10 to 13 of 40 to 60 calls, in the first two to four 2 s
    # windows); once the shares have shrunk, only the odd one as a share
    # grows back (seen: [1, 7, 4, 0, 0, 1, ...], [8, 3, 0, 1, 0, 0, 0]).
    assert 0 < sum(refused) <= 0.25 * requests, usage
    half = len(refused) // 2
    assert sum(refused[:half]) > sum(refused[half:]), refused


@pytest.mark.parametrize(("kind", "key"), [("openai", "lim-over"), ("anthropic", "lim-over-anthropic")])
def test_limits_set_above_the_keys_are_learnt_from_the_headers(gw, tmp_path, kind, key):
    """Settings that promise 40 % more than the key has (as the defaults do on our gateway):
    the first window draws some 429s, then the budget holds the limits every response
    announces, so the later windows draw at most 1 %."""
    cfg = make_cfg(gw, tmp_path / "store.sqlite", kind, limits=client_limits(BURSTY, scale=1.4))
    calls: list[float] = []

    def on_event(event: dict) -> None:
        if event["type"] == "call":
            calls.append(time.time())

    rows = rows_of(48, f"over-{kind}-")
    out = enrich_batch(rows, cfg, api_key=gw.key(key), store=open_store(cfg, "j"), on_event=on_event)
    assert all(o["status"] == "enriched" for o in out), [o["error"] for o in out if o["error"]][:3]
    usage = usage_of(gw, key)
    # The server's ledger windows that start after the first window from our first call ended.
    later = [w for w in usage["windows"] if w["start_unix"] >= min(calls) + TIGHT["window_seconds"]]
    assert len(later) >= 2, usage
    refused = sum(w["rate_limited"] for w in later)
    admitted = sum(w["requests"] for w in later)
    first = sum(w["rate_limited"] for w in usage["windows"]) - refused
    print(f"{kind}: {first} 429s in the first window, {refused} of {admitted + refused} attempts after it")
    assert first > 0, usage  # the settings really were above the key's limits
    assert refused <= 0.01 * (admitted + refused), usage
    assert usage["peaks"]["requests"]["any_window"] <= TIGHT["requests"], usage
    # ...and at the key's limit, not below it: the 429s were our own overshoot, not another
    # client, so the share stays whole (without the learnt limits the share drops: 8-10 a window).
    assert max(w["requests"] for w in later) >= TIGHT["requests"] - 1, usage
