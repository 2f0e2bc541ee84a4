"""Run events for other applications: a job's lifecycle (started, running
every progress_seconds, finished with its summary or failed with its error)
as JSON to MQTT topic aibatch/runs/{run_id}/status, QoS 1 and retained, so a
subscriber that connects later sees the last state; to a Kafka topic (key:
the run id) when configured; and appended as JSON Lines to a file where one
is given ($AIBATCH_EVENTS_FILE: the service sets it and serves the lines as
Server-Sent Events). Off unless [events] names a broker or a file is given.
A failure to publish is logged once and never fails the job.

jobs.spark.common.run_cli publishes them for every Spark job; once its
session runs, each `running` event also carries what the session's progress
source reports (jobs.spark.common.spark_progress: the active stages, their
tasks done of all). The events are also kept (`history`, for the run's
report: jobs/report.py), published anywhere or not."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from udfs.config import EventsConfig

log = logging.getLogger(__name__)

EVENTS_FILE_ENV = "AIBATCH_EVENTS_FILE"
MAX_KEPT = 2000  # events kept in `history` (about; thinned evenly past twice this)


def status_topic(run_id: str) -> str:
    return f"aibatch/runs/{run_id}/status"


class RunEvents:
    def __init__(self, config: EventsConfig, job: str, run_id: str, events_file: str | None = None):
        self.config, self.job, self.run_id = config, job, run_id
        self.events_file = events_file or None
        self._progress_source: Callable[[], dict[str, Any]] | None = None
        self.started = time.monotonic()
        self.started_at = time.time()
        self.history: list[dict[str, Any]] = []  # every event, also when published nowhere
        self._mqtt: Any = None
        self._producer: Any = None
        self._kafka_topic = ""
        self._warned = False
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.config.mqtt_url or self.config.kafka_url or self.events_file)

    def progress_from(self, source: Callable[[], dict[str, Any]] | None) -> None:
        """What each `running` event adds (None: nothing more); a source
        that fails adds nothing that time."""
        self._progress_source = source

    def _warn_once(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            log.warning("run events: could not %s (%s); the job goes on, further failures not logged", what, exc)
            self._warned = True

    def _connect(self) -> None:
        if self.config.mqtt_url and self._mqtt is None:
            import paho.mqtt.client as mqtt

            url = urlsplit(self.config.mqtt_url)
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"aibatch-run-{self.run_id}")
            if url.username:
                client.username_pw_set(unquote(url.username), unquote(url.password or ""))
            client.connect(url.hostname or "127.0.0.1", url.port or 1883, keepalive=30)
            client.loop_start()
            self._mqtt = client
        if self.config.kafka_url and self._producer is None:
            from confluent_kafka import Producer

            servers, _, self._kafka_topic = self.config.kafka_url.removeprefix("kafka://").partition("/")
            self._producer = Producer({"bootstrap.servers": servers, "acks": "all"})

    def publish(self, state: str, **fields) -> None:
        event = {
            "run_id": self.run_id,
            "job": self.job,
            "state": state,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "elapsed_s": round(time.monotonic() - self.started, 1),
            **fields,
        }
        self.history.append(event)
        if len(self.history) > 2 * MAX_KEPT:  # a long run: keep the first events and every other later one
            self.history = self.history[:2] + self.history[2::2]
        if not self.enabled:
            return
        payload = json.dumps(event, default=str).encode()
        if self.events_file:
            try:
                # one write of one whole line, appended: a reader never sees half an event
                fd = os.open(self.events_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, payload + b"\n")
                finally:
                    os.close(fd)
            except OSError as exc:
                self._warn_once(f"append the {state} event to {self.events_file}", exc)
        try:
            self._connect()
            if self._mqtt is not None:
                self._mqtt.publish(status_topic(self.run_id), payload, qos=1, retain=True).wait_for_publish(timeout=10)
            if self._producer is not None:
                self._producer.produce(self._kafka_topic, key=self.run_id.encode(), value=payload)
                self._producer.flush(10)
        except Exception as exc:  # never fail the job
            self._warn_once(f"publish the {state} event", exc)

    def _progress(self) -> None:
        while not self._stop.wait(self.config.progress_seconds):
            fields: dict[str, Any] = {}
            source = self._progress_source
            if source is not None:
                try:
                    fields = source()
                except Exception as exc:  # the session stopping under it, a py4j hiccup: the event goes anyway
                    log.debug("run events: no progress this time (%s)", exc)
            self.publish("running", **fields)

    def start(self) -> None:
        self.publish("started")
        # always: the report draws the progress even where nothing is published
        self._timer = threading.Thread(target=self._progress, name="run-events", daemon=True)
        self._timer.start()

    def close(self, state: str, **fields) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=5)
        self.publish(state, **fields)
        if self._mqtt is not None:
            self._mqtt.loop_stop()
            self._mqtt.disconnect()
