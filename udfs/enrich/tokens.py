"""Tokens before the call: the character estimate a reservation starts from,
scaled by what the provider really counted lately, and --dry-run's count of
what a run would send."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from .assets import Assets, Row, load_assets, prompt_of, request_params
from .settings import EnrichConfig
from .store import Store


def raw_token_estimate(system: str, messages: Iterable[Mapping[str, str]]) -> int:
    """Tokens of a prompt before the call: about 4 characters a token, plus framing per message.
    Corrected afterwards by the answer's usage (see TokenEstimator)."""
    total = 3 + (math.ceil(len(system) / 4) + 3 if system else 0)
    for m in messages:
        total += math.ceil(len(m["content"]) / 4) + 3
    return total


class TokenEstimator:
    """Scales the character estimate by what the provider really counted lately
    (the largest recent ratio, so a call is rarely under-reserved). A task keeps
    one across its batches (runner.TaskState)."""

    def __init__(self) -> None:
        self.ratios: list[float] = []

    @property
    def ratio(self) -> float:
        return max(self.ratios[-50:]) if self.ratios else 1.25

    def estimate(self, raw: int) -> int:
        return math.ceil(raw * self.ratio)

    def observe(self, raw: int, actual: int) -> None:
        if raw > 0 and actual > 0:
            self.ratios.append(actual / raw)
            del self.ratios[:-50]


def call_tokens(cfg: EnrichConfig, system: str, user: str, estimator: TokenEstimator) -> int:
    """A call's tokens at most: the prompt estimate + max_tokens (--dry-run's figure, and what a
    batch line counts against enrich.batch.max_enqueued_tokens)."""
    return estimator.estimate(raw_token_estimate(system, [{"role": "user", "content": user}])) + cfg.provider.max_tokens


def estimate(
    rows: Iterable[Row],
    cfg: EnrichConfig,
    assets: Assets | None = None,
    store: Store | None = None,
    estimator: TokenEstimator | None = None,
) -> tuple[int, int]:
    """For --dry-run: (calls, estimated tokens) for these (already selected) rows, counting
    identical prompts once and, with a store, skipping prompts already answered."""
    assets = assets or load_assets(cfg)
    estimator = estimator or TokenEstimator()
    params = request_params(cfg, assets)
    seen: dict[str, int] = {}
    for row in rows:
        h, user = prompt_of(cfg, assets, params, row)
        if h not in seen:
            seen[h] = call_tokens(cfg, assets.template.system, user, estimator)
    if store is not None:
        seen = {h: t for h, t in seen.items() if store.get_answer(h) is None}
    return len(seen), sum(seen.values())
