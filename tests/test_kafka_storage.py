"""Kafka's storage format with the cluster ids the broker fixture draws.

CI once failed 13 stream tests at setup with `kafka-storage: error: argument
--cluster-id/-t: expected one argument`: the random id began with '-' (one id
in 64 does), so `-t ID` read the id as an option. Ids are now drawn as Kafka's
own Uuid.randomUuid draws them, and passed as `--cluster-id=ID`."""

from __future__ import annotations

import base64
import uuid

import pytest

from infra.kafka import LocalKafka, cluster_id

# 0xF8 starts the base64 text with '-' (its first six bits are 62).
DASH_FIRST = uuid.UUID(bytes=bytes([0xF8]) + bytes(range(1, 16)))


def test_dash_first_uuid_really_gives_a_dash_first_id():
    assert base64.urlsafe_b64encode(DASH_FIRST.bytes).decode().startswith("-")


def test_an_id_starting_with_a_dash_is_drawn_again():
    drawn = iter([DASH_FIRST, DASH_FIRST, uuid.UUID(int=7 << 64)])
    cid = cluster_id(lambda: next(drawn))
    assert cid == base64.urlsafe_b64encode(uuid.UUID(int=7 << 64).bytes).decode().rstrip("=")
    assert len(cid) == 22 and not cid.startswith("-")


def test_many_ids_are_valid_and_distinct():
    ids = {cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert not [i for i in ids if i.startswith("-") or len(i) != 22]


@pytest.mark.parametrize("cid", [None, base64.urlsafe_b64encode(DASH_FIRST.bytes).decode().rstrip("=")])
def test_storage_formats_with_the_id_it_is_given(tmp_path, cid):
    """The real StorageTool: even an id that starts with '-' reaches it as the
    cluster id, and the log dir records it."""
    broker = LocalKafka.on_free_ports(tmp_path / "kafka")
    broker.write_config()
    assert broker.format_storage(cid) is True
    props = dict(
        line.split("=", 1) for line in (broker.log_dirs / "meta.properties").read_text().splitlines() if "=" in line
    )
    if cid is not None:
        assert props["cluster.id"] == cid
    else:
        assert len(props["cluster.id"]) == 22 and not props["cluster.id"].startswith("-")
    assert broker.format_storage() is False
