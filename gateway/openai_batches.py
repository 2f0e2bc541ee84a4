"""OpenAI's Files and Batch APIs: /v1/files (purpose "batch") and /v1/batches.

A batch reads its uploaded JSONL file while `validating` (each line
`{custom_id, method, url, body}`; the body is parsed as /v1/chat/completions
parses it). A malformed line fails the whole batch with line-numbered `errors`
(codes `invalid_json_line`, `missing_required_parameter`, `url_mismatch`,
`duplicate_custom_id`, `model_mismatch`, `empty_file`, `too_many_tasks`); a body
the online endpoint would refuse becomes that line's 4xx in the error file, as
OpenAI returns it. A batch over the key's enqueued-token queue fails with
`token_limit_exceeded`, as OpenAI fails it (the create itself answers 200).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from python_multipart.exceptions import MultipartParseError
from starlette.datastructures import FormData, UploadFile
from starlette.types import Message

from .batches import (
    CANCELLED,
    ENDED,
    ERRORED,
    EXPIRED,
    FAILED,
    FINALIZING,
    IN_PROGRESS,
    SUCCEEDED,
    BatchJob,
    BatchLine,
    BatchRunner,
    LineResult,
    QueueOverflow,
)
from .config import BatchSettings, GatewayConfig
from .errors import ApiError
from .openai_api import DIALECT as OPENAI
from .serve import Caller, Gateway, read_json
from .tokens import TokenCounter

ENDPOINT = "/v1/chat/completions"  # the one batch endpoint the gateway serves
FILE_PREFIX, BATCH_PREFIX = "file-", "batch_"
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and the purpose field, beside the file itself
MAX_ERRORS = 100  # line errors reported per failed batch

router = APIRouter()


@dataclass
class StoredFile:
    id: str
    caller: Caller
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: Path

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


class FileStore:
    """Uploaded and result files of every key, on disk under `root` (a temporary directory when empty)."""

    def __init__(self, root: str) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if not root:
            self._tmp = tempfile.TemporaryDirectory(prefix="gateway-batches-")
            root = self._tmp.name
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, StoredFile] = {}

    def new_id(self) -> str:
        return FILE_PREFIX + secrets.token_hex(12)

    def add(self, record: StoredFile) -> StoredFile:
        self.files[record.id] = record
        return record

    def find(self, file_id: str, caller: Caller) -> StoredFile:
        record = self.files.get(file_id)
        if record is None or record.caller is not caller:
            raise ApiError("not_found", f"No such File object: {file_id}", param="id")
        return record

    def write(self, caller: Caller, filename: str, purpose: str, lines: Sequence[dict[str, Any]], now: int) -> str:
        fid = self.new_id()
        path = self.root / fid
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")
        path.write_bytes(data)
        self.add(StoredFile(fid, caller, filename, purpose, len(data), now, path))
        return fid

    def delete(self, record: StoredFile) -> None:
        del self.files[record.id]
        record.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


class InvalidBatch(Exception):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} errors")
        self.errors = errors


def batch_error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def missing(name: str, line: int) -> dict[str, Any]:
    return batch_error("missing_required_parameter", f"Missing required parameter: '{name}'.", line, name)


def read_lines(path: Path, settings: BatchSettings, config: GatewayConfig, counter: TokenCounter) -> list[BatchLine]:
    """The batch's lines, each body parsed as the online endpoint parses it; InvalidBatch
    with line-numbered errors (1-based) if the file itself is malformed."""
    errors: list[dict[str, Any]] = []
    lines: list[BatchLine] = []
    seen: set[str] = set()
    model: str | None = None
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise InvalidBatch([batch_error("file_not_found", "The input file was deleted before validation.")]) from None
    with fh:
        for number, raw in enumerate(fh, 1):
            if len(errors) >= MAX_ERRORS:
                break
            if not raw.strip():
                continue
            if len(lines) >= settings.openai_max_requests:
                message = (
                    f"The batch has more than {settings.openai_max_requests} requests; split it into smaller batches."
                )
                errors.append(batch_error("too_many_tasks", message, number))
                break
            try:
                item = json.loads(raw)
            except ValueError:
                errors.append(batch_error("invalid_json_line", "This line is not parseable as valid JSON.", number))
                continue
            if not isinstance(item, dict):
                errors.append(batch_error("invalid_json_line", "This line is not a JSON object.", number))
                continue
            custom_id, method, url, body = (item.get(k) for k in ("custom_id", "method", "url", "body"))
            if not isinstance(custom_id, str) or not custom_id:
                errors.append(missing("custom_id", number))
                continue
            if method is None:
                errors.append(missing("method", number))
                continue
            if method != "POST":
                message = f"Invalid value for 'method': {method!r}; batch requests use 'POST'."
                errors.append(batch_error("invalid_value", message, number, "method"))
                continue
            if url is None:
                errors.append(missing("url", number))
                continue
            if url != ENDPOINT:
                message = (
                    f"The URL provided for this request does not match the batch endpoint: {url!r} is not {ENDPOINT!r}."
                )
                errors.append(batch_error("url_mismatch", message, number, "url"))
                continue
            if not isinstance(body, dict):
                errors.append(missing("body", number))
                continue
            if custom_id in seen:
                message = f"The custom_id {custom_id!r} is used more than once; each request in a batch needs its own."
                errors.append(batch_error("duplicate_custom_id", message, number, "custom_id"))
                continue
            seen.add(custom_id)
            line_model = body.get("model")
            if model is None and isinstance(line_model, str):
                model = line_model
            elif isinstance(line_model, str) and line_model != model:
                message = f"The model {line_model!r} differs from the batch's model {model!r}; a batch holds requests for one model."
                errors.append(batch_error("model_mismatch", message, number, "body.model"))
                continue
            lines.append(parse_line(custom_id, body, config, counter))
    if errors:
        raise InvalidBatch(errors)
    if not lines:
        message = "The batch input file is empty. Please ensure that the batch contains at least one request."
        raise InvalidBatch([batch_error("empty_file", message)])
    return lines


def parse_line(custom_id: str, body: dict[str, Any], config: GatewayConfig, counter: TokenCounter) -> BatchLine:
    """A body the online endpoint would refuse is refused the same way, in that line's result."""
    try:
        parsed = OPENAI.parse(body, config, counter)
    except ApiError as refused:
        return BatchLine(custom_id, None, refused)
    if parsed.stream:
        no_stream = ApiError(
            "invalid_request",
            "Invalid value for 'stream': streaming is not available in the Batch API.",
            param="stream",
            code="invalid_value",
        )
        return BatchLine(custom_id, None, no_stream)
    return BatchLine(custom_id, parsed.prompt)


