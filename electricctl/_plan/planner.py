"""The planner: desired state (the config) against observed state (the database) → an ordered Plan.

Purely computational: no I/O. Two steps, each in its own module:

1. :func:`electricctl._plan.validate.resolve` checks the config against the live schema and
   returns typed rules (:mod:`electricctl._plan.rules`), or raises :class:`PlanError` with
   located diagnostics;
2. :func:`electricctl._plan.diff.diff` compares the desired tables and rules with what the
   database holds and orders the changes.

The config hash is computed over the canonical JSON the catalog stores, so it is the same for
the same declarations, whatever produced them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from electricctl._catalog.observed import ObservedState
from electricctl._config.model import ElectricConfig
from electricctl._model.table import TableRef
from electricctl._plan.changes import Action, Change, Plan, RuleEdit
from electricctl._plan.diff import Desired, diff, guard_missing
from electricctl._plan.rules import ResolvedRules
from electricctl._plan.validate import resolve
from electricctl._sql import render
from electricctl.errors import Diagnostic

__all__ = ["Action", "Change", "Plan", "RuleEdit", "config_hash", "plan"]


def plan(config: ElectricConfig, observed: ObservedState, *, prune: bool = False) -> Plan:
    """Compute the ordered changes that make the database match ``config``."""
    resolved = resolve(config, observed)
    desired = Desired(config.table_refs, resolved.rules)
    result = diff(desired, observed, prune=prune)
    warnings = (*config.warnings, *resolved.warnings)
    if guard_missing(observed) and not observed.superuser and config.tables:
        warnings = (
            *warnings,
            Diagnostic(
                config.tables[0].location,
                "the DDL guard is not installed: only a superuser can create its event triggers, so DDL that clients"
                " cannot follow (dropping or renaming a column, changing its type) is not refused on electrified"
                " tables; run electricctl apply once as a superuser to install it",
                "plan.ddl_guard_missing",
                "warning",
            ),
        )
    return Plan(result.changes, config_hash(config.table_refs, resolved.rules), result.orphans, warnings)


def config_hash(tables: Iterable[TableRef], rules: ResolvedRules) -> str:
    """``sha256:<hex>`` of the declared tables and the rules' catalog definitions."""
    essence = {"tables": [str(t) for t in tables], "rules": rules.definitions()}
    return "sha256:" + hashlib.sha256(render.canonical_json(essence).encode()).hexdigest()
