"""The writer's merge decision, with no I/O: what one client transaction does to the rows it
touches, given their current state.

:func:`plan_client_transaction` merges each operation, in order, into the row's state with
:func:`~electricctl._merge.rules.merge` (the rules the Python client uses too) and returns a
:class:`MergePlan`: the upserts and deletes to run, the permission checks each operation needs
(when a policy is enforced), and the rows' new states (their shadow entries, and the tags the
transaction's echo carries). The writer reads the current states and runs the plan's statements
(``electricctl._sql.client_writes``); nothing here touches a database.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from electricctl._merge.rules import RowState, Tag, Write, merge
from electricctl._model.client import ClientOp, ClientTransaction, PermissionDenied
from electricctl._model.rows import RelationDef, row_key
from electricctl._perms.policy import GrantRule, Policy

Key = tuple[str, ...]
RowId = tuple[str, Key]
"""A row as operations name it: (``schema.table``, the key as the client sent it)."""
_JSON_TYPES = frozenset({"json", "jsonb"})


@dataclass(slots=True)
class CurrentRow:
    """A row's merge state as the transaction finds it (and, once planned, leaves it)."""

    rel: RelationDef
    key: Key
    """The canonical key: Postgres' text of the key values."""
    state: RowState
    present: bool
    """The row is in the table now (as far as this transaction has written)."""


@dataclass(frozen=True, slots=True)
class Action:
    kind: Literal["upsert", "delete"]
    rel: RelationDef
    key: Key
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Check:
    """What must hold for operation ``n`` (1-based) to be allowed."""

    n: int
    op: ClientOp
    privilege: str
    grants: tuple[GrantRule, ...]
    """The grants that may allow it (empty: denied without asking)."""
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str

    def denied(self, tx: ClientTransaction) -> PermissionDenied:
        table = self.op.relation.qualified
        return PermissionDenied(
            f"{tx.describe()}: operation {self.n} ({self.op.kind} on {table}): permission denied: {self.reason}",
            table,
            self.privilege,
        )


@dataclass(slots=True)
class MergePlan:
    actions: list[Action] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    """Permission checks, in operation order (empty when no policy is enforced)."""
    rows: dict[RowId, CurrentRow] = field(default_factory=dict)
    """Every row touched, as the transaction leaves it (operations that name the same row share one)."""

    def refused_outright(self) -> Check | None:
        """The first operation no grant can allow: denied before anything is written."""
        return next((c for c in self.checks if not c.grants), None)

    def batches(self) -> list[list[Action]]:
        """Consecutive actions of one kind on one table, each key at most once per batch."""
        out: list[list[Action]] = []
        keys: set[Key] = set()  # the keys in the last batch
        for a in self.actions:
            last = out[-1] if out else None
            if last is not None and last[0].kind == a.kind and last[0].rel is a.rel and a.key not in keys:
                last.append(a)
            else:
                out.append([a])
                keys.clear()
            keys.add(a.key)
        return out

    def unique_rows(self) -> list[CurrentRow]:
        return unique(self.rows)

    def written_tags(self) -> dict[str, tuple[str, ...]]:
        """Each row left in its table, with its tag set: what the transaction's echo carries."""
        return tags_of(r for r in self.unique_rows() if r.present)


def plan_client_transaction(
    tx: ClientTransaction, current: Mapping[RowId, CurrentRow], policy: Policy | None
) -> MergePlan:
    """Merge ``tx``'s operations into ``current`` (left unchanged) and say what to write.

    ``current`` has an entry for every row an operation names; ``policy`` is None when no
    policy is enforced (then no check is planned).
    """
    rows = _copy(current)
    plan = MergePlan(rows=rows)
    tag = Tag(tx.commit_ts_ms, tx.client_id)
    for n, op in enumerate(tx.ops, start=1):
        row = rows[(op.relation.qualified, op.key)]
        before, was_present = row.state, row.present
        write = write_of(op, tag)
        if op.observe_current:
            write = dataclasses.replace(write, observed=before.tags)
        state = merge(before, write)
        row.state = state
        action: Action | None = None
        if state.exists and (op.kind != "compensation" or not row.present):
            if op.kind == "compensation" and not _complete(op.relation, state):
                continue  # nothing to revive the row from (it was never seen whole)
            action = Action("upsert", op.relation, row.key, dict(state.values))
            row.present = True
        elif not state.exists and row.present:
            action = Action("delete", op.relation, row.key, dict(state.values))
            row.present = False
        if policy is not None:
            check = _check(n, op, policy, before if was_present else None, state, action)
            if check is not None:
                plan.checks.append(check)
        if action is not None:
            plan.actions.append(action)
    return plan


def _copy(current: Mapping[RowId, CurrentRow]) -> dict[RowId, CurrentRow]:
    """A copy that keeps sharing: ids that name one row still share one copy."""
    copies: dict[int, CurrentRow] = {}
    out: dict[RowId, CurrentRow] = {}
    for rid, row in current.items():
        copy = copies.get(id(row))
        if copy is None:
            copy = copies[id(row)] = CurrentRow(row.rel, row.key, row.state, row.present)
        out[rid] = copy
    return out


