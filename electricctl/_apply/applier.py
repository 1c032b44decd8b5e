"""The only code that writes electricctl's objects into Postgres.

``apply`` takes a transaction-level advisory lock (waiting at most ``lock_timeout``), introspects
*under the lock*, plans, and executes every statement in the same transaction, then records what
was applied. Any failure rolls the whole transaction back: nothing is half-applied.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from electricctl import __version__
from electricctl._catalog.inspector import inspect
from electricctl._catalog.observed import ObservedState, SlotInfo
from electricctl._config.model import ElectricConfig
from electricctl._plan.planner import Change, Plan, plan
from electricctl._sql import names, render
from electricctl.errors import ApplyError, CatalogError, LockTimeout


def database_url(
    config: ElectricConfig, override: str | None = None, env: Mapping[str, str] | None = None
) -> str | None:
    """The database to use: ``override`` (``--database-url``), else the file's ``database.url``,
    else ``DATABASE_URL`` in ``env`` (the process environment by default); None if none says."""
    return override or config.database_url or (os.environ if env is None else env).get("DATABASE_URL") or None


def redact(url: str) -> str:
    """The URL with any password replaced, for messages."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


@contextmanager
def connect(url: str) -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = psycopg.connect(url, application_name="electricctl", connect_timeout=10)
    except psycopg.Error as exc:
        raise CatalogError(f"cannot connect to {redact(url)}: {str(exc).strip()}") from exc
    try:
        yield conn
    finally:
        conn.close()


def load_plan(config: ElectricConfig, url: str, *, prune: bool = False) -> tuple[Plan, ObservedState]:
    """Introspect (read-only) and plan, without taking the apply lock."""
    with connect(url) as conn:
        conn.read_only = True
        observed = inspect(conn, config.table_refs)
        conn.rollback()
    return plan(config, observed, prune=prune), observed


@dataclass(frozen=True, slots=True)
class ApplyResult:
    plan: Plan
    applied: bool
    """False for a dry run, or when there was nothing to do."""


def apply(
    config: ElectricConfig,
    url: str,
    *,
    prune: bool = False,
    dry_run: bool = False,
    lock_timeout: float = 60.0,
    allow_empty: bool = False,
) -> ApplyResult:
    with connect(url) as conn:
        try:
            with conn.transaction():
                result = _apply_locked(conn, config, prune, dry_run, lock_timeout, allow_empty)
                if not result.applied:
                    raise psycopg.Rollback
        except psycopg.errors.LockNotAvailable as exc:
            raise LockTimeout(
                f"timed out after {lock_timeout:g}s waiting for a lock ({str(exc).strip()}); another "
                "`electricctl apply` or a long transaction holds it. Nothing was applied; retry, or raise --lock-timeout"
            ) from exc
        return result


def _apply_locked(
    conn: psycopg.Connection[Any],
    config: ElectricConfig,
    prune: bool,
    dry_run: bool,
    lock_timeout: float,
    allow_empty: bool,
) -> ApplyResult:
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout * 1000)}ms")))
    conn.execute("SELECT pg_advisory_xact_lock(%s)", [names.ADVISORY_LOCK_KEY])
    observed = inspect(conn, config.table_refs)
    the_plan = plan(config, observed, prune=prune)
    if prune and not config.tables and not allow_empty and observed.catalog and observed.catalog.electrified:
        raise ApplyError(
            f"{config.file} declares no tables, so --prune would stop syncing every table; "
            "pass --allow-empty if that is what you want"
        )
    if dry_run or the_plan.empty:
        return ApplyResult(the_plan, applied=False)
    for change in the_plan.changes:
        _execute(conn, change)
    _record(conn, config, the_plan)
    return ApplyResult(the_plan, applied=True)


def _execute(conn: psycopg.Connection[Any], change: Change) -> None:
    for stmt in change.statements:
        try:
            conn.execute(stmt)
        except psycopg.errors.LockNotAvailable:
            raise
        except psycopg.Error as exc:
            diag = exc.diag
            detail = diag.message_primary or str(exc).strip()
            hint = f" (hint: {diag.message_hint})" if diag.message_hint else ""
            raise ApplyError(
                f"applying {change.address} failed: {detail}{hint}\n  statement: {render.text(stmt)}\n"
                "The transaction was rolled back; nothing was applied."
            ) from exc


def _record(conn: psycopg.Connection[Any], config: ElectricConfig, the_plan: Plan) -> None:
    changes = [{"address": c.address, "action": c.action.value} for c in the_plan.changes]
    conn.execute(
        "INSERT INTO electric.applied_configs"
        " (config_hash, electricctl_version, applied_by, client_host, source_file, changes)"
        " VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
        [
            the_plan.config_hash,
            __version__,
            f"{getpass.getuser()} (db role: {conn.info.user})",
            socket.gethostname(),
            config.file,
            render.canonical_json(changes),
        ],
    )
    # delivered at commit, and only if it commits: a running serve reloads the catalog at once
    conn.execute("SELECT pg_notify(%s, %s)", [names.CATALOG_CHANNEL, the_plan.config_hash])


@dataclass(frozen=True, slots=True)
class Status:
    plan: Plan
    observed: ObservedState

    @property
    def drift(self) -> tuple[Change, ...]:
        """Objects the catalog says were applied that no longer match the database."""
        return tuple(c for c in self.plan.changes if c.drift)

    @property
    def pending(self) -> tuple[Change, ...]:
        """Differences between the file and what was applied."""
        return tuple(c for c in self.plan.changes if not c.drift)

    @property
    def slots(self) -> tuple[SlotInfo, ...]:
        return self.observed.slots

    @property
    def in_sync(self) -> bool:
        return self.plan.empty

    @property
    def problems(self) -> tuple[str, ...]:
        """What stops sync working even when the database matches the file."""
        if self.observed.wal_level != "logical":
            return (
                f"wal_level is {self.observed.wal_level!r}: serve needs logical replication; run"
                " ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL",
            )
        return ()


def status(config: ElectricConfig, url: str) -> Status:
    with connect(url) as conn:
        conn.read_only = True
        observed = inspect(conn, config.table_refs, slots=True)
        conn.rollback()
    return Status(plan(config, observed, prune=True), observed)
