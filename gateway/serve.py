"""The one request path both wire formats take: serve(request, dialect).

Authentication runs before it (a FastAPI dependency, `authenticated`), errors
leave it as ApiError and become the dialect's error body in one exception
handler (gateway/app.py). Nothing here knows which provider it serves.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .backends import Completion, DeterministicBackend, LlamaBackend, Prompt
from .config import ApiKey, GatewayConfig
from .dialect import Dialect, StreamWriter, new_request_id
from .errors import ApiError
from .faults import FaultInjector, LatencySampler
from .prompts import BatchLineLedger, PromptLedger
from .ratelimit import Admission, KeyLimits, Rejection, go_duration, retry_headers
from .tokens import TokenCounter

log = logging.getLogger(__name__)

Backend = DeterministicBackend | LlamaBackend
# Fault -> (error kind, message); an overloaded error is a 529, or 503 where the dialect has no 529.
INJECTED_ERRORS = {
    "rate_limit": ("rate_limit", "Rate limit reached (injected fault). Please retry."),
    "server_error": ("server", "The server had an error while processing your request (injected fault)."),
    "unavailable": ("unavailable", "The server is temporarily unavailable (injected fault)."),
    "overloaded": ("overloaded", "Overloaded (injected fault)."),
}


def backend_failed() -> ApiError:
    return ApiError("server", "The backend failed while generating the answer.")


class StreamDropped(Exception):
    """Raised inside a streaming body to drop the connection (an injected fault)."""


@dataclass
class Caller:
    key: ApiKey
    limits: KeyLimits
    faults: FaultInjector
    latency: LatencySampler
    prompts: PromptLedger = field(default_factory=PromptLedger)
    batch_lines: BatchLineLedger = field(default_factory=BatchLineLedger)


class Gateway:
    """State shared by the routes: keys, limiters, ledgers, fault draws, backends."""

    def __init__(self, config: GatewayConfig, clock: Callable[[], float], counter: TokenCounter) -> None:
        self.config, self.clock, self.counter = config, clock, counter
        self.callers = [
            Caller(k, KeyLimits(k, clock), FaultInjector(k.faults, k.name), LatencySampler(k.latency))
            for k in config.keys
        ]
        self.llama = LlamaBackend(config.llama, counter)
        self.backends: dict[str, Backend] = {"deterministic": DeterministicBackend(counter), "llama": self.llama}

    def usage(self) -> dict[str, Any]:
        """GET /v1/admin/usage: per key, limits, what is left, peaks, prompt hashes, windows."""
        keys = {}
        for c in self.callers:
            lim = c.key.limits
            keys[c.key.name] = {
                "algorithm": lim.algorithm,
                "window_seconds": lim.window_seconds,
                "limits": {
                    "requests": lim.requests,
                    "tokens": lim.tokens,
                    "input_tokens": lim.input_tokens,
                    "output_tokens": lim.output_tokens,
                    "concurrent": lim.concurrent,
                },
                "remaining": c.limits.remaining(),
                "in_flight": c.limits.concurrency.in_flight,
                "peak_concurrent": c.limits.concurrency.peak,
                "peaks": c.limits.peaks(),
                "prompts": c.prompts.summary(),
                "batch_lines": c.batch_lines.summary(),
                "windows": c.limits.ledger.snapshot(),
            }
        return {"now": self.clock(), "keys": keys}

    def authenticate(self, supplied: str | None) -> Caller:
        if not supplied:
            raise ApiError(
                "authentication",
                "No API key provided. Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                code="invalid_api_key",
            )
        match = None
        for caller in self.callers:  # compare every key in constant time; never echo the supplied one
            if hmac.compare_digest(caller.key.secret.encode(), supplied.encode()):
                match = caller
        if match is None:
            raise ApiError("authentication", "Incorrect API key provided.", code="invalid_api_key")
        return match


def authenticated(request: Request) -> Caller:
    """The FastAPI dependency: the caller whose key the request carries, or a 401."""
    supplied = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if supplied is None and auth.lower().startswith("bearer "):
        supplied = auth[7:].strip()
    caller: Caller = request.app.state.gateway.authenticate(supplied)
    request.state.caller = caller  # the error handler adds this key's rate-limit headers
    return caller


def admin_caller(request: Request) -> Caller:
    caller = authenticated(request)
    if not caller.key.admin:
        raise ApiError("permission", "This key may not read usage; an admin key is required.")
    return caller


def error_response(request: Request, err: ApiError, dialect: Dialect) -> JSONResponse:
    """The dialect's error body; after authentication also the key's rate-limit headers."""
    caller: Caller | None = getattr(request.state, "caller", None)
    rid = new_request_id()
    headers = caller.limits.headers(dialect.limit_style) if caller else {}
    headers = {**headers, **err.headers, dialect.request_id_header: rid}
    status = dialect.status(err)
    log.info(
        "%s %s -> %d %s (%s)",
        request.method,
        request.url.path,
        status,
        err.kind,
        caller.key.name if caller else "unauthenticated",
    )
    return JSONResponse(dialect.error_body(err, rid), status_code=status, headers=headers)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object. The size limit holds while the body arrives, so a
    chunked body (no Content-Length) is refused after limit + 1 bytes, not after all of it."""
    too_large = ApiError("too_large", f"Request exceeds the maximum size of {limit} bytes.")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(
            "invalid_request",
            f"The request body is not valid JSON: {exc.msg} at position {exc.pos}."
            if isinstance(exc, json.JSONDecodeError)
            else "The request body is not valid UTF-8 JSON.",
            param="body",
        ) from None
    except RecursionError:  # json's C decoder gives up near 1,000 levels: a client error, not ours
        raise ApiError("invalid_request", "The request body is nested too deeply.", param="body") from None
    if not isinstance(data, dict):
        raise ApiError("invalid_request", "The request body must be a JSON object.", param="body")
    return data


