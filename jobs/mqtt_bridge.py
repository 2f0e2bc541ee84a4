"""Forward MQTT device messages to a Kafka topic without loss: subscribe at
QoS 1 in a persistent session and acknowledge each message to the MQTT
broker only after Kafka has acknowledged it, so a crash of the bridge or a
restart of either broker loses nothing (the MQTT broker sends unacknowledged
messages again; duplicates are possible and the stream job's ingest removes
them by record id). The message's MQTT topic is the Kafka key; the payload
is the value, unchanged.

Run with:
    ./submit.sh mqtt-bridge --from mqtt://USER:PASS@127.0.0.1:1883/sensors/# \
        --to kafka://127.0.0.1:19092/sensors [--client-id aibatch-bridge] [--max-messages N]
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MqttSource:
    host: str
    port: int
    topic: str
    user: str | None
    password: str | None


@dataclass(frozen=True)
class KafkaSink:
    bootstrap: str
    topic: str


def parse_mqtt_url(url: str) -> MqttSource:
    """mqtt://[USER:PASS@]HOST[:PORT]/TOPIC-FILTER (the filter may hold + and #,
    written as is: everything after the first / is the filter)."""
    if not url.startswith("mqtt://"):
        raise ValueError(f"--from takes mqtt://[USER:PASS@]HOST[:PORT]/TOPIC, got {url!r}")
    netloc, _, topic = url[len("mqtt://") :].partition("/")
    parts = urlsplit(f"//{netloc}")
    if not topic or not parts.hostname:
        raise ValueError(f"--from needs a host and a topic filter: {url!r}")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return MqttSource(parts.hostname, parts.port or 1883, topic, user, password)


def parse_kafka_url(url: str) -> KafkaSink:
    """kafka://HOST:PORT[,HOST:PORT]/TOPIC"""
    if not url.startswith("kafka://"):
        raise ValueError(f"--to takes kafka://HOST:PORT/TOPIC, got {url!r}")
    servers, _, topic = url[len("kafka://") :].partition("/")
    if not servers or not topic or "/" in topic:
        raise ValueError(f"--to needs bootstrap servers and one topic: {url!r}")
    return KafkaSink(servers, topic)


class Bridge:
    """MQTT (paho-mqtt 2.x, its network loop in a thread) -> Kafka
    (confluent-kafka, delivery reports served in run()'s thread). A message
    is acknowledged to MQTT (manual ack) in Kafka's delivery report for it;
    a message Kafka refused is produced again, never acknowledged unsent."""

    def __init__(self, source: MqttSource, sink: KafkaSink, client_id: str):
        import paho.mqtt.client as mqtt
        from confluent_kafka import Producer

        self.source, self.sink = source, sink
        self.producer = Producer(
            {"bootstrap.servers": sink.bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
        )
        # A fixed client id and clean_session=False: the broker keeps the
        # subscription and the unacknowledged messages while the bridge is away.
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, manual_ack=True
        )
        if source.user:
            self.client.username_pw_set(source.user, source.password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.incoming: queue.Queue = queue.Queue()
        self.forwarded = 0
        self.stopping = threading.Event()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT connect refused: %s", reason_code)
            return
        client.subscribe(self.source.topic, qos=1)
        log.info("subscribed to %s (session present: %s)", self.source.topic, flags.session_present)

    def _on_message(self, client, userdata, msg) -> None:
        # paho's thread: hand over; producing and acks happen in run()'s thread.
        self.incoming.put(msg)

    def _produce(self, msg) -> None:
        def delivered(err, _record) -> None:
            if err is not None:
                log.warning("Kafka did not take message %s (%s): sending it again", msg.mid, err)
                self.incoming.put(msg)
                return
            self.client.ack(msg.mid, msg.qos)
            self.forwarded += 1

        self.producer.produce(self.sink.topic, key=msg.topic.encode(), value=msg.payload, on_delivery=delivered)

    def run(self, max_messages: int | None = None, idle_exit: float | None = None) -> int:
        """Forward until stopped (SIGTERM/SIGINT), after max_messages, or after
        idle_exit seconds without a message; returns the count forwarded."""
        self.client.connect_async(self.source.host, self.source.port, keepalive=30)
        self.client.loop_start()
        last = time.monotonic()
        try:
            while not self.stopping.is_set():
                try:
                    msg = self.incoming.get(timeout=0.1)
                    self._produce(msg)
                    last = time.monotonic()
                except queue.Empty:
                    pass
                self.producer.poll(0)
                if max_messages is not None and self.forwarded >= max_messages:
                    break
                if idle_exit is not None and time.monotonic() - last > idle_exit and not len(self.producer):
                    break
        finally:
            self.producer.flush(30)
            self.client.loop_stop()
            self.client.disconnect()
        return self.forwarded


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mqtt-bridge", description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--from", dest="source", required=True, help="mqtt://[USER:PASS@]HOST[:PORT]/TOPIC-FILTER")
    p.add_argument("--to", dest="sink", required=True, help="kafka://HOST:PORT/TOPIC")
    p.add_argument("--client-id", default="aibatch-bridge", help="MQTT client id of the persistent session")
    p.add_argument("--max-messages", type=int, help="stop after forwarding this many")
    p.add_argument("--idle-exit", type=float, help="stop after this many seconds without a message")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        source, sink = parse_mqtt_url(args.source), parse_kafka_url(args.sink)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    bridge = Bridge(source, sink, args.client_id)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: bridge.stopping.set())
    n = bridge.run(args.max_messages, args.idle_exit)
    print(f"mqtt-bridge: forwarded {n} messages from {source.topic} to {sink.topic} (each acknowledged after Kafka's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
