"""A private Mosquitto MQTT broker (Debian's `mosquitto` package) on loopback
with a password file (no anonymous access) and persistence under its data
dir, for the device bridge (jobs/mqtt_bridge.py), its tests and the demo.

    with LocalMosquitto(data_dir) as broker:    # a free port, user aibatch
        broker.url("sensors/#")                 # mqtt://aibatch:PASS@127.0.0.1:PORT/sensors/#

    python -m infra mosquitto start|stop|status [--data-dir var/mosquitto] [--port 1883]

(./scripts/mosquitto.sh) runs one in the background instead, its pid in
data_dir/mosquitto.pid, the password in data_dir/password.txt (mode 0600).
"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from .daemons import end_child
from .hdfs import free_ports


class MosquittoError(RuntimeError):
    """mosquitto is missing or did not start; the message says why."""


def binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        raise MosquittoError(f"{name} not found: install Debian's package (apt-get install mosquitto)")
    return path


class LocalMosquitto:
    """mosquitto bound to 127.0.0.1 only; one user from a password file;
    in-flight and retained messages and persistent sessions kept in
    data_dir/mosquitto.db across a (clean) restart."""

    def __init__(self, data_dir: str | Path, port: int | None = None, user: str = "aibatch") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_ports(1)[0]
        self.user = user
        secret = self.data_dir / "password.txt"
        self.password = secret.read_text().strip() if secret.exists() else secrets.token_urlsafe(12)
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, topic: str) -> str:
        return f"mqtt://{self.user}:{self.password}@127.0.0.1:{self.port}/{topic}"

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secret = self.data_dir / "password.txt"
        secret.write_text(self.password + "\n")
        secret.chmod(0o600)
        passwd = self.data_dir / "passwd"
        passwd.unlink(missing_ok=True)
        subprocess.run(
            [binary("mosquitto_passwd"), "-b", "-c", str(passwd), self.user, self.password],
            check=True,
            capture_output=True,
        )
        passwd.chmod(0o600)
        conf = self.data_dir / "mosquitto.conf"
        conf.write_text(
            # Started as root, mosquitto drops to the `mosquitto` user, who
            # cannot read a private data dir: stay the user who started it.
            f"user {getpass.getuser()}\n"
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {passwd}\n"
            "persistence true\n"
            f"persistence_location {self.data_dir}/\n"
            # Save in-flight messages often, not only at a clean shutdown.
            "autosave_interval 1\n"
            f"log_dest file {self.data_dir}/mosquitto.log\n"
            "max_queued_messages 100000\n"
        )
        return conf

    def start(self, timeout: float = 20.0, new_session: bool = False) -> None:
        conf = self.write_config()
        self.proc = subprocess.Popen(
            [binary("mosquitto"), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=new_session,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                log = self.data_dir / "mosquitto.log"
                raise MosquittoError(
                    f"mosquitto exited with {self.proc.returncode}: {log.read_text()[-2000:] if log.exists() else ''}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise MosquittoError(
                        f"mosquitto did not listen on 127.0.0.1:{self.port} in {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)

    # ----- in the background (python -m infra mosquitto) ----------------------
    @property
    def pid_file(self) -> Path:
        return self.data_dir / "mosquitto.pid"

    def running_pid(self) -> int | None:
        """The pid of a background broker of this data dir, if it runs."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, IndexError, ProcessLookupError, PermissionError):
            return None
        return pid

    def start_background(self, timeout: float = 20.0) -> bool:
        """Start mosquitto detached from this process (False if it already ran);
        its pid and port are kept in pid_file."""
        if self.running_pid():
            return False
        self.start(timeout, new_session=True)
        assert self.proc is not None
        self.pid_file.write_text(f"{self.proc.pid} {self.port}\n")
        self.proc = None  # not stopped with this process
        return True

    def stop_background(self) -> bool:
        pid = self.running_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)  # mosquitto saves its database first
        deadline = time.monotonic() + 10
        while self.running_pid() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.running_pid():
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def stop(self) -> None:
        """A clean stop (SIGTERM): mosquitto saves its database first."""
        end_child(self.proc)
        self.proc = None

    def __enter__(self) -> LocalMosquitto:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
