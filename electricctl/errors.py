"""The electricctl error tree, and the exit codes the CLI maps them to.

Every error says what went wrong and, where there is one, what to do about it. Foreign errors
(psycopg, yaml, pglast, websockets, asyncio's timeouts) are turned into these where the CLI or a
library caller would otherwise see them: config loading, introspection, apply, serve's startup, the
sync client. Inside
serve, a psycopg error during a client's request becomes an error reply to that client.

::

    ElectricError
    ├── ConfigError          electric.yaml is invalid (carries Diagnostics with file:line:col)
    ├── CatalogError         introspection failed, or the database cannot host electricctl
    ├── PlanError            the file does not fit the live schema (carries Diagnostics)
    ├── ApplyError           applying failed; the transaction was rolled back
    │   └── LockTimeout      another apply held the lock for longer than --lock-timeout
    ├── EmbeddedPostgresError  the throwaway cluster could not be started or stopped
    └── SyncError            the sync client could not do what was asked (the server's reason)
        ├── AuthenticationFailed  the server refused the token
        ├── EndpointNotFound      nothing at that URL speaks the sync protocol
        ├── SubscriptionRefused   the server refused a shape
        ├── ConnectionLost        the client is not connected (or the connection dropped mid-request)
        └── Timeout               a wait ran out of time (also a builtin TimeoutError)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    """Exit codes shared by every command (terraform's convention, plus 3 for lock contention)."""

    OK = 0
    ERROR = 1
    CHANGES = 2
    """``plan``/``status --detailed-exitcode``: there are changes or drift."""
    LOCKED = 3
    """``apply``: another apply held the advisory lock for longer than ``--lock-timeout``."""
    USAGE = 64
    """Bad command-line usage (click's own 2 would collide with CHANGES)."""


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a YAML file: 1-based line and column, and the dotted path of the node."""

    file: str
    line: int
    col: int
    path: str

    def shifted(self, columns: int) -> Location:
        return Location(self.file, self.line, self.col + columns, self.path)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding about the config, pointing at the exact YAML node."""

    location: Location
    message: str
    code: str
    level: str = "error"

    def format(self) -> str:
        loc = self.location
        prefix = "" if self.level == "error" else f"{self.level}: "
        return f"{loc.file}:{loc.line}:{loc.col}: {prefix}{self.message} (at {loc.path})"

    def as_json(self) -> dict[str, object]:
        loc = self.location
        return {
            "file": loc.file,
            "line": loc.line,
            "column": loc.col,
            "path": loc.path,
            "level": self.level,
            "code": self.code,
            "message": self.message,
        }


class ElectricError(Exception):
    """Root of every error electricctl raises on purpose."""

    exit_code: ExitCode = ExitCode.ERROR


class DiagnosticsError(ElectricError):
    """An error made of one or more located findings."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__("\n".join(d.format() for d in self.diagnostics))


class ConfigError(DiagnosticsError):
    """electric.yaml failed schema or semantic validation."""


class PlanError(DiagnosticsError):
    """electric.yaml does not fit the live database schema."""


class CatalogError(ElectricError):
    """The database could not be introspected or cannot host electricctl."""


class ApplyError(ElectricError):
    """Applying failed. Nothing was changed: the whole apply runs in one transaction."""


class LockTimeout(ApplyError):
    exit_code = ExitCode.LOCKED


class EmbeddedPostgresError(ElectricError):
    """The throwaway PostgreSQL cluster could not be started or stopped."""


class SyncError(ElectricError):
    """The sync client could not do what was asked; the message says why (with the server's reason)."""


class AuthenticationFailed(SyncError):
    """The server refused the client's token (bad signature, expired, another user's client id)."""


class EndpointNotFound(SyncError):
    """Nothing at the URL speaks the Satellite protocol (a wrong path or port)."""


class SubscriptionRefused(SyncError):
    """The server refused a subscription (not electrified, not declared, an invalid where clause)."""


class ConnectionLost(SyncError):
    """The sync client is not connected to the server, or the connection dropped during a request."""


class Timeout(SyncError, TimeoutError):
    """A sync client wait ran out of time (a subscription's data, a flush, the server's answer).

    Also a builtin :class:`TimeoutError`, so callers that caught that keep working.
    """


class ConstraintError(ElectricError):
    """A local write broke a constraint of the local table (SQLite's message says which); nothing
    of it was written. ``table`` and ``columns`` are set when SQLite names them."""

    def __init__(self, message: str, *, table: str | None = None, columns: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.table = table
        self.columns = columns


class UniqueViolation(ConstraintError):
    """A row with that primary key (or unique value) is already there."""


class NotNullViolation(ConstraintError):
    """A column that must have a value got None."""


class ForeignKeyViolation(ConstraintError):
    """A row refers to a row that is not in the local database (with foreign keys enforced)."""


class CheckViolation(ConstraintError):
    """A CHECK constraint of the local table refused the row."""