def unique(rows: Mapping[RowId, CurrentRow]) -> list[CurrentRow]:
    seen: dict[int, CurrentRow] = {}
    for r in rows.values():
        seen.setdefault(id(r), r)
    return list(seen.values())


def tag_order(t: Tag) -> tuple[int, str]:
    return (t.ts, t.origin or "")


def tags_of(rows: Iterable[CurrentRow]) -> dict[str, tuple[str, ...]]:
    return {row_key(r.rel.qualified, r.key): tuple(str(t) for t in sorted(r.state.tags, key=tag_order)) for r in rows}


def parse_tag_json(raw: Any) -> Tag:
    return Tag(int(raw[0]), raw[1])


def tags_json(tags: frozenset[Tag]) -> list[list[Any]]:
    return [[t.ts, t.origin] for t in sorted(tags, key=tag_order)]


def shadow_entries(rows: Sequence[CurrentRow]) -> dict[str, list[dict[str, Any]]]:
    """The rows' shadow entries (tags, and whether deleted), by table."""
    by_table: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_table.setdefault(r.rel.qualified, []).append(
            {
                "pk": list(r.key),
                "row_tags": tags_json(r.state.tags),
                "col_tags": {c: [t.ts, t.origin] for c, t in r.state.col_tags.items()},
                "deleted": not r.state.exists,
            }
        )
    return by_table


def state_row(rel: RelationDef, pk: Sequence[str], key: Key, rec: Sequence[Any]) -> CurrentRow:
    """A row's merge state from what the writer read: whether the row is there, its values (text),
    and its shadow entry (row tags, column tags, a deleted row's last values)."""
    ncols = len(rel.columns)
    present = bool(rec[0])
    values = rec[1 : 1 + ncols]
    row_tags, col_tags, tombstone = rec[1 + ncols :]
    if present:
        vals = {c.name: v for c, v in zip(rel.columns, values, strict=True)}
    elif tombstone is not None:
        vals = dict(tombstone)
    else:
        vals = {}
    vals.update(zip(pk, key, strict=True))
    if row_tags is None:
        # no shadow entry: a row from before the table was electrified (or no row at all)
        state = RowState(vals, {}, frozenset({Tag(0, None)}) if present else frozenset())
    else:
        state = RowState(
            vals,
            {c: parse_tag_json(t) for c, t in (col_tags or {}).items()},
            frozenset(parse_tag_json(t) for t in row_tags),
        )
    return CurrentRow(rel, key, state, present)


def write_of(op: ClientOp, tag: Tag) -> Write:
    """A client operation as the merge rules take it."""
    observed = frozenset(Tag.parse(t) for t in op.tags)
    if op.kind in ("delete", "compensation"):
        return Write(op.kind, tag, observed)
    pk = set(op.relation.pk_columns)
    if op.kind == "insert" or op.old is None:
        changed = frozenset(c for c in op.values if c not in pk)
    else:
        old = op.old
        changed = frozenset(c for c, v in op.values.items() if c not in pk and old.get(c) != v)
    return Write(op.kind, tag, observed, op.values, changed)


def _complete(rel: RelationDef, state: RowState) -> bool:
    return all(c.nullable or state.values.get(c.name) is not None for c in rel.columns)


def _check(
    n: int, op: ClientOp, policy: Policy, before: RowState | None, after: RowState, action: Action | None
) -> Check | None:
    """What must hold for operation ``n`` to be allowed, as it takes effect (None: nothing to check).

    An insert or update is an insert where there was no row and an update where there was one;
    a delete needs the delete privilege for the row as it is; a compensation that revives a row
    is an insert. The row before is Postgres' (not what the client says it had).
    """
    rel = op.relation
    if op.kind == "delete":
        if before is None:
            return None  # nothing there to delete
        privilege, rows_before, rows_after = "delete", before, None
        written: frozenset[str] = frozenset()
    elif op.kind == "compensation":
        if action is None or action.kind != "upsert":
            return None  # the row is there already: nothing changes
        privilege, rows_before, rows_after = "insert", None, after
        written = frozenset(c for c, v in after.values.items() if v is not None)
    else:
        privilege = "update" if before is not None else "insert"
        rows_before, rows_after = before, after
        if privilege == "insert":
            written = frozenset(c for c, v in op.values.items() if v is not None)
        else:
            old = op.old or {}
            written = frozenset(c for c, v in op.values.items() if old.get(c) != v)
    grants = tuple(policy.candidates(privilege, rel, written))
    reason = (
        f"{privilege} on {rel.qualified} is not allowed for this row by any grant this user holds"
        if grants
        else policy.denial(privilege, rel, written)
    )
    return Check(
        n,
        op,
        privilege,
        grants,
        as_json(rel, rows_before.values) if rows_before is not None else None,
        as_json(rel, rows_after.values) if rows_after is not None else None,
        reason,
    )


def as_json(rel: RelationDef, values: Mapping[str, Any]) -> dict[str, Any]:
    """Values as JSON for ``jsonb_populate_record`` (json columns as JSON, the rest as text)."""
    return {c: json_value(rel, c, v) for c, v in values.items()}


def json_value(rel: RelationDef, column: str, value: Any) -> Any:
    if value is None:
        return None
    col = next(c for c in rel.columns if c.name == column)
    if col.type_name in _JSON_TYPES:
        return json.loads(value)
    return value
