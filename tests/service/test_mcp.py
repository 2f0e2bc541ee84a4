"""The MCP server (service/mcp_server.py) through the official SDK's client:
in memory, over stdio with the server spawned as a real process, and over
Streamable HTTP at /api/v1/mcp of the real service with and without a key.
Runs here are dry runs (a few seconds, no Spark) but for one real ingest,
marked slow."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent, TextResourceContents

from service.config import named_keys
from service.layer import ServiceLayer
from service.mcp_server import HTTP_PATH, create_mcp
from service.runs import RunStore, now

from .conftest import KEY, assert_problem, service_config

REPO = Path(__file__).resolve().parents[2]
TOOLS = {"list_models", "estimate_enrich_cost", "submit_run", "run_status", "sample_output", "cancel_run"}


def make_layer(base: Path, tmp: Path, **mcp: Any) -> ServiceLayer:
    runs = {"db": str(tmp / "runs.db"), "dir": str(tmp / "runs"), "cancel_grace_seconds": 5.0, "progress_seconds": 1.0}
    return ServiceLayer.build(service_config(base, runs=runs, mcp=mcp))


def ingest(tmp: Path, name: str, **extra: Any) -> dict[str, Any]:
    (tmp / "in.jsonl").write_text(
        '{"id": "1", "text": "a wonderful film"}\n{"id": "2", "text": "a dull film"}\n{"id": "3", "text": ""}\n'
    )
    return {
        "job": "ingest",
        "inputs": {"input": str(tmp / "in.jsonl")},
        "outputs": {"output": str(tmp / name / "records"), "rejects": str(tmp / name / "rejects")},
        "options": {"format": "jsonl", "source": "mine", "output_format": "jsonl"},
        **extra,
    }


def data(result: Any) -> Any:
    """A tool's structured answer (the SDK wraps a dict return as-is)."""
    assert not result.is_error, result.content
    return result.structured_content


def text_of(content: object) -> str:
    """A resource's or a prompt message's text."""
    assert isinstance(content, TextContent | TextResourceContents), content
    return content.text


def error_text(result: Any) -> str:
    assert result.is_error
    return " ".join(c.text for c in result.content)


