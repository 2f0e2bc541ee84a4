"""What both Batch APIs share: a batch job, its schedule, and the lines'
answers, produced by the same parse, backend and completion body as the
online endpoints.

A job is held in memory and run by one asyncio task in the server's loop. Its
schedule runs on the loop's monotonic clock (so tests can use spans of a
fraction of a second), while the timestamps the APIs show come from the
gateway's clock (injectable, like every other timestamp). The wire formats
(gateway/openai_batches.py, gateway/anthropic_batches.py) decide how a job is
validated, shown and how its results are written; nothing here knows which
provider a job belongs to.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections import defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from .backends import Completion, Prompt
from .config import BatchSettings
from .dialect import Dialect, new_request_id
from .errors import ApiError
from .serve import Caller, Gateway, generate

log = logging.getLogger(__name__)

# Phases of a job; the wire formats map them (and how a job ended) to their own states.
VALIDATING, IN_PROGRESS, FINALIZING, ENDED = "validating", "in_progress", "finalizing", "ended"
# How a line ended, and how a job ended.
SUCCEEDED, ERRORED, EXPIRED, CANCELED = "succeeded", "errored", "expired", "canceled"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"


def injected_line_error() -> ApiError:
    return ApiError("server", "The server had an error while processing your request (injected fault).")


def injected_batch_failure() -> ApiError:
    return ApiError("server", "The batch failed while processing (injected fault).")


@dataclass
class BatchLine:
    custom_id: str
    prompt: Prompt | None  # None: the body was refused (`refused`), as the online endpoint refuses it
    refused: ApiError | None = None


@dataclass
class LineResult:
    custom_id: str
    outcome: str  # succeeded | errored | expired | canceled
    request_id: str
    body: dict[str, Any] | None = None  # the completion body, as the online endpoint answers it
    error: ApiError | None = None
    completion: Completion | None = None


@dataclass
class BatchJob:
    id: str
    caller: Caller
    dialect: Dialect
    settings: BatchSettings
    created_at: float  # gateway clock
    deadline: float  # loop clock: unanswered lines expire then
    lines: list[BatchLine] = field(default_factory=list)
    phase: str = VALIDATING
    ending: str | None = None  # completed | failed | expired | cancelled, once ENDED
    stamps: dict[str, float] = field(default_factory=dict)  # phase or event -> gateway clock
    results: list[LineResult] = field(default_factory=list)  # shuffled once the job ends
    errors: list[dict[str, Any]] = field(default_factory=list)  # validation errors, in the provider's shape
    extra: dict[str, Any] = field(default_factory=dict)  # what a wire format keeps beside the job
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    failed_by_fault: bool = False

    @property
    def cancel_requested(self) -> bool:
        return "cancelling" in self.stamps

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    def usage(self) -> tuple[int, int]:
        """(input, output) tokens of the answered lines."""
        done = [r.completion for r in self.results if r.completion is not None]
        return sum(c.input_tokens for c in done), sum(c.output_tokens for c in done)


@dataclass
class QueueOverflow:
    """A batch that does not fit the key's queue: the first model over its limit."""

    model: str
    limit: int
    enqueued: int
    requested: int


