"""Anthropic's Message Batches API: /v1/messages/batches.

Every request's `params` is parsed as /v1/messages parses it when the batch is
created, and a batch with one bad request is refused up front with a 400 naming
it (`requests.3.params.max_tokens: ...`), as Anthropic refuses it. A batch over
the key's enqueued-token queue is refused with a 429 `rate_limit_error`.
`request_counts` stay `processing` until the whole batch has ended; results are
then served as JSONL at `results_url`, in no particular order.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .anthropic_api import DIALECT as ANTHROPIC
from .batches import CANCELED, ENDED, ERRORED, EXPIRED, SUCCEEDED, BatchJob, BatchLine, BatchRunner, LineResult
from .config import GatewayConfig
from .errors import ApiError, anthropic_error_body
from .ratelimit import retry_headers, rfc3339
from .serve import Caller, Gateway, read_json
from .tokens import TokenCounter

BATCH_PREFIX = "msgbatch_"

router = APIRouter()


class BatchRequestItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    custom_id: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    params: dict[str, Any]


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: list[BatchRequestItem] = Field(min_length=1)


def parse_requests(items: list[BatchRequestItem], config: GatewayConfig, counter: TokenCounter) -> list[BatchLine]:
    """Each request's params parsed as /v1/messages parses them; the first bad one refuses the batch."""
    lines: list[BatchLine] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"requests.{i}"
        if item.custom_id in seen:
            raise ApiError(
                "invalid_request",
                f"{where}.custom_id: duplicate custom_id {item.custom_id!r}; each request in a batch needs its own",
                param=f"{where}.custom_id",
            )
        seen.add(item.custom_id)
        try:
            parsed = ANTHROPIC.parse(item.params, config, counter)
        except ApiError as err:
            # The online endpoint's message starts with the field ("max_tokens: ..."); name the request too.
            raise ApiError(
                "invalid_request", f"{where}.params.{err.message}", param=f"{where}.params.{err.param}"
            ) from None
        if parsed.stream:
            raise ApiError(
                "invalid_request",
                f"{where}.params.stream: streaming is not supported in Message Batches",
                param=f"{where}.params.stream",
            )
        lines.append(BatchLine(item.custom_id, parsed.prompt))
    return lines


def batch_body(job: BatchJob, request: Request) -> dict[str, Any]:
    ended = job.phase == ENDED
    total = len(job.lines)
    stamps = job.stamps
    # Requests count as processing until the whole batch has ended (Anthropic's request_counts).
    counts = {
        "processing": 0 if ended else total,
        "succeeded": job.count(SUCCEEDED) if ended else 0,
        "errored": job.count(ERRORED) if ended else 0,
        "canceled": job.count(CANCELED) if ended else 0,
        "expired": job.count(EXPIRED) if ended else 0,
    }
    results_url = f"{str(request.base_url).rstrip('/')}/v1/messages/batches/{job.id}/results"
    return {
        "id": job.id,
        "type": "message_batch",
        "processing_status": "ended" if ended else ("canceling" if job.cancel_requested else "in_progress"),
        "request_counts": counts,
        "ended_at": rfc3339(stamps[ENDED]) if ended else None,
        "created_at": rfc3339(job.created_at),
        "expires_at": rfc3339(job.created_at + job.settings.completion_window_seconds),
        "archived_at": None,
        "cancel_initiated_at": rfc3339(stamps["cancelling"]) if "cancelling" in stamps else None,
        "results_url": results_url if ended else None,
    }


def result_line(result: LineResult) -> dict[str, Any]:
    outcome: dict[str, Any] = {"type": result.outcome}
    if result.outcome == SUCCEEDED:
        outcome["message"] = result.body
    elif result.outcome == ERRORED and result.error is not None:
        outcome["error"] = anthropic_error_body(result.error, result.request_id)
    return {"custom_id": result.custom_id, "result": outcome}


async def run_batch(runner: BatchRunner, job: BatchJob) -> None:
    """in_progress (canceling) -> ended; a batch failed as a whole ends with every request errored."""
    runner.end(job, await runner.process(job))


def state(request: Request) -> tuple[Gateway, BatchRunner, Caller]:
    gw: Gateway = request.app.state.gateway
    ANTHROPIC.check_request(request, gw.config)
    return gw, request.app.state.batches, request.state.caller


