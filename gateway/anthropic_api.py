"""The Anthropic Messages wire format: request validation and the message,
event and SSE shapes."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    from .errors import ApiError

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


def usage(input_tokens: int, output_tokens: int) -> dict:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "service_tier": "standard",
    }


def message_body(
    mid: str, model: str, text: str, finish: str, stop_sequence: str | None, input_tokens: int, output_tokens: int
) -> dict:
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


def event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class EventWriter:
    """SSE events of one streamed message, in Anthropic's order."""

    def __init__(self, mid: str, model: str, input_tokens: int) -> None:
        self.mid, self.model, self.input_tokens = mid, model, input_tokens
        self.deltas = 0

    def start(self) -> list[str]:
        message = {
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

    def finish(self, finish: str, stop_sequence: str | None, input_tokens: int, output_tokens: int) -> list[str]:
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

    @staticmethod
    def error(kind: str, message: str) -> str:
        return event("error", {"type": "error", "error": {"type": kind, "message": message}})


def _iso(unix: int) -> str:
    return datetime.fromtimestamp(unix, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_body(m) -> dict:
    return {
        "type": "model",
        "id": m.id,
        "display_name": m.display_name,
        "created_at": _iso(m.created),
        "lifecycle": "active",
        "max_input_tokens": m.context_window,
        "max_tokens": m.max_output_tokens,
    }


def models_body(models) -> dict:
    data = [model_body(m) for m in models]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
