"""Debian's Chromium, headless, for the run report's tests: a page's DOM and
screenshot from the command line (--dump-dom, --screenshot), and a tiny
DevTools-protocol client (over `websockets`) to watch a live page change.
A test that needs Chromium fails naming the command when it is missing
(scripts/setup.sh installs it)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]


def chromium() -> str:
    found = shutil.which("chromium")
    if not found:
        pytest.fail("chromium not found on PATH: apt-get install chromium (./scripts/setup.sh installs it)")
    return found


def _run(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="aibatch-chromium-") as profile:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def dump_dom(url: str, budget_ms: int = 5000) -> str:
    """The DOM after the page's scripts ran (virtual time: timers fire, the network is real)."""
    done = _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", url])
    assert done.returncode == 0 and "<html" in done.stdout, done.stderr[-2000:]
    return done.stdout


def screenshot(url: str, path: Path, size: str = "1400,2400", budget_ms: int = 5000) -> Path:
    done = _run([f"--virtual-time-budget={budget_ms}", f"--window-size={size}", f"--screenshot={path}", url])
    assert done.returncode == 0 and path.exists(), done.stderr[-2000:]
    return path


def not_blank(png: bytes | Path) -> tuple[int, float]:
    """(distinct colours, share of pixels that are not white) of a screenshot."""
    from PIL import Image

    data = png.read_bytes() if isinstance(png, Path) else png
    image = Image.open(io.BytesIO(data)).convert("RGB")
    colours: list[tuple[int, tuple[int, int, int]]] = image.getcolors(maxcolors=1 << 24) or []  # type: ignore[assignment]
    pixels = image.width * image.height
    white = sum(n for n, (r, g, b) in colours if min(r, g, b) >= 250)
    return len(colours), 1 - white / pixels


class DevTools:
    """One page of a headless Chromium, driven over the DevTools protocol."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id = ws, 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events come in between: skipped
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60, every: float = 0.2) -> Any:
        """The expression's value once it is truthy (fails after timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"not true after {timeout} s: {expression}")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])


@contextmanager
def devtools(size: tuple[int, int] = (1400, 2000)) -> Iterator[DevTools]:
    """A headless Chromium with one blank page, its DevTools on loopback."""
    from websockets.sync.client import connect

    with tempfile.TemporaryDirectory(prefix="aibatch-chromium-") as profile:
        proc = subprocess.Popen(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--window-size={size[0]},{size[1]}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its renderers and helpers in one group, ended together
        )
        try:
            active = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not (active.exists() and len(active.read_text().split()) >= 2):
                assert proc.poll() is None and time.monotonic() < deadline, "chromium did not open its DevTools port"
                time.sleep(0.1)
            port = active.read_text().split()[0]
            import httpx

            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            page = next(t for t in targets if t["type"] == "page")
            with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
                tools = DevTools(ws)
                tools.call("Page.enable")
                yield tools
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
