"""One call to an LLM API through its official async SDK, in the provider's dialect.

`LLMClient` has one call path for every provider; what differs between them
(request, reply, stream events, header names) is in its dialect object
(dialects.py). `await client.call(system, messages)` returns a `CallResult`
(text, usage, request id, rate-limit headers, time to first token when
streaming) or raises `CallError`, which says whether a retry can help and how
long the server asked us to wait. The SDKs' own retries are off
(max_retries=0): the runner's one policy decides.

A CallError's message never holds the API key: it is built from the status,
the provider's error type and message, never from request headers.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from .dialects import Answer, dialect_for
from .settings import ProviderConfig

RATE_HEADER_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "retry-after")
NO_RETRY_STATUS = {400, 401, 403, 404, 413, 422}
MAX_ERROR_CHARS = 300


@dataclass
class CallResult:
    text: str
    input_tokens: int
    output_tokens: int
    request_id: str | None
    model: str
    finish: str | None
    headers: dict[str, str] = field(default_factory=dict)
    ttft_ms: float | None = None


class CallError(Exception):
    """A failed call: `retryable`, `retry_after` (seconds the server asked for), `admitted`
    (whether the server may have counted it against the limits)."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
        admitted: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status
        self.admitted = admitted
        self.headers = headers or {}


class IncompleteStream(Exception):
    """The stream ended without its closing events (finish reason, usage)."""


def rate_headers(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith(RATE_HEADER_PREFIXES)}


def retry_after_of(headers: dict[str, str]) -> float | None:
    """retry-after-ms (both SDKs prefer it), else retry-after in seconds; None if absent or unreadable."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue  # an HTTP date: rare from LLM APIs; fall back to our backoff
        if 0 <= seconds <= 600:
            return seconds
    return None


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


def _sdk_errors(name: str) -> tuple[type[BaseException], ...]:
    """Error classes `name` of whichever SDKs are loaded (each is imported only when used:
    importing both costs seconds per task)."""
    return tuple(getattr(sys.modules[m], name) for m in ("openai", "anthropic") if m in sys.modules)


def classify(exc: BaseException) -> CallError:
    """Turn an SDK or transport exception into a CallError that says what to do."""
    if isinstance(exc, CallError):
        return exc
    if isinstance(exc, _sdk_errors("APIStatusError")):
        status = exc.status_code  # type: ignore[attr-defined]
        response = exc.response  # type: ignore[attr-defined]
        headers = rate_headers(response.headers)
        raw_body = exc.body  # type: ignore[attr-defined]
        body = raw_body if isinstance(raw_body, dict) else {}
        inner = body.get("error", body) if isinstance(body.get("error", body), dict) else body
        code = str(inner.get("code") or inner.get("type") or "")
        message = _short(str(inner.get("message") or exc.message))  # type: ignore[attr-defined]
        text = f"HTTP {status} {code}: {message}".replace(": :", ":")
        if status < 400:
            # An error event after a 200 (streaming): the provider failed mid-answer.
            return CallError(
                f"error event in the stream ({code}): {message}", retryable=True, status=status, admitted=True
            )
        if status == 429:
            never = code == "insufficient_quota" or response.headers.get("x-should-retry") == "false"
            return CallError(
                text, retryable=not never, retry_after=retry_after_of(headers), status=status, headers=headers
            )
        retryable = status not in NO_RETRY_STATUS and (status >= 500 or status in (408, 409))
        return CallError(text, retryable=retryable, retry_after=retry_after_of(headers), status=status, headers=headers)
    if isinstance(exc, _sdk_errors("APITimeoutError")):
        return CallError("timeout: no answer in time", retryable=True, admitted=True)
    if isinstance(exc, _sdk_errors("APIConnectionError")):
        return CallError(f"connection failed: {type(exc.__cause__ or exc).__name__}", retryable=True, admitted=True)
    if isinstance(exc, (*_sdk_errors("APIResponseValidationError"), json.JSONDecodeError)):
        return CallError("malformed response body (not valid JSON)", retryable=True, admitted=True)
    if isinstance(exc, _sdk_errors("APIError")):
        # e.g. an error object inside an OpenAI stream after a 200
        return CallError(f"error in the stream: {_short(exc.message)}", retryable=True, admitted=True)  # type: ignore[attr-defined]
    if isinstance(exc, IncompleteStream):
        return CallError(f"stream ended early: {exc}", retryable=True, admitted=True)
    if isinstance(exc, httpx.HTTPError | TimeoutError | OSError) or type(exc).__module__.startswith("httpx"):
        return CallError(f"connection broken: {type(exc).__name__}", retryable=True, admitted=True)
    raise exc  # a bug of ours: let it surface


async def _parsed(raw: Any) -> Any:
    """The body of a raw response (openai's parse() is synchronous here, anthropic's a coroutine)."""
    value = raw.parse()
    return await value if inspect.isawaitable(value) else value


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 1)


class LLMClient:
    """One provider's API through its official async SDK, in its dialect (dialects.py):
    `await call(system, messages, method)` returns a CallResult or raises CallError; `method`
    is how the answer is constrained (schema, tool or prompt: dialects.METHODS)."""

    def __init__(self, cfg: ProviderConfig, api_key: str, schema: dict[str, Any]) -> None:
        self.cfg, self.schema = cfg, schema
        self.dialect = dialect_for(cfg.kind)
        self.sdk = self.dialect.open(cfg, api_key)
        self.create = self.dialect.endpoint(self.sdk)

    async def call(self, system: str, messages: list[dict[str, str]], method: str = "schema") -> CallResult:
        d = self.dialect
        params = d.request(self.cfg, system, messages, self.schema, method)
        start = time.perf_counter()
        ttft: float | None = None
        try:
            if not self.cfg.stream:
                raw = await self.create(**params)
                answer = d.reply(await _parsed(raw))
            else:
                raw = await self.create(**params, **d.stream_args())
                answer = Answer(model=self.cfg.model)
                async for event in await _parsed(raw):
                    if d.event(answer, event) and ttft is None:
                        ttft = _ms_since(start)
                if not answer.complete:
                    raise IncompleteStream("no closing events (finish reason, usage)")
                answer.text = "".join(answer.pieces)
            return CallResult(
                text=answer.text,
                input_tokens=answer.input_tokens or 0,
                output_tokens=answer.output_tokens or 0,
                request_id=raw.headers.get(d.request_id_header) or answer.request_id,
                model=answer.model or self.cfg.model,
                finish=answer.finish,
                headers=rate_headers(raw.headers),
                ttft_ms=ttft,
            )
        except Exception as exc:
            raise classify(exc) from None

    async def close(self) -> None:
        await self.sdk.close()


Client = LLMClient


def make_client(cfg: ProviderConfig, api_key: str, schema: dict[str, Any]) -> LLMClient:
    return LLMClient(cfg, api_key, schema)
