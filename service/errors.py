"""Errors as RFC 9457 problem details (application/problem+json).

Routes raise Problem; one exception handler (service/app.py) renders it, and
FastAPI's own request-validation errors and unexpected exceptions become
problems too, so every error the service answers has this one shape:

    {"type": "https://aibatch.dev/problems/not-found", "title": "Not Found",
     "status": 404, "detail": "...", "instance": "/api/v1/runs/abc"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://aibatch.dev/problems/"


@dataclass
class Problem(Exception):
    status: int
    detail: str
    kind: str = ""  # the last segment of the type URI; default: from the status's phrase
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # extension members (e.g. "errors")

    def __post_init__(self) -> None:
        super().__init__(self.detail)

    def body(self, instance: str) -> dict[str, Any]:
        phrase = HTTPStatus(self.status).phrase
        kind = self.kind or phrase.lower().replace(" ", "-")
        return {
            "type": TYPE_BASE + kind,
            "title": phrase,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
            **self.extra,
        }


def unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"www-authenticate": 'Bearer realm="aibatch"'})


def not_found(detail: str) -> Problem:
    return Problem(404, detail)


def conflict(detail: str) -> Problem:
    return Problem(409, detail)


def too_large(limit: int) -> Problem:
    return Problem(413, f"The request body exceeds the limit of {limit} bytes.")


def invalid(detail: str, errors: list[dict[str, Any]] | None = None) -> Problem:
    return Problem(422, detail, extra={"errors": errors} if errors else {})


def problem_response(request: Request, problem: Problem) -> JSONResponse:
    return JSONResponse(
        problem.body(request.url.path), status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON
    )


def validation_problem(errors: list[dict[str, Any]]) -> Problem:
    """pydantic's errors, as FastAPI reports them, made into one 422 problem:
    detail names the first field at fault; `errors` lists each (loc, msg)."""
    listed = [
        {"loc": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body", "msg": str(e.get("msg", ""))}
        for e in errors
    ]
    if any(e.get("type") == "json_invalid" for e in errors):
        return invalid("The request body is not valid JSON.", listed)
    first = listed[0] if listed else {"loc": "body", "msg": "invalid"}
    return invalid(f"{first['loc']}: {first['msg']}", listed)


def json_safe(value: Any) -> Any:
    """value with anything JSON cannot hold as text (pydantic's ctx may hold exceptions)."""
    return json.loads(json.dumps(value, default=str))
