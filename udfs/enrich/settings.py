"""Settings of the enrich stage (`[enrich]` in conf/pipeline.toml), validated once.

`EnrichConfig` is one frozen pydantic object; everything below it receives it
(or the plain values it needs). Keys never live here: `provider.api_key_env`
names the environment variable that holds the key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TEMPLATE_PATTERN = r"^[a-z][a-z0-9_-]*@[0-9]+$"
COLUMN_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderConfig(_Strict):
    """Which API, where, and how each call is made."""

    kind: Literal["openai", "anthropic"] = "openai"
    base_url: str = "http://127.0.0.1:8787/v1"  # OpenAI style ends in /v1; Anthropic's SDK adds /v1 itself
    model: str = Field("gpt-4o-mini", min_length=1)
    api_key_env: str = Field("AIBATCH_GATEWAY_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_s: float = Field(30.0, gt=0)
    max_tokens: int = Field(200, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    stream: bool = False
    # How an answer is constrained to the schema: "schema" (OpenAI response_format json_schema,
    # Anthropic output_config.format), "tool" (one forced tool call whose input schema is the
    # answer's), "prompt" (the template's instructions, validation and repairs alone), or "auto":
    # schema, and the next method for the rest of the run when the first answers show the server
    # ignores it (calls.AUTO_DECIDE). true and false, the old switch, read as auto and prompt.
    structured_output: Literal["auto", "schema", "tool", "prompt"] = "auto"
    anthropic_version: str = Field("2023-06-01", pattern=r"^\d{4}-\d{2}-\d{2}$")

    @field_validator("structured_output", mode="before")
    @classmethod
    def _old_switch(cls, value: object) -> object:
        return {True: "auto", False: "prompt"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _dialect(self) -> ProviderConfig:
        from .dialects import dialect_for  # dialects.py reads these settings

        dialect_for(self.kind).check_settings(self)
        return self


class SelectConfig(_Strict):
    """Which rows to enrich: `column op values`, or op = "all"."""

    column: str = Field("predicted", pattern=COLUMN_PATTERN)
    op: Literal["in", "not_in", "eq", "ne", "gt", "ge", "lt", "le", "all"] = "all"
    values: list[str | int | float | bool] = []

    @model_validator(mode="after")
    def _arity(self) -> SelectConfig:
        if self.op in ("in", "not_in") and not self.values:
            raise ValueError(f"op {self.op!r} needs at least one value in values")
        if self.op in ("eq", "ne", "gt", "ge", "lt", "le") and len(self.values) != 1:
            raise ValueError(f"op {self.op!r} needs exactly one value in values, got {len(self.values)}")
        if self.op == "all" and self.values:
            raise ValueError("op 'all' takes no values")
        return self


class LimitsConfig(_Strict):
    """The provider's limits for this key, held for the whole job by a shared budget.

    With window_seconds = 60 these are per minute; tests and benchmarks scale
    the window (the counts are then per window)."""

    requests_per_minute: int = Field(500, ge=1)
    tokens_per_minute: int = Field(200_000, ge=1)  # OpenAI style: input + output
    input_tokens_per_minute: int = Field(100_000, ge=1)  # Anthropic style, separately...
    output_tokens_per_minute: int = Field(40_000, ge=1)  # ...from output
    max_concurrency: int = Field(16, ge=1)
    window_seconds: float = Field(60.0, gt=0)
    # Added to the window on our side, for clock reads that differ between us and the
    # server (our entries are stamped when the answer arrives, after the server's).
    safety_margin_s: float = Field(0.05, ge=0)
    # A 429 whose rate-limit headers show less than this share left means the key's
    # capacity is used up by someone outside our budget: this process slows down.
    low_water: float = Field(0.05, ge=0, lt=1)


class StoreConfig(_Strict):
    """The shared store: job-wide budget, answer cache and claims."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    path: str = "var/enrich/store.sqlite"  # sqlite: one machine, many processes, no server
    url: str = "redis://127.0.0.1:6379/0"  # redis: a cluster
    claim_ttl_s: float = Field(30.0, gt=0)  # a claim not renewed for this long is free again


class RetryConfig(_Strict):
    max_attempts: int = Field(6, ge=1)  # calls per row for transient errors (429, 5xx, 529, timeouts)
    base_delay_s: float = Field(0.5, ge=0)
    max_delay_s: float = Field(30.0, ge=0)


class BatchConfig(_Strict):
    """`mode = "batch"`: the providers' Batch APIs (half the price, answers within the window)."""

    poll_interval_s: float = Field(5.0, gt=0)  # first wait between two polls of the open batches
    poll_backoff: float = Field(1.5, ge=1)  # each poll that sees no batch end waits this much longer...
    poll_max_s: float = Field(60.0, gt=0)  # ...up to this
    max_lines: int = Field(50_000, ge=1)  # per batch (OpenAI allows 50,000, Anthropic 100,000)
    max_bytes: int = Field(190 * 1024 * 1024, ge=1024)  # per batch's request body (OpenAI 200 MB, Anthropic 256 MB)
    # The key's enqueued-token queue per model (OpenAI's batch queue limit: input tokens of the
    # batches not yet ended; 2,000,000 is tier 1's for gpt-4o-mini, the limits page has yours).
    # Each line counts as its prompt estimate + max_tokens (the dry run's estimate); batches are
    # cut to fit it, and the next one is created only when the open ones leave room.
    max_enqueued_tokens: int = Field(2_000_000, ge=1)
    completion_window: Literal["24h"] = "24h"  # the only window both providers sell
    # What a line that still failed after retry.max_attempts batches (errored, expired, an answer
    # that breaks the schema) becomes: "online" asks the online API for it (full price, the usual
    # retries and repairs), "none" dead-letters it with the batch's reason.
    fallback: Literal["online", "none"] = "online"


class EnrichConfig(_Strict):
    # "online": one API call per prompt, answers now. "batch": the prompts not in the cache go
    # through the provider's Batch API first (udfs/enrich/batch_driver.py), then the same path
    # writes the outputs from the cache.
    mode: Literal["online", "batch"] = "online"
    batch: BatchConfig = BatchConfig()
    provider: ProviderConfig = ProviderConfig()
    template: str = Field("review_enrich@1", pattern=TEMPLATE_PATTERN)
    prompts_dir: str = "conf/prompts"
    answer_schema: str = "conf/enrich_schema.json"
    text_column: str = Field("text", pattern=COLUMN_PATTERN)
    select: SelectConfig = SelectConfig()
    limits: LimitsConfig = LimitsConfig()
    store: StoreConfig = StoreConfig()
    retry: RetryConfig = RetryConfig()
    repair_attempts: int = Field(1, ge=0, le=5)  # extra calls when an answer is malformed or breaks the schema
    max_answer_chars: int = Field(4000, ge=100)  # answers are data, capped before parsing
    prices: str = "conf/llm_prices.toml"
