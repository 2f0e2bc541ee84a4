"""Enrich a batch of rows through an LLM API: the side-effecting core both engines call.

`enrich_batch(rows, cfg, api_key=..., store=...)` runs the rows' calls
concurrently on an asyncio loop inside the calling (Spark or mrjob) task and
returns one result dict per input row, in input order (result.py's contract,
plus id and prompt_hash). This module only orchestrates: the prompt identity
is assets.py's, claims claims.py's, the calls, retries and repairs calls.py's,
and every wait for the job's limits limiter.py's (JobBudget over the store).

For a cached row (`cached` true: no call made now) tokens, attempts, latency
and request id are those of the call that produced the answer; a run's own
spend is the sum over rows with cached false.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .assets import Assets, Row, load_assets, prompt_of, request_params
from .batch_lines import DEAD_PREFIX
from .calls import Caller, Constraint, EventSink
from .claims import Claims
from .dialects import dialect_for
from .limiter import JobBudget, Share, Sleep, budget_limits
from .providers import LLMClient
from .result import DEAD_LETTER, ENRICHED
from .settings import EnrichConfig
from .store import Store
from .store import open_store as open_backend
from .tokens import TokenEstimator

log = logging.getLogger(__name__)


class EnrichError(ValueError):
    """A batch that cannot be processed at all (bad rows or settings); names the row or setting."""


@dataclass
class TaskState:
    """What a task learns over its batches and keeps for the next: its share of the limits,
    the token estimate's correction, how answers are constrained. A driver makes one per task
    (no module state: two tasks of one process never share it by accident)."""

    share: Share = field(default_factory=Share)
    estimator: TokenEstimator = field(default_factory=TokenEstimator)
    constraint: Constraint | None = None


def open_store(cfg: EnrichConfig, job_id: str) -> Store:
    """The job's shared store (budget, cache, claims, progress)."""
    log.info("enrich store for job %s: %s", job_id, cfg.store.backend)
    return open_backend(cfg.store)


def budget_namespace(cfg: EnrichConfig, api_key: str) -> str:
    """One budget per API key and endpoint (the key itself never stored: a hash of it)."""
    return hashlib.sha256(f"{cfg.provider.base_url}\0{api_key}".encode()).hexdigest()[:24]


class BatchRunner:
    """One enrich_batch call: group the rows by prompt, answer each prompt once under a claim,
    spread the records back over the rows in order."""

    def __init__(
        self,
        cfg: EnrichConfig,
        assets: Assets,
        api_key: str,
        store: Store,
        on_event: EventSink | None,
        state: TaskState,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.cfg, self.assets, self.api_key, self.store, self.on_event = cfg, assets, api_key, store, on_event
        if state.constraint is None:
            state.constraint = Constraint(cfg.provider.structured_output)
        self.state = state
        self.budget = JobBudget(
            store,
            budget_namespace(cfg, api_key),
            budget_limits(cfg.limits, dialect_for(cfg.provider.kind).token_dims),
            lease_s=cfg.provider.timeout_s + 5.0,
            low_water=cfg.limits.low_water,
            share=state.share,
            clock=clock,
            sleep=sleep,
        )
        self.claims = Claims(store, cfg.store.claim_ttl_s, clock)

    def emit(self, kind: str, **fields: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event({"type": kind, **fields})
            except Exception:  # a progress display must never fail a batch
                log.exception("on_event callback failed")

    async def batch_outcome(self, caller: Caller, h: str) -> dict[str, Any]:
        """Batch mode without the online fallback: the dead letter batch mode stored for a prompt
        it gave up on (its answer, had there been one, was in the cache)."""
        record = await asyncio.to_thread(self.store.get_answer, DEAD_PREFIX + h)
        if record is not None:
            return record
        reason = "batch: no answer from the Batch API and enrich.batch.fallback is 'none'"
        return caller.record(DEAD_LETTER, {}, None, 0, time.perf_counter(), reason)

    async def run(self, rows: Sequence[Row]) -> list[dict[str, Any]]:
        params = request_params(self.cfg, self.assets)
        groups: dict[str, list[int]] = {}
        users: dict[str, str] = {}
        empty: list[int] = []
        for i, row in enumerate(rows):
            if "id" not in row or row["id"] is None:
                raise EnrichError(f"row {i} of the batch has no id")
            if self.cfg.text_column not in row:
                raise EnrichError(f"row {row['id']!r} has no column {self.cfg.text_column!r} (enrich.text_column)")
            text = row[self.cfg.text_column]
            if not isinstance(text, str) or not text.strip():
                empty.append(i)  # nothing to label: a dead letter with its reason, no call
                continue
            h, users[h] = prompt_of(self.cfg, self.assets, params, row)
            groups.setdefault(h, []).append(i)
        client = LLMClient(self.cfg.provider, self.api_key, self.assets.schema.schema)
        assert self.state.constraint is not None
        caller = Caller(
            self.cfg,
            self.assets,
            self.api_key,
            client,
            self.budget,
            self.state.estimator,
            self.state.constraint,
            self.emit,
        )
        system = self.assets.template.system
        heartbeat = asyncio.create_task(self.claims.renew_forever())

        def call_for(h: str) -> Callable[[], Awaitable[dict[str, Any]]]:
            if self.cfg.mode == "batch" and self.cfg.batch.fallback == "none":
                return lambda: self.batch_outcome(caller, h)  # batch mode answered or gave up: no call
            return lambda: caller.answer(system, users[h])

        try:
            answers = await asyncio.gather(
                *(self.claims.answer(h, call_for(h), lambda r: r["status"] == ENRICHED) for h in groups)
            )
        finally:
            heartbeat.cancel()
            await client.close()
        out: list[dict[str, Any]] = [{} for _ in rows]
        for (h, idx), (record, called) in zip(groups.items(), answers, strict=True):
            for n, i in enumerate(idx):
                cached = not called or n > 0  # duplicates in the batch ride on the first one's call
                out[i] = {"id": rows[i]["id"], **record, "cached": cached, "prompt_hash": h}
                self.emit("row", id=rows[i]["id"], status=record["status"], cached=cached)
        for i in empty:
            reason = f"no text: column {self.cfg.text_column!r} is empty or not a string"
            record = caller.record(DEAD_LETTER, {}, None, 0, time.perf_counter(), reason)
            out[i] = {"id": rows[i]["id"], **record, "cached": False, "prompt_hash": None}
            self.emit("row", id=rows[i]["id"], status=DEAD_LETTER, cached=False)
        return out


def enrich_batch(
    rows: list[dict[str, Any]],
    cfg: EnrichConfig,
    *,
    api_key: str,
    store: Store,
    on_event: EventSink | None = None,
    assets: Assets | None = None,
    state: TaskState | None = None,
) -> list[dict[str, Any]]:
    """One output dict per input row, in order (see the module docstring). Synchronous:
    runs its own asyncio loop, so Spark's pandas UDFs and mrjob mappers call it directly.
    Pass the task's `state` to carry what it learnt into the next batch."""
    if not rows:
        return []
    if not api_key:
        raise EnrichError(f"no API key: set the environment variable {cfg.provider.api_key_env}")
    runner = BatchRunner(cfg, assets or load_assets(cfg), api_key, store, on_event, state or TaskState())
    return asyncio.run(runner.run(rows))
