"""What differs between the providers' wire formats, client side, held in one
object per format (as gateway/dialect.py does on the server): opening the
official SDK, building a request (and how the answer is constrained:
`schema`, `tool` or `prompt`), reading a reply and a stream's events into one
answer, the budget's dimensions and what a call uses of them, and the
rate-limit header names. `dialect_for(kind)` is the registry; nothing else
asks which provider it is talking to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .batch_wire import AnthropicBatches, BatchWire, OpenAIBatches
from .settings import ProviderConfig

TOOL_NAME = "record_enrichment"  # the one tool a `tool` request forces; its input is the answer
METHODS = ("schema", "tool", "prompt")  # how an answer is constrained, in auto's order


@dataclass
class Answer:
    """One call's answer as the dialect read it, before the client adds timing and headers."""

    text: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    request_id: str | None = None
    model: str | None = None
    finish: str | None = None
    complete: bool = False  # a stream's closing events came
    pieces: list[str] = field(default_factory=list)


class Dialect:
    name: str
    token_dims: tuple[str, ...]  # the token dimensions of its limits (besides requests)
    header_dims: tuple[tuple[str, str, str], ...]  # (dimension, remaining header, limit header)
    request_id_header: str
    batches: BatchWire  # its Batch API (batch_wire.py)

    def amounts(self, input_tokens: int, output_tokens: int) -> dict[str, int]:
        """What a call takes of the budget (or reserves, with output at max_tokens)."""
        raise NotImplementedError

    def reading(self, headers: Mapping[str, str]) -> dict[str, tuple[float, float]]:
        """The rate-limit headers as dimension -> (remaining, limit); unreadable ones left out."""
        out = {}
        for dim, remaining, limit in self.header_dims:
            try:
                out[dim] = (float(headers[remaining]), float(headers[limit]))
            except (KeyError, ValueError):
                continue
        return out

    def check_settings(self, cfg: ProviderConfig) -> None:
        """Raise ValueError naming the setting this format cannot take."""

    def open(self, cfg: ProviderConfig, api_key: str) -> Any:
        raise NotImplementedError

    def request(
        self, cfg: ProviderConfig, system: str, messages: list[dict[str, str]], schema: dict[str, Any], method: str
    ) -> dict[str, Any]:
        raise NotImplementedError

    def endpoint(self, sdk: Any) -> Any:
        """The SDK's create() with the raw response (headers) kept."""
        raise NotImplementedError

    def stream_args(self) -> dict[str, Any]:
        return {"stream": True}

    def reply(self, body: Any) -> Answer:
        raise NotImplementedError

    def event(self, answer: Answer, event: Any) -> str | None:
        """Fold one stream event into `answer`; returns the answer text it adds (or None)."""
        raise NotImplementedError

    def batch_reply(self, body: dict[str, Any]) -> Answer:
        """A Batch API result's completion body (the online endpoint's body), read as `reply` reads it."""
        raise NotImplementedError


class OpenAIChat(Dialect):
    """Chat Completions (OpenAI, vLLM, llama.cpp, LiteLLM)."""

    name = "openai"
    token_dims = ("tokens",)
    header_dims = (
        ("requests", "x-ratelimit-remaining-requests", "x-ratelimit-limit-requests"),
        ("tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-limit-tokens"),
    )
    request_id_header = "x-request-id"
    batches = OpenAIBatches()

    def amounts(self, input_tokens: int, output_tokens: int) -> dict[str, int]:
        return {"requests": 1, "tokens": input_tokens + output_tokens}

    def open(self, cfg: ProviderConfig, api_key: str) -> Any:
        import openai

        return openai.AsyncOpenAI(api_key=api_key, base_url=cfg.base_url, max_retries=0, timeout=cfg.timeout_s)

    def request(
        self, cfg: ProviderConfig, system: str, messages: list[dict[str, str]], schema: dict[str, Any], method: str
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": cfg.model,
            "messages": [{"role": "system", "content": system}, *messages] if system else messages,
            "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature,
        }
        if method == "schema":
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "enrichment", "schema": schema, "strict": True},
            }
        elif method == "tool":  # forced function calling: the arguments are the answer
            params["tools"] = [{"type": "function", "function": {"name": TOOL_NAME, "parameters": schema}}]
            params["tool_choice"] = {"type": "function", "function": {"name": TOOL_NAME}}
        return params

    def endpoint(self, sdk: Any) -> Any:
        return sdk.chat.completions.with_raw_response.create

    def stream_args(self) -> dict[str, Any]:
        return {"stream": True, "stream_options": {"include_usage": True}}

    def reply(self, body: Any) -> Answer:
        message = body.choices[0].message
        calls = getattr(message, "tool_calls", None) or []
        text = calls[0].function.arguments if calls else message.content
        usage = body.usage
        return Answer(
            text=text or "",
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            request_id=body.id,
            model=body.model,
            finish=body.choices[0].finish_reason,
            complete=True,
        )

    def batch_reply(self, body: dict[str, Any]) -> Answer:
        from openai.types.chat import ChatCompletion

        return self.reply(ChatCompletion.model_validate(body))

    def event(self, answer: Answer, event: Any) -> str | None:
        answer.request_id = answer.request_id or event.id
        answer.model = event.model or answer.model
        added = None
        for choice in event.choices:
            delta = choice.delta
            piece = delta.content or "".join(
                (c.function.arguments or "") for c in (getattr(delta, "tool_calls", None) or []) if c.function
            )
            if piece:
                answer.pieces.append(piece)
                added = piece
            answer.finish = choice.finish_reason or answer.finish
        if event.usage is not None:
            answer.input_tokens, answer.output_tokens = event.usage.prompt_tokens, event.usage.completion_tokens
        answer.complete = answer.finish is not None and answer.output_tokens is not None
        return added


