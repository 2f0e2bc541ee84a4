"""The run report in the service (issue 22 §3) and the run page's WebSocket
(§1), against the real service on loopback: a real small Spark ingest whose
page headless Chromium watches advance while the job runs and then shows
the finished report with its charts; the `_report.html` the job wrote beside
its records, opened from the file; the WebSocket's events (the same as the
Server-Sent Events) and its cancel; the keys, cookie and origin rules.

Run with: .venv/bin/python -m pytest tests/service/test_service_report.py
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from jobs import report as R
from service.pages import COOKIE, page_token
from service.runs import RunStore, now
from tests.browser import devtools, dump_dom, not_blank

from .conftest import KEY, assert_problem, ingest_dry_run
from .sse import read_events
from .test_service_api import wait_for_end
from .test_service_runs import ingest_request

HEADERS = {"authorization": f"Bearer {KEY}"}


def ws_url(service_url: str, run_id: str, **query: Any) -> str:
    tail = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
    return f"ws://{service_url.removeprefix('http://')}/api/v1/runs/{run_id}/ws{tail}"


def socket_events(url: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every message of a run's socket until the service closes it."""
    with connect(url, additional_headers=headers or HEADERS, open_timeout=30) as ws:
        return [json.loads(m) for m in ws]


def refused(url: str, headers: dict[str, str]) -> httpx.Response:
    """The HTTP answer to a WebSocket handshake the service refuses."""
    with pytest.raises(InvalidStatus) as caught:
        connect(url, additional_headers=headers, open_timeout=30)
    answer = caught.value.response
    return httpx.Response(
        answer.status_code,
        headers=dict(answer.headers.raw_items()),
        content=bytes(answer.body or b""),
        request=httpx.Request("GET", url.replace("ws://", "http://")),
    )


