"""The JSON Schema check of electric.yaml, with findings phrased for a YAML author.

jsonschema's own messages talk about arrays, objects and ``$ref``s; these say which key is
unknown (and which are allowed), what type was expected, and point at the offending node.
This runs before any semantic validator, which may therefore rely on the shape of the data.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from functools import cache
from typing import Any, cast

import jsonschema

from electricctl._config import yamlsrc
from electricctl._resources import resource
from electricctl.errors import Diagnostic


@cache
def json_schema() -> dict[str, Any]:
    """The bundled schema of electric.yaml (``schemas/electric.schema.json``)."""
    with open(resource("schemas/electric.schema.json"), encoding="utf-8") as fh:
        schema: dict[str, Any] = json.load(fh)
    return schema


def schema_diagnostics(src: yamlsrc.Source) -> list[Diagnostic]:
    """Every way ``src.data`` breaks the schema, located at the node concerned."""
    validator = jsonschema.Draft202012Validator(json_schema())
    out: list[Diagnostic] = []
    for error in validator.iter_errors(src.data):
        path = _path_of(error.absolute_path)
        out.extend(_describe(src, error, path))
    return out


def _path_of(parts: Iterable[str | int]) -> str:
    path = ""
    for part in parts:
        path = yamlsrc.join_path(path, part)
    return path


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _did_you_mean(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(src: yamlsrc.Source, error: jsonschema.ValidationError, path: str) -> list[Diagnostic]:
    schema = error.schema if isinstance(error.schema, dict) else {}
    validator = error.validator
    value = error.instance
    if validator == "additionalProperties" and isinstance(value, dict):
        allowed = sorted(schema.get("properties", {}))
        return [
            Diagnostic(
                src.at(yamlsrc.join_path(path, key), key=True),
                f"unknown key {key!r}{_did_you_mean(key, allowed)}; allowed keys here: {', '.join(allowed)}",
                "schema.unknown_key",
            )
            for key in value
            if key not in allowed
        ]
    loc = src.at(path)
    if validator == "required":
        return [Diagnostic(loc, error.message.replace("is a required property", "is required"), "schema.required")]
    if validator == "type":
        expected = error.validator_value
        expected_s = " or ".join(expected) if isinstance(expected, list) else str(expected)
        expected_s = expected_s.replace("array", "list").replace("object", "mapping")
        return [Diagnostic(loc, f"expected {expected_s}, got {_type_name(value)}", "schema.type")]
    if validator == "enum":
        options = ", ".join(str(v) for v in cast(list[Any], error.validator_value))
        return [Diagnostic(loc, f"must be one of {options}; got {value!r}", "schema.enum")]
    if validator == "const":
        return [Diagnostic(loc, f"must be {error.validator_value!r}; got {value!r}", "schema.const")]
    if validator == "pattern":
        what = schema.get("description") or f"a value matching {error.validator_value}"
        return [Diagnostic(loc, f"invalid value {value!r}: expected {what}", "schema.pattern")]
    if validator in ("oneOf", "anyOf") and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        if best is not None:
            return _describe(src, best, _path_of(best.absolute_path) or path)
    if validator in ("minItems", "minLength"):
        return [Diagnostic(loc, "must not be empty", "schema.empty")]
    return [Diagnostic(loc, error.message, f"schema.{validator}")]
