"""Positions in a shape's log, as Electric's HTTP API writes them: ``-1`` (before everything),
``0_<n>`` (the initial snapshot's rows), ``0_inf`` (the snapshot's end, where the live log starts),
``<commit LSN as an integer>_<op>`` (live changes; ops step by two, as Electric's do).

Facts from ../shared/reference/electric-http-shape-api.md §4.1 (Electric's ``log_offset.ex``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

INF = 1 << 62
"""The op part of ``<tx>_inf``: after every op of that transaction."""


class Offset(NamedTuple):
    tx: int
    op: int

    def __str__(self) -> str:
        if self.tx < 0:
            return "-1"
        return f"{self.tx}_{'inf' if self.op >= INF else self.op}"


BEFORE_ALL = Offset(-1, -1)
SNAPSHOT_END = Offset(0, INF)

_OFFSET = re.compile(r"^(0|[1-9][0-9]{0,19})_(0|[1-9][0-9]{0,18}|inf)$")


class BadOffset(ValueError):
    pass


def parse(text: str) -> Offset:
    """``-1`` or ``<tx>_<op>`` (``inf`` allowed as the op); BadOffset otherwise (``now`` is the
    caller's to handle)."""
    if text == "-1":
        return BEFORE_ALL
    m = _OFFSET.match(text)
    if m is None or int(m.group(1)) >= 1 << 64:
        raise BadOffset("has invalid format")
    op = INF if m.group(2) == "inf" else int(m.group(2))
    return Offset(int(m.group(1)), op)
