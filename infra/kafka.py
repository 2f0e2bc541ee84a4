"""A single-node Apache Kafka 4.x broker in KRaft mode (one process is both
controller and broker; no ZooKeeper) on loopback, from the jars that
scripts/setup.sh resolves from Maven Central (kafka/pom.xml) into
var/kafka-<version>/libs. Its lib dir is its own: it is never on Spark's
classpath (the stream job takes Spark's connector, kafka/connector-pom.xml).

Storage is formatted (kafka.tools.StorageTool format) on the first start
only; the data stay under the instance dir across restarts.

    ./scripts/kafka.sh start|stop|status          # var/kafka, 127.0.0.1:19092
    with LocalKafka(tmp_dir) as kafka:            # tests: free ports
        kafka.bootstrap                           # 127.0.0.1:PORT
"""

from __future__ import annotations

import base64
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .daemons import ClusterError, DaemonSet, java_or_error, status_of
from .hdfs import free_ports, port_in_use

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_VERSION = "4.3.1"  # kafka/pom.xml's kafka.version
DEFAULT_KAFKA_HOME = REPO_ROOT / "var" / f"kafka-{KAFKA_VERSION}"
DEFAULT_DATA_DIR = REPO_ROOT / "var" / "kafka"
DEFAULT_PORT = 19092  # Kafka's default 9092 shifted, as conf/hdfs.toml shifts Hadoop's
NAME = "kafka"

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log_dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{ISO8601}} %p %c{{1}} %m%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = warn
logger.apache.name = org.apache.kafka
logger.apache.level = warn
"""


class KafkaError(ClusterError):
    """The broker could not be started or reached; the message says why."""


def cluster_id(new: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    """A Kafka cluster id: 16 random bytes, base64url without padding (what
    `kafka-storage.sh random-uuid` prints). Like Kafka's `Uuid.randomUuid`,
    it draws again while the text starts with '-' (one id in 64 would), which
    command lines would read as an option."""
    while True:
        text = base64.urlsafe_b64encode(new().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass
class LocalKafka:
    """One broker+controller bound to 127.0.0.1, data under data_dir."""

    data_dir: Path = DEFAULT_DATA_DIR
    port: int = DEFAULT_PORT
    controller_port: int = DEFAULT_PORT + 1
    kafka_home: Path = DEFAULT_KAFKA_HOME
    heap: str = "512m"
    partitions: int = 2  # of a topic created on first use

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.daemons = DaemonSet(self.data_dir)

    @classmethod
    def on_free_ports(cls, data_dir: Path, **kw) -> LocalKafka:
        port, controller = free_ports(2)
        return cls(data_dir=data_dir, port=port, controller_port=controller, **kw)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "data"

    def libs(self) -> Path:
        libs = self.kafka_home / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise KafkaError(f"no Kafka jars in {libs}: run ./scripts/setup.sh")
        return libs

    def write_config(self) -> None:
        """server.properties and log4j2.properties for this instance; ports
        and paths come from the instance, so a restart on other ports works."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "num.partitions": str(self.partitions),
            # One node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
        }
        self.properties_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(LOG4J2.format(log_dir=self.daemons.log_dir))

    def java(self, main: list[str]) -> list[str]:
        return [
            java_or_error(),
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            self.daemons.marker,
            f"-Dlog4j2.configurationFile=file:{self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{self.libs()}/*",
            *main,
        ]

    def format_storage(self, cid: str | None = None) -> bool:
        """Format the log dir once (its meta.properties marks it) with cluster
        id cid (a new one by default); False when it already was."""
        if (self.log_dirs / "meta.properties").exists():
            return False
        import subprocess

        argv = self.java(
            [
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cid or cluster_id()}",
                "-c",
                str(self.properties_file),
                "--ignore-formatted",
            ]
        )
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise KafkaError(f"formatting Kafka's storage failed: {(done.stderr or done.stdout).strip()[-2000:]}")
        return True

    def pid(self) -> int | None:
        return self.daemons.pid(NAME)

    def ready(self) -> bool:
        from confluent_kafka.admin import AdminClient

        if not port_in_use("127.0.0.1", self.port):
            return False
        try:
            meta = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=2)
        except Exception:  # KafkaException while the broker starts
            return False
        return bool(meta.brokers)

    def status(self) -> str:
        return status_of({NAME: self.pid()}, self.ready)

    def start(self, timeout: float = 90.0) -> bool:
        """Start the broker (formatting storage first if new); False when it
        already runs."""
        if self.pid():
            return False
        for port in (self.port, self.controller_port):
            if port_in_use("127.0.0.1", port):
                raise KafkaError(f"port {port} on 127.0.0.1 is in use: stop what holds it or choose other ports")
        self.write_config()
        if self.format_storage():
            log.info("formatted Kafka storage in %s", self.log_dirs)
        env = {k: v for k, v in os.environ.items() if k not in ("CLASSPATH", "KAFKA_OPTS")}
        self.daemons.spawn(NAME, self.java(["kafka.Kafka", str(self.properties_file)]), env)
        try:
            self.daemons.wait([NAME], self.ready, "the Kafka broker", timeout)
        except ClusterError as exc:
            self.stop()
            raise KafkaError(str(exc)) from None
        return True

    def stop(self) -> bool:
        return self.daemons.stop([NAME])

    def kill(self) -> None:
        """SIGKILL the broker (tests of a crash)."""
        import signal

        pid = self.pid()
        if pid:
            os.killpg(pid, signal.SIGKILL)

    def describe(self) -> str:
        return f"  bootstrap servers {self.bootstrap}\n  data {self.data_dir}\n  logs {self.daemons.log_dir}"

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
