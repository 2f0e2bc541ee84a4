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
    """The encoder as settings and the task's device ask (loaded once)."""
    plan = device_plan(settings, assigned_gpus)
    return model.load_encoder(settings.model_dir, plan.precision, plan.device, settings.runtime)


def embed_texts(
    texts: Sequence[str | None],
    model_dir: str | None,
    precision: str,
    batch_size: int,
    max_length: int,
    device: str = "cpu",
    runtime: str = "torch",
) -> np.ndarray:
    """Embeddings (n, the encoder's width); rows whose text is null or empty get NaN."""
    present = [(i, t) for i, t in enumerate(texts) if isinstance(t, str) and t]
    out = np.full((len(texts), model.encoder_shape(model_dir).dim), np.nan, dtype=np.float32)
    if present:
        enc = model.load_encoder(model_dir, precision, device, runtime)
        out[[i for i, _ in present]] = model.embed(enc, [t for _, t in present], batch_size, max_length)
    return out


def score_texts(
    texts: Sequence[str | None],
    settings: ScoreSettings,
    with_embedding: bool = False,
    assigned_gpus: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per text, in input order: predicted (label or None for a
    null/empty text), probability of that label, probabilities (label ->
    probability, every class), and optionally embedding.
    assigned_gpus: the GPUs Spark assigned to the task (encoder.device)."""
    set_threads(settings.torch_threads)
    plan = device_plan(settings, assigned_gpus)
    emb = embed_texts(
        texts, settings.model_dir, plan.precision, plan.batch_size, settings.max_length, plan.device, settings.runtime
    )
    ok = ~np.isnan(emb[:, 0]) if len(texts) else np.zeros(0, dtype=bool)
    labels, probs, every = head_mod.predict_labels(settings.head_arrays, settings.labels, emb[ok])
    predicted = np.full(len(texts), None, dtype=object)
    probability = np.full(len(texts), np.nan, dtype=np.float64)
    probabilities = np.full(len(texts), None, dtype=object)
    predicted[ok] = labels
    probability[ok] = probs
    names = settings.labels
    probabilities[ok] = [dict(zip(names, row.tolist(), strict=True)) for row in every]
    out = pd.DataFrame({"predicted": predicted, "probability": probability, "probabilities": probabilities})
    if with_embedding:
        out["embedding"] = [row.tolist() if good else None for row, good in zip(emb, ok, strict=True)]
    return out
