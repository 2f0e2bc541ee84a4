"""What the tasks need besides the config, loaded once on the driver, and the
identity of a prompt: the released template and the answer schema
(`Assets`, which pickles to the tasks), the parameters that shape an answer,
and `prompt_hash`, the key of the answer cache and the claims."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .answers import AnswerSchema, load_schema
from .prompts import Template, load_template, render
from .settings import EnrichConfig

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Assets:
    """The released template and the answer schema. Load it once on the driver
    (`load_assets`) and pass it to the tasks (it pickles)."""

    template: Template
    schema: AnswerSchema


def load_assets(cfg: EnrichConfig, root: str | Path = ".") -> Assets:
    base = Path(root)
    prompts = Path(cfg.prompts_dir)
    schema = Path(cfg.answer_schema)
    return Assets(
        load_template(prompts if prompts.is_absolute() else base / prompts, cfg.template),
        load_schema(schema if schema.is_absolute() else base / schema),
    )


def request_params(cfg: EnrichConfig, assets: Assets) -> dict[str, Any]:
    """The parameters that shape an answer (part of the cache key)."""
    return {
        "max_tokens": cfg.provider.max_tokens,
        "temperature": cfg.provider.temperature,
        "schema": hashlib.sha256(json.dumps(assets.schema.schema, sort_keys=True).encode()).hexdigest(),
        "repair_attempts": cfg.repair_attempts,
        "structured_output": cfg.provider.structured_output,
    }


def prompt_hash(provider: str, model: str, template: str, params: Mapping[str, Any], prepared: str) -> str:
    """sha256 over (provider, model, template id@version, parameters, prepared text)."""
    doc = json.dumps([provider, model, template, dict(params), prepared], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def prepared_text(template: Template, row: Row) -> str:
    return template.system + "\n\n" + render(template, row)


def prompt_of(cfg: EnrichConfig, assets: Assets, params: Mapping[str, Any], row: Row) -> tuple[str, str]:
    """(the prompt's hash, the rendered user message) of one row."""
    user = render(assets.template, row)
    prepared = assets.template.system + "\n\n" + user
    return prompt_hash(cfg.provider.kind, cfg.provider.model, assets.template.id, params, prepared), user
