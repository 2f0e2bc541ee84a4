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
from .models import PYFUNC_KIND, LoadedModel, ModelError, PyfuncVersion, TransformerVersion
from .predict import ScoreSettings, output_fields
from .pyfunc_kind import PyfuncSettings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ScoringPlan:
    settings: ScoreSettings
    lineage: dict
    head_ref: str
    kind: str = "head"
    fields: tuple[tuple[str, str], ...] = ()  # the columns score writes, with their Spark SQL types
    pyfunc: PyfuncSettings | None = None  # the generic pyfunc kind: what its tasks need (settings: its threads)


def plan_scoring(
    config: PipelineConfig,
    head: LoadedModel,
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
    other encoder weights. A classifier or embedder model scores with its
    own directory (head.model_dir, or encoder_dir where shipped); so does
    a generic pyfunc model."""
    if isinstance(head, PyfuncVersion):
        return _plan_pyfunc(config, head, run_id, encoder_dir, precision, torch_threads, scored_at)
    if isinstance(head, TransformerVersion):
        return _plan_transformer(config, head, run_id, encoder_dir, precision, torch_threads, scored_at)
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
    fields = tuple(output_fields("head", config.score.with_embedding))
    return ScoringPlan(settings=settings, lineage=lineage, head_ref=head.ref, fields=fields)


def _plan_transformer(
    config: PipelineConfig,
    model: TransformerVersion,
    run_id: str,
    model_dir: str | Path | None,
    precision: str | None,
    torch_threads: int | None,
    scored_at: dt.datetime | None,
) -> ScoringPlan:
    """The classifier and embedder kinds: the fast path's length-sorted
    batches, precision and device from [encoder], the model's own
    directory instead of encoder.model_dir. Lineage: `encoder` names the
    registered source and its weights version, `head` the registered model."""
    try:
        fields = tuple(output_fields(model.kind, config.score.with_embedding))
    except ValueError as exc:
        raise ModelError(f"{model.ref}: {exc}") from None
    if model.kind == "classifier" and config.encoder.runtime != "torch":
        raise ModelError(f"{model.ref}: a classifier model runs on torch only, not encoder.runtime = onnxruntime")
    changes: dict = {
        "model_dir": str(model_dir or model.model_dir),
        "precision": M.effective_precision(precision or config.encoder.precision),
        "kind": model.kind,
        "normalize": model.normalize,
    }
    if torch_threads is not None:
        changes["torch_threads"] = torch_threads
    settings = ScoreSettings.from_config(config.encoder, {}, model.labels, **changes)
    lineage = L.lineage(
        str(model.meta.get("source") or model.name),
        model.weights_version,
        model.ref,
        model.weights_version,
        run_id,
        scored_at,
        model_uri=model.meta.get("model_uri") or model.uri,
        model_run_id=model.run_id,
    )
    return ScoringPlan(settings=settings, lineage=lineage, head_ref=model.ref, kind=model.kind, fields=fields)


def refuse_pyfunc_settings(config: PipelineConfig, ref: str, precision: str | None = None) -> None:
    """A generic pyfunc model runs its own code: the settings of the
    transformer fast path cannot apply to it, so asking for them is refused
    (ModelError naming the model and the setting) rather than ignored."""
    asked = []
    if config.score.with_embedding:
        asked.append("score.with_embedding = true")
    if config.encoder.runtime != "torch":
        asked.append(f"encoder.runtime = {config.encoder.runtime}")
    if (precision or config.encoder.precision) != "fp32":
        asked.append(f"precision {precision or config.encoder.precision}")
    if config.encoder.device == "cuda":
        asked.append("encoder.device = cuda")
    if asked:
        raise ModelError(
            f"{ref} is a pyfunc model (it runs its own predict): {', '.join(asked)} cannot apply to it; "
            "leave the encoder settings at their defaults (docs/models.md)"
        )


def _plan_pyfunc(
    config: PipelineConfig,
    model: PyfuncVersion,
    run_id: str,
    model_dir: str | Path | None,
    precision: str | None,
    torch_threads: int | None,
    scored_at: dt.datetime | None,
) -> ScoringPlan:
    """The generic pyfunc kind: its own predict over the engine's batches,
    the columns its signature gives. Lineage: `encoder` names the pyfunc
    loader module, `encoder_version` and `head_version` the digest of the
    model's files, `head` the registered model."""
    refuse_pyfunc_settings(config, model.ref, precision)
    here = str(model_dir or model.model_dir)
    changes: dict = {"model_dir": here, "kind": PYFUNC_KIND}
    if torch_threads is not None:
        changes["torch_threads"] = torch_threads
    settings = ScoreSettings.from_config(config.encoder, {}, (), **changes)
    pyfunc = PyfuncSettings(model_dir=here, model_ref=model.ref, input_column=model.input_column, outputs=model.outputs)
    lineage = L.lineage(
        model.loader,
        model.weights_version,
        model.ref,
        model.weights_version,
        run_id,
        scored_at,
        model_uri=model.meta.get("model_uri") or model.uri,
        model_run_id=model.run_id,
    )
    return ScoringPlan(
        settings=settings, lineage=lineage, head_ref=model.ref, kind=PYFUNC_KIND, fields=model.outputs, pyfunc=pyfunc
    )
