"""Lineage columns of scored rows, shared by the Spark score job and its
mrjob twin, and the JSON form of a scored row."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping

LINEAGE_COLUMNS = (
    "encoder",
    "encoder_version",
    "head",
    "head_version",
    "model_uri",
    "model_run_id",
    "run_id",
    "scored_at",
)
SCORE_COLUMNS = ("predicted", "probability", "probabilities")


def lineage(
    encoder: str,
    encoder_version: str,
    head_ref: str,
    head_sha256: str,
    run_id: str,
    scored_at: dt.datetime | None = None,
    model_uri: str = "",
    model_run_id: str = "",
) -> dict:
    """The lineage values: encoder name and weights version, head name@N and
    the first 12 hex digits of its weights' SHA-256, the MLflow model URI
    it was named by and the MLflow run that trained it, this scoring run's
    id, UTC time."""
    when = scored_at or dt.datetime.now(dt.UTC)
    return {
        "encoder": encoder,
        "encoder_version": encoder_version,
        "head": head_ref,
        "head_version": head_sha256[:12],
        "model_uri": model_uri,
        "model_run_id": model_run_id,
        "run_id": run_id,
        "scored_at": when.astimezone(dt.UTC).replace(microsecond=0),
    }


def scored_row_json(
    record: Mapping,
    predicted: str | None,
    probability: float | None,
    lineage_values: Mapping,
    embedding: list[float] | None = None,
    with_embedding: bool = False,
    probabilities: Mapping[str, float] | None = None,
) -> str:
    """A scored row as one JSON Lines line: the record's fields, predicted,
    probability, probabilities[, embedding], then lineage (time in RFC 3339)."""
    scores: dict = {"predicted": predicted, "probability": probability, "probabilities": probabilities}
    if with_embedding:
        scores["embedding"] = embedding
    return scores_row_json(record, scores, lineage_values)


def scores_row_json(record: Mapping, scores: Mapping, lineage_values: Mapping) -> str:
    """A scored row as one JSON Lines line: the record's fields, the
    columns the model's kind writes (scores: predicted, probability,
    probabilities, embedding, those present; NaN as null), then lineage
    (time in RFC 3339)."""
    row = dict(record)
    for key, value in scores.items():
        if key == "probability":
            value = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
        elif key == "probabilities":
            value = None if value is None else {k: float(v) for k, v in value.items()}
        row[key] = value
    for key in LINEAGE_COLUMNS:
        value = lineage_values[key]
        row[key] = value.isoformat().replace("+00:00", "Z") if isinstance(value, dt.datetime) else value
    return json.dumps(row, ensure_ascii=False)


class EncoderMismatch(ValueError):
    """A head applied to embeddings of other encoder weights than it was trained on."""


def check_head_encoder(head_ref: str, head_meta: Mapping, encoder_version: str, encoder_dir: object) -> None:
    """Refuse a head trained on other encoder weights: its probabilities
    would be meaningless. Both engines call this before scoring."""
    trained_on = head_meta.get("encoder", {}).get("version")
    if trained_on != encoder_version:
        raise EncoderMismatch(
            f"{head_ref} was trained on encoder weights {trained_on}, but {encoder_dir} holds {encoder_version}"
        )
