"""The job's one limiter (udfs/enrich/limiter.py) on a fake clock, no sleeps:
a burst at twice the limit is admitted at the limit; a 429's retry-after
pauses every caller; max_tokens is reserved and the unused part returned;
header readings lower the share and answers raise it again; limits the
server announces lower the configured ones, job-wide through the store, so
settings 40 % above the key's real limits draw at most 1 % 429s after the
first window."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from udfs.enrich.budget import BudgetLimits
from udfs.enrich.limiter import REFUND_POLL_S, JobBudget, Share
from udfs.enrich.store_sqlite import SqliteStore

START = 1_800_000_000.0


class FakeTime:
    """A clock and an asyncio sleep that advance only when every task is waiting: then the
    clock jumps to the earliest sleeper's wake-up time."""

    def __init__(self) -> None:
        self.now = START
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), self._seq, fut))
        self._seq += 1
        await fut

    def run(self, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        async def drive() -> Any:
            task = asyncio.ensure_future(main())
            idle = 0
            while not task.done():
                for _ in range(50):
                    await asyncio.sleep(0)
                    if task.done():
                        return task.result()
                while self._sleepers and self._sleepers[0][2].done():
                    heapq.heappop(self._sleepers)  # cancelled
                if not self._sleepers:
                    idle += 1
                    assert idle < 1000, "every task waits on something other than the clock"
                    continue
                idle = 0
                self.now = max(self.now, self._sleepers[0][0])
                while self._sleepers and self._sleepers[0][0] <= self.now:
                    fut = heapq.heappop(self._sleepers)[2]
                    if not fut.done():
                        fut.set_result(None)
            return task.result()

        return asyncio.run(drive())


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)  # the store in memory: no thread, so the fake clock sees every wait


def make_budget(
    store: SqliteStore, t: FakeTime, limits: dict[str, int], window: float = 10.0, share: Share | None = None
) -> JobBudget:
    return JobBudget(
        store,
        "ns",
        BudgetLimits(window, limits, 64),
        lease_s=30.0,
        share=share,
        clock=t,
        sleep=t.sleep,
        blocking=inline,
    )


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "budget.sqlite")


def most_in_any_window(stamps: list[float], window: float) -> int:
    stamps = sorted(stamps)
    return max((sum(1 for s in stamps if a <= s < a + window) for a in stamps), default=0)


def test_a_burst_at_twice_the_limit_is_admitted_at_the_limit(store):
    t = FakeTime()
    budget = make_budget(store, t, {"requests": 10})
    admitted: list[float] = []

    async def caller() -> None:
        ticket = await budget.acquire({"requests": 1})
        admitted.append(t())
        await t.sleep(0.5)  # the answer's latency
        await budget.answered(ticket, {"requests": 1}, {})

    async def main() -> None:
        await asyncio.gather(*(caller() for _ in range(20)))

    t.run(main)
    assert len(admitted) == 20
    assert most_in_any_window(admitted, 10.0) == 10  # never over the limit, and filled to it
    later = sorted(admitted)[10:]
    # The second ten go when the first ten's entries (stamped at their answers) leave the window.
    assert min(later) >= START + 10.5
    assert max(later) <= START + 10.5 + REFUND_POLL_S + 0.02


def test_a_429_with_retry_after_pauses_every_caller(store):
    t = FakeTime()
    budget = make_budget(store, t, {"requests": 100})
    admitted: list[float] = []

    async def main() -> None:
        first = await budget.acquire({"requests": 1})
        await budget.refused(first, status=429, admitted=False, retry_after=3.0, reading={})

        async def caller() -> None:
            await budget.acquire({"requests": 1})
            admitted.append(t())

        await asyncio.gather(*(caller() for _ in range(5)))

    t.run(main)
    assert len(admitted) == 5 and min(admitted) >= START + 3.0


def test_max_tokens_reserved_and_the_unused_part_returned(store):
    t = FakeTime()
    budget = make_budget(store, t, {"requests": 10, "tokens": 300}, window=60.0)
    admitted: dict[str, float] = {}

    async def main() -> None:
        a = await budget.acquire({"requests": 1, "tokens": 200})  # prompt 50 + max_tokens 150

        async def second() -> None:
            await budget.acquire({"requests": 1, "tokens": 200})
            admitted["b"] = t()

        waiting = asyncio.ensure_future(second())
        await t.sleep(1.0)
        assert "b" not in admitted  # 400 reserved would be over 300
        await budget.answered(a, {"requests": 1, "tokens": 80}, {})  # used 80: 120 come back
        await waiting

    t.run(main)
    assert admitted["b"] == pytest.approx(START + 1.0, abs=0.02)  # woken by the refund, not the window
    assert store.budget_usage("ns", t(), 60.0)["tokens"] == 280


