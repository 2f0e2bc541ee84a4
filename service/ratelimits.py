"""Per-key limits of the four kinds API providers use, on the `limits` library
(its memory storage by default; Redis where several service processes must
share the counts):

- requests per minute, every /api/ request but health (a moving window: never
  more than N in any 60 s);
- texts per minute sent to /score, v1 and v2 (a moving window, each request
  counting its texts);
- concurrent runs: runs in state `running` submitted with the key (counted in
  the runs database, not here: a run is running until its process ends);
- core-seconds per day of runs: each ended run is charged its wall seconds
  (started to ended, as the service measures them: submit.sh, the JVM and the
  job) times the cores of its master (local[N]: N, local or a dry run: 1,
  local[*] and the default local[*,4]: this machine's cores, spark:// and
  yarn: limits.cluster_cores), rounded up; a run is refused while the key's
  charges in its current day (a fixed window from its first charge) have
  reached the budget. A run is charged when it ends, so the one that crosses
  the budget runs to its end.

This module is the mechanism: it answers whether, and the numbers for the
rate-limit headers; the routes decide what to count. Nothing here sees a key,
only its name.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass

from limits import RateLimitItemPerDay, RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from . import errors
from .config import DefaultLimits, LimitSettings

# A client refused for concurrent runs may try again this much later: when
# one of its runs ends is not known in advance.
CONCURRENT_RETRY_S = 5
LOCAL_N = re.compile(r"^local\[([0-9]+)(,[0-9]+)?\]$")


@dataclass(frozen=True)
class Verdict:
    kind: str  # requests_per_minute, texts_per_minute, concurrent_runs, core_seconds_per_day
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the window frees something (0: nothing to free)

    def headers(self) -> dict[str, str]:
        """The IETF draft's RateLimit-* fields (delta seconds), and Retry-After when refused."""
        found = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            found["Retry-After"] = str(max(1, self.reset_s))
        return found

    def problem(self, detail: str) -> errors.Problem:
        return errors.Problem(
            429,
            detail,
            kind="rate-limited",
            headers=self.headers(),
            extra={"limit": self.kind, "limit_value": self.limit, "retry_after": max(1, self.reset_s)},
        )


def run_cores(master: str | None, dry_run: bool, job: str, cluster_cores: int) -> int:
    """The cores a run is counted with (see the module's docstring)."""
    if dry_run and job != "enrich":  # the checks only: one Python process, no Spark
        return 1
    if master is None or master.startswith("local[*"):  # submit.sh's default is local[*,4]
        return os.cpu_count() or 1
    if master == "local":
        return 1
    m = LOCAL_N.match(master)
    if m:
        return max(1, int(m.group(1)))
    return cluster_cores


def core_seconds(seconds: float, cores: int) -> int:
    return math.ceil(max(0.0, seconds) * cores)


class Limiter:
    def __init__(self, settings: LimitSettings) -> None:
        self.settings = settings
        self.storage = storage_from_string(settings.storage)
        self.blocking = not settings.storage.startswith("memory://")  # Redis: call it off the event loop
        self._moving = MovingWindowRateLimiter(self.storage)
        self._fixed = FixedWindowRateLimiter(self.storage)

    def of(self, name: str) -> DefaultLimits:
        return self.settings.for_key(name)

    @staticmethod
    def _reset(reset_time: float) -> int:
        return max(0, math.ceil(reset_time - time.time()))

    def _moving_hit(self, kind: str, limit: int, name: str, cost: int) -> Verdict:
        item = RateLimitItemPerMinute(limit)
        allowed = self._moving.hit(item, "aibatch", name, kind, cost=cost)
        stats = self._moving.get_window_stats(item, "aibatch", name, kind)
        return Verdict(
            kind, allowed, limit, stats.remaining, self._reset(stats.reset_time) if stats.remaining < limit else 0
        )

    def request(self, name: str) -> Verdict:
        """Count one request of the key."""
        return self._moving_hit("requests_per_minute", self.of(name).requests_per_minute, name, 1)

    def texts(self, name: str, count: int) -> Verdict:
        """Count `count` texts of the key; refused (nothing counted) where they do not all fit."""
        return self._moving_hit("texts_per_minute", self.of(name).texts_per_minute, name, count)

    def concurrent(self, name: str, running: int) -> Verdict:
        limit = self.of(name).concurrent_runs
        allowed = running < limit
        return Verdict("concurrent_runs", allowed, limit, max(0, limit - running), 0 if allowed else CONCURRENT_RETRY_S)

    def budget(self, name: str) -> Verdict:
        """Whether the key may start a run: its charges in the current day are under its budget."""
        limit = self.of(name).core_seconds_per_day
        item = RateLimitItemPerDay(limit)
        stats = self._fixed.get_window_stats(item, "aibatch", name, "core_seconds")
        allowed = stats.remaining >= 1
        return Verdict("core_seconds_per_day", allowed, limit, stats.remaining, self._reset(stats.reset_time))

    def charge(self, name: str, amount: int) -> None:
        """Charge the key core-seconds (a run that ended): counted whatever the budget says."""
        if amount > 0:
            item = RateLimitItemPerDay(self.of(name).core_seconds_per_day)
            self._fixed.hit(item, "aibatch", name, "core_seconds", cost=amount)

    def usage(self, name: str, running: int) -> dict[str, dict[str, int]]:
        """The key's limits and what is left of each, for GET /api/v1/limits (counts nothing)."""
        limits = self.of(name)
        found = {}
        for kind, limit in (
            ("requests_per_minute", limits.requests_per_minute),
            ("texts_per_minute", limits.texts_per_minute),
        ):
            stats = self._moving.get_window_stats(RateLimitItemPerMinute(limit), "aibatch", name, kind)
            found[kind] = {"limit": limit, "remaining": stats.remaining}
        found["concurrent_runs"] = {
            "limit": limits.concurrent_runs,
            "remaining": max(0, limits.concurrent_runs - running),
        }
        budget = self.budget(name)
        found["core_seconds_per_day"] = {
            "limit": budget.limit,
            "remaining": budget.remaining,
            "used": budget.limit - budget.remaining,
            "reset_s": budget.reset_s,
        }
        return found
