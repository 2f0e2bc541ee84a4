"""The service's settings, read once from a TOML file (conf/service.toml) and
validated by pydantic with unknown keys refused, as gateway/config.py does.

API keys never live in the file: `keys_env` names the environment variable
that holds them (comma-separated). Errors name the key at fault, never a
key's value.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infra.settings import is_loopback

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "conf" / "service.toml"


class ConfigError(ValueError):
    """A configuration problem; the message names the key at fault."""


class Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ScoreSettings(Table):
    max_texts: int = Field(default=64, ge=1)  # texts per /score request
    max_text_chars: int = Field(default=10_000, ge=1)
    # Micro-batching, as TorchServe's batch_size/max_batch_delay and Triton's
    # max_queue_delay_microseconds: a batch goes to the model when it holds
    # max_batch_size texts or max_wait_ms after its first request arrived.
    max_batch_size: int = Field(default=64, ge=1)
    max_wait_ms: float = Field(default=5.0, ge=0)
    # How long a resolved reference (an alias, 'latest') is reused before the
    # registry is asked again; the loaded versions themselves are kept.
    resolve_cache_seconds: float = Field(default=10.0, ge=0)
    # torch threads for the service's one model call at a time (the jobs use
    # one per Spark task; here one call has the cores to itself).
    torch_threads: int = Field(default=2, ge=1)


class RunSettings(Table):
    db: str = "var/service/runs.db"  # relative to the repository root
    dir: str = "var/service/runs"  # per run: console output, job log, result
    cancel_grace_seconds: float = Field(default=10.0, ge=0)  # SIGTERM, then SIGKILL after this
    page_size: int = Field(default=20, ge=1, le=500)
    # A run's job reports progress this often (its events.progress_seconds,
    # unless the request sets that); GET /runs/{id}/events relays it.
    progress_seconds: float = Field(default=5.0, gt=0)


class KeyLimits(Table):
    """One key's limits; a field left out is the default's (limits.default)."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    texts_per_minute: int | None = Field(default=None, ge=1)
    concurrent_runs: int | None = Field(default=None, ge=1)
    core_seconds_per_day: int | None = Field(default=None, ge=1)


class DefaultLimits(Table):
    """Every key's limits unless limits.keys.NAME says otherwise."""

    requests_per_minute: int = Field(default=600, ge=1)  # every /api/ request but health, moving window
    texts_per_minute: int = Field(default=6000, ge=1)  # texts sent to /score (v1 and v2), moving window
    concurrent_runs: int = Field(default=4, ge=1)  # runs in state running
    core_seconds_per_day: int = Field(default=172_800, ge=1)  # runs' wall seconds x cores, window of a day

    def merged(self, key: KeyLimits | None) -> DefaultLimits:
        if key is None:
            return self
        return self.model_copy(update={k: v for k, v in key.model_dump().items() if v is not None})


class LimitSettings(Table):
    # memory:// (one service process), or redis://HOST:PORT/DB (rediss:// for
    # TLS) shared by several processes; `limits` library storage URIs.
    storage: str = Field(default="memory://", pattern=r"^(memory://|rediss?://[^\s]+)$")
    # The cores a run on spark:// or yarn is counted with (local[N]: N).
    cluster_cores: int = Field(default=2, ge=1)
    default: DefaultLimits = DefaultLimits()
    keys: dict[str, KeyLimits] = Field(default_factory=dict)  # by key name (NAME:KEY in the keys variable)

    def for_key(self, name: str) -> DefaultLimits:
        return self.default.merged(self.keys.get(name))


class McpSettings(Table):
    """The MCP server for agents (service/mcp_server.py)."""

    # Streamable HTTP at /api/v1/mcp of the service, behind its API keys and limits.
    http: bool = True
    # submit_run starts a real run (one that writes outputs) only when this is
    # true AND the call passes confirm=true; otherwise it runs the dry run.
    writes: bool = False
    sample_rows: int = Field(default=5, ge=1, le=100)  # sample_output's rows unless the call asks fewer
    # estimate_enrich_cost waits this long for enrich's dry run (a small Spark job) to end.
    estimate_wait_seconds: float = Field(default=300.0, gt=0)


class ServiceConfig(Table):
    host: str = "127.0.0.1"
    port: int = Field(default=8790, ge=0, le=65535)
    # A non-loopback host is refused unless this is true (as for HDFS).
    allow_remote_access: bool = False
    keys_env: str = "AIBATCH_SERVICE_KEYS"
    pipeline_config: str = "conf/pipeline.toml"  # relative to the repository root
    max_request_bytes: int = Field(default=1_000_000, ge=1)
    docs: bool = True  # /openapi.json, /docs: the spec holds no secrets
    score: ScoreSettings = ScoreSettings()
    runs: RunSettings = RunSettings()
    limits: LimitSettings = LimitSettings()
    mcp: McpSettings = McpSettings()

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else REPO / p

    def check_exposure(self, host: str) -> None:
        if is_loopback(host) or self.allow_remote_access:
            return
        raise ConfigError(
            f"host {host!r} is not a loopback address: the service starts and cancels jobs for whoever holds a "
            'key. Use host = "127.0.0.1", or, on a trusted network, set allow_remote_access = true.'
        )


def api_keys(config: ServiceConfig, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The keys in config.keys_env (comma-separated); ConfigError naming the
    variable where it is unset or empty."""
    env = os.environ if environ is None else environ
    keys = tuple(k.strip() for k in env.get(config.keys_env, "").split(",") if k.strip())
    if not keys:
        raise ConfigError(f"${config.keys_env} holds no API key: set it to one or more keys, comma-separated")
    return keys


KEY_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def named_keys(items: Sequence[str]) -> dict[str, str]:
    """{name: key} from the keys variable's items: `NAME:KEY` names a key (a
    key itself never holds ':' before a valid name: base64 and hex have no
    ':'); a bare KEY is named key-<first 12 hex of its SHA-256>, which says
    nothing useful about the key and stays the same when the list is
    reordered. Names, never keys, appear in limits.keys, runs and logs."""
    named: dict[str, str] = {}
    for item in items:
        name, sep, key = item.partition(":")
        if not (sep and KEY_NAME.match(name) and key):
            name, key = "key-" + hashlib.sha256(item.encode()).hexdigest()[:12], item
        if name in named:
            raise ConfigError(f"two API keys are named {name!r}: give each key its own name")
        named[name] = key
    return named


def check_limit_names(config: ServiceConfig, names: Sequence[str]) -> None:
    """limits.keys may only name keys the service has (a typo would leave a key on the defaults)."""
    for name in config.limits.keys:
        if name not in names:
            raise ConfigError(
                f"limits.keys.{name}: no API key of that name in ${config.keys_env} (its names: "
                f"{', '.join(sorted(names))}; name a key as NAME:KEY)"
            )


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def parse_config(data: Mapping[str, object], where: str = "service config") -> ServiceConfig:
    try:
        return ServiceConfig.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{where}: {_where(first['loc'])}: {first['msg']}") from None


def load_config(path: str | Path | None = None) -> ServiceConfig:
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, str(path))
