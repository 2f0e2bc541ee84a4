"""A private MLflow store for tests (the embedded SQLite kind, in a temp
dir): register a head in one call, load one by ref, as the jobs do."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from udfs import models


class TestStore:
    """The embedded store in root (what registry_dir = root gives a job)."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.store = models.Store(f"sqlite:///{self.root.resolve() / 'mlflow.db'}", self.root)

    def register(self, name: str, arrays: Mapping[str, np.ndarray], meta: Mapping) -> models.HeadVersion:
        return self.store.log_trained(name, arrays, meta, {}, {}, {"labels": meta.get("labels")})

    def load(self, ref: str) -> models.HeadVersion:
        return models.load(self.store, ref)
