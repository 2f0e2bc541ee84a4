"""Load benchmark of the LLM gateway on loopback: throughput without limits, and
achieved rates, refusals and latencies under 1.5x the limit for each algorithm.

Run with: .venv/bin/python bench/bench_gateway.py [--limit 50 --window 1 --duration 6 --requests 2000 --concurrency 16]

It starts the gateway itself (python -m gateway, on a free 127.0.0.1 port, with a
generated config and generated keys), prints a table, and stops it. Every phase
is bounded in request count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.running import GatewayDidNotStart, GatewayProcess  # noqa: E402

ALGORITHMS = ("fixed_window", "sliding_window", "token_bucket")
CHAT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Summarise this review: great value, slow delivery."}],
    "max_tokens": 32,
}


def config_text(args: argparse.Namespace) -> str:
    keys = [
        '[[keys]]\nname = "open"\nenv = "BENCH_KEY_OPEN"\nadmin = true\n'
        "[keys.limits]\nrequests = 100000000\ntokens = 1000000000\ninput_tokens = 1000000000\noutput_tokens = 1000000000\nconcurrent = 1024\n"
    ]
    for algorithm in ALGORITHMS:
        keys.append(
            f'[[keys]]\nname = "{algorithm}"\nenv = "BENCH_KEY_{algorithm.upper()}"\n'
            f'[keys.limits]\nalgorithm = "{algorithm}"\nwindow_seconds = {args.window}\nrequests = {args.limit}\n'
            "tokens = 1000000000\ninput_tokens = 1000000000\noutput_tokens = 1000000000\nconcurrent = 1024\n"
        )
    models = (
        '[[models]]\nid = "gpt-4o-mini-2024-07-18"\naliases = ["gpt-4o-mini"]\ndisplay_name = "GPT-4o mini"\n'
        'owned_by = "openai"\ncreated = 2024-07-18\ncontext_window = 128000\nmax_output_tokens = 16384\n'
    )
    latency = f'[latency]\ndistribution = "{"fixed" if args.latency_ms else "none"}"\nfixed_ms = {args.latency_ms}\n'
    return '[server]\nhost = "127.0.0.1"\n' + latency + "\n".join(keys) + models


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def closed_loop(
    base: str, key: str, total: int, concurrency: int, stream: bool
) -> tuple[float, list[float], list[int]]:
    """`concurrency` workers send `total` requests back to back."""
    latencies: list[float] = []
    codes: list[int] = []
    body = {**CHAT, "stream": stream}
    queue = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30, limits=limits
    ) as http:

        async def worker() -> None:
            for _ in queue:
                t = time.perf_counter()
                if stream:
                    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                        async for _line in r.aiter_lines():
                            pass
                else:
                    r = await http.post("/v1/chat/completions", json=body)
                latencies.append(time.perf_counter() - t)
                codes.append(r.status_code)

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        return time.perf_counter() - start, latencies, codes


async def open_loop(base: str, key: str, rate: float, duration: float) -> tuple[float, float, list[tuple[int, float]]]:
    """Requests leave at a fixed `rate` for `duration` seconds, whatever the answers."""
    count = int(rate * duration)
    results: list[tuple[int, float]] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30, limits=limits
    ) as http:
        t0 = time.time() + 0.2

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.time()))
            t = time.perf_counter()
            r = await http.post("/v1/chat/completions", json=CHAT)
            results.append((r.status_code, time.perf_counter() - t))

        await asyncio.wait_for(asyncio.gather(*[one(i) for i in range(count)]), timeout=duration + 60)
        return t0, time.time(), results


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


async def run(args: argparse.Namespace, base: str, keys: dict[str, str]) -> None:
    print(f"gateway benchmark on {base} (loopback), {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    print(
        f"\n1) throughput, no limits: {args.requests} requests, {args.concurrency} concurrent clients, backend latency {args.latency_ms} ms"
    )
    print(f"   {'mode':<8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  status")
    for stream in (False, True):
        elapsed, lat, codes = await closed_loop(base, keys["open"], args.requests, args.concurrency, stream)
        print(
            f"   {'stream' if stream else 'plain':<8} {len(codes) / elapsed:>8.1f} {ms(pct(lat, 0.5)):>8} {ms(pct(lat, 0.95)):>8} {ms(pct(lat, 0.99)):>8}  "
            + ", ".join(f"{c}x{codes.count(c)}" for c in sorted(set(codes)))
        )

    rate = 1.5 * args.limit / args.window
    print(
        f"\n2) offered load {rate:.0f} req/s = 1.5x a limit of {args.limit} requests per {args.window:g} s window, for {args.duration:g} s (open loop)"
    )
    print(
        f"   {'algorithm':<15} {'offered/s':>9} {'accepted/s':>10} {'429/s':>7} {'per full window (min-max)':>26} {'ok p50/p95 ms':>14} {'429 p50 ms':>10}"
    )
    usage_needed = []
    for algorithm in ALGORITHMS:
        t0, t1, results = await open_loop(base, keys[algorithm], rate, args.duration)
        usage_needed.append((algorithm, t0, t1, results))
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {keys['open']}"}) as http:
        usage = (await http.get("/v1/admin/usage")).json()["keys"]
    for algorithm, t0, t1, results in usage_needed:
        span = t1 - t0
        ok = [t for c, t in results if c == 200]
        refused = [t for c, t in results if c == 429]
        windows = usage[algorithm]["windows"]
        full = [w["requests"] for w in windows if w["start_unix"] >= t0 and w["start_unix"] + args.window <= t1]
        print(
            f"   {algorithm:<15} {len(results) / span:>9.1f} {len(ok) / span:>10.1f} {len(refused) / span:>7.1f} "
            f"{(f'{min(full)}-{max(full)} over {len(full)}' if full else 'n/a'):>26} {ms(pct(ok, 0.5)) + '/' + ms(pct(ok, 0.95)):>14} {ms(pct(refused, 0.5)):>10}"
        )
    print(f"\n   limit per window: {args.limit}; the server's own per-window counts come from GET /v1/admin/usage")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=50, help="requests per window for the limited keys")
    parser.add_argument("--window", type=float, default=1.0, help="window length in seconds")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of offered load per algorithm")
    parser.add_argument("--requests", type=int, default=2000, help="requests in the throughput phase")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="fixed backend latency")
    args = parser.parse_args()

    keys = {name: f"sk-bench-{secrets.token_hex(12)}" for name in ("open", *ALGORITHMS)}
    env = {**os.environ, **{f"BENCH_KEY_{name.upper()}": value for name, value in keys.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "bench.toml"
        conf.write_text(config_text(args))
        try:
            with GatewayProcess(conf, env=env) as server:
                asyncio.run(run(args, server.base_url, keys))
        except GatewayDidNotStart as e:
            print(e, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
