"""The control plane as a Python API, for orchestrators that call Python rather than a shell.

    import electricctl
    checked = electricctl.validate("electric.yaml")              # no database, no secrets
    planned = electricctl.plan("electric.yaml", database_url=url)
    if planned.exit_code == electricctl.CHANGES:
        done = electricctl.apply("electric.yaml", database_url=url)
    state = electricctl.status("electric.yaml", database_url=url)

Each returns a typed result with the exit code the CLI would give (0, or 2 for changes / drift
present) and raises the project's errors (:class:`~electricctl.errors.ConfigError` with located
findings, :class:`~electricctl.errors.CatalogError`, :class:`~electricctl.errors.ApplyError`,
:class:`~electricctl.errors.LockTimeout`), never ``SystemExit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from electricctl._apply import applier
from electricctl._config.loader import load_file
from electricctl._config.model import ElectricConfig
from electricctl._plan.changes import Change, Plan
from electricctl.cli.summaries import counts
from electricctl.errors import CatalogError, Diagnostic, ExitCode

OK = int(ExitCode.OK)
CHANGES = int(ExitCode.CHANGES)
"""The exit code meaning "there are changes" (plan) or "drift or pending changes" (status)."""


@dataclass(frozen=True, slots=True)
class Validated:
    config: ElectricConfig
    warnings: tuple[Diagnostic, ...]
    env_needed: tuple[str, ...]
    """The environment variables the file reads."""
    env_unset: tuple[str, ...]
    """Those that are not set (their values were not checked)."""
    exit_code: int = OK


@dataclass(frozen=True, slots=True)
class Planned:
    plan: Plan
    summary: dict[str, int]
    """How many changes create, update and delete."""
    exit_code: int
    """0: the database matches the file; 2: there are changes."""

    @property
    def changes(self) -> tuple[Change, ...]:
        return self.plan.changes


@dataclass(frozen=True, slots=True)
class Applied:
    plan: Plan
    applied: bool
    """False for a dry run, or when there was nothing to do."""
    summary: dict[str, int]
    exit_code: int = OK


@dataclass(frozen=True, slots=True)
class StatusReport:
    status: applier.Status
    drift: tuple[Change, ...]
    """Objects changed outside electricctl (``apply`` repairs them)."""
    pending: tuple[Change, ...]
    """Differences between the file and what was applied."""
    exit_code: int
    """0 in sync; 2 on drift, pending changes, or a problem (``status.problems``: wal_level)."""

    @property
    def in_sync(self) -> bool:
        return self.status.in_sync


def _url(config: ElectricConfig, database_url: str | None, env: Mapping[str, str] | None) -> str:
    url = applier.database_url(config, database_url, env)
    if not url:
        raise CatalogError(f"no database: pass database_url, set DATABASE_URL, or set database.url in {config.file}")
    return url


def validate(file: str | Path, *, strict_env: bool = False, env: Mapping[str, str] | None = None) -> Validated:
    """Check the file without a database (or secrets, unless ``strict_env``)."""
    config = load_file(file, env=env, strict_env=strict_env)
    return Validated(config, config.warnings, config.env_refs, config.env_unset)


def plan(
    file: str | Path, *, database_url: str | None = None, prune: bool = False, env: Mapping[str, str] | None = None
) -> Planned:
    """The changes ``apply`` would make to the database (read-only)."""
    config = load_file(file, env=env, database_url=database_url)
    the_plan, _ = applier.load_plan(config, _url(config, database_url, env), prune=prune)
    return Planned(the_plan, counts(the_plan), OK if the_plan.empty else CHANGES)


def apply(
    file: str | Path,
    *,
    database_url: str | None = None,
    prune: bool = False,
    dry_run: bool = False,
    lock_timeout: float = 60.0,
    allow_empty: bool = False,
    env: Mapping[str, str] | None = None,
) -> Applied:
    """Make the database match the file, in one transaction under an advisory lock."""
    config = load_file(file, env=env, database_url=database_url)
    result = applier.apply(
        config,
        _url(config, database_url, env),
        prune=prune,
        dry_run=dry_run,
        lock_timeout=lock_timeout,
        allow_empty=allow_empty,
    )
    return Applied(result.plan, result.applied, counts(result.plan))


def status(file: str | Path, *, database_url: str | None = None, env: Mapping[str, str] | None = None) -> StatusReport:
    """What was applied against the file, and drift made by hand."""
    config = load_file(file, env=env, database_url=database_url)
    st = applier.status(config, _url(config, database_url, env))
    return StatusReport(st, st.drift, st.pending, OK if st.in_sync and not st.problems else CHANGES)