def rate_limit_error(rej: Rejection) -> ApiError:
    never = rej.retry_after == float("inf")
    wait = "never (the request alone exceeds the limit)" if never else go_duration(rej.retry_after)
    if rej.limit_name == "concurrent":
        message = f"Too many concurrent requests: limit {rej.limit}. Please try again in {wait}."
    elif never:
        message = f"Request too large for {rej.limit_name} per window: Limit {rej.limit}, Requested {rej.requested}."
    else:
        message = f"Rate limit reached for {rej.limit_name}: Limit {rej.limit}, Used {rej.used}, Requested {rej.requested}. Please try again in {wait}."
    return ApiError(
        "rate_limit",
        message,
        code="rate_limit_exceeded",
        openai_type="tokens" if "tokens" in rej.limit_name else "requests",
        headers=retry_headers(rej.retry_after),
    )


async def hold(request: Request, seconds: float) -> None:
    """The injected timeout: answer nothing until the client gives up (or the hold ends)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.05)


async def serve(request: Request, dialect: Dialect) -> Response:
    """Parse, draw a fault, admit, generate, answer: the same steps for every wire format."""
    gw: Gateway = request.app.state.gateway
    caller: Caller = request.state.caller
    dialect.check_request(request, gw.config)
    parsed = dialect.parse(await read_json(request, gw.config.max_request_bytes), gw.config, gw.counter)
    prompt = parsed.prompt
    fault = caller.faults.draw(parsed.stream)
    if fault in INJECTED_ERRORS:
        kind, message = INJECTED_ERRORS[fault]
        if kind == "rate_limit":
            retry = retry_headers(caller.faults.faults.retry_after_seconds)
            raise ApiError(kind, message, code="rate_limit_exceeded", headers=retry)
        raise ApiError(kind, message)
    if fault == "timeout":
        await hold(request, caller.faults.faults.timeout_hold_seconds)
        raise ApiError("timeout", "Request timed out (injected fault).")
    admitted = caller.limits.admit(dialect.limit_style, prompt.input_tokens, prompt.max_tokens)
    if isinstance(admitted, Rejection):
        raise rate_limit_error(admitted)
    caller.prompts.record(prompt.digest())
    headers = caller.limits.headers(dialect.limit_style)
    log.info(
        "%s %s -> 200 %s stream=%s (%s)",
        request.method,
        request.url.path,
        prompt.model.id,
        parsed.stream,
        caller.key.name,
    )
    backend = gw.backends[prompt.model.backend]
    created = int(gw.clock())
    if parsed.stream:
        writer = dialect.stream_writer(prompt, parsed.include_usage, created)
        body = stream_body(gw, backend, prompt, caller, admitted, writer, fault)
        return StreamingResponse(body, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
    completion = await complete(backend, prompt, caller, admitted)
    answer = dialect.completion_body(prompt, completion, created)
    headers[dialect.request_id_header] = new_request_id()
    if fault == "malformed_json":
        text = json.dumps(answer)
        return Response(text[: len(text) // 2], media_type="application/json", headers=headers)
    return JSONResponse(answer, headers=headers)


async def complete(backend: Backend, prompt: Prompt, caller: Caller, admitted: Admission) -> Completion:
    completion = None
    try:
        completion = await generate(backend, prompt, caller.latency)
    finally:
        caller.limits.settle(admitted, completion.output_tokens if completion else 0)
    return completion


async def generate(backend: Backend, prompt: Prompt, latency: LatencySampler | None) -> Completion:
    """The backend's whole answer, or the provider's 500; online requests and batch lines both come here."""
    completion = None
    try:
        async for item in backend.generate(prompt, latency):
            if isinstance(item, Completion):
                completion = item
    except Exception:
        log.exception("backend %s failed", prompt.model.backend)
        raise backend_failed() from None
    if completion is None:
        raise backend_failed()
    return completion


async def stream_body(
    gw: Gateway,
    backend: Backend,
    prompt: Prompt,
    caller: Caller,
    admitted: Admission,
    writer: StreamWriter,
    fault: str | None,
) -> AsyncIterator[str]:
    output = 0
    # Faults strike halfway through the answer's pieces (at least after one).
    break_at = (
        max(1, len(gw.counter.pieces(backend.complete_text(prompt).text)) // 2)
        if fault and isinstance(backend, DeterministicBackend)
        else 1
    )
    try:
        for line in writer.start():
            yield line
        sent = 0
        completion: Completion | None = None
        try:
            async with aclosing(backend.generate(prompt, caller.latency)) as items:
                async for item in items:
                    if isinstance(item, Completion):
                        completion = item
                        break
                    if fault and sent >= break_at:
                        break
                    output += gw.counter.count(item)
                    sent += 1
                    for line in writer.delta(item):
                        yield line
        except Exception:
            # After the 200 the only way to report a failure is inside the stream.
            log.exception("backend %s failed mid-stream", prompt.model.backend)
            for line in writer.error(backend_failed()):
                yield line
            return
        if fault == "stream_error":
            for line in writer.error(ApiError("overloaded", "Overloaded (injected fault).")):
                yield line
            return
        if fault == "stream_drop":
            raise StreamDropped("connection dropped mid-stream (injected fault)")
        if fault == "stream_truncate" or completion is None:
            return  # the body ends properly, but without finish, usage, [DONE] or message_stop
        output = completion.output_tokens
        for line in writer.finish(completion):
            yield line
    finally:
        caller.limits.settle(admitted, output)
