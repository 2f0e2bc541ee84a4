"""The registered models of the MLflow store the pipeline config names, for
/models and /score: what each model holds (versions, aliases, label sets,
lineage), references resolved to one version, and each version's head
loaded once per process (versions are immutable; aliases and 'latest' are
resolved again after a configured time)."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from udfs import models
from udfs.config import PipelineConfig
from udfs.models import HeadVersion, ModelError

NAME = re.compile(r"^[a-z][a-z0-9_-]*$")  # a registered model name, as train accepts
KIND = "encoder+head"  # the one kind train registers: a pinned encoder and a torch head over its embeddings


class UnknownModel(LookupError):
    """A reference naming no registered model or version (the message says what the store holds)."""


class BadReference(ValueError):
    """A reference the service does not take (a local path, a malformed URI)."""


@dataclasses.dataclass(frozen=True)
class Resolved:
    name: str
    version: int
    uri: str  # models:/name/N
    run_id: str


class Registry:
    def __init__(
        self,
        pipeline: PipelineConfig,
        home: Path,
        resolve_cache_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pipeline, self.home = pipeline, home
        self.ttl, self.clock = resolve_cache_seconds, clock
        self._store: models.Store | None = None
        self._lock = threading.Lock()
        self._resolved: dict[str, tuple[float, Resolved]] = {}
        self._heads: dict[str, HeadVersion] = {}

    @property
    def store(self) -> models.Store:
        with self._lock:
            if self._store is None:
                self._store = models.open_store(self.pipeline, self.home)
            return self._store

    @property
    def uri(self) -> str:
        return self.store.uri

    # ----- references ---------------------------------------------------

    def resolve(self, ref: str) -> Resolved:
        """models:/NAME/N, models:/NAME@ALIAS, models:/NAME/latest, NAME@N, or
        a bare NAME (its latest version), as one registered version."""
        uri = models.normalize_uri(ref.strip())
        if "://" not in uri and ":/" not in uri and NAME.match(uri):
            uri = f"models:/{uri}/latest"
        if not uri.startswith("models:/"):
            raise BadReference(
                f"model {ref!r}: the service scores registered models only: models:/NAME/N, "
                "models:/NAME@ALIAS, models:/NAME/latest, NAME@N or NAME"
            )
        now = self.clock()
        hit = self._resolved.get(uri)
        if hit and (uri.rsplit("/", 1)[-1].isdigit() or now - hit[0] < self.ttl):
            return hit[1]
        try:
            _source, name, version, run_id = self.store.locate(uri)
        except ModelError as exc:
            raise UnknownModel(str(exc)) from None
        if version is None:
            raise UnknownModel(f"model {ref!r} names no registered version")
        found = Resolved(name, version, f"models:/{name}/{version}", run_id)
        self._resolved[uri] = (now, found)
        return found

    def head(self, resolved: Resolved) -> HeadVersion:
        """The version's head (downloaded and hash-checked once)."""
        head = self._heads.get(resolved.uri)
        if head is None:
            try:
                head = models.load(self.store, resolved.uri)
            except ModelError as exc:
                raise UnknownModel(str(exc)) from None
            self._heads[resolved.uri] = head
        return head

    # ----- what the store holds ------------------------------------------

    def names(self) -> list[str]:
        return sorted(m.name for m in self.store.client.search_registered_models())

    def describe(self, name: str) -> dict[str, Any]:
        """One registered model: versions (labels, lineage), aliases, the latest version."""
        from mlflow.exceptions import MlflowException

        client = self.store.client
        try:
            registered = client.get_registered_model(name)
        except MlflowException:
            raise UnknownModel(f"no registered model {name!r} in MLflow store {self.uri}") from None
        found = client.search_model_versions(f"name='{name}'")
        versions = [self._version(name, int(v.version), v.run_id or "", v.creation_timestamp) for v in found]
        versions.sort(key=lambda v: v["version"])
        aliases = {alias: int(v) for alias, v in sorted((getattr(registered, "aliases", {}) or {}).items())}
        latest = versions[-1] if versions else None
        return {
            "name": name,
            "kind": KIND,
            "description": registered.description or "",
            "latest_version": latest["version"] if latest else None,
            "labels": latest["labels"] if latest else [],
            "aliases": aliases,
            "versions": versions,
        }

    def _version(self, name: str, version: int, run_id: str, created_ms: int | None) -> dict[str, Any]:
        head = self.head(Resolved(name, version, f"models:/{name}/{version}", run_id))
        encoder = dict(head.meta.get("encoder", {}))
        return {
            "version": version,
            "uri": f"models:/{name}/{version}",
            "kind": KIND,
            "labels": head.labels,
            "created_at": _iso(created_ms),
            "lineage": {
                "run_id": head.run_id or run_id,
                "encoder": encoder.get("name", ""),
                "encoder_version": encoder.get("version", ""),
                "encoder_precision": encoder.get("precision", ""),
                "weights_sha256": head.weights_sha256,
                "trained_at": head.meta.get("trained_at", ""),
                "input": head.meta.get("input", ""),
            },
        }


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
