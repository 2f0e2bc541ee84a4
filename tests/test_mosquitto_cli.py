"""./scripts/mosquitto.sh (python -m infra mosquitto): a background broker on
loopback that refuses anonymous clients, takes the generated password, says
where that password is without printing it, and stops cleanly."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from infra.hdfs import free_ports

ROOT = Path(__file__).resolve().parent.parent


def infra(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infra", "mosquitto", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def connect_rc(port: int, user: str | None, password: str | None) -> int:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="aibatch-cli-test")
    codes: list[int] = []
    client.on_connect = lambda c, u, flags, reason, props: codes.append(reason.value)
    if user:
        client.username_pw_set(user, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for _ in range(100):
            if codes:
                break
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    assert codes, "no CONNACK"
    return codes[0]


def test_start_status_connect_stop(tmp_path):
    data = tmp_path / "mq"
    port = free_ports(1)[0]
    try:
        started = infra("start", "--data-dir", str(data), "--port", str(port))
        assert started.returncode == 0, started.stderr
        password = (data / "password.txt").read_text().strip()
        assert "mosquitto started" in started.stdout
        assert f"<password in {data / 'password.txt'}>@127.0.0.1:{port}" in started.stdout
        assert password not in started.stdout + started.stderr
        assert (data / "password.txt").stat().st_mode & 0o077 == 0
        assert infra("status", "--data-dir", str(data)).returncode == 0
        again = infra("start", "--data-dir", str(data), "--port", str(port))
        assert again.returncode == 0 and "already running" in again.stdout
        assert connect_rc(port, "aibatch", password) == 0
        assert connect_rc(port, None, None) != 0  # no anonymous access
    finally:
        stopped = infra("stop", "--data-dir", str(data))
    assert stopped.returncode == 0 and "mosquitto stopped" in stopped.stdout
    status = infra("status", "--data-dir", str(data))
    assert status.returncode == 3 and "stopped" in status.stdout


@pytest.mark.parametrize("action", ["stop", "status"])
def test_nothing_running(tmp_path, action):
    r = infra(action, "--data-dir", str(tmp_path / "none"))
    assert r.returncode == (0 if action == "stop" else 3)
    assert ("was not running" if action == "stop" else "mosquitto stopped") in r.stdout
