"""JSON built from a schema validates against it (checked with jsonschema)."""

from __future__ import annotations

import jsonschema
import pytest

from gateway.schema_json import UnsupportedSchema, instance_for

SCHEMAS = [
    {"type": "string", "enum": ["a", "b", "c"]},
    {"type": "integer", "minimum": 3, "maximum": 9, "multipleOf": 3},
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    {
        "type": "array",
        "items": {"type": "string", "minLength": 12, "maxLength": 14},
        "minItems": 3,
        "maxItems": 3,
        "uniqueItems": True,
    },
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}], "items": False},
    {
        "type": "object",
        "properties": {"when": {"type": "string", "format": "date-time"}, "id": {"type": "string", "format": "uuid"}},
        "required": ["when", "id"],
    },
    {"anyOf": [{"type": "null"}, {"type": "integer"}]},
    {"oneOf": [{"type": "string", "const": "x"}, {"type": "integer"}]},
    {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
        ]
    },
    {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "kind": {"enum": ["leaf", "branch"]}},
                "required": ["name", "kind"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {
            "root": {"$ref": "#/$defs/node"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "minItems": 2},
            "scores": {"type": "object", "additionalProperties": {"type": "number"}, "minProperties": 2},
            "maybe": {"type": ["string", "null"]},
        },
        "required": ["root", "children", "scores", "maybe"],
        "additionalProperties": False,
    },
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_instances_validate(schema):
    for seed in ("a", "b", "c"):
        value = instance_for(schema, seed, ["review", "text"])
        jsonschema.validate(value, schema)
    assert instance_for(schema, "a") == instance_for(schema, "a")


def test_enum_values_vary_with_the_seed():
    schema = {"type": "string", "enum": ["a", "b", "c", "d"]}
    assert len({instance_for(schema, str(i)) for i in range(40)}) == 4


@pytest.mark.parametrize(
    "schema,word",
    [
        ({"type": "string", "pattern": "^a+$"}, "pattern"),
        ({"not": {"type": "string"}}, "not"),
        ({"$ref": "https://example.com/schema"}, "$ref"),
        ({"type": "objekt"}, "invalid JSON schema"),
        ({"type": "integer", "minimum": 5, "maximum": 4}, "no integer"),
    ],
)
def test_unsupported_or_invalid_schemas_are_named(schema, word):
    with pytest.raises(UnsupportedSchema) as err:
        instance_for(schema, "s")
    assert word in str(err.value)