def find_batch(request: Request, batch_id: str) -> BatchJob:
    _, runner, caller = state(request)
    job = runner.find(batch_id, caller, BATCH_PREFIX)
    if job is None:
        raise ApiError("not_found", f"message_batch: {batch_id} not found", param="message_batch_id")
    return job


@router.post("/v1/messages/batches", summary="Anthropic: create a Message Batch")
async def create_batch(request: Request) -> Response:
    gw, runner, caller = state(request)
    settings = caller.key.batches
    data = await read_json(request, settings.anthropic_max_bytes)
    try:
        req = BatchCreate.model_validate(data)
    except ValidationError as exc:
        raise ANTHROPIC.validation_error(exc) from None
    if len(req.requests) > settings.anthropic_max_requests:
        raise ApiError(
            "invalid_request",
            f"requests: a Message Batch holds at most {settings.anthropic_max_requests} requests, got {len(req.requests)}",
            param="requests",
        )
    lines = await asyncio.to_thread(parse_requests, req.requests, gw.config, gw.counter)
    over = runner.overflow(caller, lines)
    if over is not None:
        never = over.requested > over.limit
        raise ApiError(
            "rate_limit",
            f"Batch queue limit reached for {over.model}: {over.enqueued} input tokens enqueued in unfinished "
            f"batches + {over.requested} requested > {over.limit}. Wait until your earlier batches have ended.",
            headers=retry_headers(float("inf") if never else max(1.0, settings.processing_seconds)),
        )
    job = runner.new_job(BATCH_PREFIX, caller, ANTHROPIC)
    runner.admit(job, lines)
    runner.start(job, run_batch(runner, job))
    return JSONResponse(batch_body(job, request))


@router.get("/v1/messages/batches/{batch_id}", summary="Anthropic: retrieve a Message Batch")
async def retrieve_batch(batch_id: str, request: Request) -> Response:
    return JSONResponse(batch_body(find_batch(request, batch_id), request))


@router.get("/v1/messages/batches", summary="Anthropic: list Message Batches")
async def list_batches(request: Request) -> Response:
    _, runner, caller = state(request)
    query = request.query_params
    raw_limit = query.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        raise ApiError(
            "invalid_request", f"limit: expected an integer from 1 to 1000, got {raw_limit!r}", param="limit"
        )
    limit = int(raw_limit)
    items = [batch_body(job, request) for job in runner.listing(caller, BATCH_PREFIX)]
    ids = [item["id"] for item in items]
    after, before = query.get("after_id"), query.get("before_id")
    if before in ids:
        end = ids.index(before)
        data, has_more = items[max(0, end - limit) : end], end - limit > 0
    else:
        start = ids.index(after) + 1 if after in ids else 0
        data, has_more = items[start : start + limit], start + limit < len(items)
    return JSONResponse(
        {
            "data": data,
            "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


@router.post("/v1/messages/batches/{batch_id}/cancel", summary="Anthropic: cancel a Message Batch")
async def cancel_batch(batch_id: str, request: Request) -> Response:
    _, runner, _ = state(request)
    job = find_batch(request, batch_id)
    if job.phase == ENDED:
        raise ApiError("invalid_request", f"Message Batch {batch_id} has already ended; it cannot be canceled")
    runner.cancel(job)
    return JSONResponse(batch_body(job, request))


@router.delete("/v1/messages/batches/{batch_id}", summary="Anthropic: delete a Message Batch")
async def delete_batch(batch_id: str, request: Request) -> Response:
    _, runner, _ = state(request)
    job = find_batch(request, batch_id)
    if job.phase != ENDED:
        raise ApiError(
            "invalid_request",
            f"Message Batch {batch_id} is still in progress; cancel it and wait until it has ended before deleting it",
        )
    del runner.jobs[job.id]
    return JSONResponse({"id": job.id, "type": "message_batch_deleted"})


@router.get("/v1/messages/batches/{batch_id}/results", summary="Anthropic: a Message Batch's results (JSONL)")
async def batch_results(batch_id: str, request: Request) -> Response:
    job = find_batch(request, batch_id)
    if job.phase != ENDED:
        raise ApiError("invalid_request", f"Message Batch {batch_id} has not ended yet; its results are not available")
    text = "".join(json.dumps(result_line(r), ensure_ascii=False) + "\n" for r in job.results)
    return Response(text, media_type="application/x-jsonl")
