"""`./submit.sh serve` (python -m service): starts on loopback with keys from
the environment; refuses another address without allow_remote_access and a
missing key variable, in one line, exit status 2."""

from __future__ import annotations

import os
import subprocess
import time

import httpx

from gateway.running import free_port

from .conftest import KEY, REPO


def write_config(path, base, extra: str = "") -> None:
    path.write_text(
        f'pipeline_config = "{base / "pipeline.toml"}"\nkeys_env = "AIBATCH_SERVICE_TEST_KEYS"\n{extra}\n'
        f'[runs]\ndb = "{path.parent / "runs.db"}"\ndir = "{path.parent / "runs"}"\n'
    )


def test_submit_sh_serve_starts_on_loopback_and_checks_the_key(service_base, tmp_path):
    config = tmp_path / "service.toml"
    write_config(config, service_base)
    port = free_port()
    env = dict(os.environ, AIBATCH_SERVICE_TEST_KEYS=f"{KEY},sk-other")
    proc = subprocess.Popen(
        [str(REPO / "submit.sh"), "serve", "--config", str(config), "--port", str(port), "--log-level", "info"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/v1/health")
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.3)
        assert health.json()["status"] == "ok"
        url = f"http://127.0.0.1:{port}/api/v1/runs"
        assert httpx.get(url, headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        assert httpx.get(url, params={"api_key": KEY}).status_code == 401  # a key in the query string counts not
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "2 API key(s) from $AIBATCH_SERVICE_TEST_KEYS" in out
    assert KEY not in out and "sk-other" not in out  # keys are never logged, not even where a client sent one


def test_another_address_or_no_key_is_refused_in_one_line(service_base, tmp_path):
    config = tmp_path / "service.toml"
    write_config(config, service_base, 'host = "0.0.0.0"')
    env = dict(os.environ, AIBATCH_SERVICE_TEST_KEYS=KEY)
    run = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "service", "--config", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "not a loopback address" in run.stderr and "allow_remote_access" in run.stderr
    write_config(config, service_base)
    env.pop("AIBATCH_SERVICE_TEST_KEYS")
    run = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "service", "--config", str(config), "--port", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "service: $AIBATCH_SERVICE_TEST_KEYS holds no API key: set it to one or more keys, comma-separated"
    )
