"""The answer side: the JSON schema an answer must meet, and parsing (pure).

An answer is data: it is capped in size, parsed as JSON and validated; it is
never executed, formatted into anything, or used as a path.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema


class SchemaFileError(ValueError):
    """The answer schema file is missing or not a valid JSON schema; the message names it."""


class AnswerError(ValueError):
    """An answer that is not schema-valid JSON; the message says why (no answer text in it beyond a prefix)."""


@dataclass(frozen=True)
class AnswerSchema:
    schema: dict[str, Any]
    fields: tuple[str, ...]  # the top-level properties, in order: the output columns

    def validator(self) -> jsonschema.protocols.Validator:
        cls = jsonschema.validators.validator_for(self.schema)
        return cls(self.schema, format_checker=cls.FORMAT_CHECKER)


def load_schema(path: str | Path) -> AnswerSchema:
    path = Path(path)
    try:
        schema = json.loads(path.read_text())
    except FileNotFoundError:
        raise SchemaFileError(f"enrich.answer_schema: no such file {path}") from None
    except json.JSONDecodeError as exc:
        raise SchemaFileError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(schema, dict) or schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise SchemaFileError(f'{path}: the answer schema must be an object schema with "properties"')
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SchemaFileError(f"{path}: not a valid JSON schema: {exc.message}") from None
    return AnswerSchema(schema, tuple(schema["properties"]))


FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_answer(text: str, schema: AnswerSchema, max_chars: int) -> dict[str, Any]:
    """The answer's fields, or AnswerError. Tolerates a ```json fence around the object."""
    if len(text) > max_chars:
        raise AnswerError(f"answer too long: {len(text)} characters, the cap is {max_chars}")
    fenced = FENCE.match(text)
    body = fenced.group(1) if fenced else text.strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise AnswerError(f"answer is not JSON ({exc.msg} at position {exc.pos})") from None
    errors = sorted(schema.validator().iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise AnswerError(f"answer breaks the schema at {where}: {first.message[:200]}")
    return {name: value.get(name) for name in schema.fields}
