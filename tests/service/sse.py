"""A small Server-Sent Events reader for the tests (the wire format of the
HTML standard's EventSource: fields up to a blank line)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import httpx


def parse(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Each event as {"id", "event", "data"} (data parsed as JSON); comments skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                yield {
                    "id": fields.get("id"),
                    "event": fields.get("event", "message"),
                    "data": json.loads(fields["data"]),
                }
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = fields[name] + "\n" + value if name == "data" and "data" in fields else value


def read_events(client: httpx.Client, run_id: str, last_id: int | None = None) -> list[dict[str, Any]]:
    """Every event of the run's stream, until the service closes it (after `end`)."""
    headers = {} if last_id is None else {"last-event-id": str(last_id)}
    with client.stream("GET", f"/api/v1/runs/{run_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(parse(response.iter_lines()))
