"""Batched prediction over plain Python batches (lists, pandas Series): the
one piece of scoring logic the Spark UDF and the mrjob mapper both call."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from . import head as head_mod
from . import model
from .config import EncoderConfig


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
    """Plain values an executor needs to rebuild the scorer (picklable)."""

    head_arrays: Mapping[str, np.ndarray]
    labels: tuple[str, ...]  # the head's classes, in its output order
    model_dir: str | None
    precision: str
    batch_size: int
    max_length: int
    torch_threads: int
    runtime: str
    device: str
    gpu_precision: str
    gpu_batch_size: int
    # head (encoder + head), classifier (model_dir is a sequence-classification
    # model) or embedder (model_dir's embeddings are the output)
    kind: str
    normalize: bool | None  # an embedder's L2 normalisation (None: as its directory says)

    @classmethod
    def from_config(
        cls,
        encoder: EncoderConfig,
        head_arrays: Mapping[str, np.ndarray],
        labels: Sequence[str],
        **changes: object,
    ) -> ScoreSettings:
        """The settings for encoder (the pipeline config's [encoder]), with
        changes (for example model_dir of a shipped copy) applied."""
        if head_arrays:  # (empty: settings without a head, for tests of the rest)
            head_mod.check_labels(head_arrays, labels)
        values: dict = {
            "head_arrays": head_arrays,
            "labels": tuple(labels),
            "model_dir": encoder.model_dir or None,
            "precision": model.effective_precision(encoder.precision),
            "batch_size": encoder.batch_size,
            "max_length": encoder.max_length,
            "torch_threads": encoder.torch_threads,
            "runtime": encoder.runtime,
            "device": encoder.device,
            "gpu_precision": encoder.gpu_precision,
            "gpu_batch_size": encoder.gpu_batch_size,
            "kind": "head",
            "normalize": None,
        }
        values.update(changes)
        return cls(**values)


def set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def device_plan(settings: ScoreSettings, assigned_gpus: Sequence[str] = ()) -> model.DevicePlan:
    """Where this task runs the encoder (udfs.model.plan_device)."""
    cuda = model.cuda_devices() if settings.device != "cpu" else 0
    return model.plan_device(
        settings.device,
        settings.precision,
        settings.batch_size,
        settings.gpu_precision,
        settings.gpu_batch_size,
        assigned_gpus,
        cuda,
    )


def load_for(settings: ScoreSettings, assigned_gpus: Sequence[str] = ()) -> model.Encoder:
    """The encoder (or the classifier) as settings and the task's device ask (loaded once)."""
    plan = device_plan(settings, assigned_gpus)
    if settings.kind == "classifier":
        return model.load_classifier(str(settings.model_dir), plan.precision, plan.device)
    return model.load_encoder(settings.model_dir, plan.precision, plan.device, settings.runtime)


LABEL_FIELDS = (("predicted", "string"), ("probability", "double"), ("probabilities", "map<string, double>"))
EMBEDDING_FIELD = ("embedding", "array<float>")


def output_fields(kind: str, with_embedding: bool = False) -> list[tuple[str, str]]:
    """The columns score writes for a model kind, with their Spark SQL types:
    an embedder writes the embedding alone; a head or a classifier the label
    columns (and a head the embedding too where asked)."""
    if kind == "embedder":
        return [EMBEDDING_FIELD]
    if kind == "classifier" and with_embedding:
        raise ValueError("a classifier model writes no embedding: set score.with_embedding = false")
    return [*LABEL_FIELDS, EMBEDDING_FIELD] if with_embedding else list(LABEL_FIELDS)


def embed_texts(
    texts: Sequence[str | None],
    model_dir: str | None,
    precision: str,
    batch_size: int,
    max_length: int,
    device: str = "cpu",
    runtime: str = "torch",
    normalize: bool | None = None,
) -> np.ndarray:
    """Embeddings (n, the encoder's width); rows whose text is null or empty get NaN."""
    present = [(i, t) for i, t in enumerate(texts) if isinstance(t, str) and t]
    out = np.full((len(texts), model.encoder_shape(model_dir).dim), np.nan, dtype=np.float32)
    if present:
        enc = model.load_encoder(model_dir, precision, device, runtime)
        out[[i for i, _ in present]] = model.embed(enc, [t for _, t in present], batch_size, max_length, normalize)
    return out


def _label_frame(
    n: int, ok: np.ndarray, names: Sequence[str], labels: Sequence[str], probs: np.ndarray, every: np.ndarray
) -> pd.DataFrame:
    predicted = np.full(n, None, dtype=object)
    probability = np.full(n, np.nan, dtype=np.float64)
    probabilities = np.full(n, None, dtype=object)
    predicted[ok] = labels
    probability[ok] = probs
    probabilities[ok] = [dict(zip(names, row.tolist(), strict=True)) for row in every]
    return pd.DataFrame({"predicted": predicted, "probability": probability, "probabilities": probabilities})


def _classify_texts(texts: Sequence[str | None], settings: ScoreSettings, plan: model.DevicePlan) -> pd.DataFrame:
    ok = np.array([isinstance(t, str) and bool(t) for t in texts], dtype=bool)
    every = np.zeros((0, len(settings.labels)), dtype=np.float64)
    if ok.any():
        classifier = model.load_classifier(str(settings.model_dir), plan.precision, plan.device)
        present = [t for t, good in zip(texts, ok, strict=True) if good]
        every = model.classify(classifier, present, plan.batch_size, settings.max_length)  # type: ignore[arg-type]
        if every.shape[1] != len(settings.labels):
            raise ValueError(f"{settings.model_dir} scores {every.shape[1]} classes, its labels are {settings.labels}")
    best = every.argmax(axis=1)
    labels = [settings.labels[i] for i in best]
    return _label_frame(len(texts), ok, settings.labels, labels, every[np.arange(len(best)), best], every)


def score_texts(
    texts: Sequence[str | None],
    settings: ScoreSettings,
    with_embedding: bool = False,
    assigned_gpus: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per text, in input order: predicted (label or None for a
    null/empty text), probability of that label, probabilities (label ->
    probability, every class), and optionally embedding; for an embedder
    model the embedding alone (output_fields).
    assigned_gpus: the GPUs Spark assigned to the task (encoder.device)."""
    set_threads(settings.torch_threads)
    plan = device_plan(settings, assigned_gpus)
    if settings.kind == "classifier":
        return _classify_texts(texts, settings, plan)
    emb = embed_texts(
        texts,
        settings.model_dir,
        plan.precision,
        plan.batch_size,
        settings.max_length,
        plan.device,
        settings.runtime,
        settings.normalize,
    )
    ok = ~np.isnan(emb[:, 0]) if len(texts) else np.zeros(0, dtype=bool)
    if settings.kind == "embedder":
        return pd.DataFrame({"embedding": [row.tolist() if good else None for row, good in zip(emb, ok, strict=True)]})
    labels, probs, every = head_mod.predict_labels(settings.head_arrays, settings.labels, emb[ok])
    out = _label_frame(len(texts), ok, settings.labels, labels, probs, every)
    if with_embedding:
        out["embedding"] = [row.tolist() if good else None for row, good in zip(emb, ok, strict=True)]
    return out
