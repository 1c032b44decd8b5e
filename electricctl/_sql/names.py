"""Names of the database objects electricctl owns. One place, so nothing else spells them."""

from __future__ import annotations

import hashlib

from electricctl._model.table import TableRef

SCHEMA = "electric"
ROW_TRIGGER = "electric_stamp_row"
TRUNCATE_TRIGGER = "electric_stamp_truncate"
TRUNCATE_FUNCTION = "stamp_truncate"
STAMP_FAST = "generic CONSTANT boolean := false;"
"""The line of a stamp function's body that the DDL guard swaps for :data:`STAMP_GENERIC` when a
column is added (see ``electricctl._sql.render.stamp_function_source``)."""
STAMP_GENERIC = "generic CONSTANT boolean := true;"
WRITER_SETTING = "electric.writer"
"""The sync worker sets this (SET LOCAL) on its own writes, which it tags itself."""
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"electricctl:apply").digest()[:8], "big", signed=True)
"""Key of the transaction-level advisory lock that serialises applies (per database)."""
CATALOG_CHANNEL = "electricctl_catalog"
"""``apply`` notifies on this channel (``pg_notify``, delivered at its commit) with the applied
config's hash: a running ``serve`` re-reads the catalog at once instead of at its next poll."""

_MAX_IDENT = 63


def stamp_function(table: TableRef) -> str:
    """Name of the per-table trigger function, within Postgres' 63-byte identifier limit."""
    name = f"stamp__{table.schema}__{table.name}"
    if len(name.encode()) <= _MAX_IDENT:
        return name
    digest = hashlib.sha256(str(table).encode()).hexdigest()[:10]
    return f"stamp__{table.name.encode()[:40].decode(errors='ignore')}__{digest}"
