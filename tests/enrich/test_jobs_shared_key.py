"""Two enrich jobs started at once on the same API key, with the store their
settings name (the default SQLite file on one machine, Redis on a cluster):
the budget lives in the store per key, not per job, so the two share it.
Both finish with every row enriched, at most 1 % of their requests answered
429 by the limiter, and the gateway's counters never over the limit.

(Jobs with a store each only learn of one another from the provider's
headers and 429s; the core's tests cover that case, tests/enrich/test_core_limits.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .support import (
    CANARY,
    ROOT,
    client_limits,
    enrich_settings,
    read_jsonl_dir,
    scored_rows,
    start_gateway,
    submit_env,
    write_config,
    write_jsonl,
)

pytestmark = pytest.mark.slow

WINDOW = 2
SERVER_LIMITS = {
    "algorithm": "sliding_window",
    "window_seconds": WINDOW,
    "requests": 16,
    "tokens": 8000,
    "concurrent": 8,
}
CLIENT_LIMITS = client_limits(SERVER_LIMITS)
LATENCY = {"distribution": "lognormal", "median_ms": 60, "sigma": 0.5, "seed": 4}


def test_two_jobs_one_key(tmp_path):
    with start_gateway({"shared": {"limits": SERVER_LIMITS}}, latency=LATENCY) as gw:
        jobs, selected, prompts = [], [], set()
        for n in range(2):
            rows = scored_rows(120, offset=n)
            selected.append(sorted(r["id"] for r in rows if r["predicted"] == "negative"))
            prompts |= {(r["text"], r["predicted"]) for r in rows if r["predicted"] == "negative"}
            d = tmp_path / f"job{n}"
            d.mkdir()
            cfg = write_config(d / "c.toml", enrich_settings(gw, "shared", tmp_path / "store", limits=CLIENT_LIMITS))
            src = write_jsonl(rows, d / "scored.jsonl")
            cmd = [sys.executable, "-m", "jobs.mapreduce.launch", "enrich", "-r", "inline", "--config", str(cfg), src]
            cmd += ["--output-dir", str(d / "out")]
            jobs.append(
                subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env=submit_env(gw, "shared"),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        results = [job.communicate(timeout=600) for job in jobs]
        usage = gw.key_usage("shared")

    for n, (job, (out, err)) in enumerate(zip(jobs, results, strict=True)):
        assert job.returncode == 0, err[-3000:]
        assert CANARY not in out + err
        done = read_jsonl_dir(tmp_path / f"job{n}" / "out")
        assert sorted(r["id"] for r in done) == selected[n]
        assert {r["status"] for r in done} == {"enriched"}
    admitted = sum(w["requests"] for w in usage["windows"])
    refused = sum(w["rate_limited"] for w in usage["windows"])
    # one call per distinct prompt: the injection row is in both jobs, and the shared store answers it once
    assert admitted == len(prompts) < len(selected[0]) + len(selected[1])
    print(f"two jobs, one key: {admitted} admitted, {refused} answered 429 by the limiter")
    assert refused <= 0.01 * (admitted + refused)
    peaks = usage["peaks"]
    assert peaks["requests"]["any_window"] <= SERVER_LIMITS["requests"]
    assert peaks["tokens"]["any_window"] <= SERVER_LIMITS["tokens"]
    assert usage["peak_concurrent"] <= SERVER_LIMITS["concurrent"]
