"""A private redis-server on a loopback port (Debian's `redis-server` package), for
tests and the demo: the enrich stage's shared store for a cluster.

    with LocalRedis(data_dir) as server:   # starts on a free port, stops at the end
        url = server.url                   # redis://127.0.0.1:PORT/0
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

from .daemons import end_child
from .hdfs import free_ports


class RedisError(RuntimeError):
    """redis-server is missing or did not start; the message says why."""


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RedisError("redis-server not found: install Debian's package (apt-get install redis-server)")
    return path


class LocalRedis:
    """redis-server bound to 127.0.0.1 only, no persistence, data under data_dir."""

    def __init__(self, data_dir: str | Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_ports(1)[0]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        binary = redis_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.data_dir / "redis.log"
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
            "--logfile", str(log_file),
            "--daemonize", "no",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        import redis

        while True:
            if self.proc.poll() is not None:
                tail = log_file.read_text()[-2000:] if log_file.exists() else ""
                raise RedisError(f"redis-server exited with {self.proc.returncode}: {tail}")
            try:
                redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisError(
                        f"redis-server did not answer on 127.0.0.1:{self.port} in {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        end_child(self.proc)
        self.proc = None

    def __enter__(self) -> LocalRedis:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
