"""Running the gateway from Python, on a free loopback port, returning once it
serves: in a thread of this process (`serve_in_thread`, for tests that want
the app's state) or as `python -m gateway` in a child process
(`GatewayProcess`, for benchmarks and for tests of the command itself)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent


class GatewayDidNotStart(RuntimeError):
    """The gateway exited or did not answer /health in time; the message holds its output."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app: Any, timeout: float = 20) -> Iterator[str]:
    """Serve the ASGI app with uvicorn in a daemon thread on a loopback socket
    bound here (no race for the port); yields its base URL and stops it after."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise GatewayDidNotStart("gateway did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


class GatewayProcess:
    """`python -m gateway --config CONFIG --port PORT --log-level LEVEL` as a
    child process, for a `with` block (or start() and stop()): entering starts
    it and waits until GET /health answers 200 (GatewayDidNotStart with its
    output if it exits or `timeout` passes); leaving stops it. With
    capture=True its stdout and stderr together are in `.output` after."""

    def __init__(
        self,
        config: str | Path,
        env: dict[str, str],
        log_level: str = "warning",
        capture: bool = False,
        timeout: float = 60,
    ) -> None:
        self.config, self.env, self.log_level = str(config), env, log_level
        self.capture, self.timeout = capture, timeout
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.output = ""
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def start(self) -> GatewayProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", self.config, "--port", str(self.port)]
            + ["--log-level", self.log_level],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE if self.capture else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self.capture else subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if httpx.get(f"{self.base_url}/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise GatewayDidNotStart(f"gateway did not start:\n{self.output}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.output = (out or "") + (err or "")
        self.proc = None

    def __exit__(self, *exc: object) -> None:
        self.stop()
