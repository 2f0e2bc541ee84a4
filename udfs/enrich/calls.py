"""The calls for one prompt: each attempt through the job's budget, transient
errors retried by one policy (tenacity), malformed answers repaired, and how
answers are constrained (`provider.structured_output`) adapted to what the
server honours. Returns the row's result record (result.py's fields)."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from .answers import AnswerError, parse_answer
from .assets import Assets
from .budget import TooLarge
from .dialects import METHODS
from .limiter import JobBudget
from .providers import CallError, CallResult, LLMClient
from .result import DEAD_LETTER, ENRICHED
from .settings import EnrichConfig
from .tokens import TokenEstimator, raw_token_estimate

log = logging.getLogger(__name__)
KEY_LIKE = re.compile(r"(sk|key)-[A-Za-z0-9_\-]{6,}")
AUTO_DECIDE = 3  # answers under one method that all miss the schema before auto moves to the next
EventSink = Callable[[dict[str, Any]], None]


def scrub(text: str, api_key: str) -> str:
    """An error text with the key (and anything shaped like a key) masked."""
    if api_key:
        text = text.replace(api_key, "[redacted]")
    return KEY_LIKE.sub(lambda m: m.group(1) + "-[redacted]", text)


class Constraint:
    """How answers are constrained for the rest of a task's run. A fixed setting stays; `auto`
    starts with `schema` and moves on (tool, then prompt) when the first AUTO_DECIDE answers
    under a method all fail to parse or break the schema (a server that ignores the format);
    one good answer settles it."""

    def __init__(self, setting: str) -> None:
        self.auto = setting == "auto"
        self.method = "schema" if self.auto else setting
        self.misses = 0
        self.settled = not self.auto

    def observe(self, valid: bool) -> None:
        if self.settled:
            return
        if valid:
            self.settled = True
            return
        self.misses += 1
        if self.misses >= AUTO_DECIDE:
            following = METHODS[METHODS.index(self.method) + 1 :]
            log.warning("answers ignore structured output %r; switching to %r", self.method, following[0])
            self.method, self.misses = following[0], 0
            self.settled = len(following) == 1


class Caller:
    def __init__(
        self,
        cfg: EnrichConfig,
        assets: Assets,
        api_key: str,
        client: LLMClient,
        budget: JobBudget,
        estimator: TokenEstimator,
        constraint: Constraint,
        emit: Callable[..., None],
    ) -> None:
        self.cfg, self.assets, self.api_key, self.client, self.budget = cfg, assets, api_key, client, budget
        self.estimator, self.constraint, self.emit = estimator, constraint, emit
        self.dialect = client.dialect

    async def answer(self, system: str, user: str) -> dict[str, Any]:
        """The result record for one prompt: enriched, or a dead letter with its last error."""
        messages = [{"role": "user", "content": user}]
        state = {"attempts": 0}
        last: CallResult | None = None
        error = ""
        started = time.perf_counter()
        for repair in range(self.cfg.repair_attempts + 1):
            try:
                last = await self._with_retries(system, messages, state)
            except CallError as exc:
                error = str(exc)
                break
            except TooLarge as exc:
                error = f"not sent: {exc}"
                break
            try:
                fields = parse_answer(last.text, self.assets.schema, self.cfg.max_answer_chars)
            except AnswerError as exc:
                self.constraint.observe(False)
                error = f"{exc} (after {repair + 1} answer(s))"
                # Ask again, showing the model its answer (capped) and what was wrong with it.
                messages = [
                    *messages[:1],
                    {"role": "assistant", "content": last.text[: self.cfg.max_answer_chars]},
                    {
                        "role": "user",
                        "content": f"That answer was not valid: {exc}. Reply with only the JSON object the instructions describe.",
                    },
                ]
                continue
            self.constraint.observe(True)
            return self.record(ENRICHED, fields, last, state["attempts"], started, "")
        return self.record(DEAD_LETTER, {}, last, state["attempts"], started, scrub(error, self.api_key))

    def record(
        self, status: str, fields: dict[str, Any], res: CallResult | None, attempts: int, started: float, error: str
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"status": status}
        out.update({name: fields.get(name) for name in self.assets.schema.fields})
        out.update(
            raw_answer=None if res is None else res.text[: self.cfg.max_answer_chars],
            input_tokens=0 if res is None else res.input_tokens,
            output_tokens=0 if res is None else res.output_tokens,
            latency_ms=round((time.perf_counter() - started) * 1000.0, 1),
            ttft_ms=None if res is None else res.ttft_ms,
            attempts=attempts,
            provider=self.cfg.provider.kind,
            model=self.cfg.provider.model if res is None else res.model,
            template=self.assets.template.id,
            request_id=None if res is None else res.request_id,
            error=error or None,
        )
        return out

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, CallError) and exc.retry_after is not None:
            # The server said when: wait that long (plus a little jitter so waiters do not return together).
            return exc.retry_after + random.uniform(0, 0.1 * exc.retry_after + 0.01)
        retry = self.cfg.retry
        return wait_exponential_jitter(multiplier=retry.base_delay_s, max=retry.max_delay_s, jitter=retry.base_delay_s)(
            state
        )

    async def _with_retries(self, system: str, messages: list[dict[str, str]], state: dict[str, int]) -> CallResult:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.cfg.retry.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda e: isinstance(e, CallError) and e.retryable),
            reraise=True,
            sleep=self.budget.sleep,
        )
        async for attempt in retrying:
            with attempt:
                return await self._one_call(system, messages, state)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _one_call(self, system: str, messages: list[dict[str, str]], state: dict[str, int]) -> CallResult:
        raw = raw_token_estimate(system, messages)
        ticket = await self.budget.acquire(
            self.dialect.amounts(self.estimator.estimate(raw), self.cfg.provider.max_tokens)
        )
        state["attempts"] += 1
        self.emit("call")
        try:
            res = await self.client.call(system, messages, self.constraint.method)
        except CallError as exc:
            await self.budget.refused(
                ticket,
                status=exc.status,
                admitted=exc.admitted,
                retry_after=exc.retry_after,
                reading=self.dialect.reading(exc.headers),
                concurrency="concurrent" in str(exc),
            )
            self.emit("call_done", status=exc.status, error=scrub(str(exc), self.api_key))
            log.info("call failed (%s): %s", "will retry" if exc.retryable else "final", scrub(str(exc), self.api_key))
            raise
        except BaseException:
            await self.budget.refused(ticket, status=None, admitted=True, retry_after=None, reading={})
            raise
        self.estimator.observe(raw, res.input_tokens)
        used = self.dialect.amounts(res.input_tokens, res.output_tokens)
        await self.budget.answered(ticket, used, self.dialect.reading(res.headers))
        self.emit("call_done", status=200, error=None)
        return res
