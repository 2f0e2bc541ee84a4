"""Enrich a batch of rows through an LLM API: the side-effecting core both engines call.

`enrich_batch(rows, cfg, api_key=..., store=...)` runs the rows' calls
concurrently on an asyncio loop inside the calling (Spark or mrjob) task and
returns one output dict per input row, in input order. Every call first takes
its share of the job-wide budget in the shared store (requests, tokens,
concurrency), so however many tasks run at once the job stays within the
provider's limits. Answers are cached in the store by `prompt_hash`; before
calling, a task claims the hash, so identical prompts are sent once across
tasks and a rerun sends nothing for rows already answered.

Row output keys (always all present): id, status ("enriched" | "dead_letter"),
the answer schema's fields, raw_answer, input_tokens, output_tokens,
latency_ms, ttft_ms, attempts, provider, model, template, request_id, cached,
prompt_hash, error. For a cached row (`cached` true: no call made now) tokens,
attempts, latency and request id are those of the call that produced the
answer; a run's own spend is the sum over rows with cached false.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import random
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from .answers import AnswerError, AnswerSchema, load_schema, parse_answer
from .budget import BudgetLimits, TooLarge
from .prompts import Template, load_template, render
from .providers import CallError, CallResult, Client, make_client
from .settings import EnrichConfig
from .store import RedisStore, SqliteStore, Store

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
EventSink = Callable[[dict[str, Any]], None]
ENRICHED, DEAD_LETTER = "enriched", "dead_letter"
CLAIM_POLL_S = 0.1
REFUND_POLL_S = 0.25  # how long a waiting call may miss another process's refund
KEY_LIKE = re.compile(r"(sk|key)-[A-Za-z0-9_\-]{6,}")


class EnrichError(ValueError):
    """A batch that cannot be processed at all (bad rows or settings); names the row or setting."""


@dataclass(frozen=True)
class Assets:
    """What the tasks need besides the config: the released template and the answer schema.
    Load it once on the driver (`load_assets`) and pass it to the tasks (it pickles)."""

    template: Template
    schema: AnswerSchema


def load_assets(cfg: EnrichConfig, root: str | Path = ".") -> Assets:
    base = Path(root)
    prompts = Path(cfg.prompts_dir)
    schema = Path(cfg.answer_schema)
    return Assets(
        load_template(prompts if prompts.is_absolute() else base / prompts, cfg.template),
        load_schema(schema if schema.is_absolute() else base / schema),
    )


def open_store(cfg: EnrichConfig, job_id: str) -> Store:
    """The job's shared store (budget, cache, claims). A relative sqlite path is from the working directory."""
    store: Store = RedisStore(cfg.store.url) if cfg.store.backend == "redis" else SqliteStore(cfg.store.path)
    log.info("enrich store for job %s: %s", job_id, cfg.store.backend)
    return store


def request_params(cfg: EnrichConfig, assets: Assets) -> dict[str, Any]:
    """The parameters that shape an answer (part of the cache key)."""
    return {
        "max_tokens": cfg.provider.max_tokens,
        "temperature": cfg.provider.temperature,
        "schema": hashlib.sha256(json.dumps(assets.schema.schema, sort_keys=True).encode()).hexdigest(),
        "repair_attempts": cfg.repair_attempts,
        "structured_output": cfg.provider.structured_output,
    }