def queue_error(over: QueueOverflow, caller: Caller) -> dict[str, Any]:
    message = (
        f"Enqueued token limit reached for {over.model} in organization org-{caller.key.name}. "
        f"Limit: {over.limit:,} enqueued tokens. Please try submitting fewer tasks, "
        "or wait until your previous batches complete."
    )
    return batch_error("token_limit_exceeded", message)


def result_line(result: LineResult) -> dict[str, Any]:
    """A line of the output or error file."""
    line: dict[str, Any] = {"id": "batch_req_" + secrets.token_hex(12), "custom_id": result.custom_id}
    if result.outcome == SUCCEEDED:
        response = {"status_code": 200, "request_id": result.request_id, "body": result.body}
        return {**line, "response": response, "error": None}
    if result.outcome == ERRORED and result.error is not None:
        err = result.error
        body = OPENAI.error_body(err, result.request_id)
        response = {"status_code": OPENAI.status(err), "request_id": result.request_id, "body": body}
        return {**line, "response": response, "error": None}
    if result.outcome == EXPIRED:
        message = "This request could not be executed before the completion window expired."
        return {**line, "response": None, "error": {"code": "batch_expired", "message": message}}
    message = "This request was not executed because the batch was cancelled."
    return {**line, "response": None, "error": {"code": "batch_cancelled", "message": message}}


async def write_results(store: FileStore, job: BatchJob, now: int) -> None:
    """The output file (successes) and the error file (the rest); each only when it has lines."""
    ok = [result_line(r) for r in job.results if r.outcome == SUCCEEDED]
    rest = [result_line(r) for r in job.results if r.outcome != SUCCEEDED]
    for kind, lines in (("output", ok), ("error", rest)):
        if lines:
            name = f"{job.id}_{kind}.jsonl"
            job.extra[f"{kind}_file_id"] = await asyncio.to_thread(
                store.write, job.caller, name, "batch_output", lines, now
            )


