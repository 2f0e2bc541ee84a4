"""What a wire format (OpenAI Chat Completions, Anthropic Messages) must provide
to the one request path in gateway/serve.py.

Every difference between the providers lives in a Dialect object: how a body
becomes a Prompt, the error body and its status, the request-id header, the
rate-limit header style, the completion body and the stream writer. The request
path never asks which provider it is serving.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request
from pydantic import ValidationError

from .backends import Completion, Prompt
from .config import GatewayConfig, ModelSpec
from .errors import ApiError
from .schema_json import check_schema, instance_for
from .tokens import TokenCounter


@dataclass
class Parsed:
    """A request body as the backend and the limiter see it."""

    prompt: Prompt
    stream: bool
    include_usage: bool  # OpenAI's stream_options.include_usage; Anthropic streams usage always


class StreamWriter(Protocol):
    """The SSE lines of one streamed answer; every method returns the lines to send."""

    def start(self) -> list[str]: ...

    def delta(self, piece: str) -> list[str]: ...

    def finish(self, completion: Completion) -> list[str]: ...

    def error(self, err: ApiError) -> list[str]: ...


class Dialect(Protocol):
    name: str
    limit_style: str  # ratelimit.OPENAI or ratelimit.ANTHROPIC: which limits and headers apply
    request_id_header: str

    def check_request(self, request: Request, config: GatewayConfig) -> None:
        """Headers the wire format requires (e.g. anthropic-version); raises ApiError."""
        ...

    def parse(self, data: dict[str, Any], config: GatewayConfig, counter: TokenCounter) -> Parsed: ...

    def model(self, name: str, config: GatewayConfig) -> ModelSpec:
        """The model named `name`, or a 404 in the provider's words."""
        ...

    def validation_error(self, exc: ValidationError) -> ApiError: ...

    def status(self, err: ApiError) -> int: ...

    def error_body(self, err: ApiError, request_id: str) -> dict[str, Any]: ...

    def completion_body(self, prompt: Prompt, completion: Completion, created: int) -> dict[str, Any]: ...

    def stream_writer(self, prompt: Prompt, include_usage: bool, created: int) -> StreamWriter: ...

    def models_body(self, models: tuple[ModelSpec, ...]) -> dict[str, Any]: ...

    def model_body(self, spec: ModelSpec) -> dict[str, Any]: ...


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def check_output_schema(schema: dict[str, Any], spec: ModelSpec) -> None:
    """Refuse, before admission, a schema the model's backend cannot answer."""
    check_schema(schema)
    if spec.backend == "deterministic":
        instance_for(schema, "probe")  # raises UnsupportedSchema naming the keyword
    # llama.cpp turns the schema into a grammar itself (it supports pattern and more).
