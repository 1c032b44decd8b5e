"""The ``sqlite`` section: statements (indexes, triggers, views) for the clients' SQLite databases.

Each item must be exactly one statement that SQLite can parse; statements are compared after
trimming whitespace and a trailing semicolon, and each may appear once. ``apply`` records each
new one as a migration, which every client runs on its own database in the stream's order (the
Python client skips, with a warning, one its database refuses). Removing a statement from the file
does not undo it on clients: migrations only go forward.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from electricctl._config.diagnostics import DiagnosticSink
from electricctl._config.model import SqliteStatement


def validate_sqlite(items: list[Any] | None, sink: DiagnosticSink) -> tuple[SqliteStatement, ...]:
    """The valid statements, normalised, in file order."""
    out: list[SqliteStatement] = []
    seen: dict[str, int] = {}
    probe = sqlite3.connect(":memory:")
    try:
        for i, stmt in enumerate(items or []):
            path = f"sqlite[{i}]"
            text = stmt.strip().rstrip(";").strip()
            problem = sqlite_problem(probe, text)
            if problem:
                sink.error(path, problem, "sqlite.invalid")
                continue
            if text in seen:
                sink.error(path, f"this statement is listed twice (first at line {seen[text]})", "sqlite.duplicate")
                continue
            seen[text] = sink.at(path).line
            out.append(SqliteStatement(text, sink.at(path)))
    finally:
        probe.close()
    return tuple(out)


def sqlite_problem(probe: sqlite3.Connection, text: str) -> str | None:
    """Why ``text`` is not exactly one SQLite statement, or None if it is."""
    for i, ch in enumerate(text):
        if ch == ";" and sqlite3.complete_statement(text[: i + 1]) and text[i + 1 :].strip():
            return "must be exactly one SQLite statement; put each statement in its own list item"
    try:
        probe.execute("EXPLAIN " + text)
    except sqlite3.Error as exc:
        message = str(exc)
        # the statement refers to tables that exist only on clients: that is fine here
        if "syntax error" in message or "incomplete input" in message or "unrecognized token" in message:
            return f"invalid SQLite statement: {message}"
    return None
