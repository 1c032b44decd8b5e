"""What a plan is made of: ordered :class:`Change` objects, each with the SQL that makes it.

Pure data. How a plan is shown to a person or written as JSON is the CLI's business
(:mod:`electricctl.cli.render`); the applier only needs each change's address and statements.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from electricctl._sql import render
from electricctl._sql.render import Statement
from electricctl.errors import Diagnostic


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class RuleEdit:
    """The catalog rule a change writes or deletes, with its definition (the desired one, or the
    stored one for a deletion)."""

    catalog_table: str
    name: str
    definition: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    address: str
    """Stable name of the object, e.g. ``table.public.issues.trigger``, ``grant.public.issues/...``."""
    action: Action
    reason: str
    """What the diff found and what the change does about it (empty for rule changes: see ``rule``)."""
    statements: tuple[Statement, ...]
    drift: bool = False
    """The catalog says this object was applied, but the database no longer matches it."""
    destructive: bool = False
    locks_table: str | None = None
    rule: RuleEdit | None = None
    """Set when the change writes or deletes a catalog rule."""

    def sql(self) -> list[str]:
        return [render.text(s) for s in self.statements]


@dataclass(frozen=True, slots=True)
class Plan:
    changes: tuple[Change, ...]
    config_hash: str
    orphans: tuple[str, ...] = ()
    """Objects electricctl manages that the file no longer declares: removed only with --prune."""
    warnings: tuple[Diagnostic, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changes