async def until_ended(client: Client, run_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = data(await client.call_tool("run_status", {"run_id": run_id}))
        if run["state"] != "running" or time.monotonic() > deadline:
            return dict(run)
        await anyio.sleep(0.3)


def record_finished_run(layer: ServiceLayer, outputs: dict[str, str]) -> str:
    """A run as the store holds one that succeeded (what sample_output reads is its outputs' files)."""
    run_id = "f" * 16
    request = {"job": "score", "inputs": {}, "outputs": outputs, "dry_run": False}
    layer.runs.store.insert(
        {
            "id": run_id,
            "job": "score",
            "request": json.dumps(request),
            "args": "[]",
            "dir": str(Path(outputs["output"]).parent / "rundir"),
            "state": "succeeded",
            "created_at": now(),
            "started_at": now(),
            "ended_at": now(),
            "summary": json.dumps({"rows": 3}),
        }
    )
    return run_id


def test_in_memory_tools_resources_and_prompt(service_base, tmp_path, monkeypatch):
    monkeypatch.setenv("PROVIDER_API_KEY", "sk-provider-secret-value")
    monkeypatch.setenv("AIBATCH_SERVICE_TEST_KEYS", KEY)
    layer = make_layer(service_base, tmp_path)
    server = create_mcp(layer)

    async def main() -> None:
        async with Client(server) as client:
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS
            models = data(await client.call_tool("list_models", {}))
            (model,) = models["models"]
            assert model == layer.model("sentiment")  # the REST API's own answer
            assert model["aliases"] == {"champion": 1} and model["latest_version"] == 2

            # writes are off: a real run asked for (confirm or not) runs as a dry run
            run = data(await client.call_tool("submit_run", {"request": ingest(tmp_path, "a"), "confirm": True}))
            assert run["dry_run"] is True and "writes = false" in run["note"]
            ended = await until_ended(client, run["id"])
            assert ended["state"] == "succeeded" and ended["summary"] == {"dry_run": True, "checks": "passed"}
            assert not (tmp_path / "a").exists()
            summary = await client.read_resource(f"aibatch://runs/{run['id']}/summary")
            assert json.loads(text_of(summary.contents[0])) == layer.runs.view(run["id"])

            # the service's problems come back as tool errors with their status
            assert "404" in error_text(await client.call_tool("run_status", {"run_id": "nope"}))
            bad = ingest(tmp_path, "b", options={"no_such_option": 1})
            assert "422" in error_text(await client.call_tool("submit_run", {"request": bad}))
            done = await client.call_tool("cancel_run", {"run_id": run["id"], "confirm": True})
            assert "409" in error_text(done)
            asked = data(await client.call_tool("cancel_run", {"run_id": run["id"]}))
            assert asked["cancelled"] is False and asked["run"]["id"] == run["id"]

            # a failed run's prompt: its error line and what it printed
            failed = ingest(tmp_path, "c", options={"sources": "no_such_source"})
            failed_id = data(await client.call_tool("submit_run", {"request": failed}))["id"]
            assert (await until_ended(client, failed_id))["state"] == "failed"
            prompt = await client.get_prompt("diagnose_failed_run", {"run_id": failed_id})
            text = text_of(prompt.messages[0].content)
            assert "state 'failed'" in text and text.count("unknown source 'no_such_source'") >= 2
            assert "Check, in this order" in text

            # an output's schema and a sample: secret columns dropped, secret values masked
            out = tmp_path / "scored"
            out.mkdir()
            (out / "_SUCCESS").write_text("")
            table = pa.table(
                {
                    "id": ["1", "2", "3"],
                    "text": ["fine", f"leaked {KEY} here", "the key sk-provider-secret-value"],
                    "probability": [0.9, 0.2, 0.5],
                    "api_key": ["a", "b", "c"],
                }
            )
            pq.write_table(table, out / "part-00000.snappy.parquet")
            run_id = record_finished_run(layer, {"output": str(out)})
            read = await client.read_resource(f"aibatch://runs/{run_id}/outputs/output/schema")
            schema = json.loads(text_of(read.contents[0]))
            assert schema["format"] == "parquet"
            assert [(c["name"], c["type"]) for c in schema["columns"]] == [
                ("id", "string"),
                ("text", "string"),
                ("probability", "double"),
                ("api_key", "string"),
            ]
            sample = data(await client.call_tool("sample_output", {"run_id": run_id, "rows": 2}))
            assert [r["id"] for r in sample["rows"]] == ["1", "2"] and sample["dropped_columns"] == ["api_key"]
            assert sample["rows"][1]["text"] == "leaked [redacted] here"
            three = data(await client.call_tool("sample_output", {"run_id": run_id, "rows": 3}))["rows"]
            dumped = json.dumps(three)
            assert KEY not in dumped and "sk-provider-secret-value" not in dumped and "api_key" not in dumped
            missing = await client.call_tool("sample_output", {"run_id": run_id, "output": "rejects"})
            assert "404" in error_text(missing)

    anyio.run(main)
    layer.runs.close()


def test_submit_run_starts_a_real_run_only_with_writes_and_confirm(service_base, tmp_path):
    """With writes on, confirm=true starts the real job (./submit.sh); cancel_run then ends it
    before it writes anything."""
    layer = make_layer(service_base, tmp_path, writes=True)

    async def main() -> None:
        async with Client(create_mcp(layer)) as client:
            unconfirmed = data(await client.call_tool("submit_run", {"request": ingest(tmp_path, "a")}))
            assert unconfirmed["dry_run"] is True and "confirm=true" in unconfirmed["note"]
            await until_ended(client, unconfirmed["id"])
            real = data(await client.call_tool("submit_run", {"request": ingest(tmp_path, "b"), "confirm": True}))
            assert real["dry_run"] is False and real["state"] == "running" and real["note"] is None
            assert json.loads(layer.runs.store.get(real["id"])["args"])[0].endswith("submit.sh")
            ended = data(await client.call_tool("cancel_run", {"run_id": real["id"], "confirm": True}))
            assert ended["cancelled"] is True and ended["run"]["state"] == "cancelled"
            assert not (tmp_path / "b").exists()

    anyio.run(main)
    layer.runs.close()


def test_stdio_with_a_real_client_process(service_base, tmp_path):
    """The SDK's stdio client spawns `python -m service.mcp_server` and talks to it."""
    config = tmp_path / "service.toml"
    config.write_text(
        f'pipeline_config = "{service_base / "pipeline.toml"}"\nkeys_env = "AIBATCH_SERVICE_TEST_KEYS"\n'
        f'[runs]\ndb = "{tmp_path / "runs.db"}"\ndir = "{tmp_path / "runs"}"\n'
    )
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "service.mcp_server", "--config", str(config)],
        cwd=str(REPO),
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TQDM_DISABLE": "1"},
    )

    async def main() -> None:
        async with Client(params, read_timeout_seconds=120) as client:
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS
            (model,) = data(await client.call_tool("list_models", {}))["models"]
            assert model["name"] == "sentiment" and [v["version"] for v in model["versions"]] == [1, 2]
            run = data(await client.call_tool("submit_run", {"request": ingest(tmp_path, "a")}))
            assert run["dry_run"] is True
            assert (await until_ended(client, run["id"]))["state"] == "succeeded"
            assert "404" in error_text(await client.call_tool("run_status", {"run_id": "nope"}))

    anyio.run(main)


