"""The FastAPI application: routes, authentication, the API error handler.

create_app(config, clock) builds everything from a validated GatewayConfig; the
clock (unix seconds) is injectable so limit tests can drive time themselves.
Both completion routes call serve(request, dialect) (gateway/serve.py); what
differs between OpenAI and Anthropic is in the dialect objects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from . import anthropic_api, anthropic_batches, openai_api, openai_batches
from .batches import BatchRunner
from .config import GatewayConfig
from .dialect import Dialect
from .errors import ApiError
from .serve import Gateway, admin_caller, authenticated, error_response, read_json, serve
from .tokens import TokenCounter, default_counter

OPENAI, ANTHROPIC = openai_api.DIALECT, anthropic_api.DIALECT
REF_TEMPLATE = "#/components/schemas/{model}"


class WithoutQueryString(logging.Filter):
    """uvicorn's access log prints the path with its query string, where a client may
    have put a key (?api_key=...): keep the path only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:  # client, method, path, version, status
            client, method, path, version, status = record.args
            record.args = (client, method, str(path).split("?", 1)[0], version, status)
        return True


ACCESS_LOG_FILTER = WithoutQueryString()


def speaking(dialect: Dialect) -> Callable[[Request], Dialect]:
    """A route dependency naming the wire format its answers and errors use."""

    def choose(request: Request) -> Dialect:
        request.state.dialect = dialect
        return dialect

    return choose


def by_version_header(request: Request) -> Dialect:
    """/v1/models answers in Anthropic's shape when the request has anthropic-version."""
    return speaking(ANTHROPIC if "anthropic-version" in request.headers else OPENAI)(request)


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, by_alias=True)
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def create_app(
    config: GatewayConfig, clock: Callable[[], float] = time.time, counter: TokenCounter | None = None
) -> FastAPI:
    gw = Gateway(config, clock, counter or default_counter())
    batches, files = BatchRunner(gw), openai_batches.FileStore(config.batch_dir)
    logging.getLogger("uvicorn.access").addFilter(ACCESS_LOG_FILTER)  # adding it twice keeps one

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await batches.close()
        files.close()
        gw.llama.close()

    app = FastAPI(
        title="aibatch LLM gateway",
        version="1.0.0",
        lifespan=lifespan,
        # Off unless server.docs: the spec and the docs pages are then open (they hold no secrets).
        openapi_url="/openapi.json" if config.docs else None,
        docs_url="/docs" if config.docs else None,
        redoc_url="/redoc" if config.docs else None,
        description="Local OpenAI- and Anthropic-compatible API with provider-style rate limits and fault injection.",
    )
    app.state.gateway, app.state.batches, app.state.files = gw, batches, files

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> Response:
        return error_response(request, err, getattr(request.state, "dialect", OPENAI))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback after this answer; the client gets the provider's 500 shape.
        err = ApiError("server", "The server had an error while processing your request.")
        return error_response(request, err, getattr(request.state, "dialect", OPENAI))

    openai_route = [Depends(speaking(OPENAI)), Depends(authenticated)]
    anthropic_route = [Depends(speaking(ANTHROPIC)), Depends(authenticated)]
    models_route = [Depends(by_version_header), Depends(authenticated)]
    admin_route = [Depends(speaking(OPENAI)), Depends(admin_caller)]

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=models_route)
    async def list_models(dialect: Dialect = Depends(by_version_header)) -> Response:
        return JSONResponse(dialect.models_body(config.models))

    @app.get("/v1/models/{model_id}", dependencies=models_route)
    async def get_model(model_id: str, dialect: Dialect = Depends(by_version_header)) -> Response:
        return JSONResponse(dialect.model_body(dialect.model(model_id, config)))

    @app.get("/v1/admin/usage", dependencies=admin_route)
    async def admin_usage() -> Response:
        return JSONResponse(gw.usage())

    @app.get("/v1/admin/keys/{name}/{ledger}", dependencies=admin_route)
    async def admin_ledger(name: str, ledger: str) -> Response:
        """`prompts`: admitted prompt hashes; `batch_lines`: batch lines admitted and answered, by custom_id."""
        for caller in gw.callers:
            if caller.key.name == name and ledger in ("prompts", "batch_lines"):
                return JSONResponse({"key": name, **getattr(caller, ledger).snapshot()})
        raise ApiError("not_found", f"No key named {name!r} with a ledger {ledger!r}.", param="name")

    # The routes read the raw body themselves (to answer in each provider's error
    # shape), so the OpenAPI spec gets the request schemas spelled out here.
    @app.post(
        "/v1/chat/completions",
        dependencies=openai_route,
        openapi_extra=request_body(openai_api.ChatRequest),
        summary="OpenAI Chat Completions",
    )
    async def chat_completions(request: Request) -> Response:
        return await serve(request, OPENAI)

    @app.post(
        "/v1/messages",
        dependencies=anthropic_route,
        openapi_extra=request_body(anthropic_api.MessagesRequest),
        summary="Anthropic Messages (needs anthropic-version)",
    )
    async def messages(request: Request) -> Response:
        return await serve(request, ANTHROPIC)

    @app.post(
        "/v1/messages/count_tokens",
        dependencies=anthropic_route,
        openapi_extra=request_body(anthropic_api.CountTokensRequest),
        summary="Anthropic token counting",
    )
    async def count_tokens(request: Request) -> Response:
        ANTHROPIC.check_request(request, config)
        data = await read_json(request, config.max_request_bytes)
        return JSONResponse({"input_tokens": ANTHROPIC.count_tokens(data, config, gw.counter)})

    # The Batch APIs (their own modules); answers and errors in each provider's shape.
    app.include_router(openai_batches.router, dependencies=openai_route)
    app.include_router(anthropic_batches.router, dependencies=anthropic_route)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (openai_api.ChatRequest, anthropic_api.MessagesRequest, anthropic_api.CountTokensRequest):
                components.update(model.model_json_schema(ref_template=REF_TEMPLATE, by_alias=True).get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
