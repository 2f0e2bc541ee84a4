"""Build a JSON value that validates against a JSON Schema, deterministically from a seed.

Covers what structured-output requests use: objects (properties, required,
additionalProperties), arrays (items, prefixItems, min/maxItems, uniqueItems),
strings (enum, const, min/maxLength, common formats), numbers and integers
(bounds, multipleOf), booleans, null, anyOf/oneOf/allOf, type lists, and local
$ref into $defs/definitions. Keywords a generator cannot honour in general
(pattern, not, if/then/else, ...) raise UnsupportedSchema naming the keyword.
"""

from __future__ import annotations

import math
import random
from typing import Any

import jsonschema

UNSUPPORTED = (
    "pattern",
    "patternProperties",
    "not",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "contains",
    "propertyNames",
)
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
FORMATS = {
    "date-time": "2026-01-02T03:04:05Z",
    "date": "2026-01-02",
    "time": "03:04:05Z",
    "email": "user@example.com",
    "uri": "https://example.com/item",
    "uuid": "123e4567-e89b-42d3-a456-426614174000",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
}
MAX_DEPTH = 32


class UnsupportedSchema(ValueError):
    """The schema is invalid, or uses a keyword we cannot satisfy; the message names it."""


def check_schema(schema: Any) -> None:
    if not isinstance(schema, dict):
        raise UnsupportedSchema("schema must be a JSON object")
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise UnsupportedSchema(f"invalid JSON schema at {where}: {exc.message}") from None


def instance_for(schema: dict, seed: str, words: list[str] | None = None) -> Any:
    """A value valid against schema; the same (schema, seed) gives the same value."""
    check_schema(schema)
    rng = random.Random(seed)
    value = _Builder(schema, rng, [w for w in (words or []) if w] or list(WORDS)).build(schema, 0)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path))
    if errors:
        raise UnsupportedSchema(
            f"cannot satisfy the schema at {'/'.join(map(str, errors[0].path)) or '(root)'}: {errors[0].message}"
        )
    return value


class _Builder:
    def __init__(self, root: dict, rng: random.Random, words: list[str]) -> None:
        self.root, self.rng, self.words = root, rng, words

    def resolve(self, ref: str) -> dict:
        if not ref.startswith("#/"):
            raise UnsupportedSchema(f"$ref {ref!r}: only local references (#/...) are supported")
        node: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise UnsupportedSchema(f"$ref {ref!r} does not resolve")
            node = node[part]
        return node

    def build(self, schema: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise UnsupportedSchema("schema nests deeper than 32 levels (recursive $ref without a way out?)")
        if schema is True or schema == {}:
            return self.word()
        if schema is False:
            raise UnsupportedSchema("a 'false' schema accepts no value")
        for keyword in UNSUPPORTED:
            if keyword in schema:
                raise UnsupportedSchema(f"keyword {keyword!r} is not supported by the deterministic backend")
        if "$ref" in schema:
            merged = {**self.resolve(schema["$ref"]), **{k: v for k, v in schema.items() if k != "$ref"}}
            return self.build(merged, depth + 1)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.rng.choice(schema["enum"])
        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self.resolve(part["$ref"]) if "$ref" in part else part
                for key, value in part.items():
                    if key in ("properties", "$defs") and key in merged:
                        merged[key] = {**merged[key], **value}
                    elif key == "required" and key in merged:
                        merged[key] = sorted(set(merged[key]) | set(value))
                    else:
                        merged.setdefault(key, value)
            return self.build(merged, depth + 1)
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                # The first branch: for oneOf it must be the only match, which
                # validation below checks.
                rest = {k: v for k, v in schema.items() if k != keyword}
                return self.build({**rest, **schema[keyword][0]}, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        return getattr(self, f"build_{kind}")(schema, depth)

    def word(self) -> str:
        return self.rng.choice(self.words)

    def build_object(self, schema: dict, depth: int) -> dict:
        props = schema.get("properties", {})
        required = schema.get("required", [])
        out = {}
        for name, sub in props.items():
            out[name] = self.build(sub, depth + 1)
        for name in required:
            if name not in out:
                extra = schema.get("additionalProperties", True)
                out[name] = self.build(extra if isinstance(extra, dict) else {}, depth + 1)
        minimum = schema.get("minProperties", 0)
        extra = schema.get("additionalProperties", True)
        i = 0
        while len(out) < minimum:
            if extra is False:
                raise UnsupportedSchema("minProperties exceeds the properties allowed")
            out[f"extra_{i}"] = self.build(extra if isinstance(extra, dict) else {}, depth + 1)
            i += 1
        return out

    def build_array(self, schema: dict, depth: int) -> list:
        prefix = schema.get("prefixItems", [])
        items = schema.get("items", {})
        lo = schema.get("minItems", 0)
        hi = schema.get("maxItems", max(lo, len(prefix), 2))
        count = max(lo, min(hi, max(len(prefix), min(lo + 2, hi))))
        out = [self.build(prefix[i], depth + 1) for i in range(min(count, len(prefix)))]
        tries = 0
        while len(out) < count:
            value = self.build(items if isinstance(items, dict) else {}, depth + 1)
            if schema.get("uniqueItems") and value in out:
                tries += 1
                if tries > 100:
                    raise UnsupportedSchema("uniqueItems: cannot find enough distinct items")
                continue
            out.append(value)
        return out

    def build_string(self, schema: dict, depth: int) -> str:
        if schema.get("format") in FORMATS:
            return FORMATS[schema["format"]]
        lo = schema.get("minLength", 0)
        hi = schema.get("maxLength", max(lo, 24))
        text = " ".join(self.rng.choice(self.words) for _ in range(3))
        while len(text) < lo:
            text += " " + self.word()
        return text[:hi]

    def build_integer(self, schema: dict, depth: int) -> int:
        lo, hi = self._bounds(schema, integer=True)
        step = schema.get("multipleOf", 1)
        first = math.ceil(lo / step) * step
        last = math.floor(hi / step) * step
        if first > last:
            raise UnsupportedSchema("no integer satisfies minimum/maximum/multipleOf")
        return int(first + step * self.rng.randint(0, int((last - first) // step)))

    def build_number(self, schema: dict, depth: int) -> float | int:
        if "multipleOf" in schema:
            return self.build_integer(schema, depth)
        lo, hi = self._bounds(schema, integer=False)
        return round(lo + (hi - lo) * self.rng.random(), 4) if hi > lo else lo

    def _bounds(self, schema: dict, integer: bool) -> tuple[float, float]:
        lo = schema.get("minimum", -100 if "maximum" not in schema else schema["maximum"] - 100)
        hi = schema.get("maximum", lo + 100)
        nudge = 1 if integer else 1e-3
        if "exclusiveMinimum" in schema:
            lo = (
                max(lo, schema["exclusiveMinimum"] + nudge)
                if "minimum" in schema
                else schema["exclusiveMinimum"] + nudge
            )
            hi = max(hi, lo) if "maximum" not in schema and "exclusiveMaximum" not in schema else hi
        if "exclusiveMaximum" in schema:
            hi = (
                min(hi, schema["exclusiveMaximum"] - nudge)
                if "maximum" in schema
                else schema["exclusiveMaximum"] - nudge
            )
            if "minimum" not in schema and "exclusiveMinimum" not in schema:
                lo = hi - 100
        if integer:
            lo, hi = math.ceil(lo), math.floor(hi)
        return lo, hi

    def build_boolean(self, schema: dict, depth: int) -> bool:
        return self.rng.random() < 0.5

    def build_null(self, schema: dict, depth: int) -> None:
        return None