@pytest.mark.slow
def test_estimate_enrich_cost_runs_enrichs_dry_run(service_base, tmp_path):
    """The one real Spark run here: enrich's --dry-run through the tool (every row selected, the default)."""
    rows = [
        {"id": str(i), "text": f"review number {i}, " + "quite long " * i, "predicted": p}
        for i, p in enumerate(["negative", "positive", "negative", "negative", "positive"])
    ]
    (tmp_path / "scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    layer = make_layer(service_base, tmp_path)
    arguments = {
        "input": str(tmp_path / "scored.jsonl"),
        "input_format": "jsonl",
        "overrides": {"enrich.store.path": str(tmp_path / "store.sqlite")},
    }

    async def main() -> Any:
        async with Client(create_mcp(layer), read_timeout_seconds=400) as client:
            return data(await client.call_tool("estimate_enrich_cost", arguments))

    answer = anyio.run(main)
    layer.runs.close()
    assert answer["state"] == "succeeded", answer
    assert answer["estimate"]["rows_in"] == 5 and answer["estimate"]["calls"] == 5
    assert answer["estimate"]["input_tokens"] > 0 and answer["estimate"]["output_tokens"] > 0
    assert answer["report"][0] == "enrich --dry-run: rows in 5, selected 5 (not selected 0)"
    assert "$" in answer["report"][1]
    assert not (tmp_path / "scored.jsonl_enriched").exists()


def test_http_needs_the_service_key(service_url, service_base, tmp_path):
    url = f"{service_url}{HTTP_PATH}"
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    for headers in ({}, {"authorization": "Bearer sk-wrong"}):
        r = httpx.post(url, json=hello, headers={"accept": "application/json, text/event-stream", **headers})
        assert_problem(r, 401)
        assert KEY not in r.text

    async def main(headers: dict[str, str], name: str) -> Any:
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                tools = {t.name for t in (await client.list_tools()).tools}
                models = data(await client.call_tool("list_models", {}))
                run = data(await client.call_tool("submit_run", {"request": ingest(tmp_path, name)}))
                return tools, models, run

    tools, models, run = anyio.run(main, {"authorization": f"Bearer {KEY}"}, "h1")
    assert tools == TOOLS and models["models"][0]["name"] == "sentiment"
    # the run is the REST API's too, recorded under the calling key's name (never the key)
    rest = httpx.get(f"{service_url}/api/v1/runs/{run['id']}", headers={"authorization": f"Bearer {KEY}"})
    assert rest.json()["id"] == run["id"] and rest.json()["dry_run"] is True
    store = RunStore(service_base / "runs.db")
    assert store.get(run["id"])["key_name"] == next(name for name, key in named_keys([KEY]).items() if key == KEY)
    store.close()
    # either header the REST API takes
    tools, _, _ = anyio.run(main, {"x-api-key": KEY}, "h2")
    assert tools == TOOLS
    with pytest.raises(ExceptionGroup) as refused:  # the SDK client's connection fails on the 401
        anyio.run(main, {}, "h3")
    assert refused.group_contains(MCPError, match="error response")
    assert not (tmp_path / "h3").exists()
