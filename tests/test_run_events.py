"""jobs/run_events.py against a real mosquitto (issue 23): the final status is
retained for a subscriber that connects later; an unreachable broker never
fails the job and is logged once. (tests/test_stream.py checks the same
through a real stream job's run.)"""

from __future__ import annotations

import json
import logging
import time

import pytest

from infra.hdfs import free_ports
from infra.mosquitto import LocalMosquitto
from jobs.run_events import RunEvents, status_topic
from udfs.config import EventsConfig


def late_messages(broker: LocalMosquitto, topic: str, wait: float = 2.0) -> list:
    import paho.mqtt.client as mqtt

    got: list = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"late-{time.monotonic_ns()}")
    client.username_pw_set(broker.user, broker.password)
    client.on_message = lambda c, u, msg: got.append(msg)
    client.connect("127.0.0.1", broker.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    time.sleep(wait)
    client.loop_stop()
    client.disconnect()
    return got


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory):
    with LocalMosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


def test_late_subscriber_sees_the_retained_final_status(mosquitto):
    events = RunEvents(EventsConfig(mqtt_url=mosquitto.url("").rstrip("/"), progress_seconds=0.2), "ingest", "r1")
    events.start()
    time.sleep(0.5)  # a progress event or two
    events.close("finished", summary={"input": 3, "good": 2, "rejected": 1})
    [msg] = late_messages(mosquitto, "aibatch/runs/+/status")
    assert msg.topic == status_topic("r1") and msg.retain
    event = json.loads(msg.payload)
    assert (event["state"], event["job"], event["run_id"]) == ("finished", "ingest", "r1")
    assert event["summary"] == {"input": 3, "good": 2, "rejected": 1}


def test_off_unless_configured_and_never_fails_the_job(caplog):
    RunEvents(EventsConfig(), "score", "r2").close("finished", summary={})  # off: nothing to reach
    [port] = free_ports(1)  # nothing listens there
    events = RunEvents(EventsConfig(mqtt_url=f"mqtt://127.0.0.1:{port}"), "score", "r3")
    with caplog.at_level(logging.WARNING, logger="jobs.run_events"):
        events.start()
        events.close("failed", error="boom")
    assert len([r for r in caplog.records if "run events" in r.getMessage()]) == 1