def test_header_readings_lower_the_share_and_answers_raise_it(store):
    t = FakeTime()
    share = Share()
    budget = make_budget(store, t, {"requests": 10}, share=share)

    async def main() -> None:
        # The server's window holds 10 requests, ours 1: another client uses the key.
        ticket = await budget.acquire({"requests": 1})
        await budget.answered(ticket, {"requests": 1}, {"requests": (0.0, 10.0)})
        assert share.value < 1.0
        crowded = share.value
        # A 429 showing the key's capacity used up, after we knew its limits: someone outside our budget.
        ticket = await budget.acquire({"requests": 1})
        await budget.refused(ticket, status=429, admitted=False, retry_after=None, reading={"requests": (0.0, 10.0)})
        assert share.value == pytest.approx(crowded * share.decrease)
        assert budget.shared().effective({}).limits["requests"] < 10
        for _ in range(60):  # answers without pressure give the share back
            await t.sleep(1.0)
            ticket = await budget.acquire({"requests": 1})
            await budget.answered(ticket, {"requests": 1}, {"requests": (9.0, 10.0)})

    t.run(main)
    assert share.value == 1.0


class SlidingServer:
    """The server's own limit: a sliding log of admitted requests; it announces its limit."""

    def __init__(self, t: FakeTime, limit: int, window: float) -> None:
        self.t, self.limit, self.window = t, limit, window
        self.admitted: list[float] = []
        self.refused: list[float] = []

    def call(self) -> tuple[bool, float, dict[str, tuple[float, float]]]:
        now = self.t()
        live = [s for s in self.admitted if s > now - self.window]
        if len(live) >= self.limit:
            self.refused.append(now)
            return False, min(live) + self.window - now, {"requests": (0.0, float(self.limit))}
        self.admitted.append(now)
        return True, 0.0, {"requests": (float(self.limit - len(live) - 1), float(self.limit))}


def run_against(
    store: SqliteStore, t: FakeTime, server: SlidingServer, configured: int, rows: int
) -> Callable[[], Awaitable[None]]:
    budget = make_budget(store, t, {"requests": configured})

    async def row() -> None:
        while True:
            ticket = await budget.acquire({"requests": 1})
            ok, retry_after, reading = server.call()
            if ok:
                await t.sleep(0.5)
                await budget.answered(ticket, {"requests": 1}, reading)
                return
            await budget.refused(ticket, status=429, admitted=False, retry_after=retry_after, reading=reading)
            await t.sleep(retry_after)

    async def main() -> None:
        await asyncio.gather(*(row() for _ in range(rows)))

    return main


def test_limits_above_the_servers_are_lowered_to_the_announced_ones(store):
    t = FakeTime()
    server = SlidingServer(t, limit=10, window=10.0)
    t.run(run_against(store, t, server, configured=14, rows=100))  # settings 40 % above the key's limit
    assert len(server.admitted) == 100
    after_first = [s for s in server.refused if s >= START + 10.0]
    attempts_after = len(after_first) + sum(1 for s in server.admitted if s >= START + 10.0)
    assert len(after_first) <= 0.01 * attempts_after, (len(server.refused), len(after_first))
    assert store.budget_learn("ns", {}) == {"requests": 10}
    # The throughput stays at the key's limit (90 calls after the first window need about 9 windows).
    assert max(server.admitted) <= START + 10.0 * 11


def test_announced_limits_are_shared_job_wide_through_the_store(store):
    t = FakeTime()
    store.budget_learn("ns", {"requests": 10})  # another task of the job heard the server
    budget = make_budget(store, t, {"requests": 14})
    admitted: list[float] = []

    async def caller() -> None:
        await budget.acquire({"requests": 1})
        admitted.append(t())

    async def main() -> None:
        await asyncio.gather(*(caller() for _ in range(14)))

    t.run(main)
    assert most_in_any_window(admitted, 10.0) == 10
