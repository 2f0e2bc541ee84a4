"""Offered load of 1.5x the limit on loopback, bounded in count and time: the
server's own per-window counts never exceed the limit, reach at least limit - 1
in every full window, and the server keeps answering. (Rates and latencies are
measured by bench/bench_gateway.py, not asserted here.)"""

from __future__ import annotations

import asyncio
import gc
import time

import httpx

from tests.gateway.conftest import make_raw_config, run_gateway

# A sliding window reaches limit - 1 in every aligned window only while client
# stalls stay well below the spacing of its admissions (window / limit); a
# simulation of 50-100 ms stalls (GC, GIL, a busy shared machine) showed 20 per
# 1 s failing often and 10 per 2 s never, so the test uses the latter.
LIMIT = 10  # requests per window
WINDOW = 2.0  # seconds
OFFERED = 1.5 * LIMIT / WINDOW  # requests per second
DURATION = 8.5  # seconds of offered load per key: at least 3 full windows
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "load"}], "max_tokens": 8}


async def offer(base_url: str, key: str, t0: float) -> tuple[list[int], float, float]:
    """Open-loop load: request i leaves at t0 + i/OFFERED whatever the answers."""
    count = int(OFFERED * DURATION)
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:

        async def one(i: int) -> int:
            await asyncio.sleep(max(0.0, t0 + i / OFFERED - time.time()))
            return (await http.post("/v1/chat/completions", json=BODY)).status_code

        first = time.time()
        codes = await asyncio.gather(*[one(i) for i in range(count)])
        return codes, first, time.time()


def test_per_window_counts_under_one_and_a_half_times_the_limit():
    keys = [{"name": "main", "admin": True}]
    for algorithm in ("fixed_window", "sliding_window"):
        keys.append(
            {"name": algorithm, "limits": {"algorithm": algorithm, "window_seconds": WINDOW, "requests": LIMIT}}
        )
    with run_gateway(make_raw_config(keys)) as gw:

        async def both():
            t0 = time.time() + 0.2
            return await asyncio.wait_for(
                asyncio.gather(*[offer(gw.base_url, gw.key(name), t0) for name in ("fixed_window", "sliding_window")]),
                timeout=30,
            )

        gc.collect()
        gc.disable()  # a full collection in this process would stall the client (and the in-thread server)
        try:
            results = asyncio.run(both())
        finally:
            gc.enable()
        assert httpx.get(f"{gw.base_url}/health").status_code == 200
        usage = httpx.get(f"{gw.base_url}/v1/admin/usage", headers={"x-api-key": gw.key()}).json()

    for name, (codes, first, last) in zip(("fixed_window", "sliding_window"), results, strict=True):
        assert set(codes) <= {200, 429}, f"{name}: the server stopped answering properly"
        assert codes.count(429) > 0
        windows = usage["keys"][name]["windows"]
        assert sum(w["requests"] for w in windows) == codes.count(200)
        assert sum(w["rate_limited"] for w in windows) == codes.count(429)
        assert max(w["requests"] for w in windows) <= LIMIT, f"{name}: {windows}"
        full = [w for w in windows if w["start_unix"] >= first and w["start_unix"] + WINDOW <= last]
        assert len(full) >= 3
        assert all(w["requests"] >= LIMIT - 1 for w in full), f"{name}: {[w['requests'] for w in full]}"
        peaks = usage["keys"][name]["peaks"]["requests"]
        assert peaks["aligned_window"] == max(w["requests"] for w in windows)
        # Within any 2 s span a sliding window holds the limit; a fixed window can let up
        # to twice through across a boundary (whether it does here depends on arrival phase).
        limit_any = LIMIT if name == "sliding_window" else 2 * LIMIT
        assert peaks["aligned_window"] <= peaks["any_window"] <= limit_any
