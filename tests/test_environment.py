"""The installed environment is exactly the lock files.

A package installed by hand (say `pip install graphene`) can move another
pinned package (python-dateutil) off its pin without anyone noticing, and then
the lock no longer resolves on a fresh machine: `pip install -r
requirements.txt` fails there while every test passes here. Comparing each
pin with what is installed catches that drift where it happens.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ("requirements.txt", "requirements-nodeps.txt")
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)")


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_every_pin_is_what_is_installed() -> None:
    pins = {k: v for lock in LOCKS for k, v in _pins(lock).items()}
    assert len(pins) > 50, pins
    wrong = {
        name: f"pinned {want}, installed {got}"
        for name, want in sorted(pins.items())
        if (got := _installed(name)) != want
    }
    assert not wrong, (
        "the environment has drifted from the lock files (reinstall with "
        f"./scripts/setup.sh, or re-lock with ./scripts/lock.sh): {wrong}"
    )


def test_torch_is_the_pinned_version() -> None:
    pins = _pins("requirements-torch-cuda.txt")
    installed = _installed("torch")
    assert installed is not None
    # The local CPU-only build carries a "+cpu" local version label.
    assert installed.split("+")[0] == pins["torch"], installed
