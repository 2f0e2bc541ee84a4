"""Rate-limit mechanisms: fixed window, sliding window (log) and token bucket.

Each limiter is a mechanism only, in the manner of aiolimiter: it counts amounts
against a limit per window, knows nothing of HTTP or keys, and reads time from an
injectable clock so tests advance a fake clock instead of sleeping.

All three share one interface:
  has_capacity(amount)  would `amount` fit now?
  acquire(amount)       take it if it fits; returns a Grant, or None (nothing taken)
  refund(grant, amount) give back part of a grant (a reservation that was not used)
  remaining()           what fits now
  retry_after(amount)   seconds until `amount` fits (0 if now; inf if it never can)
  reset_after()         seconds until the limiter is back at its initial, full state
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]
EPSILON = 1e-6  # tokens; unix-time floats near 1.8e9 carry about 2e-7 s of rounding


@dataclass
class Grant:
    """What acquire() took; refund() uses it to give part back."""

    amount: int
    stamp: float  # fixed window: the window's start; sliding window: the entry time


class FixedWindow:
    """At most `limit` per window; windows are aligned to multiples of `window` on the clock."""

    algorithm = "fixed_window"

    def __init__(self, limit: int, window: float, clock: Clock = time.time) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._start = -math.inf
        self._used = 0

    def _roll(self) -> float:
        now = self.clock()
        start = math.floor(now / self.window) * self.window
        if start != self._start:
            self._start, self._used = start, 0
        return now

    def has_capacity(self, amount: int = 1) -> bool:
        self._roll()
        return self._used + amount <= self.limit

    def acquire(self, amount: int = 1) -> Grant | None:
        if not self.has_capacity(amount):
            return None
        self._used += amount
        return Grant(amount, self._start)

    def refund(self, grant: Grant, amount: int) -> None:
        self._roll()
        amount = min(amount, grant.amount)
        grant.amount -= amount
        if grant.stamp == self._start:  # an earlier window's count is history
            self._used -= amount

    def remaining(self) -> int:
        self._roll()
        return max(0, self.limit - self._used)

    def retry_after(self, amount: int = 1) -> float:
        if amount > self.limit:
            return math.inf
        now = self._roll()
        if self._used + amount <= self.limit:
            return 0.0
        return self._start + self.window - now

    def reset_after(self) -> float:
        now = self._roll()
        return 0.0 if self._used == 0 else self._start + self.window - now


class SlidingWindow:
    """At most `limit` in any interval of length `window` (an exact sliding log)."""

    algorithm = "sliding_window"

    def __init__(self, limit: int, window: float, clock: Clock = time.time) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._log: deque[Grant] = deque()
        self._used = 0

    def _evict(self) -> float:
        now = self.clock()
        while self._log and self._log[0].stamp + self.window <= now:
            self._used -= self._log.popleft().amount
        return now

    def has_capacity(self, amount: int = 1) -> bool:
        self._evict()
        return self._used + amount <= self.limit

    def acquire(self, amount: int = 1) -> Grant | None:
        if not self.has_capacity(amount):
            return None
        grant = Grant(amount, self.clock())
        self._log.append(grant)
        self._used += amount
        return grant

    def refund(self, grant: Grant, amount: int) -> None:
        self._evict()
        amount = min(amount, grant.amount)
        if grant.stamp + self.window > self.clock():  # still in the log
            self._used -= amount
        grant.amount -= amount

    def remaining(self) -> int:
        self._evict()
        return max(0, self.limit - self._used)

    def retry_after(self, amount: int = 1) -> float:
        if amount > self.limit:
            return math.inf
        now = self._evict()
        used = self._used
        if used + amount <= self.limit:
            return 0.0
        for entry in self._log:  # oldest first: each expiry frees its amount
            used -= entry.amount
            if used + amount <= self.limit:
                return entry.stamp + self.window - now
        return self.window  # unreachable while amount <= limit

    def reset_after(self) -> float:
        now = self._evict()
        return self._log[-1].stamp + self.window - now if self._log else 0.0


class TokenBucket:
    """A bucket of `limit` tokens refilled continuously at limit/window per second."""

    algorithm = "token_bucket"

    def __init__(self, limit: int, window: float, clock: Clock = time.time) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self.rate = limit / window
        self._tokens = float(limit)
        self._last = clock()

    def _refill(self) -> float:
        now = self.clock()
        if now > self._last:
            self._tokens = min(float(self.limit), self._tokens + (now - self._last) * self.rate)
        self._last = max(self._last, now)
        return now

    def has_capacity(self, amount: int = 1) -> bool:
        self._refill()
        # EPSILON: waiting exactly retry_after() must be enough despite float rounding.
        return self._tokens + EPSILON >= amount

    def acquire(self, amount: int = 1) -> Grant | None:
        if not self.has_capacity(amount):
            return None
        self._tokens = max(0.0, self._tokens - amount)
        return Grant(amount, self._last)

    def refund(self, grant: Grant, amount: int) -> None:
        self._refill()
        amount = min(amount, grant.amount)
        grant.amount -= amount
        self._tokens = min(float(self.limit), self._tokens + amount)

    def remaining(self) -> int:
        self._refill()
        return int(math.floor(self._tokens + EPSILON))

    def retry_after(self, amount: int = 1) -> float:
        if amount > self.limit:
            return math.inf
        self._refill()
        return max(0.0, (amount - self._tokens) / self.rate)

    def reset_after(self) -> float:
        self._refill()
        return (self.limit - self._tokens) / self.rate


Limiter = FixedWindow | SlidingWindow | TokenBucket
LIMITERS: dict[str, type] = {cls.algorithm: cls for cls in (FixedWindow, SlidingWindow, TokenBucket)}


def make_limiter(algorithm: str, limit: int, window: float, clock: Clock = time.time) -> Limiter:
    try:
        return LIMITERS[algorithm](limit, window, clock)
    except KeyError:
        raise ValueError(f"unknown rate-limit algorithm {algorithm!r}") from None


class ConcurrencyLimiter:
    """At most `limit` requests in flight at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.peak = 0

    def has_capacity(self) -> bool:
        return self.in_flight < self.limit

    def acquire(self) -> bool:
        if not self.has_capacity():
            return False
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        return True

    def release(self) -> None:
        self.in_flight -= 1
