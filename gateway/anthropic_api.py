"""The Anthropic Messages wire format: request validation and the message,
event and SSE shapes."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .backends import Completion, Prompt
from .config import ANTHROPIC_VERSION, GatewayConfig, ModelSpec
from .dialect import Parsed, check_output_schema
from .errors import ANTHROPIC_TYPES, ApiError, anthropic_error_body, first_validation_error
from .ratelimit import ANTHROPIC
from .schema_json import UnsupportedSchema
from .tokens import TokenCounter

# A ping after the content block opens, then one every PING_EVERY deltas.
PING_EVERY = 8


class ContentBlock(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class JsonOutputFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: JsonOutputFormat | None = None


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[InputMessage] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: str | list[ContentBlock] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stop_sequences: list[str] | None = None
    stream: bool | None = False
    output_config: OutputConfig | None = None


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[ContentBlock] | None = None


def text_of(content: str | list[ContentBlock] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for i, block in enumerate(content):
        if block.type != "text" or block.text is None:
            raise ApiError(
                "invalid_request",
                f"{where}.{i}.type: only text content blocks are supported",
                param=f"{where}.{i}.type",
            )
        parts.append(block.text)
    return "".join(parts)


def new_id() -> str:
    return "msg_" + secrets.token_hex(12)


STOP_REASON = {"stop": "end_turn", "stop_sequence": "stop_sequence", "length": "max_tokens"}


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "service_tier": "standard",
    }


def message_body(
    mid: str, model: str, text: str, finish: str, stop_sequence: str | None, input_tokens: int, output_tokens: int
) -> dict[str, Any]:
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text, "citations": None}],
        "stop_reason": STOP_REASON[finish],
        "stop_sequence": stop_sequence,
        "usage": usage(input_tokens, output_tokens),
    }


def event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class EventWriter:
    """SSE events of one streamed message, in Anthropic's order."""

    def __init__(self, mid: str, model: str, input_tokens: int) -> None:
        self.mid, self.model, self.input_tokens = mid, model, input_tokens
        self.deltas = 0

    def start(self) -> list[str]:
        message: dict[str, Any] = {
            "id": self.mid,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(self.input_tokens, 1),
        }
        return [
            event("message_start", {"type": "message_start", "message": message}),
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": "", "citations": None},
                },
            ),
            self.ping(),
        ]

    @staticmethod
    def ping() -> str:
        return event("ping", {"type": "ping"})

    def delta(self, piece: str) -> list[str]:
        self.deltas += 1
        out = [
            event(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            )
        ]
        if self.deltas % PING_EVERY == 0:
            out.append(self.ping())
        return out

    def finish(self, completion: Completion) -> list[str]:
        finish, stop_sequence = completion.finish, completion.stop_sequence
        input_tokens, output_tokens = completion.input_tokens, completion.output_tokens
        return [
            event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": STOP_REASON[finish], "stop_sequence": stop_sequence},
                    "usage": usage(input_tokens, output_tokens),  # cumulative, as Anthropic sends it
                },
            ),
            event("message_stop", {"type": "message_stop"}),
        ]

    def error(self, err: ApiError) -> list[str]:
        body = {"type": "error", "error": {"type": ANTHROPIC_TYPES[err.kind], "message": err.message}}
        return [event("error", body)]


