"""Real Spark runs through /api/v1/runs (./submit.sh, local mode): one that
succeeds with the counts the job printed, followed to its end as Server-Sent
Events, and one cancelled, its outputs untouched."""

from __future__ import annotations

import json
import re
import time

import pytest

from service.runs import RunStore, group_alive

from .conftest import assert_problem
from .sse import read_events
from .test_service_api import wait_for_end

pytestmark = pytest.mark.slow

ROWS = [
    {"id": "1", "text": "a wonderful film", "rating": 2.0},
    {"id": "2", "text": "a dull film", "rating": -2.0},
    {"id": "3", "text": "", "rating": 1.0},  # no text: a reject
    {"id": "4", "text": "fine", "rating": 0.0},
]


def ingest_request(tmp_path, name: str) -> dict:
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "{broken\n")
    return {
        "job": "ingest",
        "inputs": {"input": str(tmp_path / "in.jsonl")},
        "outputs": {"output": str(tmp_path / name / "records"), "rejects": str(tmp_path / name / "rejects")},
        "options": {"format": "jsonl", "source": "mine", "rating_field": "rating", "output_format": "jsonl"},
        "set": {"encoder.batch_size": 16},
        "master": "local[1]",
    }


def test_ingest_run_succeeds_with_the_counts_the_job_printed(client, tmp_path):
    r = client.post("/api/v1/runs", json=ingest_request(tmp_path, "a"))
    assert r.status_code == 202, r.text
    events = read_events(client, r.json()["id"])  # followed live, from its submission to its end
    run = wait_for_end(client, r.json()["id"], timeout=400)
    console = client.get(f"/api/v1/runs/{run['id']}/log", params={"source": "console"}).text
    assert run["state"] == "succeeded", (run, console)
    printed = re.search(r"ingest: input rows (\d+) = good (\d+) \+ rejected (\d+)", console)
    assert printed, console
    total, good, rejected = map(int, printed.groups())
    assert run["counts"]["input"] == total == 5
    assert (run["counts"]["good"], run["counts"]["rejected"]) == (good, rejected)
    assert good + rejected == total and rejected >= 2
    # the stream: state, the job's own events, then end with the counts the job printed
    names = [e["event"] for e in events]
    assert names[0] == "state" and names[1] == "started" and names[-2:] == ["finished", "end"], names
    assert set(names[2:-2]) == {"progress"}, names
    assert [int(e["id"]) for e in events] == list(range(len(events)))
    end = events[-1]["data"]
    assert end["state"] == "succeeded" and end["counts"] == run["counts"]
    assert (end["counts"]["input"], end["counts"]["good"], end["counts"]["rejected"]) == (total, good, rejected)
    assert events[-2]["data"]["summary"] == end["summary"]
    progress = [e["data"] for e in events if e["event"] == "progress"]  # every second (runs.progress_seconds)
    assert len(progress) >= 2 and all(p["elapsed_s"] > 0 for p in progress)
    # once the session runs, the active Spark stages with their tasks done of all
    stages = [s for p in progress for s in p.get("stages", [])]
    assert any(s["tasks"] >= 1 and 0 <= s["tasks_done"] <= s["tasks"] for s in stages), progress
    elapsed = [e["data"]["elapsed_s"] for e in events[1:-1]]
    assert elapsed == sorted(elapsed)
    # a client that reconnects after `started` gets the rest, nothing twice
    assert read_events(client, run["id"], last_id=1) == events[2:]
    assert (tmp_path / "a" / "records" / "_SUCCESS").exists()
    assert run["timings"]["seconds"] > 0 and run["exit_status"] == 0 and run["error"] is None
    assert "ingest" in client.get(f"/api/v1/runs/{run['id']}/log", params={"lines": 400}).text  # the job's log
    # the same outputs again: 409, and the committed output stays as it was
    before = sorted(p.name for p in (tmp_path / "a" / "records").iterdir())
    assert_problem(client.post("/api/v1/runs", json=ingest_request(tmp_path, "a")), 409)
    assert sorted(p.name for p in (tmp_path / "a" / "records").iterdir()) == before


def test_cancel_ends_the_process_group_and_leaves_no_output(client, service_base, tmp_path):
    run = client.post("/api/v1/runs", json=ingest_request(tmp_path, "b")).json()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # cancel once the job has passed its checks and Spark runs it
        if "SparkContext" in client.get(f"/api/v1/runs/{run['id']}/log", params={"lines": 1000}).text:
            break
        time.sleep(0.5)
    store = RunStore(service_base / "runs.db")  # the pid is the service's own business: read it there
    pid = store.get(run["id"])["pid"]
    store.close()
    assert group_alive(pid) and client.get(f"/api/v1/runs/{run['id']}").json()["state"] == "running"
    # another run may not write the outputs this one writes, overwrite or not
    body = assert_problem(client.post("/api/v1/runs", json=dict(ingest_request(tmp_path, "b"), overwrite=True)), 409)
    assert run["id"] in body["detail"]
    cancelled = client.delete(f"/api/v1/runs/{run['id']}")
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["state"] == "cancelled" and body["error"] == "cancelled by a DELETE request"
    assert not group_alive(pid)  # spark-submit, its JVM, the Python driver: every process of the group
    assert not (tmp_path / "b" / "records").exists() and not (tmp_path / "b" / "rejects").exists()
    assert_problem(client.delete(f"/api/v1/runs/{run['id']}"), 409)
    assert client.get("/api/v1/runs", params={"state": "cancelled"}).json()["runs"][0]["id"] == run["id"]
