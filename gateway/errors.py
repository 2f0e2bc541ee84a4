"""Errors in each provider's JSON shape.

An ApiError carries a provider-neutral kind; the dialect of the endpoint that
raised it renders it as OpenAI's {"error": {...}} or Anthropic's
{"type": "error", "error": {...}}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

STATUS = {
    "invalid_request": 400,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "rate_limit": 429,
    "server": 500,
    "unavailable": 503,
    "timeout": 504,
    "overloaded": 529,
}

OPENAI_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication": "invalid_request_error",
    "permission": "invalid_request_error",
    "not_found": "invalid_request_error",
    "conflict": "invalid_request_error",
    "too_large": "invalid_request_error",
    "rate_limit": "requests",
    "server": "server_error",
    "unavailable": "server_error",
    "timeout": "timeout",
    "overloaded": "server_error",
}

ANTHROPIC_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "conflict": "invalid_request_error",  # Anthropic has no 409 type
    "too_large": "request_too_large",
    "rate_limit": "rate_limit_error",
    "server": "api_error",
    "unavailable": "api_error",
    "timeout": "timeout_error",
    "overloaded": "overloaded_error",
}


@dataclass
class ApiError(Exception):
    kind: str
    message: str
    param: str | None = None
    code: str | None = None
    openai_type: str | None = None  # overrides OPENAI_TYPES (e.g. 'tokens' for a TPM 429)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def status_code(self) -> int:
        return STATUS[self.kind]


def openai_error_body(err: ApiError) -> dict[str, Any]:
    return {
        "error": {
            "message": err.message,
            "type": err.openai_type or OPENAI_TYPES[err.kind],
            "param": err.param,
            "code": err.code,
        }
    }


def anthropic_error_body(err: ApiError, request_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": ANTHROPIC_TYPES[err.kind], "message": err.message},
        "request_id": request_id,
    }


def first_validation_error(exc: ValidationError) -> tuple[str, bool, str]:
    """(dotted field path, whether the field is missing, pydantic's message) of the first error."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or "body"
    return param, first["type"] == "missing", first["msg"]
