"""The scoring set-up both engines share: settings from the pipeline config,
the encoder's weights version, the check that the head was trained on those
weights, and the lineage values. The Spark score job calls it on the driver,
the mrjob twin in each task's mapper_init (on the shipped model copies)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path

from . import lineage as L
from . import model as M
from .config import PipelineConfig
from .models import HeadVersion
from .predict import ScoreSettings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ScoringPlan:
    settings: ScoreSettings
    lineage: dict
    head_ref: str


def plan_scoring(
    config: PipelineConfig,
    head: HeadVersion,
    run_id: str,
    *,
    encoder_dir: str | Path | None = None,
    precision: str | None = None,
    torch_threads: int | None = None,
    scored_at: dt.datetime | None = None,
) -> ScoringPlan:
    """encoder_dir: a shipped copy of the encoder (default: encoder.model_dir,
    else the installed package's); precision: an override of
    encoder.precision. Raises lineage.EncoderMismatch for a head trained on
    other encoder weights."""
    model_dir = str(encoder_dir) if encoder_dir else (config.encoder.model_dir or None)
    effective = M.effective_precision(precision or config.encoder.precision)
    trained = head.meta.get("encoder", {}).get("precision")
    if trained and effective != trained:
        log.warning("scoring in %s; %s was trained on %s embeddings", effective, head.ref, trained)
    resolved = M.resolve_model_dir(model_dir).resolve()
    encoder_version = M.weights_version(str(resolved))
    L.check_head_encoder(head.ref, head.meta, encoder_version, resolved)
    changes: dict = {"model_dir": model_dir, "precision": effective}
    if torch_threads is not None:
        changes["torch_threads"] = torch_threads
    settings = ScoreSettings.from_config(config.encoder, dict(head.arrays), head.labels, **changes)
    # The name recorded at training: the weights check above makes it this
    # encoder's, and it survives a copy shipped to a task under another name.
    name = head.meta.get("encoder", {}).get("name") or M.encoder_shape(resolved).name
    lineage = L.lineage(
        name,
        encoder_version,
        head.ref,
        head.weights_sha256,
        run_id,
        scored_at,
        model_uri=head.meta.get("model_uri") or head.uri,
        model_run_id=head.run_id,
    )
    return ScoringPlan(settings=settings, lineage=lineage, head_ref=head.ref)
