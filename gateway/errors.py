"""Errors in each provider's JSON shape.

An ApiError carries a provider-neutral kind; the dialect of the endpoint that
raised it renders it as OpenAI's {"error": {...}} or Anthropic's
{"type": "error", "error": {...}}.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

STATUS = {
    "invalid_request": 400,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
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
    status: int | None = None  # overrides STATUS (e.g. 529 -> 503 on the OpenAI API)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def status_code(self) -> int:
        return self.status or STATUS[self.kind]


def openai_error_body(err: ApiError) -> dict:
    return {
        "error": {
            "message": err.message,
            "type": err.openai_type or OPENAI_TYPES[err.kind],
            "param": err.param,
            "code": err.code,
        }
    }


def anthropic_error_body(err: ApiError, request_id: str) -> dict:
    return {
        "type": "error",
        "error": {"type": ANTHROPIC_TYPES[err.kind], "message": err.message},
        "request_id": request_id,
    }


def from_validation(exc: ValidationError, anthropic: bool) -> ApiError:
    """400 naming the first field at fault, in the provider's wording."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or "body"
    if first["type"] == "missing":
        message = f"{param}: Field required" if anthropic else f"Missing required parameter: '{param}'."
    else:
        message = f"{param}: {first['msg']}" if anthropic else f"Invalid value for '{param}': {first['msg']}."
    return ApiError(
        "invalid_request",
        message,
        param=param,
        code=None if anthropic else "invalid_value" if first["type"] != "missing" else "missing_required_parameter",
    )
