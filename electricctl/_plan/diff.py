"""The diff: desired state against observed state → the ordered changes that reconcile them.

Pure and database-free. The desired state is the declared tables and the typed
:class:`ResolvedRules` that validation produced; the observed state is what introspection saw.
Changes come in dependency order: the catalog, the publication, each table (its sync metadata,
replica identity, stamp function, triggers, publication membership), the catalog rules, then,
with ``prune``, removals. Without ``prune`` what would be removed is listed as an orphan.

Rules are compared as the catalog stores them (canonical JSON): the typed rules are converted
with :meth:`ResolvedRules.definitions` here, at the catalog boundary.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from electricctl._catalog.observed import ObservedState, TableInfo
from electricctl._model import wire
from electricctl._model.table import TableRef
from electricctl._plan.changes import Action, Change, RuleEdit
from electricctl._plan.rules import ResolvedRules
from electricctl._sql import catalog as catalog_sql
from electricctl._sql import guard, names, render
from electricctl._sql.render import Statement


@dataclass(frozen=True, slots=True)
class Desired:
    """What the config asks for, already checked against the observed schema."""

    tables: tuple[TableRef, ...]
    rules: ResolvedRules


@dataclass(frozen=True, slots=True)
class Diff:
    changes: tuple[Change, ...]
    orphans: tuple[str, ...] = ()
    """Addresses of managed objects the desired state no longer has (removed only with ``prune``)."""


def diff(desired: Desired, observed: ObservedState, *, prune: bool = False) -> Diff:
    """The changes that make ``observed`` match ``desired``.

    Every desired table must exist in ``observed`` (validation guarantees it); a missing one is a
    :class:`ValueError`.
    """
    missing = [str(t) for t in desired.tables if t not in observed.tables]
    if missing:
        raise ValueError(f"desired tables missing from the observed state: {', '.join(missing)}; validate first")
    changes = [*_catalog_changes(observed), *_guard_changes(observed)]
    catalog = observed.catalog
    electrified = catalog.electrified if catalog else {}
    for t in desired.tables:
        changes.extend(_table_changes(observed.tables[t], observed, t in electrified))
    rule_changes, orphans = _rule_changes(desired.rules, catalog.rules if catalog else {}, prune)
    changes.extend(rule_changes)
    declared = set(desired.tables)
    for t in sorted(set(electrified) - declared):
        if prune:
            changes.extend(_unelectrify(t, observed, electrified[t]))
        else:
            orphans.append(f"table.{t}")
    if observed.publication is not None:
        for t in sorted(observed.publication - declared - set(electrified)):
            if prune:
                changes.append(
                    Change(
                        f"table.{t}.publication",
                        Action.DELETE,
                        f"remove {t}, which electricctl does not manage, from publication {wire.PUBLICATION}",
                        (render.publication_drop(t),),
                        drift=True,
                    )
                )
            else:
                orphans.append(f"table.{t}.publication")
    return Diff(tuple(changes), tuple(orphans))


def _guard_changes(observed: ObservedState) -> Iterator[Change]:
    """The DDL guard's event triggers (:mod:`electricctl._sql.guard`), if missing and we may create them.

    Only a superuser can create event triggers; for anyone else the planner warns instead
    (:func:`guard_missing`)."""
    if not guard_missing(observed) or not observed.superuser:
        return
    catalog = observed.catalog
    yield Change(
        "guard.ddl",
        Action.CREATE if not observed.event_triggers & set(guard.EVENT_TRIGGERS) else Action.UPDATE,
        "event triggers that refuse DDL clients cannot follow on electrified tables"
        " (dropping or renaming a table or column, a type change, NOT NULL, a foreign key to an unelectrified table)",
        tuple(guard.install_event_triggers()),
        drift=catalog is not None and catalog.version >= 4,
    )


def guard_missing(observed: ObservedState) -> bool:
    return not set(guard.EVENT_TRIGGERS) <= observed.event_triggers


def _catalog_changes(observed: ObservedState) -> Iterator[Change]:
    catalog = observed.catalog
    version = catalog.version if catalog else 0
    if version < catalog_sql.LATEST:
        yield Change(
            f"catalog.{names.SCHEMA}",
            Action.CREATE if version == 0 else Action.UPDATE,
            f"install electricctl's catalog (version {version} -> {catalog_sql.LATEST}) in schema {names.SCHEMA}",
            tuple(catalog_sql.migration_statements(version)),
        )
    if observed.publication is None:
        yield Change(
            f"publication.{wire.PUBLICATION}",
            Action.CREATE,
            f"publication {wire.PUBLICATION} for the electrified tables",
            (render.create_publication(),),
            drift=catalog is not None and bool(catalog.electrified),
        )
    elif not observed.publication_ok:
        yield Change(
            f"publication.{wire.PUBLICATION}",
            Action.UPDATE,
            f"publication {wire.PUBLICATION} must publish insert, update, delete and truncate",
            (render.reset_publication_options(),),
            drift=True,
        )


def _rule_changes(
    rules: ResolvedRules, observed: Mapping[str, Mapping[str, Any]], prune: bool
) -> tuple[list[Change], list[str]]:
    """Upserts for rules that are new or differ, then deletions (or orphans) for rules no longer wanted."""
    wanted = rules.definitions()
    changes: list[Change] = []
    orphans: list[str] = []
    for table in catalog_sql.RULE_TABLES:
        have = observed.get(table, {})
        items = wanted[table].items()
        if table == "sqlite_statements":
            items = sorted(items, key=lambda item: item[1]["position"])  # type: ignore[assignment]
        for name, definition in items:
            if have.get(name) != definition:
                statements = [render.upsert_rule(table, name, definition)]
                if table == "sqlite_statements" and name not in have:
                    # a new statement reaches every client as a migration (one removed stays there)
                    statements.append(guard.record_sqlite(definition["sql"]))
                changes.append(
                    Change(
                        f"{table}.{name}",
                        Action.CREATE if name not in have else Action.UPDATE,
                        "",
                        tuple(statements),
                        rule=RuleEdit(table, name, definition),
                    )
                )
    for table in catalog_sql.RULE_TABLES:
        have = observed.get(table, {})
        for name in sorted(set(have) - set(wanted[table])):
            if prune:
                changes.append(
                    Change(
                        f"{table}.{name}",
                        Action.DELETE,
                        "",
                        (render.delete_rule(table, name),),
                        rule=RuleEdit(table, name, have[name]),
                    )
                )
            else:
                orphans.append(f"{table}.{name}")
    return changes, orphans


def _table_changes(info: TableInfo, observed: ObservedState, recorded: bool) -> Iterator[Change]:
    t = info.ref
    addr = f"table.{t}"
    locks = str(t)
    if not recorded:
        yield Change(
            addr,
            Action.CREATE,
            f"electrify {t}",
            (render.record_electrified(t, info.replica_identity, info.replica_index), guard.record_create_table(t)),
        )
    if info.replica_identity != "f":
        yield Change(
            f"{addr}.replica_identity",
            Action.UPDATE if recorded else Action.CREATE,
            f"REPLICA IDENTITY FULL on {t} (updates and deletes carry old values)",
            (render.replica_identity(t, "f"),),
            drift=recorded,
            locks_table=locks,
        )
    fn = names.stamp_function(t)
    columns = [c.name for c in info.columns]
    source = render.stamp_function_source(info.primary_key, columns)
    current = observed.functions.get(fn)
    if not render.stamp_function_current(current, info.primary_key, columns):
        yield Change(
            f"function.{names.SCHEMA}.{fn}",
            Action.CREATE if current is None else Action.UPDATE,
            f"trigger function that tags direct writes to {t}"
            + (
                ""
                if current is None
                else " (it differs from what this version installs: columns changed, an upgrade, or an edit by hand)"
            ),
            (render.create_stamp_function(t, source),),
            drift=recorded,
        )
    for trigger, function, create in (
        (names.ROW_TRIGGER, fn, render.create_row_trigger),
        (names.TRUNCATE_TRIGGER, names.TRUNCATE_FUNCTION, render.create_truncate_trigger),
    ):
        seen = observed.triggers.get((t, trigger))
        if seen is None:
            yield Change(
                f"{addr}.trigger.{trigger}",
                Action.CREATE,
                f"trigger {trigger} on {t}",
                tuple(create(t)),
                drift=recorded,
                locks_table=locks,
            )
        elif seen.function != function:
            yield Change(
                f"{addr}.trigger.{trigger}",
                Action.UPDATE,
                f"trigger {trigger} on {t} calls {seen.function}() instead of {function}()",
                (render.drop_trigger(t, trigger), *create(t)),
                drift=recorded,
                locks_table=locks,
            )
        elif seen.enabled != "A":
            state = {"D": "disabled", "O": "enabled for origin sessions only", "R": "enabled for replicas only"}
            yield Change(
                f"{addr}.trigger.{trigger}",
                Action.UPDATE,
                f"trigger {trigger} on {t} is {state.get(seen.enabled, seen.enabled)}; enable it ALWAYS",
                (render.enable_trigger_always(t, trigger),),
                drift=recorded,
                locks_table=locks,
            )
    if observed.publication is None or t not in observed.publication:
        yield Change(
            f"{addr}.publication",
            Action.CREATE,
            f"add {t} to publication {wire.PUBLICATION}",
            (render.publication_add(t),),
            drift=recorded and observed.publication is not None,
        )


def _unelectrify(t: TableRef, observed: ObservedState, record: Mapping[str, Any]) -> Iterator[Change]:
    info = observed.tables.get(t)
    statements: list[Statement] = []
    if info is not None:
        for trigger in (names.ROW_TRIGGER, names.TRUNCATE_TRIGGER):
            if (t, trigger) in observed.triggers:
                statements.append(render.drop_trigger(t, trigger))
        if observed.publication is not None and t in observed.publication:
            statements.append(render.publication_drop(t))
        original = str(record.get("original_replica_identity") or "d")
        if info.replica_identity != original:
            statements.append(render.replica_identity(t, original, record.get("original_replica_index")))
    fn = names.stamp_function(t)
    if fn in observed.functions:
        statements.append(render.drop_function(fn))
    statements.extend(render.forget_electrified(t))
    yield Change(
        f"table.{t}",
        Action.DELETE,
        f"stop syncing {t}: remove its triggers, publication membership and sync metadata (its rows stay)",
        tuple(statements),
        locks_table=str(t) if info is not None else None,
    )
