"""The MCP server for agents (issue 22 §4), on the official `mcp` SDK: tools
over the same service layer as the REST API (service/layer.py: the model
registry, the runs, the limiter), resources for a run's summary and an
output's schema, and a prompt that walks through a failed run.

Two transports, one server:
- Streamable HTTP at /api/v1/mcp of the service (./submit.sh serve), behind
  the service's Guard like every /api/ path: the same API keys (constant
  time), requests per minute and body limit; the calling key's name is what
  runs are recorded and limited under.
- stdio, for an agent that spawns it on this machine:

Run with: .venv/bin/python -m service.mcp_server [--config conf/service.toml]

Over stdio the caller is the local user who could run ./submit.sh: there is
no key, and runs are recorded without one (no per-key limits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import ToolAnnotations
from pydantic import Field
from starlette.routing import BaseRoute

from . import datasets, errors
from .config import DEFAULT_CONFIG, ConfigError, load_config
from .jobcall import RunRequest, Scalar
from .layer import ServiceLayer
from .runs import ACTIVE

log = logging.getLogger(__name__)

HTTP_PATH = "/api/v1/mcp"
INSTRUCTIONS = (
    "aibatch runs batch AI jobs (ingest, train, score, stats, enrich, pipeline) on Spark. "
    "list_models shows the registered models; estimate_enrich_cost prices an enrichment before any call; "
    "submit_run runs a job's dry run unless the service allows writes and you pass confirm=true; "
    "run_status, sample_output and cancel_run follow a run. Read aibatch://runs/{run_id}/summary for a run "
    "and aibatch://runs/{run_id}/outputs/{output}/schema for an output's columns; the prompt "
    "diagnose_failed_run walks through a run that failed."
)
LOG_LINES = 40  # the log tail a failed-run prompt quotes
POLL_SECONDS = 0.5


def _tool_error(problem: errors.Problem) -> ToolError:
    """A service problem as the agent reads it: the status, its phrase and the detail."""
    body = problem.body("")
    return ToolError(f"{problem.status} {body['title']}: {problem.detail}")


async def _call(fn: Any, *args: Any) -> Any:
    """The layer's blocking calls (SQLite, MLflow, subprocesses) in a thread; its problems as tool errors."""
    try:
        return await asyncio.to_thread(fn, *args)
    except errors.Problem as problem:
        raise _tool_error(problem) from None


def key_name(ctx: Context) -> str | None:
    """The API key's name the service's Guard put on an HTTP request; None over
    stdio or in memory, where the caller is local and holds no key."""
    request = ctx.request_context.request
    state = getattr(request, "scope", {}).get("state", {}) if request is not None else {}
    name = state.get("key_name")
    return name if isinstance(name, str) else None