def prompt_hash(provider: str, model: str, template: str, params: Mapping[str, Any], prepared: str) -> str:
    """sha256 over (provider, model, template id@version, parameters, prepared text)."""
    doc = json.dumps([provider, model, template, dict(params), prepared], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def prepared_text(template: Template, row: Row) -> str:
    return template.system + "\n\n" + render(template, row)


def raw_token_estimate(system: str, messages: Iterable[Mapping[str, str]]) -> int:
    """Tokens of a prompt before the call: about 4 characters a token, plus framing per message.
    Corrected afterwards by the answer's usage (see TokenEstimator)."""
    total = 3 + (math.ceil(len(system) / 4) + 3 if system else 0)
    for m in messages:
        total += math.ceil(len(m["content"]) / 4) + 3
    return total


class TokenEstimator:
    """Scales the character estimate by what the provider really counted lately
    (the largest recent ratio, so a call is rarely under-reserved)."""

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


_ESTIMATORS: dict[tuple[str, str, str], TokenEstimator] = {}
# Per budget namespace: the share of the configured limits this process uses. It drops
# when the provider refuses us with its capacity exhausted (another client of the same
# key that does not share our store), and creeps back with each answered call.
_SHARES: dict[str, float] = {}
SHARE_FLOOR, SHARE_DECREASE, SHARE_SOFT_DECREASE, SHARE_INCREASE = 0.2, 0.85, 0.95, 0.004


def _estimator(cfg: EnrichConfig) -> TokenEstimator:
    key = (cfg.provider.kind, cfg.provider.base_url, cfg.provider.model)
    return _ESTIMATORS.setdefault(key, TokenEstimator())


def estimate(
    rows: Iterable[Row], cfg: EnrichConfig, assets: Assets | None = None, store: Store | None = None
) -> tuple[int, int]:
    """For --dry-run: (calls, estimated tokens) for these (already selected) rows, counting
    identical prompts once and, with a store, skipping prompts already answered."""
    assets = assets or load_assets(cfg)
    params = request_params(cfg, assets)
    seen: dict[str, int] = {}
    for row in rows:
        user = render(assets.template, row)
        h = prompt_hash(
            cfg.provider.kind, cfg.provider.model, assets.template.id, params, assets.template.system + "\n\n" + user
        )
        if h not in seen:
            raw = raw_token_estimate(assets.template.system, [{"role": "user", "content": user}])
            seen[h] = _estimator(cfg).estimate(raw) + cfg.provider.max_tokens
    if store is not None:
        seen = {h: t for h, t in seen.items() if store.get_answer(h) is None}
    return len(seen), sum(seen.values())


def budget_namespace(cfg: EnrichConfig, api_key: str) -> str:
    """One budget per API key and endpoint (the key itself never stored: a hash of it)."""
    return hashlib.sha256(f"{cfg.provider.base_url}\0{api_key}".encode()).hexdigest()[:24]


def scrub(text: str, api_key: str) -> str:
    """An error text with the key (and anything shaped like a key) masked."""
    if api_key:
        text = text.replace(api_key, "[redacted]")
    return KEY_LIKE.sub(lambda m: m.group(1) + "-[redacted]", text)


def budget_limits(cfg: EnrichConfig) -> BudgetLimits:
    lim = cfg.limits
    dims = (
        {"requests": lim.requests_per_minute, "tokens": lim.tokens_per_minute}
        if cfg.provider.kind == "openai"
        else {
            "requests": lim.requests_per_minute,
            "input_tokens": lim.input_tokens_per_minute,
            "output_tokens": lim.output_tokens_per_minute,
        }
    )
    return BudgetLimits(lim.window_seconds + lim.safety_margin_s, dims, lim.max_concurrency)


def amounts_for(kind: str, input_tokens: int, output_tokens: int) -> dict[str, int]:
    if kind == "openai":
        return {"requests": 1, "tokens": input_tokens + output_tokens}
    return {"requests": 1, "input_tokens": input_tokens, "output_tokens": output_tokens}


# Rate-limit headers: (dimension, remaining header, limit header)
HEADER_DIMS = {
    "openai": [
        ("requests", "x-ratelimit-remaining-requests", "x-ratelimit-limit-requests"),
        ("tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-limit-tokens"),
    ],
    "anthropic": [
        ("requests", "anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-limit"),
        ("input_tokens", "anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-limit"),
        ("output_tokens", "anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-limit"),
    ],
}


def claim_owner() -> str:
    """host/pid/random: unique per runner, and says which process holds a claim."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(6)}"


def dead_local_owner(owner: str) -> bool:
    """Was this claim taken by a process of this machine that no longer exists?"""
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


class BatchRunner:
    """The state of one enrich_batch call: client, store, budget, claims, counters."""

    def __init__(
        self,
        cfg: EnrichConfig,
        assets: Assets,
        api_key: str,
        store: Store,
        on_event: EventSink | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg, self.assets, self.api_key, self.store = cfg, assets, api_key, store
        self.on_event = on_event
        self.clock = clock
        self.kind = cfg.provider.kind
        self.params = request_params(cfg, assets)
        self.ns = budget_namespace(cfg, api_key)
        self.limits = budget_limits(cfg)
        self.owner = claim_owner()
        self.held: set[str] = set()
        self.estimator = _estimator(cfg)
        self.client: Client | None = None
        self.local_slots = asyncio.Semaphore(cfg.limits.max_concurrency)
        self._settled = asyncio.Event()

    def emit(self, kind: str, **fields: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event({"type": kind, **fields})
            except Exception:  # a progress display must never fail a batch
                log.exception("on_event callback failed")

    async def run(self, rows: Sequence[Row]) -> list[dict[str, Any]]:
        groups: dict[str, list[int]] = {}
        empty: list[int] = []
        prepared: dict[str, tuple[str, str]] = {}
        for i, row in enumerate(rows):
            if "id" not in row or row["id"] is None:
                raise EnrichError(f"row {i} of the batch has no id")
            if self.cfg.text_column not in row:
                raise EnrichError(f"row {row['id']!r} has no column {self.cfg.text_column!r} (enrich.text_column)")
            text = row[self.cfg.text_column]
            if not isinstance(text, str) or not text.strip():
                empty.append(i)  # nothing to label: a dead letter with its reason, no call
                continue
            user = render(self.assets.template, row)
            h = prompt_hash(
                self.kind,
                self.cfg.provider.model,
                self.assets.template.id,
                self.params,
                self.assets.template.system + "\n\n" + user,
            )
            groups.setdefault(h, []).append(i)
            prepared[h] = (self.assets.template.system, user)
        self.client = make_client(self.cfg.provider, self.api_key, self.assets.schema.schema)
        heartbeat = asyncio.create_task(self._renew_claims())
        try:
            answers = await asyncio.gather(*(self._answer(h, *prepared[h]) for h in groups))
        finally:
            heartbeat.cancel()
            await self.client.close()
        out: list[dict[str, Any]] = [{} for _ in rows]
        for (h, idx), (record, called) in zip(groups.items(), answers, strict=True):
            for n, i in enumerate(idx):
                cached = not called or n > 0  # duplicates in the batch ride on the first one's call
                out[i] = {"id": rows[i]["id"], **record, "cached": cached, "prompt_hash": h}
                self.emit("row", id=rows[i]["id"], status=record["status"], cached=cached)
        for i in empty:
            reason = f"no text: column {self.cfg.text_column!r} is empty or not a string"
            record = self._record(DEAD_LETTER, {}, None, 0, time.perf_counter(), reason)
            out[i] = {"id": rows[i]["id"], **record, "cached": False, "prompt_hash": None}
            self.emit("row", id=rows[i]["id"], status=DEAD_LETTER, cached=False)
        return out

    async def _renew_claims(self) -> None:
        period = self.cfg.store.claim_ttl_s / 3
        while True:
            await asyncio.sleep(period)
            for h in list(self.held):
                await asyncio.to_thread(self.store.claim, h, self.owner, self.clock(), self.cfg.store.claim_ttl_s)

    async def _answer(self, h: str, system: str, user: str) -> tuple[dict[str, Any], bool]:
        """(the answer record, whether this task called the API for it)."""
        while True:
            cached = await asyncio.to_thread(self.store.get_answer, h)
            if cached is not None:
                return cached, False
            if await asyncio.to_thread(self.store.claim, h, self.owner, self.clock(), self.cfg.store.claim_ttl_s):
                break
            holder = await asyncio.to_thread(self.store.claim_holder, h)
            if holder is not None and dead_local_owner(holder):
                # A process of this machine that died mid-call (kill -9) left it: no need to wait out its lease.
                log.info("taking over a claim left by a dead process (%s)", holder)
                await asyncio.to_thread(self.store.release, h, holder)
                continue
            await asyncio.sleep(CLAIM_POLL_S)  # another task is calling for this prompt: wait for its answer
        self.held.add(h)
        try:
            cached = await asyncio.to_thread(self.store.get_answer, h)  # it may have landed just before our claim
            if cached is not None:
                return cached, False
            record = await self._call_for(system, user)
            if record["status"] == ENRICHED:
                await asyncio.to_thread(self.store.put_answer, h, record)
            return record, True
        finally:
            self.held.discard(h)
            await asyncio.to_thread(self.store.release, h, self.owner)

    async def _call_for(self, system: str, user: str) -> dict[str, Any]:
        messages = [{"role": "user", "content": user}]
        state = {"attempts": 0}
        last: CallResult | None = None
        error = ""
        started = time.perf_counter()
        for repair in range(self.cfg.repair_attempts + 1):
            try:
                last = await self._call_with_retries(system, messages, state)
            except CallError as exc:
                error = str(exc)
                break
            except TooLarge as exc:
                error = f"not sent: {exc}"
                break
            try:
                fields = parse_answer(last.text, self.assets.schema, self.cfg.max_answer_chars)
            except AnswerError as exc:
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
            return self._record(ENRICHED, fields, last, state["attempts"], started, "")
        return self._record(DEAD_LETTER, {}, last, state["attempts"], started, scrub(error, self.api_key))

    def _record(
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
            provider=self.kind,
            model=self.cfg.provider.model if res is None else res.model,
            template=self.assets.template.id,
            request_id=None if res is None else res.request_id,
            error=error or None,
        )
        return out

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = wait_exponential_jitter(
            multiplier=self.cfg.retry.base_delay_s, max=self.cfg.retry.max_delay_s, jitter=self.cfg.retry.base_delay_s
        )(state)
        if isinstance(exc, CallError) and exc.retry_after is not None:
            # The server said when: wait that long (plus a little jitter so waiters do not return together).
            return exc.retry_after + random.uniform(0, 0.1 * exc.retry_after + 0.01)
        return backoff

    async def _call_with_retries(
        self, system: str, messages: list[dict[str, str]], state: dict[str, int]
    ) -> CallResult:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.cfg.retry.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda e: isinstance(e, CallError) and e.retryable),
            reraise=True,
            sleep=asyncio.sleep,
        )
        async for attempt in retrying:
            with attempt:
                return await self._one_call(system, messages, state)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _one_call(self, system: str, messages: list[dict[str, str]], state: dict[str, int]) -> CallResult:
        assert self.client is not None
        raw = raw_token_estimate(system, messages)
        est_in = self.estimator.estimate(raw)
        reserve = amounts_for(self.kind, est_in, self.cfg.provider.max_tokens)
        entry = secrets.token_hex(8)
        async with self.local_slots:
            while True:
                now = self.clock()
                wait = await asyncio.to_thread(
                    self.store.budget_acquire,
                    self.ns,
                    entry,
                    now,
                    reserve,
                    self._shared_limits(),
                    now + self.cfg.provider.timeout_s + 5.0,
                )
                if wait == 0.0:
                    break
                # Sleep until the log's oldest entries leave the window, or until a call of this
                # process settles (its unused reservation comes back at once), whichever is first;
                # at most REFUND_POLL_S, for the refunds of other processes.
                woken = self._settled
                try:
                    await asyncio.wait_for(woken.wait(), timeout=min(wait, REFUND_POLL_S) + random.uniform(0, 0.01))
                except TimeoutError:
                    pass
            state["attempts"] += 1
            self.emit("call")
            try:
                res = await self.client.call(system, messages)
            except CallError as exc:
                # A refused call (an HTTP error status) used no tokens: give them back. One that may
                # have been served (timeout, broken stream) keeps its reservation. A 429 keeps its
                # request in our log although the server did not count it: otherwise, when another
                # client of the key fills the window, our log has room, each retry is refused at
                # once and refunded again, and we would storm the server with doomed requests.
                limit_hit = exc.status == 429 and (self._exhausted(exc.headers) or "concurrent" in str(exc))
                if exc.admitted:
                    used = None
                else:
                    used = {k: (1 if k == "requests" and limit_hit else 0) for k in reserve}
                if limit_hit:
                    _SHARES[self.ns] = max(SHARE_FLOOR, _SHARES.get(self.ns, 1.0) * SHARE_DECREASE)
                await asyncio.to_thread(self.store.budget_settle, self.ns, entry, used, self.clock())
                self._wake_waiters()
                self.emit("call_done", status=exc.status, error=scrub(str(exc), self.api_key))
                log.info(
                    "call failed (%s): %s", "will retry" if exc.retryable else "final", scrub(str(exc), self.api_key)
                )
                raise
            answered = self.clock()
            self.estimator.observe(raw, res.input_tokens)
            used = amounts_for(self.kind, res.input_tokens, res.output_tokens)
            # The server stamped this request somewhere between our acquire and its answer; keeping
            # our entry until `answered` + window covers its entry whatever the delay (a loaded
            # machine can hold a request longer than any fixed margin).
            await asyncio.to_thread(self.store.budget_settle, self.ns, entry, used, answered)
            self._wake_waiters()
            self.emit("call_done", status=200, error=None)
            _SHARES[self.ns] = min(1.0, _SHARES.get(self.ns, 1.0) + SHARE_INCREASE)
            await self._watch_headers(res.headers)
            return res

    async def _watch_headers(self, headers: dict[str, str]) -> None:
        """Slow down before the 429s: when the provider says its request capacity is running
        low and more requests are in its window than in our log, another client of the key
        is using it, and this process takes a smaller share. (Requests only: the server counts
        them exactly as we do, while its token counts include reservations ours has corrected.)"""
        names = HEADER_DIMS[self.kind][0]
        try:
            remaining, limit = float(headers[names[1]]), float(headers[names[2]])
        except (KeyError, ValueError):
            return
        if remaining > self.cfg.limits.low_water * limit:
            return
        ours = await asyncio.to_thread(self.store.budget_usage, self.ns, self.clock(), self.limits.window)
        if (limit - remaining) - ours["requests"] > max(2.0, 0.1 * limit):
            _SHARES[self.ns] = max(SHARE_FLOOR, _SHARES.get(self.ns, 1.0) * SHARE_SOFT_DECREASE)

    def _wake_waiters(self) -> None:
        self._settled.set()
        self._settled = asyncio.Event()

    def _shared_limits(self) -> BudgetLimits:
        share = _SHARES.get(self.ns, 1.0)
        if share >= 1.0:
            return self.limits
        return BudgetLimits(
            self.limits.window,
            {dim: max(1, int(limit * share)) for dim, limit in self.limits.limits.items()},
            max(1, int(self.limits.max_in_flight * share)),
        )

    def _exhausted(self, headers: dict[str, str]) -> bool:
        """Do the provider's headers say one of our limits has (almost) nothing left?"""
        for dim, rem_name, lim_name in HEADER_DIMS[self.kind]:
            try:
                remaining, limit = float(headers[rem_name]), float(headers[lim_name])
            except (KeyError, ValueError):
                continue
            if dim in self.limits.limits and remaining <= self.cfg.limits.low_water * limit:
                return True
        return False


def enrich_batch(
    rows: list[dict[str, Any]],
    cfg: EnrichConfig,
    *,
    api_key: str,
    store: Store,
    on_event: EventSink | None = None,
    assets: Assets | None = None,
) -> list[dict[str, Any]]:
    """One output dict per input row, in order (see the module docstring). Synchronous:
    runs its own asyncio loop, so Spark's pandas UDFs and mrjob mappers call it directly."""
    if not rows:
        return []
    if not api_key:
        raise EnrichError(f"no API key: set the environment variable {cfg.provider.api_key_env}")
    assets = assets or load_assets(cfg)
    runner = BatchRunner(cfg, assets, api_key, store, on_event)
    return asyncio.run(runner.run(rows))