async def run_batch(runner: BatchRunner, store: FileStore, job: BatchJob, path: Path) -> None:
    """validating -> in_progress -> finalizing -> completed (or failed, expired, cancelled)."""
    gw = runner.gw
    await runner.pause(job, job.settings.validating_seconds)
    if job.cancel_requested:
        runner.end(job, CANCELLED)
        return
    try:
        lines = await asyncio.to_thread(read_lines, path, job.settings, gw.config, gw.counter)
    except InvalidBatch as invalid:
        job.errors = invalid.errors
        runner.end(job, FAILED)
        return
    over = runner.overflow(job.caller, lines)
    if over is not None:
        job.errors = [queue_error(over, job.caller)]
        runner.end(job, FAILED)
        return
    runner.admit(job, lines)
    ending = await runner.process(job)
    if job.failed_by_fault:
        job.errors = [batch_error("server_error", "The batch failed while processing (injected fault).")]
    else:
        await write_results(store, job, int(gw.clock()))
    runner.end(job, ending)


STATUS_WHEN_ENDED = {"completed": "completed", FAILED: "failed", EXPIRED: "expired", CANCELLED: "cancelled"}


def status_of(job: BatchJob) -> str:
    if job.phase == ENDED:
        return STATUS_WHEN_ENDED[job.ending or FAILED]
    return "cancelling" if job.cancel_requested else job.phase


def batch_body(job: BatchJob) -> dict[str, Any]:
    status = status_of(job)
    stamp = {k: int(v) for k, v in job.stamps.items()}
    ended = stamp.get(ENDED)
    first = next((li.prompt for li in job.lines if li.prompt is not None), None)
    input_tokens, output_tokens = job.usage()
    return {
        "id": job.id,
        "object": "batch",
        "endpoint": job.extra["endpoint"],
        "model": first.model.id if first else None,
        "errors": {"object": "list", "data": job.errors} if job.errors else None,
        "input_file_id": job.extra["input_file_id"],
        "completion_window": job.extra["completion_window"],
        "status": status,
        "output_file_id": job.extra.get("output_file_id"),
        "error_file_id": job.extra.get("error_file_id"),
        "created_at": int(job.created_at),
        "in_progress_at": stamp.get(IN_PROGRESS),
        "expires_at": int(job.created_at + job.settings.completion_window_seconds),
        "finalizing_at": stamp.get(FINALIZING),
        "completed_at": ended if status == "completed" else None,
        "failed_at": ended if status == "failed" else None,
        "expired_at": ended if status == "expired" else None,
        "cancelling_at": stamp.get("cancelling"),
        "cancelled_at": ended if status == "cancelled" else None,
        "request_counts": {
            "total": len(job.lines),
            "completed": job.count(SUCCEEDED),
            "failed": job.count(ERRORED) + job.count(EXPIRED),
        },
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "metadata": job.extra.get("metadata"),
    }


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="allow")
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


def state(request: Request) -> tuple[Gateway, BatchRunner, FileStore, Caller]:
    app = request.app.state
    return app.gateway, app.batches, app.files, request.state.caller


def invalid_value(param: str, message: str) -> ApiError:
    return ApiError("invalid_request", f"Invalid value for '{param}': {message}", param=param, code="invalid_value")


def page(items: list[Any], after: str | None, limit: int) -> dict[str, Any]:
    """A cursor page of objects with an `id`, as OpenAI lists them ({"object": "list", ...})."""
    ids = [item["id"] for item in items]
    start = ids.index(after) + 1 if after in ids else 0
    data = items[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(items),
    }


