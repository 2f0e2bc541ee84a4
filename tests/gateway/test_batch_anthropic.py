"""Anthropic's Message Batches API on the gateway, through the official anthropic
SDK with strict response validation: create, retrieve, list, cancel, delete,
results; bad requests refused up front; expiry, errored requests, a batch
failed as a whole, the queue limit, and the admin ledger by custom_id."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.messages import DeletedMessageBatch, MessageBatch, MessageBatchIndividualResponse

from gateway.tokens import default_counter
from tests.gateway.conftest import RunningGateway, make_raw_config, run_gateway

FAST = {"processing_seconds": 0.3, "finalizing_seconds": 0}
QUEUE_LIMIT = 40  # input tokens per key and model; see test_queue_limit_refuses_the_create_with_a_429


@pytest.fixture(scope="module")
def gw() -> Iterator[RunningGateway]:
    keys: list[dict[str, Any]] = [
        {"name": "main", "admin": True, "batches": FAST},
        {"name": "flaky", "batches": {**FAST, "line_error_rate": 0.5, "seed": 5}},
        {"name": "failing", "batches": {**FAST, "batch_failure_rate": 1.0}},
        {"name": "short", "batches": {**FAST, "processing_seconds": 2.0, "completion_window_seconds": 0.7}},
        {"name": "slow", "batches": {**FAST, "processing_seconds": 3.0}},
        {"name": "queue", "batches": {**FAST, "processing_seconds": 1.0, "enqueued_tokens": QUEUE_LIMIT}},
        {"name": "small", "batches": {**FAST, "anthropic_max_requests": 3, "anthropic_max_bytes": 3000}},
        {"name": "instant", "batches": {"processing_seconds": 0, "finalizing_seconds": 0}},
    ]
    with run_gateway(make_raw_config(keys)) as running:
        yield running


def client(gw: RunningGateway, key: str = "main", **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=gw.key(key), base_url=gw.base_url, _strict_response_validation=True, **kw)


def params(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 40,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def requests_for(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}-{i}", "params": params(f"{prefix} line {i}")} for i in range(n)]


def wait_for(
    c: anthropic.Anthropic, batch_id: str, done: Callable[[MessageBatch], bool], timeout: float = 15
) -> list[MessageBatch]:
    """Poll (no fixed sleeps) until `done` holds; every state seen, last one last."""
    seen: list[MessageBatch] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(c.messages.batches.retrieve(batch_id))
        if done(seen[-1]):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} still {seen[-1].processing_status} after {timeout} s")


def ended(batch: MessageBatch) -> bool:
    return batch.processing_status == "ended"


def results(c: anthropic.Anthropic, batch_id: str) -> list[MessageBatchIndividualResponse]:
    return list(c.messages.batches.results(batch_id))


def ledger(gw: RunningGateway, key: str) -> dict[str, Any]:
    admin = {"Authorization": f"Bearer {gw.key('main')}"}
    answer = httpx.get(f"{gw.base_url}/v1/admin/keys/{key}/batch_lines", headers=admin)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_create_retrieve_results_delete_answers_like_the_online_endpoint(gw):
    c = client(gw)
    reqs = requests_for("row", 12)
    started = time.monotonic()
    created = c.messages.batches.create(requests=reqs)
    assert isinstance(created, MessageBatch) and created.id.startswith("msgbatch_")
    assert created.processing_status == "in_progress" and created.results_url is None
    assert created.request_counts.processing == 12 and created.request_counts.succeeded == 0
    assert (created.expires_at - created.created_at).total_seconds() == pytest.approx(86_400, abs=0.01)
    with pytest.raises(anthropic.BadRequestError, match="in progress"):
        c.messages.batches.delete(created.id)
    seen = wait_for(c, created.id, ended)
    assert time.monotonic() - started >= FAST["processing_seconds"]
    # Counts stay `processing` until the whole batch has ended, as Anthropic reports them.
    assert all(b.request_counts.processing == 12 for b in seen[:-1])
    batch = seen[-1]
    counts = batch.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.canceled, counts.expired) == (0, 12, 0, 0, 0)
    assert batch.ended_at is not None and batch.results_url is not None
    assert batch.results_url == f"{gw.base_url}/v1/messages/batches/{batch.id}/results"

    got = results(c, batch.id)
    assert sorted(r.custom_id for r in got) == sorted(r["custom_id"] for r in reqs)
    assert [r.custom_id for r in got] != [r["custom_id"] for r in reqs]  # shuffled
    by_id = {r["custom_id"]: r["params"] for r in reqs}
    for item in got:
        assert item.result.type == "succeeded"
        online = c.messages.create(**by_id[item.custom_id])
        message = item.result.message
        assert message.content == online.content and message.usage == online.usage
        assert message.model == "claude-3-5-haiku-20241022" and message.stop_reason == "end_turn"

    deleted = c.messages.batches.delete(batch.id)
    assert isinstance(deleted, DeletedMessageBatch) and deleted.id == batch.id
    with pytest.raises(anthropic.NotFoundError):
        c.messages.batches.retrieve(batch.id)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"custom_id": "b", "params": {"model": "claude-3-5-haiku-latest", "messages": []}}, "requests.1.params."),
        ({"custom_id": "b", "params": params("x", max_tokens=0)}, "requests.1.params.max_tokens"),
        ({"custom_id": "b", "params": params("x", temperature=3)}, "requests.1.params.temperature"),
        ({"custom_id": "b", "params": params("x", model="no-such-model")}, "requests.1.params.model"),
        ({"custom_id": "b", "params": params("x", stream=True)}, "requests.1.params.stream"),
        ({"custom_id": "has space", "params": params("x")}, "requests.1.custom_id"),
        ({"custom_id": "a", "params": params("x")}, "requests.1.custom_id: duplicate"),
        ({"params": params("x")}, "requests.1.custom_id: Field required"),
    ],
    ids=["no-messages", "max-tokens", "temperature", "model", "stream", "custom-id", "duplicate", "no-custom-id"],
)
def test_a_bad_request_refuses_the_whole_batch_up_front(gw, bad, message):
    c = client(gw, "instant")
    before = ledger(gw, "instant")
    with pytest.raises(anthropic.BadRequestError) as refused:
        c.messages.batches.create(requests=[{"custom_id": "a", "params": params("fine")}, bad])
    assert message in refused.value.message
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert ledger(gw, "instant")["admitted"] == before["admitted"]  # nothing was admitted


def test_request_and_byte_limits(gw):
    c = client(gw, "small")
    with pytest.raises(anthropic.BadRequestError, match="at most 3 requests"):
        c.messages.batches.create(requests=requests_for("lim", 4))
    with pytest.raises(anthropic.APIStatusError) as too_big:
        c.messages.batches.create(requests=[{"custom_id": "big", "params": params("x" * 3000)}])
    assert too_big.value.status_code == 413


def test_a_share_of_requests_errors_like_a_500(gw):
    c = client(gw, "flaky")
    batch = wait_for(c, c.messages.batches.create(requests=requests_for("f", 20)).id, ended)[-1]
    counts = batch.request_counts
    assert counts.succeeded + counts.errored == 20 and counts.succeeded > 0 and counts.errored > 0
    got = results(c, batch.id)
    errored = [r for r in got if r.result.type == "errored"]
    assert len(errored) == counts.errored
    for item in errored:
        assert item.result.type == "errored"
        assert item.result.error.type == "error" and item.result.error.error.type == "api_error"
    assert ledger(gw, "flaky")["succeeded"] == counts.succeeded


def test_a_batch_failed_as_a_whole_ends_with_every_request_errored(gw):
    c = client(gw, "failing")
    batch = wait_for(c, c.messages.batches.create(requests=requests_for("x", 3)).id, ended)[-1]
    assert batch.request_counts.errored == 3 and batch.request_counts.succeeded == 0
    assert {r.result.type for r in results(c, batch.id)} == {"errored"}


def test_unfinished_requests_expire_at_the_end_of_the_window(gw):
    c = client(gw, "short")
    batch = wait_for(c, c.messages.batches.create(requests=requests_for("e", 10)).id, ended)[-1]
    counts = batch.request_counts
    assert 1 <= counts.succeeded <= 3 and counts.succeeded + counts.expired == 10
    got = results(c, batch.id)
    assert sum(1 for r in got if r.result.type == "expired") == counts.expired


def test_cancel_ends_the_batch_with_the_rest_canceled(gw):
    c = client(gw, "slow")
    created = c.messages.batches.create(requests=requests_for("c", 10))
    canceling = c.messages.batches.cancel(created.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    batch = wait_for(c, created.id, ended)[-1]
    counts = batch.request_counts
    assert counts.canceled > 0 and counts.succeeded + counts.canceled == 10
    assert sum(1 for r in results(c, batch.id) if r.result.type == "canceled") == counts.canceled
    with pytest.raises(anthropic.BadRequestError, match="already ended"):
        c.messages.batches.cancel(created.id)


def test_queue_limit_refuses_the_create_with_a_429(gw):
    c = client(gw, "queue", max_retries=0)
    counter = default_counter()
    reqs = requests_for("q", 3)
    tokens = sum(counter.messages([("user", r["params"]["messages"][0]["content"])], "") for r in reqs)
    assert tokens <= QUEUE_LIMIT < 2 * tokens  # one such batch fits the queue, two do not
    first = c.messages.batches.create(requests=reqs)
    with pytest.raises(anthropic.RateLimitError) as refused:
        c.messages.batches.create(requests=reqs)
    body = refused.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "rate_limit_error"
    assert "claude-3-5-haiku-20241022" in body["error"]["message"]
    assert refused.value.response.headers["retry-after"] == "1"
    with pytest.raises(anthropic.RateLimitError) as never:
        c.messages.batches.create(requests=requests_for("q", 9))  # over the limit on its own
    assert never.value.response.headers["x-should-retry"] == "false"
    wait_for(c, first.id, ended)
    assert wait_for(c, c.messages.batches.create(requests=reqs).id, ended)[-1].request_counts.succeeded == 3


def test_list_pages_newest_first(gw):
    c = client(gw, "instant")
    ids = [c.messages.batches.create(requests=requests_for(f"p{i}", 1)).id for i in range(3)]
    first = c.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    assert first.first_id == ids[2] and first.last_id == ids[1]
    assert [b.id for b in c.messages.batches.list(limit=2, after_id=ids[1]).data][:1] == [ids[0]]
    assert [b.id for b in c.messages.batches.list(limit=5, before_id=ids[0]).data] == [ids[2], ids[1]]
    everything = [b.id for b in c.messages.batches.list(limit=2)]  # the SDK follows last_id itself
    assert everything[:3] == ids[::-1] and len(everything) == len(set(everything))


def test_the_ledger_shows_every_admitted_request_once(gw):
    c = client(gw, "instant")
    reqs = requests_for("ledger", 5)
    wait_for(c, c.messages.batches.create(requests=reqs).id, ended)
    book = ledger(gw, "instant")
    assert all(book["custom_ids"][r["custom_id"]] == 1 for r in reqs)
    assert all(book["succeeded_ids"][r["custom_id"]] == 1 for r in reqs)
    assert book["repeated"] == 0 and book["succeeded_repeated"] == 0
    wait_for(c, c.messages.batches.create(requests=reqs[:1]).id, ended)
    again = ledger(gw, "instant")
    assert again["custom_ids"]["ledger-0"] == 2 and again["repeated"] == 1
    usage = httpx.get(f"{gw.base_url}/v1/admin/usage", headers={"x-api-key": gw.key("main")}).json()
    assert usage["keys"]["instant"]["batch_lines"]["repeated"] == 1