class AnthropicMessages(Dialect):
    """Messages (Anthropic; servers that speak its format)."""

    name = "anthropic"
    token_dims = ("input_tokens", "output_tokens")
    header_dims = (
        ("requests", "anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-limit"),
        ("input_tokens", "anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-limit"),
        ("output_tokens", "anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-limit"),
    )
    request_id_header = "request-id"
    batches = AnthropicBatches()

    def amounts(self, input_tokens: int, output_tokens: int) -> dict[str, int]:
        return {"requests": 1, "input_tokens": input_tokens, "output_tokens": output_tokens}

    def check_settings(self, cfg: ProviderConfig) -> None:
        if cfg.base_url.rstrip("/").endswith("/v1"):
            raise ValueError("base_url: for kind 'anthropic' give the root (the SDK adds /v1/messages itself)")
        if cfg.temperature > 1:
            raise ValueError("temperature: Anthropic's Messages API takes 0 to 1")

    def open(self, cfg: ProviderConfig, api_key: str) -> Any:
        import anthropic

        return anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=cfg.base_url,
            max_retries=0,
            timeout=cfg.timeout_s,
            default_headers={"anthropic-version": cfg.anthropic_version},
        )

    def request(
        self, cfg: ProviderConfig, system: str, messages: list[dict[str, str]], schema: dict[str, Any], method: str
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": cfg.model,
            "messages": messages,
            "max_tokens": cfg.max_tokens,
            # This SDK version has no temperature argument; the Messages API still takes it.
            "extra_body": {"temperature": cfg.temperature},
        }
        if system:
            params["system"] = system
        if method == "schema":
            params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        elif method == "tool":  # the way Anthropic documents JSON output: one forced tool call
            params["tools"] = [{"name": TOOL_NAME, "description": "Record the answer.", "input_schema": schema}]
            params["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
        return params

    def endpoint(self, sdk: Any) -> Any:
        return sdk.messages.with_raw_response.create

    def reply(self, body: Any) -> Answer:
        text = "".join(b.text for b in body.content if b.type == "text")
        tools = [b for b in body.content if b.type == "tool_use"]
        if tools:
            text = json.dumps(tools[0].input)
        return Answer(
            text=text,
            input_tokens=body.usage.input_tokens,
            output_tokens=body.usage.output_tokens,
            request_id=body.id,
            model=body.model,
            finish=body.stop_reason,
            complete=True,
        )

    def batch_reply(self, body: dict[str, Any]) -> Answer:
        from anthropic.types import Message

        return self.reply(Message.model_validate(body))

    def event(self, answer: Answer, event: Any) -> str | None:
        if event.type == "message_start":
            answer.request_id, answer.model = event.message.id, event.message.model
            answer.input_tokens = event.message.usage.input_tokens
        elif event.type == "content_block_delta" and event.delta.type in ("text_delta", "input_json_delta"):
            piece = event.delta.text if event.delta.type == "text_delta" else event.delta.partial_json
            answer.pieces.append(piece)
            return str(piece)
        elif event.type == "message_delta":
            answer.finish, answer.output_tokens = event.delta.stop_reason, event.usage.output_tokens
            if event.usage.input_tokens is not None:
                answer.input_tokens = event.usage.input_tokens
        elif event.type == "message_stop":
            answer.complete = answer.output_tokens is not None
        return None


DIALECTS: dict[str, Dialect] = {d.name: d for d in (OpenAIChat(), AnthropicMessages())}


def dialect_for(kind: str) -> Dialect:
    try:
        return DIALECTS[kind]
    except KeyError:
        raise ValueError(f"provider.kind: {kind!r} is not one of {sorted(DIALECTS)}") from None