def _iso(unix: int) -> str:
    return datetime.fromtimestamp(unix, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AnthropicDialect:
    """The Anthropic Messages wire format."""

    name = "anthropic"
    limit_style = ANTHROPIC
    request_id_header = "request-id"

    def check_request(self, request: Request, config: GatewayConfig) -> None:
        version = request.headers.get("anthropic-version")
        if not version:
            raise ApiError("invalid_request", "anthropic-version: header is required", param="anthropic-version")
        if not ANTHROPIC_VERSION.fullmatch(version) or version < config.anthropic_min_version:
            raise ApiError(
                "invalid_request",
                f"anthropic-version: {version!r} is not a valid version; use a date like 2023-06-01, no earlier than {config.anthropic_min_version}",
                param="anthropic-version",
            )

    def model(self, name: str, config: GatewayConfig) -> ModelSpec:
        spec = config.model(name)
        if spec is None:
            raise ApiError("not_found", f"model: {name}", param="model")
        return spec

    def validation_error(self, exc: ValidationError) -> ApiError:
        param, missing, msg = first_validation_error(exc)
        return ApiError("invalid_request", f"{param}: {'Field required' if missing else msg}", param=param)

    def status(self, err: ApiError) -> int:
        return err.status_code

    def error_body(self, err: ApiError, request_id: str) -> dict[str, Any]:
        return anthropic_error_body(err, request_id)

    def parse(self, data: dict[str, Any], config: GatewayConfig, counter: TokenCounter) -> Parsed:
        try:
            req = MessagesRequest.model_validate(data)
        except ValidationError as exc:
            raise self.validation_error(exc) from None
        spec = self.model(req.model, config)
        messages: list[tuple[str, str]] = [
            (m.role, text_of(m.content, f"messages.{i}.content")) for i, m in enumerate(req.messages)
        ]
        system = text_of(req.system, "system")
        if req.max_tokens > spec.max_output_tokens:
            raise ApiError(
                "invalid_request",
                f"max_tokens: {req.max_tokens} > {spec.max_output_tokens}, which is the maximum allowed number of output tokens for {spec.id}",
                param="max_tokens",
            )
        schema = None
        if req.output_config and req.output_config.format:
            schema = req.output_config.format.schema_
            try:
                check_output_schema(schema, spec)
            except UnsupportedSchema as exc:
                raise ApiError(
                    "invalid_request", f"output_config.format.schema: {exc}", param="output_config.format.schema"
                ) from None
        input_tokens = counter.messages(messages, system)
        if input_tokens + req.max_tokens > spec.context_window:
            raise ApiError(
                "invalid_request",
                f"prompt is too long: {input_tokens} tokens + max_tokens {req.max_tokens} > {spec.context_window} maximum",
                param="messages",
            )
        prompt = Prompt(
            model=spec,
            messages=messages,
            system=system,
            max_tokens=req.max_tokens,
            input_tokens=input_tokens,
            stop=list(req.stop_sequences or []),
            json_schema=schema,
            temperature=req.temperature,
            requested_model=req.model,
        )
        return Parsed(prompt, bool(req.stream), include_usage=False)

    def count_tokens(self, data: dict[str, Any], config: GatewayConfig, counter: TokenCounter) -> int:
        """POST /v1/messages/count_tokens: the same count `usage.input_tokens` reports."""
        try:
            req = CountTokensRequest.model_validate(data)
        except ValidationError as exc:
            raise self.validation_error(exc) from None
        self.model(req.model, config)
        messages: list[tuple[str, str]] = [
            (m.role, text_of(m.content, f"messages.{i}.content")) for i, m in enumerate(req.messages)
        ]
        return counter.messages(messages, text_of(req.system, "system"))

    def completion_body(self, prompt: Prompt, completion: Completion, created: int) -> dict[str, Any]:
        return message_body(
            new_id(),
            prompt.model.id,
            completion.text,
            completion.finish,
            completion.stop_sequence,
            completion.input_tokens,
            completion.output_tokens,
        )

    def stream_writer(self, prompt: Prompt, include_usage: bool, created: int) -> EventWriter:
        return EventWriter(new_id(), prompt.model.id, prompt.input_tokens)

    def models_body(self, models: tuple[ModelSpec, ...]) -> dict[str, Any]:
        data = [self.model_body(m) for m in models]
        return {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    def model_body(self, spec: ModelSpec) -> dict[str, Any]:
        return {
            "type": "model",
            "id": spec.id,
            "display_name": spec.display_name,
            "created_at": _iso(spec.created),
            "lifecycle": "active",
            "max_input_tokens": spec.context_window,
            "max_tokens": spec.max_output_tokens,
        }


DIALECT = AnthropicDialect()
