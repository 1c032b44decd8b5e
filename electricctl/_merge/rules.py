"""The conflict rules, in one place for the server and the Python client (../shared/reference/electric-legacy.md §4).

- Row existence is add-wins: a row carries a set of tags ``origin@commit_ts``; an insert or update
  adds its own tag and removes the tags it observed; a delete only removes the tags it observed. The
  row exists while its tag set is not empty, so an update the delete did not see survives it.
- Column values are last-writer-wins per column, by tag: the later commit timestamp wins; on a tie
  a write made in Postgres (no origin) beats every client, and between clients the greater origin
  wins (the 0.12 client's ``firstOrigin > secondOrigin`` tie-break).
- Primary keys are immutable: a change of key is refused by the callers, never merged.

Pure: states in, state out. The server applies the result to Postgres, the client to SQLite.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Value = Any


@dataclass(frozen=True, slots=True)
class Tag:
    ts: int
    """Commit timestamp, milliseconds since the epoch."""
    origin: str | None
    """The client that wrote it; None for a write made directly in Postgres."""

    def __str__(self) -> str:
        return f"{self.origin or ''}@{self.ts}"

    @classmethod
    def parse(cls, text: str) -> Tag:
        origin, sep, ts = text.rpartition("@")
        if not sep or not ts.isdigit():
            raise ValueError(f"not a tag: {text!r}")
        return cls(int(ts), origin or None)

    def beats(self, other: Tag) -> bool:
        """Does a write tagged ``self`` win over one tagged ``other`` (last writer wins)?"""
        if self.ts != other.ts:
            return self.ts > other.ts
        if self.origin is None or other.origin is None:
            return self.origin is None and other.origin is not None
        return self.origin > other.origin


@dataclass(frozen=True, slots=True)
class RowState:
    """A row's values and sync metadata. A deleted row keeps its last values as a tombstone, so a
    concurrent write that revives it (add-wins) merges column by column exactly as if the delete
    had come second: the result does not depend on the order concurrent writes arrive in."""

    values: Mapping[str, Value]
    col_tags: Mapping[str, Tag]
    tags: frozenset[Tag] = field(default_factory=frozenset)

    @property
    def exists(self) -> bool:
        return bool(self.tags)


ABSENT = RowState({}, {}, frozenset())


@dataclass(frozen=True, slots=True)
class Write:
    kind: Literal["insert", "update", "delete", "compensation"]
    tag: Tag
    observed: frozenset[Tag]
    """Tags of the row the writer had seen: removed by inserts, updates and deletes; a compensation
    carries the tags its writer holds for the row and re-adds them."""
    values: Mapping[str, Value] = field(default_factory=dict)
    """The full row for inserts and updates (clients send full rows)."""
    changed: frozenset[str] | None = None
    """Columns this write modified; None means all of ``values``."""


def remove_observed(tags: frozenset[Tag], observed: frozenset[Tag]) -> frozenset[Tag]:
    """``tags`` without the ones a writer observed.

    A write made in Postgres is tagged with the time its row was written, but clients learn it
    with the transaction's commit time, which is never earlier. So an observed Postgres tag
    ``@T`` also removes every Postgres tag up to ``T``: a later Postgres write to the same row
    waited for that commit (row lock), so its own time is at least ``T``.
    """
    if not observed:
        return tags
    pg_seen = max((t.ts for t in observed if t.origin is None), default=None)
    return frozenset(
        t for t in tags if t not in observed and not (pg_seen is not None and t.origin is None and t.ts <= pg_seen)
    )


def merge(state: RowState, write: Write) -> RowState:
    """Apply ``write`` to a row in ``state``."""
    if write.kind == "delete":
        return RowState(state.values, state.col_tags, remove_observed(state.tags, write.observed))
    if write.kind == "compensation":
        return RowState(state.values, state.col_tags, state.tags | write.observed)
    tags = remove_observed(state.tags, write.observed) | {write.tag}
    values = dict(state.values)
    col_tags = dict(state.col_tags)
    for col in frozenset(write.values) if write.changed is None else write.changed:
        if col not in write.values:
            continue
        previous = col_tags.get(col)
        # an equal tag is a later operation of the same transaction: it overrides
        if previous is None or previous == write.tag or write.tag.beats(previous):
            values[col] = write.values[col]
            col_tags[col] = write.tag
    return RowState(values, col_tags, tags)


def merge_all(state: RowState, writes: Iterable[Write]) -> RowState:
    for w in writes:
        state = merge(state, w)
    return state