def limit_param(request: Request, default: int, most: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise invalid_value("limit", f"expected an integer from 1 to {most}, got {raw!r}.")
    return int(raw)


async def read_form(request: Request, limit: int) -> FormData:
    """The multipart form, refused with a 413 as soon as more than `limit` bytes arrived."""
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise ApiError("too_large", f"Request exceeds the maximum size of {limit} bytes.")
        return message

    try:
        return await Request(request.scope, receive).form(max_files=1, max_fields=16)
    except (HTTPException, MultipartParseError) as exc:
        detail = getattr(exc, "detail", None) or str(exc)
        raise ApiError(
            "invalid_request", f"The body is not valid multipart/form-data: {detail}", param="file"
        ) from None


@router.post("/v1/files", summary="OpenAI: upload a file (purpose 'batch')")
async def upload_file(request: Request) -> Response:
    gw, _, store, caller = state(request)
    limit = caller.key.batches.openai_max_bytes
    too_large = ApiError("too_large", f"File exceeds the maximum size of {limit} bytes for purpose 'batch'.")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise too_large
    form = await read_form(request, limit + MULTIPART_OVERHEAD)
    try:
        purpose, upload = form.get("purpose"), form.get("file")
        if not isinstance(purpose, str):
            raise ApiError(
                "invalid_request",
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        if purpose != "batch":
            raise invalid_value("purpose", f"{purpose!r}; the gateway stores files for purpose 'batch' only.")
        if not isinstance(upload, UploadFile):
            raise ApiError(
                "invalid_request",
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        fid = store.new_id()
        path, size = store.root / fid, 0
        with path.open("wb") as out:
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    out.close()
                    path.unlink()
                    raise too_large
                out.write(chunk)
    finally:
        await form.close()
    record = StoredFile(fid, caller, upload.filename or "upload.jsonl", purpose, size, int(gw.clock()), path)
    return JSONResponse(store.add(record).body())


@router.get("/v1/files", summary="OpenAI: list files")
async def list_files(request: Request) -> Response:
    _, _, store, caller = state(request)
    purpose = request.query_params.get("purpose")
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid_value("order", f"expected 'asc' or 'desc', got {order!r}.")
    mine = [f for f in store.files.values() if f.caller is caller and (purpose is None or f.purpose == purpose)]
    items = [f.body() for f in (reversed(mine) if order == "desc" else mine)]
    return JSONResponse(page(items, request.query_params.get("after"), limit_param(request, 10_000, 10_000)))


@router.get("/v1/files/{file_id}", summary="OpenAI: retrieve a file")
async def retrieve_file(file_id: str, request: Request) -> Response:
    _, _, store, caller = state(request)
    return JSONResponse(store.find(file_id, caller).body())


@router.get("/v1/files/{file_id}/content", summary="OpenAI: a file's content")
async def file_content(file_id: str, request: Request) -> Response:
    _, _, store, caller = state(request)
    record = store.find(file_id, caller)
    return FileResponse(record.path, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", summary="OpenAI: delete a file")
async def delete_file(file_id: str, request: Request) -> Response:
    _, _, store, caller = state(request)
    store.delete(store.find(file_id, caller))
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


@router.post("/v1/batches", summary="OpenAI: create a batch")
async def create_batch(request: Request) -> Response:
    gw, runner, store, caller = state(request)
    data = await read_json(request, gw.config.max_request_bytes)
    try:
        req = BatchCreate.model_validate(data)
    except ValidationError as exc:
        raise OPENAI.validation_error(exc) from None
    if req.endpoint != ENDPOINT:
        raise invalid_value("endpoint", f"{req.endpoint!r}; the gateway runs batches for {ENDPOINT!r} only.")
    if req.completion_window != "24h":
        raise invalid_value("completion_window", f"{req.completion_window!r}; only '24h' is supported.")
    source = store.find(req.input_file_id, caller)
    if source.purpose != "batch":
        raise invalid_value("input_file_id", f"file {source.id} has purpose {source.purpose!r}, not 'batch'.")
    job = runner.new_job(BATCH_PREFIX, caller, OPENAI)
    job.extra.update(
        endpoint=req.endpoint,
        input_file_id=source.id,
        completion_window=req.completion_window,
        metadata=req.metadata,
    )
    runner.start(job, run_batch(runner, store, job, source.path))
    return JSONResponse(batch_body(job))


def find_batch(request: Request, batch_id: str) -> BatchJob:
    _, runner, _, caller = state(request)
    job = runner.find(batch_id, caller, BATCH_PREFIX)
    if job is None:
        raise ApiError("not_found", f"No batch found with id '{batch_id}'.", param="batch_id")
    return job


@router.get("/v1/batches/{batch_id}", summary="OpenAI: retrieve a batch")
async def retrieve_batch(batch_id: str, request: Request) -> Response:
    return JSONResponse(batch_body(find_batch(request, batch_id)))


@router.post("/v1/batches/{batch_id}/cancel", summary="OpenAI: cancel a batch")
async def cancel_batch(batch_id: str, request: Request) -> Response:
    _, runner, _, _ = state(request)
    job = find_batch(request, batch_id)
    if job.phase == ENDED:
        raise ApiError("conflict", f"Cannot cancel a batch with status '{status_of(job)}'.")
    runner.cancel(job)
    return JSONResponse(batch_body(job))


@router.get("/v1/batches", summary="OpenAI: list batches")
async def list_batches(request: Request) -> Response:
    _, runner, _, caller = state(request)
    items = [batch_body(job) for job in runner.listing(caller, BATCH_PREFIX)]
    return JSONResponse(page(items, request.query_params.get("after"), limit_param(request, 20, 100)))