class BatchRunner:
    """The jobs of one gateway, the per-key queue, and the tasks that run them."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.jobs: dict[str, BatchJob] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._rngs: dict[str, random.Random] = {}

    def rng(self, caller: Caller) -> random.Random:
        """One seeded generator per key: the same batches in the same order meet the same faults."""
        name = caller.key.name
        if name not in self._rngs:
            self._rngs[name] = random.Random(f"{caller.key.batches.seed}:{name}:batches")
        return self._rngs[name]

    def new_job(self, prefix: str, caller: Caller, dialect: Dialect) -> BatchJob:
        settings = caller.key.batches
        loop = asyncio.get_running_loop()
        job = BatchJob(
            id=prefix + secrets.token_hex(12),
            caller=caller,
            dialect=dialect,
            settings=settings,
            created_at=self.gw.clock(),
            deadline=loop.time() + settings.completion_window_seconds,
        )
        self.jobs[job.id] = job
        return job

    def find(self, job_id: str, caller: Caller, prefix: str) -> BatchJob | None:
        job = self.jobs.get(job_id)
        return job if job is not None and job.caller is caller and job.id.startswith(prefix) else None

    def listing(self, caller: Caller, prefix: str) -> list[BatchJob]:
        """The key's jobs of one API, newest first (as both providers list them)."""
        mine = [j for j in self.jobs.values() if j.caller is caller and j.id.startswith(prefix)]
        return list(reversed(mine))  # dicts keep insertion order: oldest first

    def enqueued(self, caller: Caller) -> dict[str, int]:
        """Input tokens per model of the key's admitted batches that have not ended."""
        totals: dict[str, int] = defaultdict(int)
        for job in self.jobs.values():
            if job.caller is caller and job.phase in (IN_PROGRESS, FINALIZING):
                for line in job.lines:
                    if line.prompt is not None:
                        totals[line.prompt.model.id] += line.prompt.input_tokens
        return totals

    def overflow(self, caller: Caller, lines: list[BatchLine]) -> QueueOverflow | None:
        wanted: dict[str, int] = defaultdict(int)
        for line in lines:
            if line.prompt is not None:
                wanted[line.prompt.model.id] += line.prompt.input_tokens
        enqueued, limit = self.enqueued(caller), caller.key.batches.enqueued_tokens
        for model, tokens in wanted.items():
            if enqueued[model] + tokens > limit:
                return QueueOverflow(model, limit, enqueued[model], tokens)
        return None

    def admit(self, job: BatchJob, lines: list[BatchLine]) -> None:
        """The lines join the queue: counted against it, and in the key's ledger by custom_id."""
        job.lines = lines
        job.phase = IN_PROGRESS
        job.stamps[IN_PROGRESS] = self.gw.clock()
        job.caller.batch_lines.admit([line.custom_id for line in lines])
        log.info("batch %s admitted: %d lines (%s)", job.id, len(lines), job.caller.key.name)

    def start(self, job: BatchJob, work: Coroutine[Any, Any, None]) -> None:
        """Run the coroutine `work` for `job` in the server's loop, keeping a reference to it."""
        task = asyncio.get_running_loop().create_task(work, name=f"batch {job.id}")
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s crashed", task.get_name(), exc_info=task.exception())

    def cancel(self, job: BatchJob) -> None:
        if job.phase != ENDED and not job.cancel_requested:
            job.stamps["cancelling"] = self.gw.clock()
            job.wake.set()

    async def pause(self, job: BatchJob, seconds: float) -> None:
        """Wait `seconds` (at most until the deadline), waking early if the job is cancelled."""
        loop = asyncio.get_running_loop()
        until = min(loop.time() + seconds, job.deadline)
        if job.cancel_requested or until <= loop.time():
            return
        try:
            await asyncio.wait_for(job.wake.wait(), until - loop.time())
        except TimeoutError:
            pass

    async def process(self, job: BatchJob) -> str:
        """Answer the admitted lines over the configured span, in a shuffled order; returns
        how the job ended (completed, failed, expired or cancelled). Finalizing included."""
        loop = asyncio.get_running_loop()
        rng = self.rng(job.caller)
        if rng.random() < job.settings.batch_failure_rate:
            job.failed_by_fault = True
            err = injected_batch_failure()
            job.results = [LineResult(li.custom_id, ERRORED, new_request_id(), error=err) for li in job.lines]
            return FAILED
        order = list(range(len(job.lines)))
        rng.shuffle(order)
        start, span, n = loop.time(), job.settings.processing_seconds, len(order)
        for k, index in enumerate(order):
            line = job.lines[index]
            due = start + (k + 1) * span / n
            while loop.time() < due and loop.time() < job.deadline and not job.cancel_requested:
                await self.pause(job, due - loop.time())
            if job.cancel_requested or loop.time() >= job.deadline:
                outcome = CANCELED if job.cancel_requested else EXPIRED
                rest = [job.lines[i] for i in order[k:]]
                job.results += [LineResult(li.custom_id, outcome, new_request_id()) for li in rest]
                return CANCELLED if outcome == CANCELED else EXPIRED
            job.results.append(await self.answer(job, line, rng))
            await asyncio.sleep(0)  # let the server answer requests between lines
        job.phase = FINALIZING
        job.stamps[FINALIZING] = self.gw.clock()
        await asyncio.sleep(job.settings.finalizing_seconds)
        return COMPLETED

    async def answer(self, job: BatchJob, line: BatchLine, rng: random.Random) -> LineResult:
        """One line, answered as the online endpoint answers it (same backend, same body)."""
        rid = new_request_id()
        if line.prompt is None:
            return LineResult(line.custom_id, ERRORED, rid, error=line.refused)
        if rng.random() < job.settings.line_error_rate:
            return LineResult(line.custom_id, ERRORED, rid, error=injected_line_error())
        prompt = line.prompt
        try:
            completion = await generate(self.gw.backends[prompt.model.backend], prompt, None)
        except ApiError as err:
            return LineResult(line.custom_id, ERRORED, rid, error=err)
        body = job.dialect.completion_body(prompt, completion, int(self.gw.clock()))
        job.caller.batch_lines.succeed(line.custom_id)
        return LineResult(line.custom_id, SUCCEEDED, rid, body=body, completion=completion)

    def end(self, job: BatchJob, ending: str) -> None:
        """The job has ended: results in a shuffled order (neither API promises the input order)."""
        self.rng(job.caller).shuffle(job.results)
        job.ending = ending
        job.phase = ENDED
        job.stamps[ENDED] = self.gw.clock()
        log.info(
            "batch %s %s: %d succeeded, %d errored, %d expired, %d canceled (%s)",
            job.id,
            ending,
            job.count(SUCCEEDED),
            job.count(ERRORED),
            job.count(EXPIRED),
            job.count(CANCELED),
            job.caller.key.name,
        )

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
