"""The OpenAI Chat Completions wire format: request validation and the
response, chunk and SSE shapes."""

from __future__ import annotations

import json
import secrets
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .backends import Completion, Prompt
from .config import GatewayConfig, ModelSpec
from .dialect import Parsed, check_output_schema
from .errors import ApiError, first_validation_error, openai_error_body
from .ratelimit import OPENAI
from .schema_json import UnsupportedSchema
from .tokens import TokenCounter

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


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
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
) -> dict[str, Any]:
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

    def _chunk(self, choices: list[dict[str, Any]], usage_value: dict[str, Any] | None = None) -> str:
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

    def start(self) -> list[str]:
        delta = {"role": "assistant", "content": "", "refusal": None}
        return [self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])]

    def delta(self, piece: str) -> list[str]:
        return [self._chunk([{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])]

    def finish(self, completion: Completion) -> list[str]:
        end = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": FINISH[completion.finish]}
        lines = [self._chunk([end])]
        if self.include_usage:
            lines.append(self._chunk([], usage(completion.input_tokens, completion.output_tokens)))
        return [*lines, "data: [DONE]\n\n"]

    def error(self, err: ApiError) -> list[str]:
        # What OpenAI sends when a stream fails after the 200: a data line with an error object.
        return [f"data: {json.dumps(openai_error_body(err))}\n\n"]


class OpenAIDialect:
    """The OpenAI Chat Completions wire format (also what vLLM, llama.cpp and LiteLLM speak)."""

    name = "openai"
    limit_style = OPENAI
    request_id_header = "x-request-id"

    def check_request(self, request: Request, config: GatewayConfig) -> None:
        return None  # no required headers beyond the key

    def model(self, name: str, config: GatewayConfig) -> ModelSpec:
        spec = config.model(name)
        if spec is None:
            raise ApiError(
                "not_found",
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return spec

    def validation_error(self, exc: ValidationError) -> ApiError:
        param, missing, msg = first_validation_error(exc)
        if missing:
            return ApiError(
                "invalid_request",
                f"Missing required parameter: '{param}'.",
                param=param,
                code="missing_required_parameter",
            )
        return ApiError("invalid_request", f"Invalid value for '{param}': {msg}.", param=param, code="invalid_value")

    def status(self, err: ApiError) -> int:
        return 503 if err.kind == "overloaded" else err.status_code  # OpenAI has no 529

    def error_body(self, err: ApiError, request_id: str) -> dict[str, Any]:
        return openai_error_body(err)

    def parse(self, data: dict[str, Any], config: GatewayConfig, counter: TokenCounter) -> Parsed:
        try:
            req = ChatRequest.model_validate(data)
        except ValidationError as exc:
            raise self.validation_error(exc) from None
        spec = self.model(req.model, config)
        system_parts: list[str] = []
        messages: list[tuple[str, str]] = []
        for i, m in enumerate(req.messages):
            text = text_of(m.content, f"messages.{i}.content")
            if m.role in ("system", "developer"):
                system_parts.append(text)
            else:
                messages.append((m.role, text))
        if not messages:
            raise invalid("messages", "at least one non-system message is required.")
        max_tokens = req.max_completion_tokens or req.max_tokens or spec.default_max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        if max_tokens > spec.max_output_tokens:
            raise invalid(
                param,
                f"{max_tokens} is too large; this model supports at most {spec.max_output_tokens} completion tokens.",
            )
        schema = response_schema(req.response_format, spec)
        system = "\n".join(system_parts)
        input_tokens = counter.messages(messages, system)
        if input_tokens + max_tokens > spec.context_window:
            raise ApiError(
                "invalid_request",
                f"This model's maximum context length is {spec.context_window} tokens. However, you requested {input_tokens + max_tokens} tokens ({input_tokens} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
                param="messages",
                code="context_length_exceeded",
            )
        prompt = Prompt(
            model=spec,
            messages=messages,
            system=system,
            max_tokens=max_tokens,
            input_tokens=input_tokens,
            stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
            json_schema=schema,
            json_object=req.response_format is not None and req.response_format.type == "json_object",
            temperature=req.temperature,
            seed=req.seed,
            requested_model=req.model,
        )
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Parsed(prompt, bool(req.stream), include_usage)

    def completion_body(self, prompt: Prompt, completion: Completion, created: int) -> dict[str, Any]:
        return completion_body(
            new_id(),
            created,
            prompt.model.id,
            completion.text,
            completion.finish,
            completion.input_tokens,
            completion.output_tokens,
        )

    def stream_writer(self, prompt: Prompt, include_usage: bool, created: int) -> ChunkWriter:
        return ChunkWriter(new_id(), created, prompt.model.id, include_usage)

    def models_body(self, models: tuple[ModelSpec, ...]) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_body(m) for m in models]}

    def model_body(self, spec: ModelSpec) -> dict[str, Any]:
        return {"id": spec.id, "object": "model", "created": spec.created, "owned_by": spec.owned_by}


def invalid(param: str, message: str) -> ApiError:
    return ApiError("invalid_request", f"Invalid value for '{param}': {message}", param=param, code="invalid_value")


def response_schema(response_format: ResponseFormat | None, spec: ModelSpec) -> dict[str, Any] | None:
    """The JSON schema the answer must follow, checked before admission; None without one."""
    if response_format is None or response_format.type != "json_schema":
        return None
    if response_format.json_schema is None:
        raise ApiError(
            "invalid_request",
            "Missing required parameter: 'response_format.json_schema'.",
            param="response_format.json_schema",
            code="missing_required_parameter",
        )
    schema = response_format.json_schema.schema_
    try:
        check_output_schema(schema, spec)
    except UnsupportedSchema as exc:
        raise ApiError(
            "invalid_request",
            f"Invalid schema for response_format 'response_format.json_schema.schema': {exc}",
            param="response_format.json_schema.schema",
            code="invalid_value",
        ) from None
    return schema


DIALECT = OpenAIDialect()
