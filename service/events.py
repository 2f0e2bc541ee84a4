"""GET /api/v1/runs/{id}/events: a run's progress as Server-Sent Events.

The job itself says where it is: every Spark job appends its run events
(jobs/run_events.py: `started`, `running` every events.progress_seconds with
the time elapsed and the active Spark stages' tasks done, then `finished`
with its whole summary or `failed` with its error line) to the run's
events.jsonl, which the service names in $AIBATCH_EVENTS_FILE. This module
relays those lines and frames them with what only the service knows:

    id: 0     event: state      the run as the service has it when the stream opens
    id: N     event: started | progress | finished | failed   line N of events.jsonl
    id: N+1   event: end        the run once it has ended: state, counts, summary, timings

The ids are the line numbers, so a client that reconnects with
`Last-Event-ID: N` gets what followed line N and nothing twice; `end` is
always the last event, and its counts are those of the job's printed summary
(both come from the summary the job wrote to its result file). A dry run
starts no Spark and so has no job events: state, then end. Comments
(`: keepalive`) keep idle proxies from closing a quiet stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .runs import EVENTS_FILE, RunManager, present

# The job's own `running` event is called `progress` on the wire: the SSE
# event name says what it is, the data keeps the job's state field.
WIRE_NAMES = {"running": "progress"}


def frame(event: str, event_id: int, data: Any) -> str:
    """One SSE event: its data is one line of JSON, so no data line splitting is needed."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


class EventsFile:
    """The whole lines of a file another process appends to, read as they come."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.lines = path, 0, 0
        self._partial = b""

    def read_new(self) -> list[tuple[int, dict[str, Any]]]:
        """(line number, event) of the lines completed since the last call."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        *whole, self._partial = data.split(b"\n")
        found = []
        for raw in whole:
            self.lines += 1
            try:
                event = json.loads(raw)
            except ValueError:  # not the job's: skipped, its number still counted
                continue
            if isinstance(event, dict):
                found.append((self.lines, event))
        return found


async def event_items(
    runs: RunManager, run_id: str, last_id: int | None, poll_s: float = 0.5, keepalive_s: float = 15.0
) -> AsyncIterator[tuple[str, int, Any] | None]:
    """(event, id, data) of a run's events after `last_id` (None: from the
    start) until its `end`, and None where the stream has been quiet for
    keepalive_s. The SSE stream and the WebSocket both send these. The run
    must exist (checked before the stream opens)."""
    after = -1 if last_id is None else last_id
    run = await asyncio.to_thread(runs.get, run_id)
    if after < 0:
        yield "state", 0, present(run)
    source = EventsFile(Path(run["dir"]) / EVENTS_FILE)
    quiet_since = time.monotonic()
    while True:
        run = await asyncio.to_thread(runs.get, run_id)
        ended = run["state"] != "running"  # read after the state: an ended job has written all its lines
        for number, event in await asyncio.to_thread(source.read_new):
            if number > after:
                name = WIRE_NAMES.get(str(event.get("state")), str(event.get("state", "event")))
                yield name, number, event
                quiet_since = time.monotonic()
        if ended:
            end_id = source.lines + 1
            if end_id > after:
                yield "end", end_id, present(run)
            return
        if time.monotonic() - quiet_since >= keepalive_s:
            yield None
            quiet_since = time.monotonic()
        await asyncio.sleep(poll_s)


async def run_events(
    runs: RunManager, run_id: str, last_id: int | None, poll_s: float = 0.5, keepalive_s: float = 15.0
) -> AsyncIterator[str]:
    """The SSE text of a run's events after `last_id` (None: from the start) until its `end`."""
    async for item in event_items(runs, run_id, last_id, poll_s, keepalive_s):
        yield ": keepalive\n\n" if item is None else frame(*item)
