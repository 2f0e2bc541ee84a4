"""The FastAPI application: routes, auth, limits, faults, and both dialects.

create_app(config, clock) builds everything from a validated GatewayConfig; the
clock (unix seconds) is injectable so limit tests can drive time themselves.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from . import anthropic_api, openai_api
from .backends import Completion, DeterministicBackend, LlamaBackend, Prompt
from .config import ANTHROPIC_VERSION, ApiKey, GatewayConfig, ModelSpec
from .errors import ApiError, anthropic_error_body, from_validation, openai_error_body
from .faults import FaultInjector, LatencySampler
from .prompts import PromptLedger
from .ratelimit import ANTHROPIC, OPENAI, Admission, KeyLimits, Rejection, go_duration, retry_headers
from .schema_json import UnsupportedSchema, check_schema, instance_for
from .tokens import TokenCounter, default_counter

log = logging.getLogger(__name__)


class StreamDropped(Exception):
    """Raised inside a streaming body to drop the connection (an injected fault)."""


@dataclass
class Caller:
    key: ApiKey
    limits: KeyLimits
    faults: FaultInjector
    latency: LatencySampler
    prompts: PromptLedger = field(default_factory=PromptLedger)


class Gateway:
    """State shared by the routes: keys, limiters, ledgers, fault draws, backends."""

    def __init__(self, config: GatewayConfig, clock: Callable[[], float], counter: TokenCounter) -> None:
        self.config, self.clock, self.counter = config, clock, counter
        self.callers = [
            Caller(k, KeyLimits(k, clock), FaultInjector(k.faults, k.name), LatencySampler(k.latency))
            for k in config.keys
        ]
        self.backends = {
            "deterministic": DeterministicBackend(counter),
            "llama": LlamaBackend(config.llama, counter),
        }

    def authenticate(self, request: Request) -> Caller:
        supplied = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if supplied is None and auth.lower().startswith("bearer "):
            supplied = auth[7:].strip()
        if not supplied:
            raise ApiError(
                "authentication",
                "No API key provided. Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                code="invalid_api_key",
            )
        match = None
        for caller in self.callers:  # compare every key in constant time; never echo the supplied one
            if hmac.compare_digest(caller.key.secret.encode(), supplied.encode()):
                match = caller
        if match is None:
            raise ApiError("authentication", "Incorrect API key provided.", code="invalid_api_key")
        return match

    def model(self, name: str, anthropic: bool) -> ModelSpec:
        spec = self.config.model(name)
        if spec is None:
            if anthropic:
                raise ApiError("not_found", f"model: {name}", param="model")
            raise ApiError(
                "not_found",
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return spec


def _request_id(anthropic: bool) -> str:
    return "req_" + secrets.token_hex(12)


def error_response(err: ApiError, anthropic: bool, extra_headers: dict[str, str] | None = None) -> JSONResponse:
    rid = _request_id(anthropic)
    body = anthropic_error_body(err, rid) if anthropic else openai_error_body(err)
    headers = {**(extra_headers or {}), **err.headers, ("request-id" if anthropic else "x-request-id"): rid}
    return JSONResponse(body, status_code=err.status_code, headers=headers)


async def read_json(request: Request, limit: int, anthropic: bool) -> dict:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError("too_large", f"Request exceeds the maximum size of {limit} bytes.")
    body = await request.body()
    if len(body) > limit:
        raise ApiError("too_large", f"Request exceeds the maximum size of {limit} bytes.")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(
            "invalid_request",
            f"The request body is not valid JSON: {exc.msg} at position {exc.pos}."
            if isinstance(exc, json.JSONDecodeError)
            else "The request body is not valid UTF-8 JSON.",
            param="body",
        ) from None
    if not isinstance(data, dict):
        raise ApiError("invalid_request", "The request body must be a JSON object.", param="body")
    return data


def rate_limit_error(rej: Rejection, anthropic: bool) -> ApiError:
    wait = (
        "never (the request alone exceeds the limit)"
        if rej.retry_after == float("inf")
        else go_duration(rej.retry_after)
    )
    if rej.limit_name == "concurrent":
        message = f"Too many concurrent requests: limit {rej.limit}. Please try again in {wait}."
    elif rej.retry_after == float("inf"):
        message = f"Request too large for {rej.limit_name} per window: Limit {rej.limit}, Requested {rej.requested}."
    else:
        message = f"Rate limit reached for {rej.limit_name}: Limit {rej.limit}, Used {rej.used}, Requested {rej.requested}. Please try again in {wait}."
    openai_type = "tokens" if "tokens" in rej.limit_name else "requests"
    return ApiError(
        "rate_limit",
        message,
        code="rate_limit_exceeded",
        openai_type=openai_type,
        headers=retry_headers(rej.retry_after),
    )


def injected_error(kind: str, caller: Caller, anthropic: bool) -> ApiError:
    if kind == "rate_limit":
        return ApiError(
            "rate_limit",
            "Rate limit reached (injected fault). Please retry.",
            code="rate_limit_exceeded",
            headers=retry_headers(caller.faults.faults.retry_after_seconds),
        )
    if kind == "server_error":
        return ApiError("server", "The server had an error while processing your request (injected fault).")
    if kind == "unavailable":
        return ApiError("unavailable", "The server is temporarily unavailable (injected fault).")
    # overloaded: Anthropic's 529; OpenAI has no 529 and says 503.
    return ApiError("overloaded", "Overloaded (injected fault).", status=None if anthropic else 503)


async def hold(request: Request, seconds: float) -> None:
    """The injected timeout: answer nothing until the client gives up (or the hold ends)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.05)


