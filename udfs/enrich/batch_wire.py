"""The providers' Batch APIs on the wire, one object per provider (each dialect of
dialects.py holds its own as `dialect.batches`): the request line, uploading and
creating a batch (streamed from a JSONL file on disk), finding one that a killed
run created but did not record, polling, the results (streamed) and cancelling.
Synchronous httpx: the batch driver runs on the job's driver, not in the tasks.

OpenAI: the lines go up as a file (`/v1/files`, purpose "batch", named by the
ledger entry), then `/v1/batches` names it, with the run's key and the entry's
name in its metadata, so a batch a killed run created is adopted by those (or
by its input file); a batch over the key's enqueued-token queue ends `failed`
with `token_limit_exceeded`. Anthropic: the lines go in the body of
`/v1/messages/batches`, which has no metadata, so the ledger notes the key's
newest batch just before each create (`mark`), and such a batch is the oldest
listed above that one with the entry's size that no run has recorded (no clock
compared; only another client's create of the same size in the moment between
the mark and ours could be taken for it); a create over the queue is answered
429. Both refusals are `Polled.queue_full` / `QueueFull`: the driver waits for
room instead of counting a failed attempt.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:  # settings.py imports dialects.py, which imports this module
    from .settings import ProviderConfig

OPENAI_ENDPOINT = "/v1/chat/completions"


@dataclass(frozen=True)
class Polled:
    """A batch as one poll saw it."""

    ended: bool
    done: int  # lines that have ended (either way); the providers count them as they go or at the end
    total: int
    status: str
    failure: str | None = None  # why the whole batch failed, when it did
    queue_full: bool = False  # it failed because the key's enqueued-token queue had no room


@dataclass(frozen=True)
class LineResult:
    """One result line: the completion body as the online endpoint answers it, or why not."""

    custom_id: str
    body: dict[str, Any] | None
    error: str | None


def _check(reply: httpx.Response) -> httpx.Response:
    if reply.status_code >= 400:
        text = reply.text[:300]
        raise BatchApiError(f"HTTP {reply.status_code} from {reply.request.method} {reply.request.url.path}: {text}")
    return reply


class BatchApiError(RuntimeError):
    """The Batch API refused a request (the message holds the status and the provider's error, never the key)."""


class QueueFull(BatchApiError):
    """A create refused for the key's enqueued-token queue (room comes back as batches end)."""


def _created(reply: httpx.Response) -> str:
    """The new batch's id; QueueFull for a 429 (the queue, or too many batches at once)."""
    if reply.status_code == 429:
        raise QueueFull(f"HTTP 429 from {reply.request.method} {reply.request.url.path}: {reply.text[:300]}")
    return str(_check(reply).json()["id"])


class BatchWire:
    uploads: bool  # whether the lines go up as a file before the batch is created

    def client(self, cfg: ProviderConfig, api_key: str) -> httpx.Client:
        raise NotImplementedError

    def line(self, custom_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """One request line of the batch (its JSONL form is what gets uploaded)."""
        raise NotImplementedError

    def upload(self, http: httpx.Client, name: str, path: Path) -> str:
        raise NotImplementedError

    def find_upload(self, http: httpx.Client, name: str) -> str | None:
        return None

    def delete_upload(self, http: httpx.Client, file_id: str) -> None:
        pass

    def create(self, http: httpx.Client, name: str, run: str, path: Path, file_id: str | None, window: str) -> str:
        raise NotImplementedError

    def mark(self, http: httpx.Client) -> dict[str, Any]:
        """What the ledger entry notes just before the create, for find_created."""
        return {}

    def find_created(self, http: httpx.Client, run: str, entry: dict[str, Any], known: set[str]) -> str | None:
        """The batch a killed run created for this ledger entry (of run `run`) but never
        recorded, if there is one; `known`: the batch ids recorded by any run, never this one."""
        raise NotImplementedError

    def poll(self, http: httpx.Client, batch_id: str) -> Polled:
        raise NotImplementedError

    def results(self, http: httpx.Client, batch_id: str) -> Iterator[LineResult]:
        raise NotImplementedError

    def cancel(self, http: httpx.Client, batch_id: str) -> None:
        raise NotImplementedError


def _jsonl(reply: httpx.Response) -> Iterator[dict[str, Any]]:
    for text in reply.iter_lines():
        if text.strip():
            yield json.loads(text)


class OpenAIBatches(BatchWire):
    uploads = True
    ENDED = ("completed", "failed", "expired", "cancelled")
    QUEUE_FULL = "token_limit_exceeded"  # the error code of a batch over the enqueued-token queue

    def client(self, cfg: ProviderConfig, api_key: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"}
        return httpx.Client(base_url=cfg.base_url.rstrip("/"), headers=headers, timeout=max(cfg.timeout_s, 60.0))

    def line(self, custom_id: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "method": "POST", "url": OPENAI_ENDPOINT, "body": params}

    def upload(self, http: httpx.Client, name: str, path: Path) -> str:
        with path.open("rb") as fh:  # httpx sends a file object in chunks: never the whole file in memory
            reply = _check(http.post("/files", data={"purpose": "batch"}, files={"file": (name, fh)}))
        return str(reply.json()["id"])

    def find_upload(self, http: httpx.Client, name: str) -> str | None:
        files = _check(http.get("/files", params={"purpose": "batch", "limit": 10_000})).json()["data"]
        return next((f["id"] for f in files if f["filename"] == name), None)

    def delete_upload(self, http: httpx.Client, file_id: str) -> None:
        _check(http.delete(f"/files/{file_id}"))

    def create(self, http: httpx.Client, name: str, run: str, path: Path, file_id: str | None, window: str) -> str:
        body = {
            "input_file_id": file_id,
            "endpoint": OPENAI_ENDPOINT,
            "completion_window": window,
            "metadata": {"aibatch_run": run, "aibatch_entry": name},
        }
        return _created(http.post("/batches", json=body))

    def find_created(self, http: httpx.Client, run: str, entry: dict[str, Any], known: set[str]) -> str | None:
        name, file_id = entry["name"], entry.get("file_id")
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
            page = _check(http.get("/batches", params=params)).json()
            for b in page["data"]:
                meta = b.get("metadata") or {}
                ours = meta.get("aibatch_run") == run and meta.get("aibatch_entry") == name
                if b["id"] not in known and (ours or (file_id is not None and b["input_file_id"] == file_id)):
                    return str(b["id"])
            if not page.get("has_more") or not page["data"]:
                return None
            after = page["data"][-1]["id"]

    def poll(self, http: httpx.Client, batch_id: str) -> Polled:
        b = _check(http.get(f"/batches/{batch_id}")).json()
        counts = b.get("request_counts") or {}
        errors = (b.get("errors") or {}).get("data") or []
        failure = f"batch {b['status']}: {errors[0].get('code')}: {errors[0].get('message')}" if errors else None
        return Polled(
            b["status"] in self.ENDED,
            int(counts.get("completed", 0)) + int(counts.get("failed", 0)),
            int(counts.get("total", 0)),
            b["status"],
            failure or (f"batch {b['status']}" if b["status"] != "completed" else None),
            b["status"] == "failed" and any(e.get("code") == self.QUEUE_FULL for e in errors),
        )

    def results(self, http: httpx.Client, batch_id: str) -> Iterator[LineResult]:
        b = _check(http.get(f"/batches/{batch_id}")).json()
        for key in ("output_file_id", "error_file_id"):
            if not b.get(key):
                continue
            with http.stream("GET", f"/files/{b[key]}/content") as reply:
                if reply.status_code >= 400:
                    reply.read()
                    _check(reply)
                for item in _jsonl(reply):
                    yield self._result(item)

    @staticmethod
    def _result(item: dict[str, Any]) -> LineResult:
        cid, response, error = item["custom_id"], item.get("response"), item.get("error")
        if response and response.get("status_code") == 200:
            return LineResult(cid, response["body"], None)
        if response:
            inner = (response.get("body") or {}).get("error") or {}
            code = inner.get("code") or inner.get("type") or ""
            return LineResult(cid, None, f"HTTP {response.get('status_code')} {code}: {inner.get('message', '')}")
        error = error or {}
        return LineResult(cid, None, f"{error.get('code', 'error')}: {error.get('message', '')}")

    def cancel(self, http: httpx.Client, batch_id: str) -> None:
        reply = http.post(f"/batches/{batch_id}/cancel")
        if reply.status_code not in (200, 409):  # 409: it has ended already
            _check(reply)


class AnthropicBatches(BatchWire):
    uploads = False
    PATH = "/v1/messages/batches"

    def client(self, cfg: ProviderConfig, api_key: str) -> httpx.Client:
        headers = {"x-api-key": api_key, "anthropic-version": cfg.anthropic_version}
        return httpx.Client(base_url=cfg.base_url.rstrip("/"), headers=headers, timeout=max(cfg.timeout_s, 60.0))

    def line(self, custom_id: str, params: dict[str, Any]) -> dict[str, Any]:
        flat = {k: v for k, v in params.items() if k != "extra_body"}  # the SDK merges extra_body into the body
        return {"custom_id": custom_id, "params": {**flat, **params.get("extra_body", {})}}

    def create(self, http: httpx.Client, name: str, run: str, path: Path, file_id: str | None, window: str) -> str:
        def body() -> Iterator[bytes]:  # the request body streamed from the file, never whole in memory
            yield b'{"requests": ['
            with path.open("rb") as fh:
                for n, text in enumerate(fh):
                    yield (b"," if n else b"") + text.rstrip(b"\n")
            yield b"]}"

        return _created(http.post(self.PATH, content=body(), headers={"content-type": "application/json"}))

    def mark(self, http: httpx.Client) -> dict[str, Any]:
        newest = _check(http.get(self.PATH, params={"limit": 1})).json()["data"]
        return {"newest_batch": newest[0]["id"] if newest else None}

    def find_created(self, http: httpx.Client, run: str, entry: dict[str, Any], known: set[str]) -> str | None:
        """The listing is newest first: the batches above the entry's mark were created after
        it; of those that no run recorded and hold the entry's count of requests, the oldest
        (the create came right after the mark)."""
        mark, lines = entry.get("newest_batch"), len(entry["lines"])
        found: list[str] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000, **({"after_id": after} if after else {})}
            page = _check(http.get(self.PATH, params=params)).json()
            for b in page["data"]:
                if b["id"] == mark:
                    return found[-1] if found else None
                if b["id"] not in known and sum(b["request_counts"].values()) == lines:
                    found.append(str(b["id"]))
            if not page.get("has_more") or not page["data"]:
                return found[-1] if found else None
            after = page["data"][-1]["id"]

    def poll(self, http: httpx.Client, batch_id: str) -> Polled:
        b = _check(http.get(f"{self.PATH}/{batch_id}")).json()
        counts = b["request_counts"]
        total = sum(int(v) for v in counts.values())
        ended = b["processing_status"] == "ended"
        return Polled(ended, total - int(counts.get("processing", 0)), total, b["processing_status"])

    def results(self, http: httpx.Client, batch_id: str) -> Iterator[LineResult]:
        with http.stream("GET", f"{self.PATH}/{batch_id}/results") as reply:
            if reply.status_code >= 400:
                reply.read()
                _check(reply)
            for item in _jsonl(reply):
                result = item["result"]
                if result["type"] == "succeeded":
                    yield LineResult(item["custom_id"], result["message"], None)
                elif result["type"] == "errored":
                    inner = (result.get("error") or {}).get("error") or {}
                    yield LineResult(
                        item["custom_id"], None, f"{inner.get('type', 'error')}: {inner.get('message', '')}"
                    )
                else:
                    yield LineResult(item["custom_id"], None, f"{result['type']}: the batch ended before this line ran")

    def cancel(self, http: httpx.Client, batch_id: str) -> None:
        reply = http.post(f"{self.PATH}/{batch_id}/cancel")
        if reply.status_code not in (200, 400):  # 400: it has ended already
            _check(reply)
