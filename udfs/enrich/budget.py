"""The job-wide request/token budget: a sliding-window log with reservations.

Mechanism only, in aiolimiter's manner: `decide()` is a pure function of the
entries in the log, the amounts asked for, the limits and the time `now`, so
tests drive it with a fake clock. The store (udfs/enrich/store.py) keeps the
log where every process of the job sees it (SQLite or Redis) and calls
`decide()` inside one transaction, so the check and the append are atomic
across processes.

Each call appends one entry: 1 request, and tokens reserved before the call
(OpenAI: prompt estimate + max_tokens; Anthropic: input estimate, and
max_tokens of output). When the answer's `usage` arrives the entry is
corrected to what was really used, which gives the unused reservation back,
as the providers do, and its stamp moves to the time the answer came: the
server admitted the call somewhere between our stamp and then, so the entry
then outlives the server's whatever the network or scheduling delay. An entry also holds a concurrency slot until it is
settled (or its lease runs out, if its process died).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DIMS = ("requests", "tokens", "input_tokens", "output_tokens")
POLL_S = 0.05  # how long to wait for a concurrency slot before asking again


@dataclass(frozen=True)
class BudgetLimits:
    """Limits per window (absent dimension: not limited), plus concurrency."""

    window: float  # seconds, our safety margin included
    limits: dict[str, int]
    max_in_flight: int
    share: float = 1.0  # the part of them this process takes (limiter.Share)

    def effective(self, announced: Mapping[str, int]) -> BudgetLimits:
        """Each limit lowered to the one the server announced (if lower), then times the share."""
        lowered = {dim: min(limit, announced.get(dim, limit)) for dim, limit in self.limits.items()}
        if self.share >= 1.0:
            return BudgetLimits(self.window, lowered, self.max_in_flight)
        return BudgetLimits(
            self.window,
            {dim: max(1, int(limit * self.share)) for dim, limit in lowered.items()},
            max(1, int(self.max_in_flight * self.share)),
        )


@dataclass(frozen=True)
class Entry:
    id: str
    stamp: float
    amounts: dict[str, int]
    lease_until: float  # > now while the call is in flight; 0 once settled


class TooLarge(ValueError):
    """One call needs more than a whole window's limit: it can never be admitted."""


def live(entries: Iterable[Entry], now: float, window: float) -> list[Entry]:
    """Entries that still count: inside the window, or still in flight."""
    return [e for e in entries if e.stamp > now - window or e.lease_until > now]


def decide(entries: Iterable[Entry], now: float, amounts: dict[str, int], limits: BudgetLimits) -> float:
    """0.0 if `amounts` fit now; otherwise seconds until they can (POLL_S when a slot is the wait)."""
    for dim, limit in limits.limits.items():
        if amounts.get(dim, 0) > limit:
            raise TooLarge(f"one call needs {amounts[dim]} {dim}, more than the limit of {limit} per window")
    # A call still in flight counts as if stamped now: the server may admit it any moment yet.
    stamped = sorted(
        ((max(e.stamp, now) if e.lease_until > now else e.stamp, e) for e in entries), key=lambda pair: pair[0]
    )
    in_window = [(stamp, e) for stamp, e in stamped if stamp > now - limits.window]
    wait = 0.0
    for dim, limit in limits.limits.items():
        need = amounts.get(dim, 0)
        used = sum(e.amounts.get(dim, 0) for _, e in in_window)
        if used + need <= limit:
            continue
        for stamp, e in in_window:  # oldest first: each expiry frees its amount
            used -= e.amounts.get(dim, 0)
            if used + need <= limit:
                wait = max(wait, stamp + limits.window - now)
                break
    if wait > 0:
        return max(wait, 1e-3)
    in_flight = sum(1 for e in entries if e.lease_until > now)
    if in_flight >= limits.max_in_flight:
        return POLL_S
    return 0.0


def usage(entries: Iterable[Entry], now: float, window: float) -> dict[str, int]:
    """What the window holds now, per dimension, and the calls in flight."""
    in_window = [e for e in entries if e.stamp > now - window or e.lease_until > now]
    out = {dim: sum(e.amounts.get(dim, 0) for e in in_window) for dim in DIMS}
    out["in_flight"] = sum(1 for e in entries if e.lease_until > now)
    return out


COMPACT_SLOTS = 100  # a window's settled entries are merged into at most this many
COMPACT_ABOVE = 2 * COMPACT_SLOTS  # ...once the log holds more entries than this


def compact(entries: list[Entry], now: float, window: float) -> tuple[list[Entry], list[str], list[Entry]]:
    """Bound the log at high rates: merge settled entries older than one slot (window /
    COMPACT_SLOTS) into one entry per slot. A merged entry carries the sum of its parts
    and the latest stamp among them, so it leaves the window no earlier than any part:
    the budget never admits more, and holds at most one slot longer (1% of the window).
    Returns (the log after, ids removed, entries added or replaced)."""
    if len(entries) <= COMPACT_ABOVE:
        return entries, [], []
    slot = window / COMPACT_SLOTS
    groups: dict[int, list[Entry]] = {}
    kept: list[Entry] = []
    for e in entries:
        if e.lease_until <= now and e.stamp <= now - slot:
            groups.setdefault(math.floor(e.stamp / slot), []).append(e)
        else:
            kept.append(e)
    removed: list[str] = []
    added: list[Entry] = []
    for index, parts in groups.items():
        merged_id = f"slot-{index}"
        if len(parts) == 1 and parts[0].id == merged_id:
            kept.append(parts[0])
            continue
        amounts = {dim: sum(p.amounts.get(dim, 0) for p in parts) for dim in DIMS}
        merged = Entry(merged_id, max(p.stamp for p in parts), amounts, 0.0)
        removed.extend(p.id for p in parts if p.id != merged_id)
        added.append(merged)
        kept.append(merged)
    return kept, removed, added


@dataclass(frozen=True)
class Plan:
    """What one acquire does to the log, decided purely: the wait (0.0: admitted), the ids to
    delete (out of the window, or merged), and the entries to write (merged ones, and the new
    entry when admitted)."""

    wait: float
    delete: list[str]
    write: list[Entry]


def plan_acquire(
    entries: list[Entry], entry_id: str, now: float, amounts: dict[str, int], limits: BudgetLimits, lease_until: float
) -> Plan:
    kept = live(entries, now, limits.window)
    kept_ids = {e.id for e in kept}
    stale = [e.id for e in entries if e.id not in kept_ids]
    kept, merged_away, merged = compact(kept, now, limits.window)
    wait = decide(kept, now, amounts, limits)
    new = [Entry(entry_id, now, amounts, lease_until)] if wait == 0.0 else []
    return Plan(wait, stale + merged_away, merged + new)


def settled(e: Entry, amounts: dict[str, int] | None, stamp: float) -> Entry:
    """The entry of a call that is over: slot freed, amounts corrected (None: kept), stamp moved later."""
    return Entry(e.id, max(e.stamp, stamp), e.amounts if amounts is None else amounts, 0.0)
