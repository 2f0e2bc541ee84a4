"""The OpenAI Chat Completions wire format: request validation and the
response, chunk and SSE shapes."""

from __future__ import annotations

import json
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SYSTEM_FINGERPRINT = "fp_aibatch_gateway"


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=1)  # one choice per request: the gateway answers n=1 only
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None


def text_of(content: str | list[ContentPart] | None, where: str) -> str:
    from .errors import ApiError

    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for i, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise ApiError(
                "invalid_request",
                f"Invalid value for '{where}.{i}.type': only text content parts are supported.",
                param=f"{where}.{i}.type",
                code="invalid_value",
            )
        parts.append(part.text)
    return "".join(parts)


def new_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage(input_tokens: int, output_tokens: int) -> dict:
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


FINISH = {"stop": "stop", "stop_sequence": "stop", "length": "length"}


def completion_body(
    cid: str, created: int, model: str, text: str, finish: str, input_tokens: int, output_tokens: int
) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "service_tier": "default",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": FINISH[finish],
            }
        ],
        "usage": usage(input_tokens, output_tokens),
    }


class ChunkWriter:
    """SSE lines of one streamed chat completion, in OpenAI's order."""

    def __init__(self, cid: str, created: int, model: str, include_usage: bool) -> None:
        self.cid, self.created, self.model, self.include_usage = cid, created, model, include_usage

    def _chunk(self, choices: list, usage_value: dict | None = None) -> str:
        body: dict[str, Any] = {
            "id": self.cid,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "service_tier": "default",
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = usage_value  # null on every chunk but the last
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def role(self) -> str:
        return self._chunk(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": "", "refusal": None},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )

    def delta(self, piece: str) -> str:
        return self._chunk([{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])

    def finish(self, finish: str) -> str:
        return self._chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": FINISH[finish]}])

    def usage(self, input_tokens: int, output_tokens: int) -> str:
        return self._chunk([], usage(input_tokens, output_tokens))

    @staticmethod
    def error(message: str, kind: str = "server_error") -> str:
        # What OpenAI sends when a stream fails after the 200: a data line with an error object.
        return f"data: {json.dumps({'error': {'message': message, 'type': kind, 'param': None, 'code': None}})}\n\n"

    @staticmethod
    def done() -> str:
        return "data: [DONE]\n\n"


def models_body(models) -> dict:
    return {"object": "list", "data": [model_body(m) for m in models]}


def model_body(m) -> dict:
    return {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}