REF_TEMPLATE = "#/components/schemas/{model}"


def request_body(model: type) -> dict:
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, by_alias=True)
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def check_output_schema(schema: dict, spec: ModelSpec) -> None:
    """Refuse, before admission, a schema the model's backend cannot answer."""
    check_schema(schema)
    if spec.backend == "deterministic":
        instance_for(schema, "probe")  # raises UnsupportedSchema naming the keyword
    # llama.cpp turns the schema into a grammar itself (it supports pattern and more).


def create_app(
    config: GatewayConfig, clock: Callable[[], float] = time.time, counter: TokenCounter | None = None
) -> FastAPI:
    gw = Gateway(config, clock, counter or default_counter())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        gw.backends["llama"].close()

    app = FastAPI(
        title="aibatch LLM gateway",
        version="1.0.0",
        lifespan=lifespan,
        description="Local OpenAI- and Anthropic-compatible API with provider-style rate limits and fault injection.",
    )
    app.state.gateway = gw

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        anthropic = "anthropic-version" in request.headers
        try:
            gw.authenticate(request)
        except ApiError as err:
            return error_response(err, anthropic)
        body = anthropic_api.models_body(config.models) if anthropic else openai_api.models_body(config.models)
        return JSONResponse(body)

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str, request: Request) -> Response:
        anthropic = "anthropic-version" in request.headers
        try:
            gw.authenticate(request)
            spec = gw.model(model_id, anthropic)
        except ApiError as err:
            return error_response(err, anthropic)
        return JSONResponse(anthropic_api.model_body(spec) if anthropic else openai_api.model_body(spec))

    def admin(request: Request) -> None:
        caller = gw.authenticate(request)
        if not caller.key.admin:
            raise ApiError("permission", "This key may not read usage; an admin key is required.")

    @app.get("/v1/admin/keys/{name}/prompts")
    async def admin_prompts(name: str, request: Request) -> Response:
        try:
            admin(request)
            match = [c for c in gw.callers if c.key.name == name]
            if not match:
                raise ApiError("not_found", f"No key named {name!r}.", param="name")
        except ApiError as err:
            return error_response(err, False)
        return JSONResponse({"key": name, **match[0].prompts.snapshot()})

    @app.get("/v1/admin/usage")
    async def admin_usage(request: Request) -> Response:
        try:
            admin(request)
        except ApiError as err:
            return error_response(err, False)
        keys = {}
        for c in gw.callers:
            lim = c.key.limits
            keys[c.key.name] = {
                "algorithm": lim.algorithm,
                "window_seconds": lim.window_seconds,
                "limits": {
                    "requests": lim.requests,
                    "tokens": lim.tokens,
                    "input_tokens": lim.input_tokens,
                    "output_tokens": lim.output_tokens,
                    "concurrent": lim.concurrent,
                },
                "in_flight": c.limits.concurrency.in_flight,
                "peak_concurrent": c.limits.concurrency.peak,
                "peaks": c.limits.peaks(),
                "prompts": c.prompts.summary(),
                "windows": c.limits.ledger.snapshot(),
            }
        return JSONResponse({"now": clock(), "keys": keys})

    # The routes read the raw body themselves (to answer in each provider's error
    # shape), so the OpenAPI spec gets the request schemas spelled out here.
    @app.post(
        "/v1/chat/completions", openapi_extra=request_body(openai_api.ChatRequest), summary="OpenAI Chat Completions"
    )
    async def chat_completions(request: Request) -> Response:
        return await serve(request, anthropic=False)

    @app.post(
        "/v1/messages",
        openapi_extra=request_body(anthropic_api.MessagesRequest),
        summary="Anthropic Messages (needs anthropic-version)",
    )
    async def messages(request: Request) -> Response:
        return await serve(request, anthropic=True)

    @app.post(
        "/v1/messages/count_tokens",
        openapi_extra=request_body(anthropic_api.CountTokensRequest),
        summary="Anthropic token counting",
    )
    async def count_tokens(request: Request) -> Response:
        try:
            gw.authenticate(request)
            check_anthropic_version(request)
            data = await read_json(request, config.max_request_bytes, True)
            try:
                req = anthropic_api.CountTokensRequest.model_validate(data)
            except ValidationError as exc:
                raise from_validation(exc, anthropic=True) from None
            gw.model(req.model, anthropic=True)
            messages = [
                (m.role, anthropic_api.text_of(m.content, f"messages.{i}.content")) for i, m in enumerate(req.messages)
            ]
            tokens = gw.counter.messages(messages, anthropic_api.text_of(req.system, "system"))
        except ApiError as err:
            return error_response(err, True)
        return JSONResponse({"input_tokens": tokens})

    def check_anthropic_version(request: Request) -> None:
        version = request.headers.get("anthropic-version")
        if not version:
            raise ApiError("invalid_request", "anthropic-version: header is required", param="anthropic-version")
        if not ANTHROPIC_VERSION.fullmatch(version) or version < config.anthropic_min_version:
            raise ApiError(
                "invalid_request",
                f"anthropic-version: {version!r} is not a valid version; use a date like 2023-06-01, no earlier than {config.anthropic_min_version}",
                param="anthropic-version",
            )

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (openai_api.ChatRequest, anthropic_api.MessagesRequest, anthropic_api.CountTokensRequest):
                components.update(model.model_json_schema(ref_template=REF_TEMPLATE, by_alias=True).get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    def parse_openai(data: dict) -> tuple[Prompt, bool, bool]:
        try:
            req = openai_api.ChatRequest.model_validate(data)
        except ValidationError as exc:
            raise from_validation(exc, anthropic=False) from None
        spec = gw.model(req.model, anthropic=False)
        system_parts: list[str] = []
        messages: list[tuple[str, str]] = []
        for i, m in enumerate(req.messages):
            text = openai_api.text_of(m.content, f"messages.{i}.content")
            if m.role in ("system", "developer"):
                system_parts.append(text)
            else:
                messages.append((m.role, text))
        if not messages:
            raise ApiError(
                "invalid_request",
                "Invalid value for 'messages': at least one non-system message is required.",
                param="messages",
                code="invalid_value",
            )
        max_tokens = req.max_completion_tokens or req.max_tokens or spec.default_max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        if max_tokens > spec.max_output_tokens:
            raise ApiError(
                "invalid_request",
                f"Invalid value for '{param}': {max_tokens} is too large; this model supports at most {spec.max_output_tokens} completion tokens.",
                param=param,
                code="invalid_value",
            )
        schema, json_object = None, False
        if req.response_format is not None:
            if req.response_format.type == "json_schema":
                if req.response_format.json_schema is None:
                    raise ApiError(
                        "invalid_request",
                        "Missing required parameter: 'response_format.json_schema'.",
                        param="response_format.json_schema",
                        code="missing_required_parameter",
                    )
                schema = req.response_format.json_schema.schema_
                try:
                    check_output_schema(schema, spec)
                except UnsupportedSchema as exc:
                    raise ApiError(
                        "invalid_request",
                        f"Invalid schema for response_format 'response_format.json_schema.schema': {exc}",
                        param="response_format.json_schema.schema",
                        code="invalid_value",
                    ) from None
            json_object = req.response_format.type == "json_object"
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        system = "\n".join(system_parts)
        input_tokens = gw.counter.messages(messages, system)
        if input_tokens + max_tokens > spec.context_window:
            raise ApiError(
                "invalid_request",
                f"This model's maximum context length is {spec.context_window} tokens. However, you requested {input_tokens + max_tokens} tokens ({input_tokens} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
                param="messages",
                code="context_length_exceeded",
            )
        prompt = Prompt(
            spec,
            messages,
            system,
            max_tokens,
            input_tokens,
            stop,
            schema,
            json_object,
            req.temperature,
            req.seed,
            req.model,
        )
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return prompt, bool(req.stream), include_usage

    def parse_anthropic(data: dict) -> tuple[Prompt, bool, bool]:
        try:
            req = anthropic_api.MessagesRequest.model_validate(data)
        except ValidationError as exc:
            raise from_validation(exc, anthropic=True) from None
        spec = gw.model(req.model, anthropic=True)
        messages = [
            (m.role, anthropic_api.text_of(m.content, f"messages.{i}.content")) for i, m in enumerate(req.messages)
        ]
        system = anthropic_api.text_of(req.system, "system")
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
        input_tokens = gw.counter.messages(messages, system)
        if input_tokens + req.max_tokens > spec.context_window:
            raise ApiError(
                "invalid_request",
                f"prompt is too long: {input_tokens} tokens + max_tokens {req.max_tokens} > {spec.context_window} maximum",
                param="messages",
            )
        prompt = Prompt(
            spec,
            messages,
            system,
            req.max_tokens,
            input_tokens,
            list(req.stop_sequences or []),
            schema,
            False,
            req.temperature,
            None,
            req.model,
        )
        return prompt, bool(req.stream), False

    async def serve(request: Request, anthropic: bool) -> Response:
        style = ANTHROPIC if anthropic else OPENAI
        caller: Caller | None = None
        try:
            caller = gw.authenticate(request)
            if anthropic:
                check_anthropic_version(request)
            data = await read_json(request, config.max_request_bytes, anthropic)
            prompt, stream, include_usage = (parse_anthropic if anthropic else parse_openai)(data)
        except ApiError as err:
            extra = caller.limits.headers(style) if caller else None
            log.info(
                "%s %s -> %d (%s)",
                request.method,
                request.url.path,
                err.status_code,
                caller.key.name if caller else "unauthenticated",
            )
            return error_response(err, anthropic, extra)

        fault = caller.faults.draw(stream)
        if fault in ("rate_limit", "server_error", "unavailable", "overloaded"):
            err = injected_error(fault, caller, anthropic)
            log.info(
                "%s %s -> %d injected %s (%s)",
                request.method,
                request.url.path,
                err.status_code,
                fault,
                caller.key.name,
            )
            return error_response(err, anthropic, caller.limits.headers(style))
        if fault == "timeout":
            await hold(request, caller.faults.faults.timeout_hold_seconds)
            return error_response(ApiError("timeout", "Request timed out (injected fault)."), anthropic)

        admitted = caller.limits.admit(style, prompt.input_tokens, prompt.max_tokens)
        if isinstance(admitted, Rejection):
            err = rate_limit_error(admitted, anthropic)
            log.info("%s %s -> 429 %s (%s)", request.method, request.url.path, admitted.limit_name, caller.key.name)
            return error_response(err, anthropic, caller.limits.headers(style))
        caller.prompts.record(prompt.digest())
        headers = caller.limits.headers(style)
        log.info(
            "%s %s -> 200 %s stream=%s (%s)", request.method, request.url.path, prompt.model.id, stream, caller.key.name
        )
        backend = gw.backends[prompt.model.backend]
        if stream:
            body = stream_body(backend, prompt, caller, admitted, anthropic, include_usage, fault)
            return StreamingResponse(
                body, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"}
            )
        completion = None
        try:
            async for item in backend.generate(prompt, caller.latency):
                if isinstance(item, Completion):
                    completion = item
        except Exception:
            log.exception("backend %s failed", prompt.model.backend)
            return error_response(
                ApiError("server", "The backend failed while generating the answer."), anthropic, headers
            )
        finally:
            caller.limits.settle(admitted, completion.output_tokens if completion else 0)
        assert completion is not None
        if anthropic:
            body = anthropic_api.message_body(
                anthropic_api.new_id(),
                prompt.model.id,
                completion.text,
                completion.finish,
                completion.stop_sequence,
                completion.input_tokens,
                completion.output_tokens,
            )
        else:
            body = openai_api.completion_body(
                openai_api.new_id(),
                int(clock()),
                prompt.model.id,
                completion.text,
                completion.finish,
                completion.input_tokens,
                completion.output_tokens,
            )
        rid = _request_id(anthropic)
        headers[("request-id" if anthropic else "x-request-id")] = rid
        if fault == "malformed_json":
            text = json.dumps(body)
            return Response(text[: len(text) // 2], media_type="application/json", headers=headers)
        return JSONResponse(body, headers=headers)

    async def stream_body(
        backend,
        prompt: Prompt,
        caller: Caller,
        admitted: Admission,
        anthropic: bool,
        include_usage: bool,
        fault: str | None,
    ) -> AsyncIterator[str]:
        output = 0
        # Faults strike halfway through the answer's pieces (at least after one).
        break_at = (
            max(1, len(gw.counter.pieces(backend.complete_text(prompt).text)) // 2)
            if fault and isinstance(backend, DeterministicBackend)
            else 1
        )
        try:
            if anthropic:
                writer = anthropic_api.EventWriter(anthropic_api.new_id(), prompt.model.id, prompt.input_tokens)
                for line in writer.start():
                    yield line
            else:
                writer = openai_api.ChunkWriter(openai_api.new_id(), int(clock()), prompt.model.id, include_usage)
                yield writer.role()
            sent = 0
            completion: Completion | None = None
            try:
                async with aclosing(backend.generate(prompt, caller.latency)) as items:
                    async for item in items:
                        if isinstance(item, Completion):
                            completion = item
                            break
                        if fault and sent >= break_at:
                            break
                        output += gw.counter.count(item)
                        sent += 1
                        for line in writer.delta(item) if anthropic else [writer.delta(item)]:
                            yield line
            except Exception:
                # After the 200 the only way to report a failure is inside the stream.
                log.exception("backend %s failed mid-stream", prompt.model.backend)
                if anthropic:
                    yield anthropic_api.EventWriter.error(
                        "api_error", "The backend failed while generating the answer."
                    )
                else:
                    yield openai_api.ChunkWriter.error("The backend failed while generating the answer.")
                return
            if fault == "stream_error":
                if anthropic:
                    yield anthropic_api.EventWriter.error("overloaded_error", "Overloaded (injected fault).")
                else:
                    yield openai_api.ChunkWriter.error(
                        "The server had an error while processing your request (injected fault)."
                    )
                return
            if fault == "stream_drop":
                raise StreamDropped("connection dropped mid-stream (injected fault)")
            if fault == "stream_truncate":
                return  # the body ends properly, but without finish, usage, [DONE] or message_stop
            assert completion is not None
            output = completion.output_tokens
            if anthropic:
                for line in writer.finish(
                    completion.finish, completion.stop_sequence, completion.input_tokens, completion.output_tokens
                ):
                    yield line
            else:
                yield writer.finish(completion.finish)
                if include_usage:
                    yield writer.usage(completion.input_tokens, completion.output_tokens)
                yield writer.done()
        finally:
            caller.limits.settle(admitted, output)

    return app
