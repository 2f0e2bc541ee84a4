"""The service layer both front doors call: the REST API (service/app.py)
and the MCP server (service/mcp_server.py). One object per process holds
the model registry, the micro-batching scorer, the runs and the per-key
limiter, all built from the one validated ServiceConfig."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from udfs.config import load_config as load_pipeline_config

from . import errors
from .config import REPO, ServiceConfig
from .ratelimits import Limiter
from .registry import Registry, UnknownModel
from .runs import RunManager, RunStore
from .scoring import Scorer


@dataclasses.dataclass
class ServiceLayer:
    config: ServiceConfig
    registry: Registry
    scorer: Scorer
    runs: RunManager
    limiter: Limiter

    @classmethod
    def build(cls, config: ServiceConfig, home: Path = REPO) -> ServiceLayer:
        limiter = Limiter(config.limits)
        pipeline_path = config.path(config.pipeline_config)
        pipeline = load_pipeline_config(pipeline_path)
        registry = Registry(pipeline, home, config.score.resolve_cache_seconds)
        scorer = Scorer(
            pipeline, registry, config.score.max_batch_size, config.score.max_wait_ms, config.score.torch_threads
        )
        store = RunStore(config.path(config.runs.db))
        runs = RunManager(
            store,
            config.path(config.runs.dir),
            home,
            pipeline_path,
            config.runs.cancel_grace_seconds,
            config.runs.progress_seconds,
            limiter,
        )
        return cls(config, registry, scorer, runs, limiter)

    def models(self) -> dict[str, Any]:
        """Every registered model (GET /api/v1/models, the MCP tool list_models)."""
        return {"registry": self.registry.uri, "models": [self.registry.describe(n) for n in self.registry.names()]}

    def model(self, name: str) -> dict[str, Any]:
        """One registered model; 404 for a name the store lacks."""
        try:
            return self.registry.describe(name)
        except UnknownModel as exc:
            raise errors.not_found(str(exc)) from None
