"""Arrays of supported scalar types: Postgres' array text on the server side, JSON on clients (pure).

Clients hold an array column as JSON text (``[1, 2, null]``; a two-dimensional array as nested
lists) and write it back the same way; the server converts at its two edges, so everything in
between (the log, the merge, tombstones) keeps Postgres' text form.

- Postgres to JSON: integers, finite floats and booleans become JSON numbers and booleans, with
  the digits Postgres printed (so no precision is lost on the way); NaN and ±Infinity, numeric
  (exact, never a float), and every other type become JSON strings of Postgres' text.
- JSON to Postgres: every element is written quoted, from the JSON number's own digits or the
  string's text, so Postgres parses each with its element type's input function; a JSON number
  for a text element is its digits, a JSON object is refused.
- Only lower bound 1 is representable in JSON: Postgres prints other bounds as ``[0:2]={...}``,
  which :func:`pg_to_json` refuses (a ValueError), as it does any text that is not an array.

Element types are those of :data:`~electricctl._model.pgtypes.ARRAY_ELEMENT_TYPES` (not jsonb).
"""

from __future__ import annotations

import json
from typing import Any

_NUMBERS = frozenset({"int2", "int4", "int8", "float4", "float8"})


def element_type(type_name: str) -> str | None:
    """``int4`` for ``_int4`` (Postgres names an array type after its element), else None."""
    return type_name[1:] if type_name.startswith("_") else None


# -- Postgres' array text -> JSON ------------------------------------------------------------------


def pg_to_json(text: str, element: str) -> str:
    """Postgres' text output of an array of ``element`` as JSON text."""
    if not text.startswith("{"):
        raise ValueError(f"not an array with lower bound 1: {text[:40]!r}")
    value, end = _parse(text, 0, element)
    if end != len(text):
        raise ValueError(f"trailing text after the array: {text[end : end + 20]!r}")
    return value


def _parse(text: str, i: int, element: str) -> tuple[str, int]:
    """The JSON of the array starting at ``text[i] == '{'``, and the index after its ``}``."""
    assert text[i] == "{"
    i += 1
    items: list[str] = []
    if text[i] == "}":
        return "[]", i + 1
    while True:
        ch = text[i]
        if ch == "{":
            item, i = _parse(text, i, element)
        elif ch == '"':
            j = i + 1
            buf = []
            while text[j] != '"':
                if text[j] == "\\":
                    j += 1
                buf.append(text[j])
                j += 1
            item, i = _scalar("".join(buf), element, quoted=True), j + 1
        else:
            j = i
            while text[j] not in ",}":
                j += 1
            item, i = _scalar(text[i:j], element, quoted=False), j
        items.append(item)
        if text[i] == ",":
            i += 1
            continue
        if text[i] == "}":
            return "[" + ", ".join(items) + "]", i + 1
        raise ValueError(f"unexpected {text[i]!r} in an array at {i}")


def _scalar(raw: str, element: str, *, quoted: bool) -> str:
    if not quoted and raw == "NULL":
        return "null"
    if element == "bool":
        return "true" if raw == "t" else "false"
    if element in _NUMBERS and raw not in ("NaN", "Infinity", "-Infinity"):
        return raw
    return json.dumps(raw, ensure_ascii=False)


# -- JSON -> Postgres' array input -------------------------------------------------------------------


def json_to_pg(text: str, element: str) -> str:
    """A client's JSON array as Postgres' array input for ``element``; a ValueError if it is not one
    (not a JSON list, a ragged multi-dimensional one, or an element of the wrong JSON type)."""
    try:
        value = json.loads(text, parse_float=_Number, parse_int=_Number, parse_constant=_refuse)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(value, list):
        raise ValueError("not a JSON array")
    return _literal(value, element)


class _Number(str):
    """A JSON number, kept as the digits the client wrote."""


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (write it as a string)")


def _literal(items: list[Any], element: str) -> str:
    if any(isinstance(v, list) for v in items):
        if not all(isinstance(v, list) for v in items) or len({len(v) for v in items}) != 1:
            raise ValueError("a multi-dimensional array must be rectangular (every sub-array the same length)")
        return "{" + ",".join(_literal(v, element) for v in items) + "}"
    return "{" + ",".join(_element(v, element) for v in items) + "}"


def _element(value: Any, element: str) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        if element != "bool":
            raise ValueError(f"a boolean in an array of {element}")
        text = "t" if value else "f"
    elif isinstance(value, _Number | str):
        text = str(value)
    else:
        raise ValueError(f"a JSON {type(value).__name__} in an array of {element}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
