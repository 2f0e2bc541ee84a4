"""Online scoring: texts scored by a registered version through the same
udfs calls the score job's tasks make (udfs.scoring.plan_scoring, then
udfs.predict.score_texts), with concurrent requests micro-batched
(service/batching.py). The encoder is loaded once per process (udfs.model's
cached loader), each version's head once (service/registry.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
import threading
import uuid
from collections.abc import Hashable, Sequence
from typing import Any

from udfs.config import PipelineConfig
from udfs.predict import score_texts
from udfs.scoring import ScoringPlan, plan_scoring

from .batching import MicroBatcher
from .registry import Registry, Resolved


@dataclasses.dataclass(frozen=True)
class Prediction:
    label: str | None  # None for an empty text
    probability: float | None
    probabilities: dict[str, float] | None


@dataclasses.dataclass(frozen=True)
class Scored:
    model: Resolved
    labels: list[str]
    lineage: dict[str, Any]
    predictions: list[Prediction]


class Scorer:
    def __init__(
        self, pipeline: PipelineConfig, registry: Registry, max_batch_size: int, max_wait_ms: float, torch_threads: int
    ) -> None:
        self.pipeline, self.registry, self.torch_threads = pipeline, registry, torch_threads
        self.batcher = MicroBatcher(self._run, max_batch_size, max_wait_ms / 1000)
        self._plans: dict[str, ScoringPlan] = {}
        self._lock = threading.Lock()

    def plan(self, resolved: Resolved) -> ScoringPlan:
        """The version's scoring plan (settings, lineage), made once."""
        with self._lock:
            plan = self._plans.get(resolved.uri)
            if plan is None:
                head = self.registry.head(resolved)
                plan = plan_scoring(self.pipeline, head, "service", torch_threads=self.torch_threads)
                self._plans[resolved.uri] = plan
            return plan

    def _run(self, key: Hashable, texts: list[str]) -> list[Prediction]:
        plan = self._plans[str(key)]
        frame = score_texts(texts, plan.settings)
        return [
            Prediction(
                label,
                None if probability is None or math.isnan(probability) else float(probability),
                None if every is None else {k: float(v) for k, v in every.items()},
            )
            for label, probability, every in zip(
                frame["predicted"], frame["probability"], frame["probabilities"], strict=True
            )
        ]

    def score_direct(self, resolved: Resolved, texts: Sequence[str]) -> list[Prediction]:
        """One call, no batching (the benchmark's baseline)."""
        self.plan(resolved)
        return self._run(resolved.uri, list(texts))

    async def score(self, resolved: Resolved, texts: Sequence[str]) -> Scored:
        plan = await asyncio.to_thread(self.plan, resolved)  # MLflow and the encoder's files on first use
        predictions = await self.batcher.submit(resolved.uri, list(texts))
        lineage = dict(plan.lineage)
        lineage["run_id"] = f"service-{uuid.uuid4().hex[:12]}"  # this request
        lineage["scored_at"] = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        return Scored(resolved, list(plan.settings.labels), lineage, predictions)

    async def close(self) -> None:
        await self.batcher.close()
