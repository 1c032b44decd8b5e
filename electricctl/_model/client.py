"""Client transactions as the writer takes them: decoded and checked, values as Postgres text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from electricctl._model.rows import RelationDef

OpKind = Literal["insert", "update", "delete", "compensation"]
Values = dict[str, str | None]
"""Column -> value in Postgres text form (bytea as ``\\x`` hex); None is SQL NULL."""


class InvalidTransaction(ValueError):
    """A client transaction that cannot be applied: refused alone, with this message.

    ``transaction`` is what could be decoded (its position, and the operations before the bad
    one), so the refusal can still be recorded and echoed.
    """

    transaction: ClientTransaction | None = None


@dataclass(frozen=True, slots=True)
class ClientRelation:
    schema: str
    table: str
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClientOp:
    kind: OpKind
    relation: RelationDef
    """The server's definition of the table."""
    key: tuple[str, ...]
    """Primary key values, in the table's key order (text form)."""
    values: Values
    """The new row for inserts and updates; the key (and whatever else was sent) otherwise."""
    old: Values | None
    """The row as the client had it, for updates and deletes."""
    tags: tuple[str, ...]
    """Observed tags: removed by inserts, updates and deletes; re-added by compensations."""
    observe_current: bool = False
    """The writer has seen the row as it is now (an HTTP write: TanStack DB holds no tags): its
    current tags count as observed, so a delete deletes and an update is last-writer-wins, as a
    write made in Postgres would be."""


@dataclass(slots=True)
class ClientTransaction:
    client_id: str
    lsn: int
    """The client's position of this transaction (its oplog rowid): increasing, used for idempotency."""
    commit_ts_ms: int
    ops: list[ClientOp] = field(default_factory=list)
    user_id: str | None = None
    """The token's ``sub``: whose permissions apply."""
    claims: Mapping[str, Any] = field(default_factory=dict)
    report_xid: bool = False
    """Ask the writer for the Postgres transaction id it commits under (set in :attr:`xid`)."""
    xid: int | None = None

    def describe(self) -> str:
        return f"client {self.client_id} transaction at LSN {self.lsn}"


class PermissionDenied(InvalidTransaction):
    """A client transaction the user's grants do not allow (PERMISSION_DENIED)."""

    def __init__(self, message: str, table: str, operation: str) -> None:
        super().__init__(message)
        self.table = table
        self.operation = operation
