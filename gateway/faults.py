"""Seeded fault injection and latency sampling.

Each key draws from its own random.Random seeded with (seed, key name), one draw
per request, so a test that sends the same requests in the same order sees the
same faults on every run.
"""

from __future__ import annotations

import math
import random

from .config import Faults, Latency

STREAM_ONLY = ("stream_error", "stream_drop", "stream_truncate")
PLAIN_ONLY = ("malformed_json",)


class FaultInjector:
    def __init__(self, faults: Faults, scope: str) -> None:
        self.faults = faults
        self._rng = random.Random(f"{faults.seed}:{scope}")

    def draw(self, stream: bool) -> str | None:
        """The fault for this request, or None. Probabilities are mutually exclusive;
        a stream-only fault drawn for a plain request (or the reverse) means no fault."""
        u = self._rng.random()
        edge = 0.0
        for kind, p in self.faults.probabilities():
            edge += p
            if p and u < edge:
                if (kind in STREAM_ONLY and not stream) or (kind in PLAIN_ONLY and stream):
                    return None
                return kind
        return None


class LatencySampler:
    """Seconds to wait before answering, from the configured distribution."""

    def __init__(self, latency: Latency) -> None:
        self.latency = latency
        self._rng = random.Random(latency.seed)

    def first_token(self) -> float:
        lat = self.latency
        if lat.distribution == "fixed":
            ms = lat.fixed_ms
        elif lat.distribution == "uniform":
            ms = self._rng.uniform(lat.min_ms, lat.max_ms)
        elif lat.distribution == "lognormal":
            ms = lat.median_ms * math.exp(self._rng.gauss(0.0, lat.sigma))
        else:
            ms = 0.0
        return ms / 1000.0

    def per_chunk(self) -> float:
        return self.latency.per_chunk_ms / 1000.0
