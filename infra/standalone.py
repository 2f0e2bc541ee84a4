"""Start, stop and check a Spark standalone cluster on loopback: Spark's own
Master and `spark_workers` Workers (`spark-class org.apache.spark.deploy.
master.Master` / `...worker.Worker` from the installed pyspark), each in its
own JVM, every port and web UI on settings.host.

Workers need only Java and a Python 3.11 at the path the packed environment
links to: jobs ship their environment (./submit.sh pack) and code.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .daemons import DaemonSet, check_ports, get_json, java_home, java_or_error, status_of, with_fast_gunzip
from .settings import ClusterSettings

log = logging.getLogger(__name__)


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


@dataclass
class SparkStandalone:
    settings: ClusterSettings

    def __post_init__(self):
        self.base = Path(self.settings.spark_dir).resolve()
        self.daemons = DaemonSet(self.base)
        self.conf_dir = self.base / "conf"

    @property
    def master_url(self) -> str:
        return self.settings.spark_master_url

    @property
    def master_web_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.spark_master_http_port}"

    def worker_names(self) -> list[str]:
        return [f"worker-{i + 1}" for i in range(self.settings.spark_workers)]

    def names(self) -> list[str]:
        return ["master", *self.worker_names()]

    def work_dir(self, worker: str) -> Path:
        return self.base / worker / "work"

    def _env(self, java: str, daemon_opts: str = "") -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        home = spark_home()
        env.update(
            SPARK_HOME=str(home),
            JAVA_HOME=java_home(java),
            SPARK_CONF_DIR=str(self.conf_dir),
            # The master's and workers' web UIs bind SPARK_LOCAL_IP (else all
            # interfaces); their RPC ports bind --host.
            SPARK_LOCAL_IP=self.settings.host,
            SPARK_DAEMON_MEMORY=self.settings.daemon_heap,
            SPARK_DAEMON_JAVA_OPTS=f"{self.daemons.marker} {daemon_opts}".strip(),
            SPARK_LOG_DIR=str(self.daemons.log_dir),
        )
        # executors, started by the workers, unpack spark.archives with it
        return with_fast_gunzip(env)

    def _write_conf(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "spark-defaults.conf").write_text(
            "# Written by infra/standalone.py for the daemons of this instance.\n"
            "spark.master.rest.enabled false\n"
            "spark.ui.reverseProxy false\n"
        )

    def running(self) -> dict[str, int | None]:
        return {name: self.daemons.pid(name) for name in self.names()}

    def alive_workers(self) -> int:
        state = get_json(f"{self.master_web_url}/json/")
        if not state:
            return 0
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    def is_ready(self) -> bool:
        return self.alive_workers() >= self.settings.spark_workers

    def start(self, timeout: float = 90.0) -> bool:
        """Start the master and the workers; False if they already ran."""
        pids = self.running()
        if all(pids.values()):
            self.daemons.wait(self.names(), self.is_ready, "the Spark standalone cluster", timeout)
            return False
        if any(pids.values()):
            self.stop()
        java = java_or_error()
        names = {"spark_master_port": "Spark master RPC", "spark_master_http_port": "Spark master web UI"}
        check_ports(self.settings.host, self.settings.spark_ports(), lambda k: names.get(k, "Spark worker web UI"))
        self._write_conf()
        spark_class = str(spark_home() / "bin" / "spark-class")
        host = self.settings.host
        self.daemons.spawn(
            "master",
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                host,
                "--port",
                str(self.settings.spark_master_port),
                "--webui-port",
                str(self.settings.spark_master_http_port),
            ],
            self._env(java),
        )
        # Finished applications' work dirs (each holds its unpacked
        # environment, ~5 GB) go within minutes, not after Spark's default 7 days.
        cleanup = (
            "-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.interval=60 "
            "-Dspark.worker.cleanup.appDataTtl=120"
        )
        for i, name in enumerate(self.worker_names()):
            work = self.work_dir(name)
            work.mkdir(parents=True, exist_ok=True)
            self.daemons.spawn(
                name,
                [
                    spark_class,
                    "org.apache.spark.deploy.worker.Worker",
                    "--host",
                    host,
                    "--webui-port",
                    str(self.settings.spark_worker_http_port + i),
                    "--cores",
                    str(self.settings.spark_worker_cores),
                    "--memory",
                    self.settings.spark_worker_memory,
                    "--work-dir",
                    str(work),
                    self.master_url,
                ],
                self._env(java, cleanup),
            )
        try:
            self.daemons.wait(self.names(), self.is_ready, "the Spark standalone cluster", timeout)
        except BaseException:
            self.stop()
            raise
        return True

    def stop(self) -> bool:
        return self.daemons.stop([*reversed(self.worker_names()), "master"])

    def status(self) -> str:
        return status_of(self.running(), self.is_ready)

    def describe(self) -> str:
        s = self.settings
        return (
            f"master:  {self.master_url} (web UI {self.master_web_url})\n"
            f"workers: {s.spark_workers} x {s.spark_worker_cores} core, {s.spark_worker_memory} "
            f"(web UIs from port {s.spark_worker_http_port}), work dirs under {self.base}\n"
            f"logs:    {self.daemons.log_dir}"
        )

    def clean(self) -> None:
        """Remove the workers' work dirs (finished applications' files)."""
        for name in self.worker_names():
            shutil.rmtree(self.work_dir(name), ignore_errors=True)
