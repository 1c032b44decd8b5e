"""The functions a where clause may call: their signatures (for the checker) and Python bodies.

Only functions whose Postgres semantics are reproduced exactly here are listed (the parser's
whitelist in :mod:`electricctl._expr.parse` names the same ones). ``concat`` is variadic and
special-cased by both the checker and the Python back end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from electricctl._shapes.where.kinds import BOOL, FLOAT, INT, NUMERIC, TEXT
from electricctl._shapes.where.values import Value

SAME = "same"
"""A result of the first argument's kind (``abs``)."""


@dataclass(frozen=True, slots=True)
class Function:
    params: Sequence[frozenset[str]]
    """The kinds each argument may have."""
    result: str
    """The result's kind, or :data:`SAME`."""
    impl: Callable[..., Value]
    """The body, called with non-NULL values only (a NULL argument gives NULL)."""


_TEXTS = frozenset({TEXT})
_NUMBERS = frozenset({INT, FLOAT, NUMERIC})

FUNCTIONS: dict[str, Function] = {
    "lower": Function([_TEXTS], TEXT, lambda s: s.lower()),
    "upper": Function([_TEXTS], TEXT, lambda s: s.upper()),
    "length": Function([_TEXTS], INT, len),
    "char_length": Function([_TEXTS], INT, len),
    "octet_length": Function([_TEXTS], INT, lambda s: len(s.encode())),
    "abs": Function([_NUMBERS], SAME, abs),
    "trim": Function([_TEXTS], TEXT, lambda s: s.strip(" ")),
    "btrim": Function([_TEXTS], TEXT, lambda s: s.strip(" ")),
    "ltrim": Function([_TEXTS], TEXT, lambda s: s.lstrip(" ")),
    "rtrim": Function([_TEXTS], TEXT, lambda s: s.rstrip(" ")),
    "starts_with": Function([_TEXTS, _TEXTS], BOOL, lambda s, p: s.startswith(p)),
    "concat": Function([], TEXT, lambda *a: ""),
}
