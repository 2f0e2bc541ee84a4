"""The job's one limiter: `JobBudget.acquire(amounts)` before a call,
`answered(...)` or `refused(...)` after it.

It owns everything that decides when a call may start: the wait loop over the
shared log in the store (requests, tokens, concurrency, job-wide), this
process's concurrency slots, the pause a 429's `retry-after` asks of every
caller, the back-off `Share` (an object passed in, so a task keeps it across
its batches), and the limits the server announces in its headers, which lower
the configured ones job-wide through the store. Time comes from an injectable
clock and sleep, and store calls from an injectable `blocking` runner, so the
tests drive it on a fake clock with no sleeps (aiolimiter's shape: mechanism
only, no knowledge of rows, prompts or providers).
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .budget import BudgetLimits
from .settings import LimitsConfig
from .store import Store

REFUND_POLL_S = 0.25  # how long a waiting call may miss another process's refund
# A rate-limit header reading: dimension -> (remaining, limit), as the server announced it.
Reading = Mapping[str, tuple[float, float]]
Sleep = Callable[[float], Awaitable[None]]
Blocking = Callable[..., Awaitable[Any]]


def budget_limits(limits: LimitsConfig, token_dims: tuple[str, ...]) -> BudgetLimits:
    """The configured limits of the dimensions the provider counts (its dialect's token_dims)."""
    per_window = {
        "requests": limits.requests_per_minute,
        "tokens": limits.tokens_per_minute,
        "input_tokens": limits.input_tokens_per_minute,
        "output_tokens": limits.output_tokens_per_minute,
    }
    dims = {"requests": per_window["requests"], **{d: per_window[d] for d in token_dims}}
    return BudgetLimits(limits.window_seconds + limits.safety_margin_s, dims, limits.max_concurrency)


@dataclass
class Share:
    """The share of the limits this process takes. It drops when the provider refuses us with
    its capacity used up by someone outside our budget (another job with another store on the
    same key), a little when the headers show such a client, and creeps back with each answer."""

    value: float = 1.0
    floor: float = 0.2
    decrease: float = 0.85
    soft_decrease: float = 0.95
    increase: float = 0.004

    def refused(self) -> None:
        self.value = max(self.floor, self.value * self.decrease)

    def crowded(self) -> None:
        self.value = max(self.floor, self.value * self.soft_decrease)

    def answered(self) -> None:
        self.value = min(1.0, self.value + self.increase)


@dataclass
class Ticket:
    """One admitted call: its log entry, what it reserved, and the announced limits known when
    it was admitted (a refusal of a call admitted before the server told us its limits is our
    own overshoot, not another client's traffic)."""

    entry: str
    amounts: dict[str, int]
    known: dict[str, int] = field(default_factory=dict)


async def _to_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


class JobBudget:
    def __init__(
        self,
        store: Store,
        ns: str,
        limits: BudgetLimits,
        *,
        lease_s: float,
        low_water: float = 0.05,
        share: Share | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        blocking: Blocking = _to_thread,
    ) -> None:
        self.store, self.ns, self.limits = store, ns, limits
        self.lease_s, self.low_water = lease_s, low_water
        self.share = share or Share()
        self.clock, self.sleep, self.blocking = clock, sleep, blocking
        self.paused_until = 0.0
        self.announced: dict[str, int] = {}
        self._slots = asyncio.Semaphore(limits.max_in_flight)
        self._settled = asyncio.Event()

    def shared(self) -> BudgetLimits:
        """The configured limits with our share; the store lowers them to the announced ones."""
        return replace(self.limits, share=self.share.value)

    async def acquire(self, amounts: dict[str, int]) -> Ticket:
        """Wait until `amounts` fit the job's budget, then take them (and a concurrency slot)."""
        await self._slots.acquire()
        try:
            entry = secrets.token_hex(8)
            while True:
                now = self.clock()
                if now < self.paused_until:
                    await self.sleep(self.paused_until - now)
                    continue
                known = dict(self.announced)
                wait = await self.blocking(
                    self.store.budget_acquire,
                    self.ns,
                    entry,
                    now,
                    amounts,
                    self.shared(),
                    now + self.lease_s,
                )
                if wait == 0.0:
                    return Ticket(entry, dict(amounts), known)
                # Until the log's oldest entries leave the window, or a call of this process
                # settles (its unused reservation comes back at once), whichever is first; at
                # most REFUND_POLL_S, for the refunds of other processes.
                await self._wait_for_room(min(wait, REFUND_POLL_S) + random.uniform(0, 0.01))
        except BaseException:
            self._slots.release()
            raise

    async def answered(self, ticket: Ticket, used: dict[str, int], reading: Reading) -> None:
        """The call was answered and used `used`: correct its entry (the unused reservation comes
        back), stamped now, when the answer came. The server stamped the request somewhere
        between our acquire and its answer, so keeping our entry until now + window covers its
        entry whatever the delay."""
        await self._settle(ticket, used)
        self.share.answered()
        await self._learn(reading)
        await self._watch(reading)

    async def refused(
        self,
        ticket: Ticket,
        *,
        status: int | None,
        admitted: bool,
        retry_after: float | None,
        reading: Reading,
        concurrency: bool = False,
    ) -> None:
        """The call failed. A refusal (an HTTP error status) used no tokens: they come back; one
        that may have been served (timeout, broken stream) keeps its reservation. A 429 that shows
        the key's capacity used up keeps its request in our log although the server did not count
        it: otherwise, when another client fills the window, each retry is refused at once and
        refunded again and we would storm the server with doomed requests. A 429's retry-after
        pauses every caller of this budget."""
        await self._learn(reading)
        limit_hit = status == 429 and (self._exhausted(reading) or concurrency)
        if admitted:
            used = None
        else:
            used = {k: (1 if k == "requests" and limit_hit else 0) for k in ticket.amounts}
        overshoot = any(v < ticket.known.get(d, math.inf) for d, v in self.announced.items())
        if limit_hit and not overshoot:
            self.share.refused()
        if status == 429 and retry_after is not None:
            self.paused_until = max(self.paused_until, self.clock() + retry_after)
        await self._settle(ticket, used)

    async def _settle(self, ticket: Ticket, used: dict[str, int] | None) -> None:
        try:
            await self.blocking(self.store.budget_settle, self.ns, ticket.entry, used, self.clock())
        finally:
            self._slots.release()
            self._settled.set()
            self._settled = asyncio.Event()

    async def _wait_for_room(self, seconds: float) -> None:
        settled = asyncio.ensure_future(self._settled.wait())
        slept = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait({settled, slept}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            settled.cancel()
            slept.cancel()

    async def _learn(self, reading: Reading) -> None:
        """Take the server's announced limits when they are below what we know, job-wide."""
        lower = {
            dim: int(limit)
            for dim, (_, limit) in reading.items()
            if dim in self.limits.limits and limit >= 1 and int(limit) < self.announced.get(dim, math.inf)
        }
        if lower:
            self.announced = await self.blocking(self.store.budget_learn, self.ns, lower)

    async def _watch(self, reading: Reading) -> None:
        """Slow down before the 429s: when the provider says its request capacity is running low
        and more requests are in its window than in our log, another client of the key is using
        it. (Requests only: the server counts them exactly as we do, while its token counts
        include reservations ours has corrected.)"""
        if "requests" not in reading:
            return
        remaining, limit = reading["requests"]
        if remaining > self.low_water * limit:
            return
        ours = await self.blocking(self.store.budget_usage, self.ns, self.clock(), self.limits.window)
        if (limit - remaining) - ours["requests"] > max(2.0, 0.1 * limit):
            self.share.crowded()

    def _exhausted(self, reading: Reading) -> bool:
        """Do the provider's headers say one of our limits has (almost) nothing left?"""
        return any(
            dim in self.limits.limits and remaining <= self.low_water * limit
            for dim, (remaining, limit) in reading.items()
        )
