"""The real service on loopback (uvicorn in a thread, as gateway/running.py
does for the gateway), over a private MLflow store holding a small head and
a private runs database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.running import serve_in_thread
from service.app import create_app
from service.config import ServiceConfig, parse_config
from tests.conftest import private_config

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-service-test-key"
OTHER_KEY = "sk-service-second-key"
LABELLED = [
    ("a wonderful, moving film with superb acting", "positive"),
    ("I loved every minute, a delight", "positive"),
    ("brilliant and funny, highly recommended", "positive"),
    ("a great story told beautifully", "positive"),
    ("the best thing I have seen this year", "positive"),
    ("dull, slow and far too long", "negative"),
    ("a terrible waste of time", "negative"),
    ("awful acting and a boring plot", "negative"),
    ("I hated it and walked out", "negative"),
    ("the worst film of the decade", "negative"),
]


def pipeline_config(base: Path) -> Path:
    return private_config(base)


def register_head(base: Path, name: str = "sentiment") -> None:
    """A small head over the default encoder, trained on LABELLED, registered twice
    (versions 1 and 2) with the alias champion on version 1."""
    from tests.model_store import TestStore
    from udfs import head as H
    from udfs import model as M
    from udfs.config import EncoderConfig, TrainConfig
    from udfs.predict import embed_texts

    enc = EncoderConfig()
    texts, labels = [t for t, _ in LABELLED], [label for _, label in LABELLED]
    emb = embed_texts(texts, None, enc.precision, enc.batch_size, enc.max_length)
    vocab = H.vocabulary(labels)
    arrays = H.train_head(emb, labels, vocab, TrainConfig(hidden=8, epochs=40))
    version = M.weights_version(str(M.resolve_model_dir(None).resolve()))
    meta = {"encoder": {"name": M.DEFAULT_ENCODER_NAME, "version": version, "precision": "fp32"}, "labels": vocab}
    store = TestStore(base / "models")
    store.register(name, arrays, dict(meta, input="tests/service LABELLED"))
    store.register(name, arrays, dict(meta, input="tests/service LABELLED, again"))
    store.store.client.set_registered_model_alias(name, "champion", "1")


def service_config(base: Path, **changes: Any) -> ServiceConfig:
    data: dict[str, Any] = {
        "pipeline_config": str(base / "pipeline.toml"),
        "max_request_bytes": 20_000,
        "keys_env": "AIBATCH_SERVICE_TEST_KEYS",
        "score": {"max_texts": 8, "max_batch_size": 32, "max_wait_ms": 30.0},
        "runs": {
            "db": str(base / "runs.db"),
            "dir": str(base / "runs"),
            "cancel_grace_seconds": 5.0,
            "progress_seconds": 1.0,
        },
    }
    data.update(changes)
    return parse_config(data)


@pytest.fixture(scope="session")
def service_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("service")
    pipeline_config(base)
    register_head(base)
    return base


@pytest.fixture(scope="session")
def service_url(service_base) -> Iterator[str]:
    app = create_app(service_config(service_base), (KEY, OTHER_KEY))
    with serve_in_thread(app, timeout=60) as url:
        yield url


@pytest.fixture
def client(service_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service_url, headers={"authorization": f"Bearer {KEY}"}, timeout=120) as c:
        yield c


def ingest_dry_run(tmp_path: Path) -> dict[str, Any]:
    """A run request: a dry run of ingest over a one-line file in tmp_path."""
    (tmp_path / "in.jsonl").write_text('{"text": "fine"}\n')
    return {
        "job": "ingest",
        "inputs": {"input": str(tmp_path / "in.jsonl")},
        "outputs": {"output": str(tmp_path / "o"), "rejects": str(tmp_path / "r")},
        "options": {"format": "jsonl", "source": "mine"},
        "dry_run": True,
    }


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """An RFC 9457 problem with this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://") and body["title"] and body["detail"]
    assert body["instance"] == response.request.url.path
    return body