def figures_of(page: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="figures">(.*?)</script>', page, re.S)
    assert found, "no figures in the page"
    return json.loads(found[1])


def test_keys_cookie_and_origin(client, service_url):
    base = service_url
    assert_problem(refused(ws_url(base, "nope"), {}), 401)
    assert_problem(refused(ws_url(base, "nope"), {"authorization": "Bearer sk-wrong"}), 401)
    assert_problem(refused(ws_url(base, "nope"), HEADERS), 404)
    # a page: no key 401, a wrong ?key= 401, an unknown run 404
    assert_problem(httpx.get(f"{base}/runs/nope"), 401)
    assert_problem(httpx.get(f"{base}/runs/nope", params={"key": "sk-wrong"}), 401)
    assert_problem(client.get("/runs/nope"), 404)
    # the page's cookie is an HMAC of the key, never the key; it opens pages and sockets
    cookie = {"cookie": f"{COOKIE}={page_token(KEY)}"}
    assert page_token(KEY) != KEY and KEY not in page_token(KEY)
    assert_problem(httpx.get(f"{base}/runs/nope", headers=cookie), 404)
    assert_problem(refused(ws_url(base, "nope"), cookie), 404)
    # ... but not from a page of another site (the browser would send it along)
    assert_problem(refused(ws_url(base, "nope"), {**cookie, "origin": "http://elsewhere.example"}), 401)
    # the REST API takes no cookie
    assert_problem(httpx.get(f"{base}/api/v1/runs", headers=cookie), 401)


def test_a_dry_run_over_the_socket_and_its_page(client, service_url, tmp_path):
    request = ingest_dry_run(tmp_path)
    run = client.post("/api/v1/runs", json=request).json()
    assert run["links"]["ws"] == f"/api/v1/runs/{run['id']}/ws" and run["links"]["report"] == f"/runs/{run['id']}"
    events = socket_events(ws_url(service_url, run["id"]))
    assert [(e["id"], e["event"]) for e in events] == [(0, "state"), (1, "end")]
    assert events[-1]["data"] == wait_for_end(client, run["id"]) and events[-1]["data"]["state"] == "succeeded"
    assert socket_events(ws_url(service_url, run["id"], last_event_id=1)) == []
    assert_problem(refused(ws_url(service_url, run["id"], last_event_id="x"), HEADERS), 422)
    # the page, opened once with ?key=: a cookie for it and its socket, and the key leaves the address
    first = httpx.get(f"{service_url}/runs/{run['id']}", params={"key": KEY})
    assert first.status_code == 303 and first.headers["location"] == f"/runs/{run['id']}"
    set_cookie = first.headers["set-cookie"]
    assert f"{COOKIE}={page_token(KEY)}" in set_cookie and KEY not in set_cookie
    assert "httponly" in set_cookie.lower() and "samesite=strict" in set_cookie.lower()
    page = httpx.get(f"{service_url}/runs/{run['id']}", headers={"cookie": f"{COOKIE}={page_token(KEY)}"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<b id="live-state">succeeded</b>' in page.text and "new WebSocket" not in page.text  # ended: not live


def test_enrich_cost_is_a_field_of_the_run_and_its_page_draws_the_calls(client, service_base):
    summary = {
        "dry_run": False,
        "lines": ["enrich: rows in 3 = enriched 2 + dead-lettered 0 + not selected 1"],
        "rows_in": 3,
        "enriched": 2,
        "dead_letter": 0,
        "not_selected": 1,
        "calls": 2,
        "cache_hits": 0,
        "input_tokens": 200,
        "output_tokens": 60,
        "cost_usd": 0.0125,
        "histograms": {"latency_ms": {"edges": [10.0, 20.0, 30.0], "counts": [1, 1]}},
    }
    run_dir = service_base / "runs" / "enrich-cost"
    run_dir.mkdir(parents=True)
    store = RunStore(service_base / "runs.db")
    request = {"job": "enrich", "inputs": {"input": "/in"}, "outputs": {"output": "/out"}}
    store.insert(
        {
            "id": "enrich-cost",
            "job": "enrich",
            "request": json.dumps(request),
            "args": "[]",
            "dir": str(run_dir),
            "state": "succeeded",
            "created_at": now(),
            "started_at": now(),
            "ended_at": now(),
            "summary": json.dumps(summary),
        }
    )
    store.close()
    run = client.get("/api/v1/runs/enrich-cost").json()
    assert run["cost_usd"] == 0.0125 and run["counts"]["calls"] == 2
    figures = figures_of(client.get("/runs/enrich-cost").text)
    assert figures["chart-latency"]["data"][0]["y"] == [1, 1]
    assert [t["x"][0] for t in figures["chart-flow"]["data"]] == [3, 2, 0, 1]
    assert client.get("/api/v1/runs", params={"limit": 50}).json()["runs"]  # listing still fine


@pytest.mark.slow
def test_a_running_jobs_page_advances_then_shows_its_report(client, service_url, tmp_path):
    run = client.post("/api/v1/runs", json=ingest_request(tmp_path, "a")).json()
    socket: list[dict[str, Any]] = []
    follower = threading.Thread(target=lambda: socket.extend(socket_events(ws_url(service_url, run["id"]))))
    follower.start()
    with devtools() as page:
        page.call("Page.navigate", url=f"{service_url}/runs/{run['id']}?key={KEY}")
        page.wait_for("document.getElementById('live-state') !== null")
        assert page.evaluate("document.getElementById('live-state').textContent") == "running"
        # the page advances: progress events counted, points added to the chart (Plotly.react)
        points = "document.getElementById('chart-progress').data.reduce((n, t) => n + t.x.length, 0)"
        seen = [int(page.evaluate("document.getElementById('live-events').textContent"))]
        charted = [page.evaluate(points)]  # the points of the tasks-done chart when the page opened
        for _ in range(2):
            page.wait_for(
                f"Number(document.getElementById('live-events').textContent) > {seen[-1]} "
                "|| document.getElementById('live-state').textContent !== 'running'",
                timeout=120,
            )
            if page.evaluate("document.getElementById('live-state').textContent") != "running":
                break
            seen.append(int(page.evaluate("document.getElementById('live-events').textContent")))
        assert len(seen) == 3 and seen == sorted(set(seen)), seen
        # a stage's tasks done, drawn as they came, while the run still runs
        page.wait_for(
            f"document.getElementById('live-state').textContent === 'running' && ({points}) > {charted[0]}",
            timeout=120,
        )
        # at its end the page loads again: the finished run's report, with its charts
        page.wait_for("document.getElementById('live-state').textContent === 'succeeded'", timeout=300)
        page.wait_for("document.getElementById('chart-stages') !== null", timeout=30)
        drawn = page.evaluate(
            "['chart-flow', 'chart-progress', 'chart-stages'].map(id => "
            "document.querySelectorAll('#' + id + ' svg.main-svg').length)"
        )
        assert all(n >= 1 for n in drawn), drawn
        assert page.evaluate("document.querySelectorAll('table.slowest tbody tr').length") >= 1
        colours, ink = not_blank(page.screenshot())
        assert colours > 50 and ink > 0.05, (colours, ink)
    follower.join(timeout=60)
    finished = wait_for_end(client, run["id"])
    assert finished["state"] == "succeeded" and finished["cost_usd"] is None  # no LLM in ingest
    # the socket sent what the Server-Sent Events send: the job's events, then end
    sse = read_events(client, run["id"])
    assert [(e["id"], e["event"]) for e in socket] == [(int(e["id"]), e["event"]) for e in sse]
    assert [e["data"] for e in socket[1:]] == [e["data"] for e in sse[1:]]
    assert socket[-1]["data"]["counts"] == finished["counts"] and finished["counts"]["input"] == 5
    # the report the job wrote beside its records: the same figures as the page, drawn from the file
    report = tmp_path / "a" / "records" / R.REPORT_FILE
    assert report.exists() and (tmp_path / "a" / "records" / "_SUCCESS").exists()
    served = client.get(f"/runs/{run['id']}").text
    assert figures_of(report.read_text()) == figures_of(served)
    flow = figures_of(served)["chart-flow"]["data"]
    assert flow[0]["x"][0] == 5 == sum(t["x"][0] for t in flow[1:])  # input = good + rejects by reason
    dom = dump_dom(report.as_uri())  # (its screenshot: the page's, above, draws the same figures)
    assert dom.count('class="main-svg"') >= 3 and "Slowest tasks" in dom


@pytest.mark.slow
def test_cancel_over_the_socket(client, service_url, tmp_path):
    run = client.post("/api/v1/runs", json=ingest_request(tmp_path, "c")).json()
    with connect(ws_url(service_url, run["id"]), additional_headers=HEADERS, open_timeout=30) as ws:
        first = json.loads(ws.recv(timeout=60))
        assert (first["id"], first["event"], first["data"]["state"]) == (0, "state", "running")
        assert json.loads(ws.recv(timeout=120))["event"] == "started"  # the job runs
        ws.send(json.dumps({"type": "pause"}))
        answer = json.loads(ws.recv(timeout=30))
        while answer["event"] == "progress":
            answer = json.loads(ws.recv(timeout=30))
        assert answer["event"] == "error" and answer["data"]["status"] == 422
        ws.send(json.dumps({"type": "cancel"}))
        rest = [json.loads(m) for m in ws]
    named = {e["event"]: e for e in rest}
    assert named["cancel"]["data"]["state"] == "cancelled"
    assert rest[-1]["event"] == "end" and rest[-1]["data"]["state"] == "cancelled"
    assert rest[-1]["data"]["error"] == "cancelled by a cancel message on its WebSocket"
    assert not (tmp_path / "c" / "records").exists() and not (tmp_path / "c" / "rejects").exists()
    assert_problem(client.delete(f"/api/v1/runs/{run['id']}"), 409)
