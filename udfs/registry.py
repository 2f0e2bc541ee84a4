"""A file-based registry of trained heads: immutable, numbered versions.

Layout: <root>/<name>/<version>/head.safetensors and meta.json. Training
registers a new version (the next number; an existing version is never
written again); jobs name a version as `name@N` (or `name@latest`), the way
AI APIs name model versions. Each version records the SHA-256 of its weights,
checked on every load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WEIGHTS_FILE = "head.safetensors"
META_FILE = "meta.json"
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class RegistryError(LookupError):
    """An unknown or damaged model version; the message lists the known ones."""


@dataclasses.dataclass(frozen=True)
class HeadVersion:
    name: str
    version: int
    arrays: Mapping[str, np.ndarray]
    meta: Mapping

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def weights_sha256(self) -> str:
        return self.meta["weights_sha256"]

    @property
    def labels(self) -> list[str]:
        """The head's classes in its output order (stored at training)."""
        labels = self.meta.get("labels")
        if not labels:
            raise RegistryError(f"{self.ref}: no labels recorded with the head (meta.json 'labels')")
        return list(labels)


def weights_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_ref(ref: str) -> tuple[str, str]:
    name, sep, version = ref.partition("@")
    if not sep or not _NAME.match(name) or not (version.isdigit() or version == "latest"):
        raise RegistryError(f"model name must look like 'name@N' or 'name@latest', got {ref!r}")
    return name, version


def load_version_dir(d: Path) -> HeadVersion:
    """One version's directory (in the registry, or a copy shipped to a
    task), its weights checked against the SHA-256 recorded at training."""
    from safetensors.numpy import load_file

    meta = json.loads((d / META_FILE).read_text())
    ref = f"{meta['name']}@{meta['version']}"
    digest = weights_digest(d / WEIGHTS_FILE)
    if digest != meta["weights_sha256"]:
        raise RegistryError(f"{ref} in {d}: weights hash {digest[:12]} != recorded {meta['weights_sha256'][:12]}")
    return HeadVersion(meta["name"], int(meta["version"]), load_file(str(d / WEIGHTS_FILE)), meta)


class Registry:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def versions(self, name: str) -> list[int]:
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / META_FILE).is_file())

    def known(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [f"{d.name}@{v}" for d in sorted(self.root.iterdir()) if d.is_dir() for v in self.versions(d.name)]

    def _unknown(self, ref: str) -> RegistryError:
        known = ", ".join(self.known()) or "none (run the train job first)"
        return RegistryError(f"unknown model {ref!r} in registry {self.root}; known: {known}")

    def resolve(self, ref: str) -> str:
        """The concrete `name@N` for a ref; RegistryError listing the known
        versions when it names none."""
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if version == "latest":
            if not versions:
                raise self._unknown(ref)
            return f"{name}@{versions[-1]}"
        if int(version) not in versions:
            raise self._unknown(ref)
        return f"{name}@{int(version)}"

    def load(self, ref: str) -> HeadVersion:
        name, version = parse_ref(self.resolve(ref))
        return load_version_dir(self.root / name / version)

    def register(self, name: str, arrays: Mapping[str, np.ndarray], meta: Mapping) -> HeadVersion:
        """Write a new immutable version (the next number) and return it."""
        from safetensors.numpy import save_file

        if not _NAME.match(name):
            raise RegistryError(f"model name must match {_NAME.pattern}, got {name!r}")
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))
        try:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / WEIGHTS_FILE))
            full_meta = dict(meta, name=name, weights_sha256=weights_digest(tmp / WEIGHTS_FILE))
            while True:
                version = (self.versions(name) or [0])[-1] + 1
                full_meta["version"] = version
                (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, sort_keys=True) + "\n")
                for f in tmp.iterdir():
                    f.chmod(0o444)
                try:
                    # rename onto a missing directory is atomic; an existing
                    # one (a concurrent registration) makes it fail, not merge.
                    os.rename(tmp, base / str(version))
                    break
                except OSError:
                    if not (base / str(version)).exists():
                        raise
                    for f in tmp.iterdir():
                        f.chmod(0o644)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        log.info("registered %s@%d (weights %s)", name, version, full_meta["weights_sha256"][:12])
        return self.load(f"{name}@{version}")
