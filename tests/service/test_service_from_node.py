"""The REST API driven from outside Python (issue 22 §5): Node's built-in
fetch (tests/service/clients/node_client.mjs) submits a real small Spark
ingest, follows its Server-Sent Events to the end, reads its summary and
scores texts on v1 and v2; this test checks what Node saw against the job's
printed summary and against the service's own answers."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import KEY
from .test_service_runs import ingest_request

CLIENT = Path(__file__).with_name("clients") / "node_client.mjs"
NODE = shutil.which("node") or "/usr/bin/node"

pytestmark = pytest.mark.slow


def test_node_submits_follows_events_reads_the_summary_and_scores(service_url, client, tmp_path):
    assert Path(NODE).exists(), "node (20+) is needed for this test: apt-get install nodejs"
    env = dict(
        os.environ,
        SERVICE_URL=service_url,
        SERVICE_KEY=KEY,
        RUN_REQUEST=json.dumps(ingest_request(tmp_path, "node")),
        MODEL="models:/sentiment@champion",
    )
    done = subprocess.run([NODE, str(CLIENT)], env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    console = client.get(f"/api/v1/runs/{report['run_id']}/log", params={"source": "console"}).text
    printed = re.search(r"ingest: input rows (\d+) = good (\d+) \+ rejected (\d+)", console)
    assert printed, console
    total, good, rejected = map(int, printed.groups())

    events = report["events"]
    assert [e["id"] for e in events] == list(range(len(events)))
    assert events[0]["event"] == "state" and events[1]["event"] == "started"
    assert [e["event"] for e in events[-2:]] == ["finished", "end"]
    counts = report["end"]["counts"]
    assert report["end"]["state"] == report["run"]["state"] == "succeeded"
    assert (counts["input"], counts["good"], counts["rejected"]) == (total, good, rejected) == (5, 3, 2)
    assert report["run"]["counts"] == counts and report["run"]["summary"]["input"] == total
    assert (tmp_path / "node" / "records" / "_SUCCESS").exists()

    v1, v2 = report["v1"]["body"], report["v2"]
    assert report["v1"]["deprecation"]  # v1 answers with its Deprecation header
    assert v1["model"] == "sentiment@1" and (v2["model"]["name"], v2["model"]["version"]) == ("sentiment", 1)
    assert [p["label"] for p in v1["predictions"]] == [p["label"] for p in v2["predictions"]]
    for p1, p2 in zip(v1["predictions"], v2["predictions"], strict=True):
        assert math.isclose(p1["probability"], p2["probability"], rel_tol=1e-6)
        assert math.isclose(sum(p2["probabilities"].values()), 1.0, rel_tol=1e-5)
    assert v2["predictions"][0]["label"] == "positive" and v2["predictions"][1]["label"] == "negative"
