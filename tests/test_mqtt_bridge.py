"""./submit.sh mqtt-bridge (issue 23): N device messages published at QoS 1,
with the bridge killed (SIGKILL) and mosquitto restarted in the middle, all
reach the Kafka topic at least once. Brokers started by fixtures: mosquitto
(Debian's package, password file, persistence) and the shared Kafka."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from infra.mosquitto import LocalMosquitto
from jobs.mqtt_bridge import parse_kafka_url, parse_mqtt_url
from scripts.stream_messages import review_messages

REPO_ROOT = Path(__file__).resolve().parent.parent
N = 150


def test_urls():
    src = parse_mqtt_url("mqtt://dev:p%40ss@127.0.0.1:1884/sensors/#")
    assert (src.host, src.port, src.topic, src.user, src.password) == ("127.0.0.1", 1884, "sensors/#", "dev", "p@ss")
    assert parse_kafka_url("kafka://127.0.0.1:19092/sensors").topic == "sensors"
    for bad in ("http://x/y", "mqtt://host", "kafka://h:1/a/b"):
        with pytest.raises(ValueError):
            (parse_mqtt_url if bad.startswith(("http", "mqtt")) else parse_kafka_url)(bad)


def publish(broker: LocalMosquitto, payloads: list[bytes]) -> None:
    """Publish at QoS 1, each publish acknowledged by the broker (PUBACK)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"device-{time.monotonic_ns()}")
    client.username_pw_set(broker.user, broker.password)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish("sensors/dev1", payload, qos=1).wait_for_publish(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()


def consume_all(bootstrap: str, topic: str, want: set[bytes], timeout: float = 120) -> list[bytes]:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"check-{time.monotonic_ns()}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while not want <= set(got) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            value = msg.value() if msg is not None and not msg.error() else None
            if value is not None:
                got.append(value)
    finally:
        consumer.close()
    return got


@pytest.mark.slow
def test_no_message_lost_across_bridge_crash_and_broker_restart(kafka, tmp_path):
    broker = LocalMosquitto(tmp_path / "mosquitto")
    payloads = [
        json.dumps({"device": "dev1", "seq": i, "text": json.loads(m)["text"]}).encode()
        for i, m in enumerate(review_messages(N))
    ]
    cmd = [
        str(REPO_ROOT / "submit.sh"),
        "mqtt-bridge",
        "--from",
        broker.url("sensors/#"),
        "--to",
        f"kafka://{kafka.bootstrap}/sensors",
        "--client-id",
        "bridge-under-test",
    ]

    bridge_log = tmp_path / "bridge.log"

    def start_bridge() -> subprocess.Popen:
        """The bridge, once subscribed (its first start creates the broker's
        persistent session: what is published before that has no subscriber)."""
        start = bridge_log.stat().st_size if bridge_log.exists() else 0
        with open(bridge_log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while b"subscribed to" not in bridge_log.read_bytes()[start:]:
            assert proc.poll() is None and time.monotonic() < deadline, bridge_log.read_text()[-2000:]
            time.sleep(0.1)
        return proc

    broker.start()
    bridge = start_bridge()
    try:
        publish(broker, payloads[:50])
        time.sleep(1)  # some forwarded, some perhaps in flight
        os.killpg(bridge.pid, signal.SIGKILL)
        bridge.wait()
        publish(broker, payloads[50:90])  # queued by the broker for the persistent session
        broker.stop()
        broker.start()  # same port, password and database
        bridge = start_bridge()
        publish(broker, payloads[90:])
        got = consume_all(kafka.bootstrap, "sensors", set(payloads))
    finally:
        os.killpg(bridge.pid, signal.SIGTERM)
        bridge.wait(timeout=30)
        broker.stop()
    missing = set(payloads) - set(got)
    assert not missing, f"{len(missing)} of {N} messages never reached Kafka"
    assert len(got) >= N
