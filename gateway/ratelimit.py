"""Per-key rate-limit policy over the limiter mechanisms, the providers' headers,
and the ledger of what was accepted per key and per window.

OpenAI style: requests, and tokens = input + output, with max_tokens reserved at
admission and the unused part given back when the answer is done.
Anthropic style: requests, input tokens, and output tokens counted separately
(output estimated from max_tokens at admission and adjusted at the end, as
Anthropic documents for OTPM).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .config import ApiKey, Limits
from .limiter import Clock, ConcurrencyLimiter, Grant, Limiter, make_limiter

OPENAI, ANTHROPIC = "openai", "anthropic"


def go_duration(seconds: float) -> str:
    """OpenAI's reset format, Go's time.Duration text: '0s', '20ms', '1.5s', '6m0s', '1h2m3s'.

    The value is first rounded up to whole milliseconds (never tell a client to come
    back early), then split, so 59.9996 s is '1m0s', not '60s'."""
    # Less 1 µs: unix-time floats near 1.8e9 carry ~2e-7 s of rounding, which must not add a ms.
    ms = max(0, math.ceil(seconds * 1000 - 1e-3))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def rfc3339(unix_seconds: float) -> str:
    """Anthropic's reset format, UTC with milliseconds: 2026-11-27T21:00:01.250Z."""
    stamp = datetime.fromtimestamp(unix_seconds, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


@dataclass
class Rejection:
    """Why a request was refused: which limit, and when to retry (seconds; inf = never)."""

    limit_name: str  # requests | tokens | input_tokens | output_tokens | concurrent
    limit: int
    used: int
    requested: int
    retry_after: float


@dataclass
class Admission:
    style: str
    grants: dict[str, Grant]
    reserved_output: int
    settled: bool = False


@dataclass
class WindowCounts:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    rate_limited: int = 0


class UsageLedger:
    """Accepted requests and tokens per window index (floor(t / window)) of one key."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.windows: dict[int, WindowCounts] = defaultdict(WindowCounts)

    def index(self, now: float) -> int:
        return math.floor(now / self.window)

    def snapshot(self) -> list[dict]:
        return [
            {
                "index": i,
                "start": rfc3339(i * self.window),
                "start_unix": i * self.window,
                "requests": c.requests,
                "input_tokens": c.input_tokens,
                "output_tokens": c.output_tokens,
                "rate_limited": c.rate_limited,
            }
            for i, c in sorted(self.windows.items())
        ]


def peak_in_any_window(events: list[tuple[float, int]], window: float) -> int:
    """The largest total of amounts stamped within any interval (t - window, t]:
    the span a sliding window limiter counts, so for that algorithm it never exceeds the limit."""
    events = sorted(events)
    peak = total = left = 0
    for stamp, amount in events:
        total += amount
        while events[left][0] + window <= stamp:
            total -= events[left][1]
            left += 1
        peak = max(peak, total)
    return peak


def peak_in_aligned_window(events: list[tuple[float, int]], window: float) -> int:
    """The largest total within one clock-aligned window [k * window, (k + 1) * window):
    what a fixed window limiter counts."""
    totals: dict[int, int] = defaultdict(int)
    for stamp, amount in events:
        totals[math.floor(stamp / window)] += amount
    return max(totals.values(), default=0)


@dataclass
class KeyLimits:
    """All limiters of one key, and its ledger."""

    key: ApiKey
    clock: Clock
    limiters: dict[str, Limiter] = field(init=False)
    concurrency: ConcurrencyLimiter = field(init=False)
    ledger: UsageLedger = field(init=False)

    def __post_init__(self) -> None:
        lim: Limits = self.key.limits
        self._frozen: float | None = None
        self.limiters = {
            name: make_limiter(lim.algorithm, getattr(lim, name), lim.window_seconds, self._now)
            for name in ("requests", "tokens", "input_tokens", "output_tokens")
        }
        self.concurrency = ConcurrencyLimiter(lim.concurrent)
        self.ledger = UsageLedger(lim.window_seconds)
        # Every admission's time and grants; a grant's amount shrinks when unused
        # reserved output is given back, so peaks count what the limiter holds.
        self.admissions: list[tuple[float, dict[str, Grant]]] = []

    def _now(self) -> float:
        # One decision reads the clock once, so the ledger's window and the
        # limiters' stamps can never disagree about which side of a boundary it fell.
        return self.clock() if self._frozen is None else self._frozen

    def _freeze(self) -> float:
        self._frozen = None
        self._frozen = self.clock()
        return self._frozen

    def _amounts(self, style: str, input_tokens: int, max_output: int) -> dict[str, int]:
        if style == OPENAI:
            return {"requests": 1, "tokens": input_tokens + max_output}
        return {"requests": 1, "input_tokens": input_tokens, "output_tokens": max_output}

    def admit(self, style: str, input_tokens: int, max_output: int) -> Admission | Rejection:
        """Take a request slot, a concurrency slot and tokens, all or nothing."""
        try:
            return self._admit(self._freeze(), style, input_tokens, max_output)
        finally:
            self._frozen = None

    def _admit(self, now: float, style: str, input_tokens: int, max_output: int) -> Admission | Rejection:
        ledger = self.ledger.windows[self.ledger.index(now)]
        if not self.concurrency.has_capacity():
            ledger.rate_limited += 1
            # No clock says when a slot frees up; one second is what we tell clients.
            return Rejection("concurrent", self.concurrency.limit, self.concurrency.in_flight, 1, 1.0)
        amounts = self._amounts(style, input_tokens, max_output)
        for name, amount in amounts.items():
            limiter = self.limiters[name]
            if not limiter.has_capacity(amount):
                ledger.rate_limited += 1
                used = limiter.limit - limiter.remaining()
                return Rejection(name, limiter.limit, used, amount, limiter.retry_after(amount))
        grants: dict[str, Grant] = {}
        for name, amount in amounts.items():
            grant = self.limiters[name].acquire(amount)
            assert grant is not None  # has_capacity said it fits, and no time passed (frozen clock)
            grants[name] = grant
        self.concurrency.acquire()
        self.admissions.append((now, grants))
        ledger.requests += 1
        ledger.input_tokens += input_tokens
        return Admission(style, grants, max_output)

    def settle(self, admission: Admission, output_tokens: int) -> None:
        """The answer is done (or abandoned): give back unused reserved output, free the slot."""
        if admission.settled:
            return
        admission.settled = True
        self.concurrency.release()
        unused = max(0, admission.reserved_output - output_tokens)
        name = "tokens" if admission.style == OPENAI else "output_tokens"
        try:
            now = self._freeze()
            if unused:
                self.limiters[name].refund(admission.grants[name], unused)
            self.ledger.windows[self.ledger.index(now)].output_tokens += output_tokens
        finally:
            self._frozen = None

    def peaks(self) -> dict[str, object]:
        """Per limit, the most admitted within any window and within one aligned window,
        and the peak concurrency, beside the limits, so a test can assert none was exceeded."""
        lim = self.key.limits
        out: dict[str, object] = {"window_seconds": lim.window_seconds}
        for name, limiter in self.limiters.items():
            events = [(stamp, grants[name].amount) for stamp, grants in self.admissions if name in grants]
            out[name] = {
                "limit": limiter.limit,
                "any_window": peak_in_any_window(events, lim.window_seconds),
                "aligned_window": peak_in_aligned_window(events, lim.window_seconds),
            }
        out["concurrent"] = {"limit": self.concurrency.limit, "peak": self.concurrency.peak}
        return out

    def headers(self, style: str) -> dict[str, str]:
        try:
            return self._headers(self._freeze(), style)
        finally:
            self._frozen = None

    def _headers(self, now: float, style: str) -> dict[str, str]:
        req = self.limiters["requests"]
        if style == OPENAI:
            tok = self.limiters["tokens"]
            return {
                "x-ratelimit-limit-requests": str(req.limit),
                "x-ratelimit-remaining-requests": str(req.remaining()),
                "x-ratelimit-reset-requests": go_duration(req.reset_after()),
                "x-ratelimit-limit-tokens": str(tok.limit),
                "x-ratelimit-remaining-tokens": str(tok.remaining()),
                "x-ratelimit-reset-tokens": go_duration(tok.reset_after()),
            }
        out: dict[str, str] = {}
        for prefix, limiter in (
            ("requests", req),
            ("input-tokens", self.limiters["input_tokens"]),
            ("output-tokens", self.limiters["output_tokens"]),
        ):
            remaining = limiter.remaining()
            out[f"anthropic-ratelimit-{prefix}-limit"] = str(limiter.limit)
            out[f"anthropic-ratelimit-{prefix}-remaining"] = str(remaining if limiter is req else thousands(remaining))
            out[f"anthropic-ratelimit-{prefix}-reset"] = rfc3339(now + limiter.reset_after())
        # tokens-*: the most restrictive of the input and output limits right now.
        tight = min(
            (self.limiters["input_tokens"], self.limiters["output_tokens"]),
            key=lambda lim: lim.remaining() / lim.limit,
        )
        out["anthropic-ratelimit-tokens-limit"] = str(tight.limit)
        out["anthropic-ratelimit-tokens-remaining"] = str(thousands(tight.remaining()))
        out["anthropic-ratelimit-tokens-reset"] = rfc3339(now + tight.reset_after())
        return out

    def remaining(self) -> dict[str, int]:
        """What each limiter has left now, exact (the Anthropic headers round tokens)."""
        try:
            self._freeze()
            return {name: limiter.remaining() for name, limiter in self.limiters.items()}
        finally:
            self._frozen = None


def thousands(tokens: int) -> int:
    """Anthropic's token '-remaining' headers: rounded to the nearest thousand (halves up)."""
    return (tokens + 500) // 1000 * 1000


def retry_headers(retry_after: float) -> dict[str, str]:
    """retry-after in whole seconds (RFC 9110), plus retry-after-ms which both SDKs prefer."""
    if math.isinf(retry_after):
        # The request can never fit this limit: tell the SDKs not to retry.
        return {"x-should-retry": "false"}
    return {
        "retry-after": str(max(1, math.ceil(retry_after))),
        "retry-after-ms": str(max(1, math.ceil(retry_after * 1000))),
    }
