"""Names and settings that the writer, the replication stream and the catalog must agree on."""

from __future__ import annotations

PUBLICATION = "electric_publication"
"""The publication the replication slot streams (``electricctl apply`` installs it)."""

ORIGIN_PREFIX = "electric.origin"
"""Logical message prefix: the client a transaction was written for (the writer emits it)."""
WRITE_PREFIX = "electric.write"
"""Logical message prefix: a client transaction's timestamp and the tags of the rows it wrote."""
MIGRATION_PREFIX = "electric.migration"
"""Logical message prefix: a schema migration of an electrified table (JSON: version, schema,
table, op, columns, snapshot), emitted in the DDL's own transaction (``electricctl._sql.guard``)."""
MARKER_PREFIX = "electricctl.marker"
"""Logical message prefix: a caught-up marker (``Server.caught_up``); never sent to clients."""

DISPLAY_OPTIONS = "-c DateStyle=ISO,DMY -c TimeZone=UTC -c bytea_output=hex -c extra_float_digits=1"
"""Session settings for every connection that reads values as text: one text form for each
value, whichever connection (stream, snapshot, writer) reads it."""
