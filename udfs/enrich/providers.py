"""One call to an LLM API, in each provider's dialect, through its official async SDK.

`OpenAIChatClient` (Chat Completions: OpenAI, vLLM, llama.cpp, LiteLLM) and
`AnthropicMessagesClient` (Messages) share one shape: `await client.call(system,
messages)` returns a `CallResult` (text, usage, request id, rate-limit headers,
time to first token when streaming) or raises `CallError`, which says whether
a retry can help and how long the server asked us to wait. The SDKs' own
retries are off (max_retries=0): the runner's one policy decides.

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


class OpenAIChatClient:
    """Chat Completions with a JSON-schema response format."""

    kind = "openai"

    def __init__(self, cfg: ProviderConfig, api_key: str, schema: dict[str, Any]) -> None:
        import openai

        self.cfg = cfg
        self.client = openai.AsyncOpenAI(api_key=api_key, base_url=cfg.base_url, max_retries=0, timeout=cfg.timeout_s)
        self.response_format = {
            "type": "json_schema",
            "json_schema": {"name": "enrichment", "schema": schema, "strict": True},
        }

    async def call(self, system: str, messages: list[dict[str, str]]) -> CallResult:
        params: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": [{"role": "system", "content": system}, *messages] if system else messages,
            "max_tokens": self.cfg.max_tokens,
            "temperature": self.cfg.temperature,
        }
        if self.cfg.structured_output:
            params["response_format"] = self.response_format
        start = time.perf_counter()
        try:
            if not self.cfg.stream:
                raw = await self.client.chat.completions.with_raw_response.create(**params)
                reply = await _parsed(raw)
                usage = reply.usage
                return CallResult(
                    text=reply.choices[0].message.content or "",
                    input_tokens=usage.prompt_tokens if usage else 0,
                    output_tokens=usage.completion_tokens if usage else 0,
                    request_id=raw.headers.get("x-request-id") or reply.id,
                    model=reply.model,
                    finish=reply.choices[0].finish_reason,
                    headers=rate_headers(raw.headers),
                )
            raw = await self.client.chat.completions.with_raw_response.create(
                **params, stream=True, stream_options={"include_usage": True}
            )
            parts: list[str] = []
            ttft: float | None = None
            finish, model, usage_in, usage_out, rid = None, self.cfg.model, None, None, None
            async for chunk in await _parsed(raw):
                rid = rid or chunk.id
                model = chunk.model or model
                for choice in chunk.choices:
                    if choice.delta.content:
                        if ttft is None:
                            ttft = _ms_since(start)
                        parts.append(choice.delta.content)
                    finish = choice.finish_reason or finish
                if chunk.usage is not None:
                    usage_in, usage_out = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
            if finish is None or usage_in is None or usage_out is None:
                raise IncompleteStream("no finish reason or usage")
            return CallResult(
                text="".join(parts),
                input_tokens=usage_in,
                output_tokens=usage_out,
                request_id=raw.headers.get("x-request-id") or rid,
                model=model,
                finish=finish,
                headers=rate_headers(raw.headers),
                ttft_ms=ttft,
            )
        except Exception as exc:
            raise classify(exc) from None

    async def close(self) -> None:
        await self.client.close()


class AnthropicMessagesClient:
    """Messages with `output_config.format` (JSON schema)."""

    kind = "anthropic"

    def __init__(self, cfg: ProviderConfig, api_key: str, schema: dict[str, Any]) -> None:
        import anthropic

        self.cfg = cfg
        self.client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=cfg.base_url,
            max_retries=0,
            timeout=cfg.timeout_s,
            default_headers={"anthropic-version": cfg.anthropic_version},
        )
        self.output_config: Any = {"format": {"type": "json_schema", "schema": schema}}

    async def call(self, system: str, messages: list[dict[str, str]]) -> CallResult:
        params: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": self.cfg.max_tokens,
            # This SDK version has no temperature argument; the Messages API still takes it.
            "extra_body": {"temperature": self.cfg.temperature},
        }
        if system:
            params["system"] = system
        if self.cfg.structured_output:
            params["output_config"] = self.output_config
        start = time.perf_counter()
        try:
            if not self.cfg.stream:
                raw = await self.client.messages.with_raw_response.create(**params)
                msg = await _parsed(raw)
                text = "".join(block.text for block in msg.content if block.type == "text")
                return CallResult(
                    text=text,
                    input_tokens=msg.usage.input_tokens,
                    output_tokens=msg.usage.output_tokens,
                    request_id=raw.headers.get("request-id") or msg.id,
                    model=msg.model,
                    finish=msg.stop_reason,
                    headers=rate_headers(raw.headers),
                )
            raw = await self.client.messages.with_raw_response.create(**params, stream=True)
            parts: list[str] = []
            ttft: float | None = None
            finish, model, rid, usage_in, usage_out, stopped = None, self.cfg.model, None, 0, None, False
            async for event in await _parsed(raw):
                if event.type == "message_start":
                    rid, model, usage_in = event.message.id, event.message.model, event.message.usage.input_tokens
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    if ttft is None:
                        ttft = _ms_since(start)
                    parts.append(event.delta.text)
                elif event.type == "message_delta":
                    finish, usage_out = event.delta.stop_reason, event.usage.output_tokens
                    if event.usage.input_tokens is not None:
                        usage_in = event.usage.input_tokens
                elif event.type == "message_stop":
                    stopped = True
            if not stopped or usage_out is None:
                raise IncompleteStream("no message_stop")
            return CallResult(
                text="".join(parts),
                input_tokens=usage_in,
                output_tokens=usage_out,
                request_id=raw.headers.get("request-id") or rid,
                model=model,
                finish=finish,
                headers=rate_headers(raw.headers),
                ttft_ms=ttft,
            )
        except Exception as exc:
            raise classify(exc) from None

    async def close(self) -> None:
        await self.client.close()


Client = OpenAIChatClient | AnthropicMessagesClient


def make_client(cfg: ProviderConfig, api_key: str, schema: dict[str, Any]) -> Client:
    if cfg.kind == "anthropic":
        return AnthropicMessagesClient(cfg, api_key, schema)
    return OpenAIChatClient(cfg, api_key, schema)
