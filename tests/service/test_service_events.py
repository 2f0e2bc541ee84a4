"""Run progress as Server-Sent Events: the job's events file (jobs/run_events.py)
and the stream the service makes of it. The real Spark run's stream is checked
in test_service_runs.py."""

from __future__ import annotations

import json
import time

import httpx

from jobs.run_events import RunEvents
from udfs.config import EventsConfig

from .conftest import assert_problem, ingest_dry_run
from .sse import read_events
from .test_service_api import wait_for_end


def test_the_job_appends_its_events_with_progress_from_its_source(tmp_path):
    path = tmp_path / "events.jsonl"
    calls = []

    def source():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the session is stopping")  # that event goes without the fields
        return {"stages": [{"id": 3, "tasks": 4, "tasks_done": len(calls)}]}

    events = RunEvents(EventsConfig(progress_seconds=0.05), "ingest", "r1", str(path))
    assert events.enabled  # a file alone turns them on
    events.progress_from(source)
    events.start()
    deadline = time.monotonic() + 30
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    events.close("finished", summary={"input": 3, "good": 2, "rejected": 1})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    states = [e["state"] for e in lines]
    assert states[0] == "started" and states[-1] == "finished" and set(states[1:-1]) == {"running"}
    running = lines[1:-1]
    assert len(running) >= 3
    assert running[0]["stages"] == [{"id": 3, "tasks": 4, "tasks_done": 1}]
    assert "stages" not in running[1]  # the source failed that time
    assert all(e["elapsed_s"] >= 0 and e["run_id"] == "r1" and e["job"] == "ingest" for e in lines)
    assert [e["elapsed_s"] for e in lines] == sorted(e["elapsed_s"] for e in lines)
    assert lines[-1]["summary"] == {"input": 3, "good": 2, "rejected": 1}


def test_a_dry_run_streams_its_state_then_its_end_and_resumes(client, tmp_path):
    request = ingest_dry_run(tmp_path)
    run = client.post("/api/v1/runs", json=request).json()
    assert run["links"]["events"] == f"/api/v1/runs/{run['id']}/events"
    events = read_events(client, run["id"])  # opened while it runs: ends once it has ended
    assert [e["event"] for e in events] == ["state", "end"] and [e["id"] for e in events] == ["0", "1"]
    assert events[0]["data"]["id"] == run["id"]
    end = events[-1]["data"]
    assert end["state"] == "succeeded" and end == wait_for_end(client, run["id"])
    assert [e["event"] for e in read_events(client, run["id"], last_id=0)] == ["end"]
    assert read_events(client, run["id"], last_id=1) == []


def test_events_of_an_unknown_run_404_without_a_key_401(client, service_url):
    assert_problem(client.get("/api/v1/runs/nope/events"), 404)
    assert_problem(httpx.get(f"{service_url}/api/v1/runs/nope/events"), 401)
    assert_problem(client.get("/api/v1/runs/nope/events", headers={"last-event-id": "x"}), 422)
