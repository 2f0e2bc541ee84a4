"""GET /runs/{id}: a run's report page (jobs/report.py draws it).

A run that succeeded is drawn from the report data the job wrote into its
result file (the data of the `_report.html` beside its outputs, so the page
is that report, whatever became of the outputs since). Any other run is
drawn from what the service has: its events so far (the tasks done over
time), its summary or error line. A running run's page also opens the run's
WebSocket (/api/v1/runs/{id}/ws) and redraws as events arrive; at `end` it
loads again, as the finished run's report.

A browser cannot send an Authorization header when it opens a page or a
WebSocket, so the page takes the key once as `?key=KEY` and answers with a
cookie holding not the key but an HMAC of it (HttpOnly, SameSite=Strict),
which the page and its WebSocket carry from then on; the Guard checks it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

from jobs import report as R

from .events import EventsFile
from .runs import EVENTS_FILE, RunManager

COOKIE = "aibatch_page"


def page_token(key: str) -> str:
    """The cookie value of a key: an HMAC of a fixed text under the key, so the cookie never holds the key."""
    return hmac.new(key.encode(), b"aibatch run pages", hashlib.sha256).hexdigest()


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def page_data(runs: RunManager, run: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """(the report data of the run, the last line of its events file read):
    a succeeded run's own report data where its job wrote it, else what the
    service knows."""
    events_file = EventsFile(Path(run["dir"]) / EVENTS_FILE)
    events = [event for _, event in events_file.read_new()]
    result = runs.result_of(run) or {}
    data: dict[str, Any]
    if run["state"] == "succeeded" and isinstance(result.get("report"), dict):
        data = dict(result["report"])
    else:
        request = json.loads(run["request"])
        summary = json.loads(run["summary"]) if run["summary"] else None
        started = _epoch(run["started_at"] or run["created_at"])
        ended = _epoch(run["ended_at"])
        job_ids = [e.get("run_id") for e in events if e.get("run_id")]
        data = {
            "job": run["job"],
            "run_id": job_ids[0] if job_ids else run["id"],
            "started_at": started,
            "seconds": round((ended or time.time()) - started, 3) if started else None,
            "inputs": request.get("inputs", {}),
            "outputs": request.get("outputs", {}),
            "settings": [f"{k}={v}" for k, v in (request.get("set") or {}).items()],
            "summary": summary,
            "error": run["error"],
            "timeline": R.progress_points(events),
            "spark": {"note": "stage and task times come with the job's report, once the run has succeeded"},
        }
    data["state"] = run["state"]
    data["service_run_id"] = run["id"]
    return data, events_file.lines


LIVE = r"""
<script>
(function () {
  const runId = %(run_id)s, after = %(after)d;
  const fig = FIGURES["chart-progress"], series = {};
  for (const t of fig.data) series[t.name] = {x: Array.from(t.x || []), y: Array.from(t.y || [])};
  const text = (id, value) => { const el = document.getElementById(id); if (el) el.textContent = value; };
  let received = Number(document.getElementById("live-events").textContent) || 0;
  function redraw() {
    const traces = Object.entries(series).map(([name, s]) =>
      ({type: "scatter", mode: "lines+markers", name: name, x: s.x, y: s.y}));
    Plotly.react("chart-progress", traces, fig.layout, {displaylogo: false, responsive: true});
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/api/v1/runs/${runId}/ws?last_event_id=${after}`);
  ws.onmessage = (message) => {
    const m = JSON.parse(message.data), d = m.data || {};
    if (d.elapsed_s !== undefined) text("live-elapsed", Number(d.elapsed_s).toFixed(1));
    if (m.event === "progress") {
      received += 1;
      text("live-events", received);
      const stages = d.stages || [];
      for (const s of stages) {
        const name = `stage ${s.id}: ${String(s.name || "").replace(/[^ ]*\//g, "").slice(0, 40)}`;
        const line = series[name] || (series[name] = {x: [], y: []});
        line.x.push(d.elapsed_s); line.y.push(s.tasks_done);
      }
      text("live-stages", stages.map((s) => `stage ${s.id}: ${s.tasks_done} of ${s.tasks} tasks`).join("; "));
      redraw();
    } else if (m.event === "end") {
      text("live-state", d.state);
      setTimeout(() => location.reload(), 300);  // the finished run's report
    } else if (m.event === "error") {
      text("live-stages", d.detail || "error");
    }
  };
  ws.onclose = () => { if (document.getElementById("live-state").textContent === "running") text("live-stages", "connection closed"); };
  window.aibatchRunSocket = ws;
})();
</script>
"""


def render_page(runs: RunManager, run: dict[str, Any]) -> str:
    data, last_line = page_data(runs, run)
    live = LIVE % {"run_id": json.dumps(run["id"]), "after": last_line} if run["state"] == "running" else ""
    return R.render(data, live)
