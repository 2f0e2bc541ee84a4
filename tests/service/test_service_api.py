"""Every endpoint of the service against the real server on loopback, and
the bad requests: problem+json with the right status, nothing lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import httpx
import pytest

from gateway.running import serve_in_thread
from service.app import create_app
from service.runs import RunStore, group_alive, now, process_start

from .conftest import KEY, OTHER_KEY, assert_problem, service_config


def test_health_needs_no_key_and_openapi_lists_every_route(service_url):
    assert httpx.get(f"{service_url}/api/v1/health").json()["status"] == "ok"
    spec = httpx.get(f"{service_url}/openapi.json").json()
    paths = spec["paths"]
    for path in ("/api/v1/models", "/api/v1/models/{name}", "/api/v1/score", "/api/v2/score", "/api/v1/runs"):
        assert path in paths
    assert {"get", "delete"} <= set(paths["/api/v1/runs/{run_id}"])
    assert paths["/api/v1/score"]["post"]["deprecated"] is True
    assert "RunRequest" in spec["components"]["schemas"]


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer sk-wrong"}, {"x-api-key": KEY + "x"}])
def test_missing_or_wrong_key_is_401(service_url, headers):
    for method, path in [("GET", "/api/v1/models"), ("POST", "/api/v1/runs"), ("GET", "/api/v1/runs/nope")]:
        r = httpx.request(method, f"{service_url}{path}", headers=headers, content=b"{not json")
        assert_problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert KEY not in r.text


def test_either_key_and_either_header_is_accepted(service_url):
    assert httpx.get(f"{service_url}/api/v1/runs", headers={"x-api-key": OTHER_KEY}).status_code == 200
    assert httpx.get(f"{service_url}/api/v1/runs", headers={"authorization": f"Bearer {KEY}"}).status_code == 200


def test_oversized_body_is_413_declared_or_chunked(client):
    big = json.dumps({"model": "sentiment", "texts": ["x" * 30_000]}).encode()
    assert_problem(client.post("/api/v2/score", content=big, headers={"content-type": "application/json"}), 413)

    def chunks():
        for _ in range(30):
            yield b" " * 1000

    assert_problem(client.post("/api/v2/score", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_invalid_json_and_invalid_bodies_are_422(client):
    body = assert_problem(
        client.post("/api/v2/score", content=b'{"model": ', headers={"content-type": "application/json"}), 422
    )
    assert "not valid JSON" in body["detail"]
    body = assert_problem(client.post("/api/v2/score", json={"model": "sentiment"}), 422)
    assert body["detail"].startswith("texts")
    assert_problem(client.post("/api/v2/score", json={"model": "sentiment", "texts": ["a"] * 9}), 422)
    assert_problem(client.post("/api/v2/score", json={"model": "/tmp/some/dir", "texts": ["a"]}), 422)
    assert_problem(client.post("/api/v1/runs", json={"job": "launch-missiles"}), 422)
    assert_problem(client.get("/api/v1/runs", params={"state": "sleeping"}), 422)


def test_models_list_and_detail(client):
    listed = client.get("/api/v1/models").json()
    (model,) = listed["models"]
    assert model["name"] == "sentiment" and model["kind"] == "encoder+head"
    assert model["latest_version"] == 2 and model["aliases"] == {"champion": 1}
    assert model["labels"] == ["negative", "positive"]
    detail = client.get("/api/v1/models/sentiment").json()
    assert [v["version"] for v in detail["versions"]] == [1, 2]
    v1 = detail["versions"][0]
    assert v1["uri"] == "models:/sentiment/1" and v1["labels"] == ["negative", "positive"]
    assert v1["lineage"]["run_id"] and v1["lineage"]["encoder"] == "all-MiniLM-L6-v2"
    assert len(v1["lineage"]["weights_sha256"]) == 64 and v1["lineage"]["input"] == "tests/service LABELLED"


def test_unknown_model_is_404(client):
    body = assert_problem(client.get("/api/v1/models/nosuch"), 404)
    assert "nosuch" in body["detail"]
    for ref in ("nosuch", "models:/sentiment/7", "models:/sentiment@nosuchalias"):
        body = assert_problem(client.post("/api/v2/score", json={"model": ref, "texts": ["fine"]}), 404)
        assert "sentiment (versions 1, 2, aliases champion)" in body["detail"] or "nosuch" in body["detail"]


def test_score_v2_every_probability_version_and_lineage(client):
    texts = ["a wonderful, moving film", "", "a terrible waste of time"]
    r = client.post("/api/v2/score", json={"model": "models:/sentiment@champion", "texts": texts})
    assert r.status_code == 200 and "deprecation" not in r.headers
    body = r.json()
    assert body["model"]["version"] == 1 and body["model"]["uri"] == "models:/sentiment/1"
    assert body["model"]["labels"] == ["negative", "positive"]
    assert body["lineage"]["model_uri"] == "models:/sentiment/1" and body["lineage"]["encoder"] == "all-MiniLM-L6-v2"
    first, empty, last = body["predictions"]
    assert first["label"] == "positive" and last["label"] == "negative"
    assert sum(first["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert first["probability"] == pytest.approx(first["probabilities"]["positive"])
    assert empty == {"label": None, "probability": None, "probabilities": None}


def test_score_v1_answers_with_deprecation_headers(client):
    r = client.post("/api/v1/score", json={"model": "sentiment@2", "texts": ["I loved it"]})
    assert r.status_code == 200
    assert r.headers["deprecation"].startswith("@") and r.headers["sunset"].endswith("GMT")
    assert 'rel="successor-version"' in r.headers["link"]
    body = r.json()
    assert body["model"] == "sentiment@2" and set(body["predictions"][0]) == {"label", "probability"}


def test_concurrent_requests_are_micro_batched_with_the_same_answers(service_url, client):
    texts = [f"review number {i}: {'great fun' if i % 2 else 'a dull mess'}" for i in range(24)]
    alone = [client.post("/api/v2/score", json={"model": "sentiment@2", "texts": [t]}).json() for t in texts[:3]]
    before = client.get("/api/v1/health").json()["score"]

    async def all_at_once():
        async with httpx.AsyncClient(base_url=service_url, headers={"x-api-key": KEY}, timeout=120) as c:
            return await asyncio.gather(
                *[c.post("/api/v2/score", json={"model": "sentiment@2", "texts": [t]}) for t in texts]
            )

    answers = [r.json() for r in asyncio.run(all_at_once())]
    after = client.get("/api/v1/health").json()["score"]
    assert after["texts"] - before["texts"] == len(texts)
    assert after["batches"] - before["batches"] < len(texts) / 2  # requests shared model calls
    assert after["largest_batch"] > 1
    for one, together in zip(alone, answers[:3], strict=True):
        assert together["predictions"][0]["probabilities"] == pytest.approx(
            one["predictions"][0]["probabilities"], abs=1e-5
        )


def test_unknown_run_is_404(client):
    for method, path in [
        ("GET", "/api/v1/runs/nope"),
        ("DELETE", "/api/v1/runs/nope"),
        ("GET", "/api/v1/runs/nope/log"),
    ]:
        assert_problem(client.request(method, path), 404)


def test_run_whose_output_exists_is_409_and_it_is_untouched(client, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "fine"}\n')
    out = tmp_path / "records"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    request = {
        "job": "ingest",
        "inputs": {"input": str(tmp_path / "in.jsonl")},
        "outputs": {"output": str(out), "rejects": str(tmp_path / "rejects")},
        "options": {"format": "jsonl", "source": "mine"},
    }
    before = client.get("/api/v1/runs").json()["runs"]
    body = assert_problem(client.post("/api/v1/runs", json=request), 409)
    assert str(out) in body["detail"]
    assert (out / "keep.txt").read_text() == "mine" and not (tmp_path / "rejects").exists()
    assert client.get("/api/v1/runs").json()["runs"] == before  # no run recorded


def test_run_requests_the_job_does_not_take_are_422(client, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "fine"}\n')
    base = {"job": "ingest", "inputs": {"input": str(tmp_path / "in.jsonl")}}
    outs = {"output": str(tmp_path / "o"), "rejects": str(tmp_path / "r")}
    cases = [
        dict(base, outputs=outs, options={"no_such_option": 1}),  # the job's parser refuses it
        dict(base, outputs={"output": str(tmp_path / "o")}),  # --rejects missing
        dict(base, outputs=dict(outs, scored=str(tmp_path / "s"))),  # not an ingest output
        dict(base, outputs=outs, set={"encoder.batch_size": "many"}),  # a setting's type
        dict(base, outputs=outs, master="mesos://x"),
        dict(base, outputs={"output": "relative/path", "rejects": str(tmp_path / "r")}),
        dict(base, inputs={"input": str(tmp_path / "missing.jsonl")}, outputs=outs),
        dict(base, outputs=outs, options={"overwrite": True}),
    ]
    for request in cases:
        assert_problem(client.post("/api/v1/runs", json=request), 422)


def test_dry_run_checks_without_spark_then_lists_filters_and_pages(client, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "fine"}\n')
    ids = []
    for i in range(3):
        request = {
            "job": "ingest",
            "inputs": {"input": str(tmp_path / "in.jsonl")},
            "outputs": {"output": str(tmp_path / f"o{i}"), "rejects": str(tmp_path / f"r{i}")},
            "options": {"format": "jsonl", "source": "mine"},
            "dry_run": True,
        }
        r = client.post("/api/v1/runs", json=request)
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/api/v1/runs/{r.json()['id']}"
        ids.append(r.json()["id"])
    runs = [wait_for_end(client, run_id) for run_id in ids]
    assert [r["state"] for r in runs] == ["succeeded"] * 3, runs
    assert all(r["summary"] == {"dry_run": True, "checks": "passed"} for r in runs)
    assert not any((tmp_path / f"o{i}").exists() for i in range(3))
    page1 = client.get("/api/v1/runs", params={"state": "succeeded", "limit": 2}).json()
    assert [r["id"] for r in page1["runs"]] == ids[::-1][:2]
    page2 = client.get(page1["next"]).json()
    assert page2["runs"][0]["id"] == ids[0]
    assert client.get("/api/v1/runs", params={"state": "cancelled"}).json()["runs"] == []
    log = client.get(f"/api/v1/runs/{ids[0]}/log", params={"lines": 5})
    assert log.status_code == 200 and log.headers["content-type"].startswith("text/plain")


def test_a_dry_run_that_fails_its_checks_ends_failed_with_the_error_line(client, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "fine"}\n')
    request = {
        "job": "ingest",
        "inputs": {"input": str(tmp_path / "in.jsonl")},
        "outputs": {"output": str(tmp_path / "o"), "rejects": str(tmp_path / "r")},
        "options": {"sources": "no_such_source"},
        "dry_run": True,
    }
    run = wait_for_end(client, client.post("/api/v1/runs", json=request).json()["id"])
    assert run["state"] == "failed" and run["exit_status"] == 2
    assert "unknown source 'no_such_source'" in run["error"]


def test_restart_loses_no_run_finds_a_live_one_and_marks_a_lost_one_unknown(service_base, tmp_path):
    """A second service over the same database: the runs recorded as running are
    a live process (found again, then unknown when it ends without a result) and
    a dead one (unknown at once)."""
    config = service_config(service_base, runs={"db": str(tmp_path / "runs.db"), "dir": str(tmp_path / "runs")})
    store = RunStore(tmp_path / "runs.db")
    live = subprocess.Popen(["sleep", "30"], start_new_session=True)
    dead = subprocess.Popen(["true"], start_new_session=True)
    dead_start = process_start(dead.pid) or "1"
    dead.wait()
    for run_id, pid, start in [("live", live.pid, process_start(live.pid)), ("lost", dead.pid, dead_start)]:
        (tmp_path / "runs" / run_id).mkdir(parents=True)
        store.insert(
            {
                "id": run_id,
                "job": "stats",
                "request": json.dumps({"job": "stats", "outputs": {}}),
                "args": "[]",
                "dir": str(tmp_path / "runs" / run_id),
                "state": "running",
                "created_at": now(),
                "started_at": now(),
                "pid": pid,
                "proc_start": start,
            }
        )
    store.close()
    try:
        with serve_in_thread(create_app(config, (KEY,)), timeout=60) as url:
            c = httpx.Client(base_url=url, headers={"x-api-key": KEY})
            found = c.get("/api/v1/runs/live").json()
            assert found["state"] == "running" and found["note"] == "found again after a service restart"
            lost = c.get("/api/v1/runs/lost").json()
            assert lost["state"] == "unknown" and "service restarted" in lost["note"]
            cancelled = c.delete("/api/v1/runs/live").json()  # a found-again run is cancelled like any
            assert cancelled["state"] == "cancelled" and not group_alive(live.pid)
            assert_problem(c.delete("/api/v1/runs/live"), 409)
    finally:
        if live.poll() is None:
            os.killpg(live.pid, signal.SIGKILL)
        live.wait()


def wait_for_end(client: httpx.Client, run_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/api/v1/runs/{run_id}").json()
        if run["state"] != "running" or time.monotonic() > deadline:
            return run
        time.sleep(0.5)
