"""Offered load of 1.5x the limit on loopback, bounded in count and time: the
server's own per-window counts never exceed the limit, reach a lower bound in
every full window, and the server keeps answering. (Rates and latencies are
measured by bench/bench_gateway.py, not asserted here.)

The lower bounds: a fixed window aligned to the ledger's windows is offered
15 requests in each full one and fills it (at least limit - 1 is asserted,
as before). A sliding log
admits at least limit - 2, and not always limit - 1 even when every request
arrives on schedule: a freed slot goes to the next arrival, up to one spacing
after it frees, so a slot taken just before an aligned window starts can next
be taken just after it ends, and two such slots can fall in one window's
lead-in (a fresh-clone run saw [9, 10, 8] with no answer late; test_limiter.py shows
it on the limiter with a fake clock, as often as 6 % of windows at 0.1 s of
lateness).

The lower bound holds only while the load is offered as planned: a stall of
the process (client and in-thread server alike) delays the requests that
would have refilled a window's freed slots past the window's end, and the
window counts fewer through no fault of the limiter. So each run also
measures how late every answer came after its planned send time; the lower
bound is asserted on a run where none came more than LATE seconds late, and
the run is repeated (at most RUNS times) when the machine stalled it. The
upper bounds and the ledger's sums hold whatever the timing and are asserted
on every run."""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.gateway.conftest import make_raw_config, run_gateway

# A sliding window reaches limit - 1 in every aligned window only while client
# stalls stay well below the spacing of its admissions (window / limit); a
# simulation of 50-100 ms stalls (GC, GIL, a busy shared machine) showed 20 per
# 1 s failing often and 10 per 2 s never, so the test uses the latter.
LIMIT = 10  # requests per window
WINDOW = 2.0  # seconds
OFFERED = 1.5 * LIMIT / WINDOW  # requests per second
DURATION = 8.5  # seconds of offered load per key: at least 3 full windows
LATE = 0.1  # seconds: an answer later than this after its planned send means a stall
RUNS = 3
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "load"}], "max_tokens": 8}
ALGORITHMS = ("fixed_window", "sliding_window")


@dataclass
class Offered:
    codes: list[int]
    first: float  # when the first request was due
    last: float  # when the last answer came
    late: float  # the latest answer, seconds after its request was due


async def offer(base_url: str, key: str, t0: float) -> Offered:
    """Open-loop load: request i leaves at t0 + i/OFFERED whatever the answers."""
    count = int(OFFERED * DURATION)
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:

        async def one(i: int) -> tuple[int, float]:
            due = t0 + i / OFFERED
            await asyncio.sleep(max(0.0, due - time.time()))
            code = (await http.post("/v1/chat/completions", json=BODY)).status_code
            return code, time.time() - due

        answers = await asyncio.gather(*[one(i) for i in range(count)])
        return Offered([code for code, _ in answers], t0, time.time(), max(late for _, late in answers))


def one_run() -> tuple[dict[str, Offered], dict]:
    """Both algorithms side by side on a fresh gateway: what each key was
    answered, and the server's usage ledger."""
    keys = [{"name": "main", "admin": True}]
    for algorithm in ALGORITHMS:
        keys.append(
            {"name": algorithm, "limits": {"algorithm": algorithm, "window_seconds": WINDOW, "requests": LIMIT}}
        )
    with run_gateway(make_raw_config(keys)) as gw:

        async def both():
            t0 = time.time() + 0.2
            return await asyncio.wait_for(
                asyncio.gather(*[offer(gw.base_url, gw.key(name), t0) for name in ALGORITHMS]), timeout=30
            )

        gc.collect()
        gc.disable()  # a full collection in this process would stall the client (and the in-thread server)
        try:
            results = asyncio.run(both())
        finally:
            gc.enable()
        assert httpx.get(f"{gw.base_url}/health").status_code == 200
        usage = httpx.get(f"{gw.base_url}/v1/admin/usage", headers={"x-api-key": gw.key()}).json()
    return dict(zip(ALGORITHMS, results, strict=True)), usage


def assert_limits_held(name: str, offered: Offered, usage: dict) -> list[dict]:
    """What holds whatever the timing: the server answered properly, refused
    some, its ledger adds up to the answers, and no window held more than the
    limit. Returns the key's windows."""
    codes = offered.codes
    assert set(codes) <= {200, 429}, f"{name}: the server stopped answering properly"
    assert codes.count(429) > 0
    windows = usage["keys"][name]["windows"]
    assert sum(w["requests"] for w in windows) == codes.count(200)
    assert sum(w["rate_limited"] for w in windows) == codes.count(429)
    assert max(w["requests"] for w in windows) <= LIMIT, f"{name}: {windows}"
    peaks = usage["keys"][name]["peaks"]["requests"]
    assert peaks["aligned_window"] == max(w["requests"] for w in windows)
    # Within any 2 s span a sliding window holds the limit; a fixed window can let up
    # to twice through across a boundary (whether it does here depends on arrival phase).
    limit_any = LIMIT if name == "sliding_window" else 2 * LIMIT
    assert peaks["aligned_window"] <= peaks["any_window"] <= limit_any
    return windows


def test_per_window_counts_under_one_and_a_half_times_the_limit():
    stalls: list[float] = []
    for _ in range(RUNS):
        results, usage = one_run()
        windows = {name: assert_limits_held(name, offered, usage) for name, offered in results.items()}
        late = max(offered.late for offered in results.values())
        if late <= LATE:
            break
        stalls.append(round(late, 3))
    else:
        pytest.fail(
            f"in each of {RUNS} runs an answer came more than {LATE} s after its planned send "
            f"(latest, in seconds: {stalls}): this machine never offered the load on schedule"
        )
    for name, offered in results.items():
        full = [
            w for w in windows[name] if w["start_unix"] >= offered.first and w["start_unix"] + WINDOW <= offered.last
        ]
        assert len(full) >= 3
        floor = LIMIT - 2 if name == "sliding_window" else LIMIT - 1
        assert all(w["requests"] >= floor for w in full), (
            f"{name}: {[w['requests'] for w in full]} (runs stalled before this one: {stalls})"
        )
