"""The FastAPI application: /api/v1 and /api/v2 routes, the key and size
checks, problem+json errors.

create_app(config, keys) builds everything from a validated ServiceConfig
and the API keys (from the environment variable the config names; never
logged). Keys and body size are checked in one ASGI middleware before
FastAPI reads a body, so a request without a valid key gets 401 whatever it
carries, and an oversized one 413 before it is parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import errors
from .config import REPO, ServiceConfig, check_limit_names, named_keys
from .events import event_items, run_events
from .jobcall import RunRequest
from .layer import ServiceLayer
from .mcp_server import streamable_http
from .pages import COOKIE, page_token, render_page
from .ratelimits import Limiter, Verdict
from .registry import BadReference, UnknownModel
from .runs import State, present
from .scoring import Scored

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = ("/api/v1/health",)
PAGES = "/runs/"  # the run report pages: keyed like /api/, and they also take ?key= and the page cookie
# v1 of /score is deprecated since v2 appeared (2026-12-05, RFC 9745's
# Deprecation header) and lives at least six months more (RFC 8594's Sunset).
SCORE_V1_DEPRECATED = "@1796428800"
SCORE_V1_SUNSET = "Sat, 05 Jun 2027 00:00:00 GMT"


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="models:/NAME/N, models:/NAME@ALIAS, models:/NAME/latest, NAME@N")
    texts: list[str] = Field(min_length=1, description="the texts to score (at most score.max_texts)")


def _problem_send(problem: errors.Problem, path: str, verdict: Verdict | None) -> tuple[dict[str, Any], bytes]:
    body = json.dumps(problem.body(path)).encode()
    headers = [(b"content-type", errors.PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
    extra = dict(verdict.headers()) if verdict is not None else {}
    extra.update(problem.headers)
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    return {"type": "http.response.start", "status": problem.status, "headers": headers}, body


def _matching(pairs: Sequence[tuple[str, bytes]], supplied: bytes) -> str | None:
    """The name whose secret equals supplied, compared in constant time with every one."""
    found = None
    for name, secret in pairs:  # no early exit: the time does not say which key came close
        if hmac.compare_digest(secret, supplied) and supplied:
            found = name
    return found


class Guard:
    """Keys (constant-time, every key compared), the key's requests per minute
    and the body limit for /api/ (WebSockets included) and the run pages
    (/runs/), before the route reads anything. The key's name (never the key)
    goes to the route as request.state.key_name.

    A browser sends no header of its own when it opens a page or a
    WebSocket: a run page also takes `?key=KEY` (the route then answers
    with the page cookie, service/pages.py), and the page and the WebSockets
    under /api/ also take that cookie; a WebSocket that came with the cookie
    only from a page of this same host:port (its Origin)."""

    def __init__(self, app: ASGIApp, keys: dict[str, str], max_bytes: int, limiter: Limiter) -> None:
        self.app, self.max_bytes, self.limiter = app, max_bytes, limiter
        self.keys = tuple((name, key.encode()) for name, key in keys.items())
        self.tokens = tuple((name, page_token(key).encode()) for name, key in keys.items())

    def authenticated(self, scope: Scope) -> str | None:
        """The name of the key the request carries in a header, or None."""
        supplied = b""
        for name, value in scope.get("headers", []):
            if name == b"x-api-key":
                supplied = value
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                supplied = supplied or value[7:].strip()
        return _matching(self.keys, supplied)

    def from_cookie(self, scope: Scope) -> str | None:
        """The name of the key whose page cookie the request carries, or None."""
        supplied = b""
        for name, value in scope.get("headers", []):
            if name == b"cookie":
                for part in value.split(b";"):
                    cookie, _, token = part.strip().partition(b"=")
                    if cookie == COOKIE.encode():
                        supplied = token
        return _matching(self.tokens, supplied)

    def from_query(self, scope: Scope) -> tuple[str, str] | None:
        """(key name, its page cookie) of a `?key=KEY` that is a key, or None."""
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("key", [""])[-1].encode()
        name = _matching(self.keys, given)
        return (name, page_token(given.decode())) if name else None

    @staticmethod
    def same_origin(scope: Scope) -> bool:
        headers = dict(scope.get("headers", []))
        origin, host = headers.get(b"origin"), headers.get(b"host")
        return origin is None or (host is not None and urlsplit(origin.decode("latin-1")).netloc == host.decode())

    async def _count(self, key_name: str) -> Verdict:
        if self.limiter.blocking:
            return await asyncio.to_thread(self.limiter.request, key_name)
        return self.limiter.request(key_name)

    async def _deny_socket(self, scope: Scope, receive: Receive, send: Send, problem: errors.Problem) -> None:
        """Refuse a WebSocket handshake with the problem as its HTTP answer (where the
        server can send one: ASGI's denial response), else by closing it (HTTP 403)."""
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            start, payload = _problem_send(problem, scope.get("path", ""), None)
            await send(dict(start, type="websocket.http.response.start"))
            await send({"type": "websocket.http.response.body", "body": payload})
        else:
            await send({"type": "websocket.close", "code": 1008})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        api = path.startswith("/api/") and path not in OPEN_PATHS
        page = scope["type"] == "http" and path.startswith(PAGES)
        if scope["type"] not in ("http", "websocket") or not (api or page):
            await self.app(scope, receive, send)
            return
        socket = scope["type"] == "websocket"
        problem = None
        verdict = None
        page_cookie = None
        key_name = self.authenticated(scope)
        if key_name is None and (socket or page):
            key_name = self.from_cookie(scope)
            if key_name is not None and socket and not self.same_origin(scope):
                key_name = None  # a page of another site that the browser gave the cookie to
        if key_name is None and page and (found := self.from_query(scope)):
            key_name, page_cookie = found
        if key_name is None:
            problem = errors.unauthorized(
                "A valid API key is required: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
                + (" (a run page also takes ?key=<key> once)." if page else ".")
            )
        else:
            verdict = await self._count(key_name)
            if not verdict.allowed:
                problem = verdict.problem(
                    f"this key has made its {verdict.limit} requests of the last minute; "
                    f"retry after {verdict.headers()['Retry-After']} s"
                )
        if socket:
            if problem is not None:
                await self._deny_socket(scope, receive, send, problem)
                return
            scope.setdefault("state", {})["key_name"] = key_name
            await self.app(scope, receive, send)
            return
        if problem is None:
            declared = dict(scope.get("headers", [])).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_bytes:
                problem = errors.too_large(self.max_bytes)
        if problem is None:
            body, more = bytearray(), True
            while more:  # a chunked body is refused once it passes the limit, not after all of it
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_bytes:
                    problem = errors.too_large(self.max_bytes)
                    break
        if problem is not None:
            start, payload = _problem_send(problem, path, verdict)
            await send(start)
            await send({"type": "http.response.body", "body": payload})
            return
        assert verdict is not None and key_name is not None
        scope.setdefault("state", {}).update(key_name=key_name, page_cookie=page_cookie)
        replayed = False
        limit_headers = [(k.lower().encode(), v.encode()) for k, v in verdict.headers().items()]

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                if b"ratelimit-limit" not in present:  # a 429 of another limit carries its own
                    message = dict(message, headers=[*message.get("headers", []), *limit_headers])
            await send(message)

        await self.app(scope, replay, send_with_limits)


def create_app(config: ServiceConfig, keys: Sequence[str], home: Path = REPO) -> FastAPI:
    """keys: the items of the keys variable (KEY or NAME:KEY); ConfigError
    for a duplicate name or a limits.keys entry no key has."""
    if isinstance(keys, str):
        raise TypeError("keys: a sequence of keys, not one string")
    named = named_keys(keys)
    check_limit_names(config, list(named))
    layer = ServiceLayer.build(config, home)
    registry, scorer, runs, limiter = layer.registry, layer.scorer, layer.runs, layer.limiter
    mcp_http = streamable_http(layer) if config.mcp.http else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(runs.recover)
        async with contextlib.AsyncExitStack() as stack:
            if mcp_http is not None:
                await stack.enter_async_context(mcp_http.session_manager.run())
            yield
        await scorer.close()
        runs.close()

    app = FastAPI(
        title="aibatch service",
        version="1.0.0",
        lifespan=lifespan,
        openapi_url="/openapi.json" if config.docs else None,
        docs_url="/docs" if config.docs else None,
        redoc_url=None,
        description="Registered models, online scoring and batch runs of the aibatch pipeline (docs/service.md).",
    )
    app.state.layer = layer
    app.state.registry, app.state.scorer, app.state.runs = registry, scorer, runs
    app.state.limiter = limiter
    app.add_middleware(Guard, keys=named, max_bytes=config.max_request_bytes, limiter=limiter)

    @app.exception_handler(errors.Problem)
    async def problem(request: Request, exc: errors.Problem) -> Response:
        return errors.problem_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return errors.problem_response(request, errors.validation_problem(errors.json_safe(list(exc.errors()))))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return errors.problem_response(request, errors.Problem(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return errors.problem_response(request, errors.Problem(500, "The service failed; its log has the details."))

    # Documents the key in the OpenAPI spec; Guard is what checks it.
    bearer = HTTPBearer(auto_error=False, description="an API key from the service's keys environment variable")
    v1 = APIRouter(prefix="/api/v1", dependencies=[Depends(bearer)])
    v2 = APIRouter(prefix="/api/v2", dependencies=[Depends(bearer)])

    @app.get("/api/v1/health", tags=["service"])
    async def health() -> dict[str, Any]:
        stats = scorer.batcher.stats
        return {
            "status": "ok",
            "version": app.version,
            "score": {"batches": stats.batches, "texts": stats.items, "largest_batch": stats.largest},
        }

    # ----- models -------------------------------------------------------

    @v1.get("/models", tags=["models"])
    def list_models() -> dict[str, Any]:
        return layer.models()

    @v1.get("/models/{name}", tags=["models"])
    def get_model(name: str) -> dict[str, Any]:
        return layer.model(name)

    # ----- scoring ------------------------------------------------------

    async def score(body: ScoreRequest, request: Request) -> Scored:
        if len(body.texts) > config.score.max_texts:
            raise errors.invalid(
                f"texts: {len(body.texts)} texts, more than score.max_texts = {config.score.max_texts}"
            )
        for i, text in enumerate(body.texts):
            if len(text) > config.score.max_text_chars:
                raise errors.invalid(f"texts.{i}: longer than score.max_text_chars = {config.score.max_text_chars}")
        key_name = request.state.key_name
        if limiter.blocking:
            verdict = await asyncio.to_thread(limiter.texts, key_name, len(body.texts))
        else:
            verdict = limiter.texts(key_name, len(body.texts))
        if not verdict.allowed:
            raise verdict.problem(
                f"{len(body.texts)} texts would pass this key's {verdict.limit} texts per minute "
                f"({verdict.remaining} left now); retry after {verdict.headers()['Retry-After']} s"
            )
        try:
            resolved = await asyncio.to_thread(registry.resolve, body.model)
            return await scorer.score(resolved, body.texts)
        except UnknownModel as exc:
            raise errors.not_found(str(exc)) from None
        except BadReference as exc:
            raise errors.invalid(str(exc)) from None

    @v1.post("/score", tags=["scoring"], deprecated=True)
    async def score_v1(body: ScoreRequest, request: Request) -> Response:
        """Deprecated: use /api/v2/score (every class's probability, the resolved version, lineage)."""
        scored = await score(body, request)
        answer = {
            "model": f"{scored.model.name}@{scored.model.version}",
            "predictions": [{"label": p.label, "probability": p.probability} for p in scored.predictions],
        }
        headers = {
            "Deprecation": SCORE_V1_DEPRECATED,
            "Sunset": SCORE_V1_SUNSET,
            "Link": '</api/v2/score>; rel="successor-version"',
        }
        return JSONResponse(answer, headers=headers)

    @v2.post("/score", tags=["scoring"])
    async def score_v2(body: ScoreRequest, request: Request) -> dict[str, Any]:
        scored = await score(body, request)
        return {
            "model": {
                "name": scored.model.name,
                "version": scored.model.version,
                "uri": scored.model.uri,
                "run_id": scored.model.run_id,
                "labels": scored.labels,
            },
            "lineage": scored.lineage,
            "predictions": [
                {"label": p.label, "probability": p.probability, "probabilities": p.probabilities}
                for p in scored.predictions
            ],
        }

    # ----- runs ---------------------------------------------------------

    @v1.post("/runs", status_code=202, tags=["runs"])
    def submit_run(body: RunRequest, request: Request) -> Response:
        run = runs.submit(body, request.state.key_name)
        return JSONResponse(run, status_code=202, headers={"Location": run["links"]["self"]})

    @v1.get("/runs", tags=["runs"])
    def list_runs(
        state: State | None = Query(default=None),
        limit: int = Query(default=config.runs.page_size, ge=1, le=500),
        after: int | None = Query(default=None, ge=0, description="the `seq` of the last run of the previous page"),
    ) -> dict[str, Any]:
        rows = runs.store.page(state, after, limit)
        next_url = None
        if len(rows) == limit:
            next_url = f"/api/v1/runs?limit={limit}&after={rows[-1]['seq']}" + (f"&state={state}" if state else "")
        return {"runs": [dict(present(r), seq=r["seq"]) for r in rows], "next": next_url}

    @v1.get("/runs/{run_id}", tags=["runs"])
    def get_run(run_id: str) -> dict[str, Any]:
        return runs.view(run_id)

    @v1.delete("/runs/{run_id}", tags=["runs"])
    def cancel_run(run_id: str) -> dict[str, Any]:
        return runs.cancel(run_id)

    @v1.get("/runs/{run_id}/log", tags=["runs"], response_class=PlainTextResponse)
    def run_log(
        run_id: str,
        lines: int = Query(default=200, ge=1, le=10_000),
        source: Literal["job", "console"] = Query(
            default="job", description="job: the job's log (driver and Spark); console: what it printed"
        ),
    ) -> PlainTextResponse:
        return PlainTextResponse(runs.log_tail(run_id, lines, source))

    @v1.get(
        "/runs/{run_id}/events",
        tags=["runs"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events until `end`"}},
    )
    def run_events_stream(
        run_id: str,
        last_event_id: int | None = Header(
            default=None, ge=0, description="resume after this event (what an EventSource sends on reconnecting)"
        ),
    ) -> StreamingResponse:
        """The run's progress as Server-Sent Events: `state`, then the job's `started`, `progress`
        (elapsed time, Spark stages' tasks done), `finished` or `failed`, and last `end` (the run:
        state, counts, summary). Ids are resumable with Last-Event-ID."""
        runs.get(run_id)  # 404 before the stream opens
        return StreamingResponse(
            run_events(runs, run_id, last_event_id),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    @app.websocket("/api/v1/runs/{run_id}/ws")
    async def run_socket(websocket: WebSocket, run_id: str) -> None:
        """The run's events as JSON messages {"id", "event", "data"}, the same as
        /events sends, until `end`; `?last_event_id=N` resumes after event N. The
        client may send {"type": "cancel"}: the run is cancelled as by DELETE."""
        await run_socket_session(websocket, run_id)

    async def deny(websocket: WebSocket, problem: errors.Problem) -> None:
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            body = problem.body(websocket.url.path)
            await websocket.send_denial_response(
                JSONResponse(body, problem.status, problem.headers, media_type=errors.PROBLEM_JSON)
            )
        else:
            await websocket.close(code=1008, reason=problem.detail[:120])

    async def run_socket_session(websocket: WebSocket, run_id: str) -> None:
        given = websocket.query_params.get("last_event_id")
        if given is not None and not given.isdigit():
            await deny(websocket, errors.invalid(f"last_event_id: a whole number of 0 or more, not {given!r}"))
            return
        if await asyncio.to_thread(runs.store.get, run_id) is None:
            await deny(websocket, errors.not_found(f"no run {run_id!r}"))
            return
        await websocket.accept()
        sending = asyncio.Lock()

        async def send(event: str, event_id: int | None, data: Any) -> None:
            message = json.dumps({"id": event_id, "event": event, "data": data}, default=str, separators=(",", ":"))
            async with sending:
                await websocket.send_text(message)

        cancelling = asyncio.Lock()  # held from a cancel message to its answer: `end` comes after it

        async def relay() -> None:
            async for item in event_items(runs, run_id, int(given) if given is not None else None):
                if item is None:  # no keepalive message: the server pings a WebSocket itself
                    continue
                if item[0] == "end":
                    async with cancelling:
                        await send(*item)
                else:
                    await send(*item)

        async def commands() -> None:
            while True:
                text = await websocket.receive_text()
                try:
                    message = json.loads(text)
                except ValueError:
                    message = None
                if not (isinstance(message, dict) and message.get("type") == "cancel"):
                    problem = errors.invalid('a message is {"type": "cancel"}, the only one this socket takes')
                    await send("error", None, problem.body(websocket.url.path))
                    continue
                async with cancelling:
                    try:
                        ended = await asyncio.to_thread(runs.cancel, run_id, "a cancel message on its WebSocket")
                    except errors.Problem as exc:  # 409: the run has already ended
                        await send("error", None, exc.body(websocket.url.path))
                    else:
                        await send("cancel", None, ended)

        tasks = {asyncio.create_task(relay()), asyncio.create_task(commands())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not isinstance(task.exception(), WebSocketDisconnect | None):
                    log.error("run %s: WebSocket failed", run_id, exc_info=task.exception())
        finally:
            for task in tasks:
                task.cancel()
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(code=1000)

    @app.get("/runs/{run_id}", tags=["runs"], response_class=HTMLResponse)
    def run_page(run_id: str, request: Request) -> Response:
        """The run's report page (HTML): live while the run goes on. A browser may
        open it once as /runs/ID?key=KEY: the answer is a cookie for it and its WebSocket."""
        run = runs.get(run_id)
        cookie = getattr(request.state, "page_cookie", None)
        if cookie:  # the key leaves the address bar: the page again, with the cookie
            answer = RedirectResponse(f"/runs/{run_id}", status_code=303)
            answer.set_cookie(COOKIE, cookie, httponly=True, samesite="strict", path="/")
            return answer
        return HTMLResponse(render_page(runs, run), headers={"cache-control": "no-store"})

    @v1.get("/limits", tags=["service"])
    def my_limits(request: Request) -> dict[str, Any]:
        """The calling key's limits and what is left of each (this request counted)."""
        key_name = request.state.key_name
        return {"key": key_name, "limits": limiter.usage(key_name, runs.store.running_of(key_name))}

    app.include_router(v1)
    app.include_router(v2)
    if mcp_http is not None:  # behind Guard like every /api/ path: the same keys and limits
        app.router.routes.extend(mcp_http.routes)
    return app
