"""OpenAI's Files and Batch APIs on the gateway, through the official openai SDK
with strict response validation: states, output and error files, malformed
files, expiry, errored lines, failed batches, cancel, the queue limit, and the
admin ledger of batch lines by custom_id. Spans are fractions of a second."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types import Batch, FileDeleted, FileObject
from openai.types.chat import ChatCompletion

from gateway.config import ConfigError, parse_config
from gateway.tokens import default_counter
from tests.gateway.conftest import RunningGateway, make_raw_config, run_gateway

FAST = {"validating_seconds": 0.05, "processing_seconds": 0.3, "finalizing_seconds": 0.05}
QUEUE_LIMIT = 60  # input tokens per key and model; see test_queue_limit_fails_a_batch_as_openai_does


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    keys: list[dict[str, Any]] = [
        {"name": "main", "admin": True, "batches": FAST},
        {"name": "flaky", "batches": {**FAST, "line_error_rate": 0.5, "seed": 3}},
        {"name": "failing", "batches": {**FAST, "batch_failure_rate": 1.0}},
        {
            "name": "short",
            "batches": {"validating_seconds": 0, "processing_seconds": 2.0, "completion_window_seconds": 0.7},
        },
        {"name": "slow", "batches": {**FAST, "processing_seconds": 3.0}},
        {"name": "queue", "batches": {**FAST, "processing_seconds": 1.0, "enqueued_tokens": QUEUE_LIMIT}},
        {"name": "small", "batches": {**FAST, "openai_max_requests": 3, "openai_max_bytes": 2000}},
        {"name": "instant", "batches": {"validating_seconds": 0, "processing_seconds": 0, "finalizing_seconds": 0}},
    ]
    with run_gateway(make_raw_config(keys)) as running:
        yield running


def client(gw: RunningGateway, key: str = "main", **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key=gw.key(key), base_url=f"{gw.base_url}/v1", _strict_response_validation=True, **kw)


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": 40, **extra}


def request_line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(items: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in items).encode()


def submit(c: openai.OpenAI, data: bytes) -> Batch:
    uploaded = c.files.create(file=("requests.jsonl", data), purpose="batch")
    return c.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")


def wait_for(c: openai.OpenAI, batch_id: str, done: Callable[[Batch], bool], timeout: float = 15) -> list[Batch]:
    """Poll (no fixed sleeps) until `done` holds; every state seen, last one last."""
    seen: list[Batch] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(c.batches.retrieve(batch_id))
        if done(seen[-1]):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} still {seen[-1].status} after {timeout} s")


def ended(batch: Batch) -> bool:
    return batch.status in ("completed", "failed", "expired", "cancelled")


def read_jsonl(c: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in c.files.content(file_id).text.splitlines()]


def ledger(gw: RunningGateway, key: str) -> dict[str, Any]:
    admin = {"Authorization": f"Bearer {gw.key('main')}"}
    answer = httpx.get(f"{gw.base_url}/v1/admin/keys/{key}/batch_lines", headers=admin)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_files_upload_retrieve_list_content_delete(gw):
    c = client(gw)
    data = jsonl([request_line("a", chat_body("hello"))])
    uploaded = c.files.create(file=("input.jsonl", data), purpose="batch")
    assert isinstance(uploaded, FileObject)
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(data)
    assert (uploaded.filename, uploaded.purpose, uploaded.status) == ("input.jsonl", "batch", "processed")
    assert c.files.retrieve(uploaded.id) == uploaded
    assert uploaded.id in [f.id for f in c.files.list(purpose="batch")]
    assert c.files.content(uploaded.id).content == data
    # Another key sees none of it.
    with pytest.raises(openai.NotFoundError):
        client(gw, "flaky").files.retrieve(uploaded.id)
    deleted = c.files.delete(uploaded.id)
    assert isinstance(deleted, FileDeleted) and deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(uploaded.id)
    with pytest.raises(openai.BadRequestError, match="purpose"):
        c.files.create(file=("x.jsonl", data), purpose="fine-tune")


def test_batch_goes_through_its_states_and_answers_like_the_online_endpoint(gw):
    c = client(gw)
    texts = [f"question number {i}" for i in range(12)]
    lines = [request_line(f"row-{i}", chat_body(t)) for i, t in enumerate(texts)]
    lines.append(request_line("bad-temperature", chat_body("hot", temperature=7)))  # the online endpoint's 400
    started = time.monotonic()
    created = submit(c, jsonl(lines))
    assert isinstance(created, Batch)
    assert created.status == "validating" and created.completion_window == "24h"
    assert created.expires_at == created.created_at + 86_400
    seen = wait_for(c, created.id, ended)
    elapsed = time.monotonic() - started
    batch = seen[-1]
    statuses = [b.status for b in seen]
    assert "in_progress" in statuses and batch.status == "completed", statuses
    assert elapsed >= FAST["processing_seconds"]  # the lines were spread over the configured span
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (13, 12, 1)
    assert batch.in_progress_at is not None and batch.completed_at is not None and batch.errors is None
    assert batch.model == "gpt-4o-mini-2024-07-18"

    output = read_jsonl(c, batch.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(f"row-{i}" for i in range(12))
    assert [o["custom_id"] for o in output] != [f"row-{i}" for i in range(12)]  # shuffled
    online = {t: c.chat.completions.create(**chat_body(t)) for t in texts}
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["id"].startswith("batch_req_") and line["response"]["request_id"].startswith("req_")
        answer = ChatCompletion.model_validate(line["response"]["body"])
        same = online[texts[int(line["custom_id"].split("-")[1])]]
        assert answer.choices[0].message.content == same.choices[0].message.content
        assert answer.usage == same.usage and answer.model == same.model
    errors = read_jsonl(c, batch.error_file_id)
    assert len(errors) == 1 and errors[0]["custom_id"] == "bad-temperature"
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["param"] == "temperature"
    assert batch.usage is not None and batch.usage.input_tokens > 0
    assert batch.usage.output_tokens == sum(o["response"]["body"]["usage"]["completion_tokens"] for o in output)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            [
                json.dumps(request_line("ok", chat_body("fine"))),
                "{not json",
                json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": chat_body("x")}),
                json.dumps({**request_line("u", chat_body("x")), "url": "/v1/embeddings"}),
                json.dumps(request_line("ok", chat_body("again"))),
                json.dumps(request_line("m", {**chat_body("x"), "model": "gpt-4.1-nano"})),
            ],
            [
                ("invalid_json_line", 2),
                ("missing_required_parameter", 3),
                ("url_mismatch", 4),
                ("duplicate_custom_id", 5),
                ("model_mismatch", 6),
            ],
        ),
        (["", "  "], [("empty_file", None)]),
    ],
    ids=["malformed-lines", "empty-file"],
)
def test_a_malformed_file_fails_the_batch_with_line_numbered_errors(gw, lines, expected):
    c = client(gw, "instant")
    before = ledger(gw, "instant")["admitted"]
    batch = wait_for(c, submit(c, ("\n".join(lines) + "\n").encode()).id, ended)[-1]
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == expected
    assert all(e.message for e in batch.errors.data)
    assert batch.output_file_id is None and batch.error_file_id is None
    assert ledger(gw, "instant")["admitted"] == before  # nothing of a failed file was admitted


def test_request_and_byte_limits(gw):
    c = client(gw, "small")
    four = jsonl([request_line(f"r{i}", chat_body("hi")) for i in range(4)])
    batch = wait_for(c, submit(c, four).id, ended)[-1]
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [("too_many_tasks", 4)]
    with pytest.raises(openai.APIStatusError) as too_big:
        c.files.create(file=("big.jsonl", b"x" * 2001), purpose="batch")
    assert too_big.value.status_code == 413


def test_create_refuses_unknown_file_endpoint_and_window(gw):
    c = client(gw)
    uploaded = c.files.create(file=("r.jsonl", jsonl([request_line("a", chat_body("hi"))])), purpose="batch")
    with pytest.raises(openai.NotFoundError, match="file-nope"):
        c.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        c.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        c.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="1h")
    with pytest.raises(openai.NotFoundError):
        c.batches.retrieve("batch_nope")


def test_a_share_of_lines_errors_like_a_500(gw):
    c = client(gw, "flaky")
    lines = [request_line(f"f{i}", chat_body(f"line {i}")) for i in range(20)]
    batch = wait_for(c, submit(c, jsonl(lines)).id, ended)[-1]
    assert batch.status == "completed" and batch.request_counts is not None
    counts = batch.request_counts
    assert counts.completed + counts.failed == 20 and counts.completed > 0 and counts.failed > 0
    errors = read_jsonl(c, batch.error_file_id)
    assert len(errors) == counts.failed
    for line in errors:
        assert line["response"]["status_code"] == 500
        assert line["response"]["body"]["error"]["type"] == "server_error"
    assert len(read_jsonl(c, batch.output_file_id)) == counts.completed
    book = ledger(gw, "flaky")
    assert book["succeeded"] == counts.completed and book["admitted"] == 20


def test_a_batch_failed_as_a_whole(gw):
    c = client(gw, "failing")
    batch = wait_for(c, submit(c, jsonl([request_line("x", chat_body("hi"))])).id, ended)[-1]
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    assert batch.errors.data[0].code == "server_error"
    assert batch.output_file_id is None and batch.request_counts is not None
    assert batch.request_counts.failed == 1 and batch.request_counts.completed == 0


def test_unfinished_lines_expire_at_the_end_of_the_window(gw):
    c = client(gw, "short")
    # One line every 0.2 s, a window of 0.7 s: 3 answered in time (fewer if the loop lags), 7 expired.
    lines = [request_line(f"e{i}", chat_body(f"line {i}")) for i in range(10)]
    batch = wait_for(c, submit(c, jsonl(lines)).id, ended)[-1]
    assert batch.status == "expired" and batch.expired_at is not None and batch.request_counts is not None
    done = read_jsonl(c, batch.output_file_id)
    expired = read_jsonl(c, batch.error_file_id)
    assert 1 <= len(done) <= 3 and len(done) + len(expired) == 10
    assert batch.request_counts.completed == len(done) and batch.request_counts.failed == len(expired)
    for line in expired:
        assert line["response"] is None and line["error"]["code"] == "batch_expired"


def test_cancel_stops_the_batch_and_keeps_what_was_answered(gw):
    c = client(gw, "slow")
    lines = [request_line(f"c{i}", chat_body(f"line {i}")) for i in range(10)]  # one every 0.3 s
    created = submit(c, jsonl(lines))
    wait_for(c, created.id, lambda b: b.status == "in_progress")
    cancelling = c.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    batch = wait_for(c, created.id, ended)[-1]
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    not_run = read_jsonl(c, batch.error_file_id)
    assert not_run and all(line["error"]["code"] == "batch_cancelled" for line in not_run)
    answered = read_jsonl(c, batch.output_file_id) if batch.output_file_id else []
    assert len(answered) + len(not_run) == 10 and len(answered) < 10
    with pytest.raises(openai.ConflictError, match="cancelled"):
        c.batches.cancel(created.id)


def test_queue_limit_fails_a_batch_as_openai_does(gw):
    c = client(gw, "queue")
    counter = default_counter()
    texts = [f"queued words number {i}" for i in range(4)]
    tokens = sum(counter.messages([("user", t)], "") for t in texts)
    assert tokens <= QUEUE_LIMIT < 2 * tokens  # one such batch fits the queue, two do not
    data = jsonl([request_line(f"q{i}", chat_body(t)) for i, t in enumerate(texts)])
    first = submit(c, data)
    wait_for(c, first.id, lambda b: b.status == "in_progress")
    second = wait_for(c, submit(c, data).id, ended)[-1]
    assert second.status == "failed" and second.errors is not None and second.errors.data is not None
    error = second.errors.data[0]
    assert error.code == "token_limit_exceeded" and error.line is None
    assert error.message is not None and "gpt-4o-mini-2024-07-18" in error.message and f"{QUEUE_LIMIT}" in error.message
    assert wait_for(c, first.id, ended)[-1].status == "completed"
    third = wait_for(c, submit(c, data).id, ended)[-1]  # the queue has room again
    assert third.status == "completed"


def test_list_batches_pages_newest_first(gw):
    c = client(gw, "instant")
    data = jsonl([request_line("p", chat_body("page"))])
    ids = [submit(c, data).id for _ in range(3)]
    first = c.batches.list(limit=2)
    assert [b.id for b in first.data][:2] == ids[::-1][:2] and first.has_more
    after = c.batches.list(limit=2, after=ids[1])
    assert after.data[0].id == ids[0]
    everything = [b.id for b in c.batches.list(limit=2)]  # the SDK follows `after` itself
    assert everything[:3] == ids[::-1] and len(everything) == len(set(everything))
    assert all(isinstance(b, Batch) for b in first.data)


def test_the_ledger_shows_every_admitted_line_once(gw):
    c = client(gw, "instant")
    lines = [request_line(f"ledger-{i}", chat_body(f"ledger {i}")) for i in range(5)]
    batch = wait_for(c, submit(c, jsonl(lines)).id, ended)[-1]
    assert batch.status == "completed"
    book = ledger(gw, "instant")
    for i in range(5):
        assert book["custom_ids"][f"ledger-{i}"] == 1 and book["succeeded_ids"][f"ledger-{i}"] == 1
    # Resubmitting the same lines is visible: each custom_id then counts 2.
    wait_for(c, submit(c, jsonl(lines[:2])).id, ended)
    again = ledger(gw, "instant")
    assert again["custom_ids"]["ledger-0"] == 2 and again["custom_ids"]["ledger-4"] == 1
    assert again["repeated"] == book["repeated"] + 2


def test_batch_settings_are_validated_naming_the_key():
    raw = make_raw_config([{"name": "main", "batches": {"span": 1}}])
    with pytest.raises(ConfigError, match=r"keys\[0\]\.batches: unknown key 'span'"):
        parse_config(raw, {"GW_TEST_KEY_MAIN": "sk-x"})
    raw = make_raw_config([{"name": "main", "batches": {"line_error_rate": 1.5}}])
    with pytest.raises(ConfigError, match=r"keys\[0\]\.batches\.line_error_rate"):
        parse_config(raw, {"GW_TEST_KEY_MAIN": "sk-x"})