def create_mcp(layer: ServiceLayer) -> MCPServer:
    settings = layer.config.mcp
    runs = layer.runs
    secrets = datasets.secret_values(os.environ, datasets.service_keys(layer.config.keys_env))
    mcp: MCPServer = MCPServer(name="aibatch", version="1.0.0", instructions=INSTRUCTIONS)

    def output_path(run_id: str, output: str) -> str:
        run = runs.view(run_id)
        outputs: dict[str, str] = run["outputs"]
        if output not in outputs:
            raise errors.not_found(
                f"run {run_id} has no output {output!r} (its outputs: {', '.join(outputs) or 'none'})"
            )
        return outputs[output]

    async def wait_for_end(run_id: str, seconds: float) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        run = await _call(runs.view, run_id)
        while run["state"] in ACTIVE and time.monotonic() < deadline:
            await anyio.sleep(POLL_SECONDS)
            run = await _call(runs.view, run_id)
        return dict(run)

    # ----- tools ----------------------------------------------------------

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    async def list_models() -> dict[str, Any]:
        """The registered models: versions, aliases, label sets, kind and lineage (as GET /api/v1/models)."""
        return dict(await _call(layer.models))

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    async def estimate_enrich_cost(
        ctx: Context,
        input: str = Field(description="the scored rows to enrich: an absolute path or hdfs:// URL"),
        output: str | None = Field(
            default=None,
            description="the output the real run would write (default: INPUT_enriched); nothing is written",
        ),
        input_format: str = Field(default="parquet", description="parquet or jsonl"),
        sample_percent: float = Field(default=100.0, gt=0, le=100),
        overrides: dict[str, Scalar] = Field(
            default_factory=dict,
            description="pipeline settings as --set KEY=VALUE, e.g. {'enrich.provider.model': ...}",
        ),
    ) -> dict[str, Any]:
        """enrich's dry run: the rows it would select, the calls, tokens and cost it would spend; no LLM
        is called and nothing is written. Waits for the run (a small Spark job) up to the configured time."""
        request = RunRequest(
            job="enrich",
            inputs={"input": input},
            # enrich's dry run names the output the real run would write (its job id
            # comes from it) and writes nothing there
            outputs={"output": output or input.rstrip("/") + "_enriched"},
            options={"input_format": input_format, "sample_percent": sample_percent},
            overrides=overrides,
            dry_run=True,
        )
        started = await _call(runs.submit, request, key_name(ctx))
        run = await wait_for_end(started["id"], settings.estimate_wait_seconds)
        summary = run.get("summary") or {}
        return {
            "run_id": run["id"],
            "state": run["state"],
            "estimate": {k: summary[k] for k in ("rows_in", "calls", "input_tokens", "output_tokens") if k in summary},
            "report": summary.get("lines", []),
            "error": run["error"],
        }

    @mcp.tool(annotations=ToolAnnotations(destructiveHint=False))
    async def submit_run(
        ctx: Context,
        request: RunRequest,
        confirm: bool = Field(default=False, description="true to start a real run, where the service allows writes"),
    ) -> dict[str, Any]:
        """Submit a batch run (as POST /api/v1/runs). It runs the job's dry run (its checks, nothing
        written) unless the service's config allows writes ([mcp] writes = true) AND confirm is true."""
        note = None
        if not request.dry_run and not (settings.writes and confirm):
            why = "this service does not allow writes ([mcp] writes = false)" if not settings.writes else ""
            why = why or "the call did not pass confirm=true"
            note = f"ran as a dry run: {why}"
            request = request.model_copy(update={"dry_run": True})
        run = dict(await _call(runs.submit, request, key_name(ctx)))
        run["note"] = run["note"] or note
        return run

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    async def run_status(run_id: str) -> dict[str, Any]:
        """A run's state, counts, timings, outputs, cost and error line (as GET /api/v1/runs/{id})."""
        return dict(await _call(runs.view, run_id))

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    async def sample_output(
        run_id: str,
        output: str = Field(default="output", description="which of the run's outputs, e.g. output, rejects"),
        rows: int = Field(default=5, ge=1, le=100),
    ) -> dict[str, Any]:
        """The first rows of one of a run's outputs. Columns that name a secret are dropped and any
        key or secret environment value is masked."""
        path = await _call(output_path, run_id, output)
        try:
            return await asyncio.to_thread(datasets.sample, path, min(rows, settings.sample_rows), secrets)
        except (datasets.DatasetError, OSError) as exc:
            raise ToolError(str(exc)) from None

    @mcp.tool(annotations=ToolAnnotations(destructiveHint=True))
    async def cancel_run(
        run_id: str, confirm: bool = Field(default=False, description="true to end the run")
    ) -> dict[str, Any]:
        """Cancel a running run (as DELETE /api/v1/runs/{id}): its process group is ended, its outputs
        stay as they were. Without confirm=true it only says what it would cancel."""
        if not confirm:
            run = dict(await _call(runs.view, run_id))
            return {"cancelled": False, "note": "pass confirm=true to cancel this run", "run": run}
        return {"cancelled": True, "run": dict(await _call(runs.cancel, run_id))}

    # ----- resources ------------------------------------------------------

    async def resource_call(fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except errors.Problem as problem:
            raise ResourceError(str(_tool_error(problem))) from None
        except (datasets.DatasetError, OSError) as exc:
            raise ResourceError(str(exc)) from None

    @mcp.resource("aibatch://runs/{run_id}/summary", mime_type="application/json")
    async def run_summary(run_id: str) -> str:
        """A run as GET /api/v1/runs/{id} shows it: state, counts, summary, timings, outputs, error."""
        return json.dumps(await resource_call(runs.view, run_id), indent=2)

    @mcp.resource("aibatch://runs/{run_id}/outputs/{output}/schema", mime_type="application/json")
    async def output_schema(run_id: str, output: str) -> str:
        """The columns (name, Arrow type, nullable) of one of a run's outputs, Parquet or JSON Lines."""
        path = await resource_call(output_path, run_id, output)
        return json.dumps(await resource_call(datasets.schema, path), indent=2)

    # ----- prompts --------------------------------------------------------

    @mcp.prompt()
    async def diagnose_failed_run(run_id: str) -> str:
        """Walk through a run that failed: its error line, its logs' tails, and what to check."""
        run = await resource_call(runs.view, run_id)
        job_log = await resource_call(runs.log_tail, run_id, LOG_LINES, "job")
        console = await resource_call(runs.log_tail, run_id, LOG_LINES, "console")
        request = {k: run[k] for k in ("job", "master", "dry_run", "inputs", "outputs")}
        return "\n".join(
            [
                f"The aibatch run {run_id} ended in state {run['state']!r}. Find why, and say what to change.",
                "",
                f"Error line: {run['error'] or '(none recorded)'}",
                f"Note: {run['note'] or '(none)'}",
                f"Exit status: {run['exit_status']}",
                f"Request: {json.dumps(request)}",
                "",
                f"Last {LOG_LINES} lines of what the job printed (console):",
                "```",
                console.rstrip() or "(empty)",
                "```",
                f"Last {LOG_LINES} lines of the job's log (driver and Spark):",
                "```",
                job_log.rstrip() or "(empty)",
                "```",
                "",
                "Check, in this order:",
                "1. The error line: a setting, input or output named there (an `error:` line is the job's own check).",
                "2. The inputs exist and have the columns the job needs (the schema resource of an earlier run's "
                "output: aibatch://runs/{id}/outputs/{name}/schema).",
                "3. An output that exists needs overwrite: true, or a new path; an output may not lie inside an input.",
                "4. enrich: the provider's API key variable is set for the service, the price table and the template "
                "load; try estimate_enrich_cost first.",
                "5. A Python traceback or `Lost task`/`OutOfMemory` in the job's log: the failing stage, then the "
                "master and memory settings.",
                "6. State `unknown`: the service restarted while the job ran; the note says so. Submit it again.",
                "Then propose the corrected submit_run request (a dry run first).",
            ]
        )

    return mcp


def streamable_http(layer: ServiceLayer) -> Any:
    """The MCP server's Streamable HTTP routes at HTTP_PATH, to add to the
    service's app, and the session manager its lifespan must run: an object
    with `.routes` and `.session_manager`."""
    mcp = create_mcp(layer)
    app = mcp.streamable_http_app(streamable_http_path=HTTP_PATH, host=layer.config.host)
    routes: list[BaseRoute] = list(app.routes)
    return _Mounted(routes, mcp)


class _Mounted:
    def __init__(self, routes: list[BaseRoute], mcp: MCPServer) -> None:
        self.routes, self.mcp = routes, mcp

    @property
    def session_manager(self) -> Any:
        return self.mcp.session_manager


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.mcp_server", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="TOML file (default conf/service.toml)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    # stdout is the protocol's: every log line goes to stderr
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from udfs.config import ConfigError as PipelineConfigError

    try:
        layer = ServiceLayer.build(load_config(args.config))
    except (ConfigError, PipelineConfigError) as exc:
        sys.stderr.write(f"service.mcp_server: {exc}\n")  # one line, as python -m service says it
        return 2
    layer.runs.recover()
    try:
        anyio.run(create_mcp(layer).run_stdio_async)
    finally:
        layer.runs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
