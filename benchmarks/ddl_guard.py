"""DDL guard benchmark: what the event triggers cost DDL that has nothing to do with sync.

Issue 12 asks for the cost of the event triggers on unrelated DDL: ``CREATE TABLE`` of a table that
is not electrified, 1,000 times, with and without them. The guard's triggers fire on ``ALTER TABLE``
(``ddl_command_end``) and on every drop (``sql_drop``), so this also times ``ALTER TABLE ... ADD
COLUMN`` and ``DROP TABLE`` on unelectrified tables, and ``ADD COLUMN`` on an electrified one (the
guard compares it with its snapshot and records a migration). Each round runs on a fresh database
of a durable embedded cluster, as one client connection in autocommit (one transaction per
statement, as a migration tool runs them one by one). Medians of several rounds, runs in brackets;
the baseline is the same statements with the guard's event triggers dropped.

This measures Postgres and the guard's PL/pgSQL only: no sync client is involved.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from benchmarks.common import make_database, runs
from benchmarks.report import REPORT
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl._sql import guard

SECTION = "ddl_guard"
TITLE = "DDL guard: what the event triggers cost unrelated DDL (Postgres only)"


def _time(url: str, statements: list[sql.Composable]) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        for stmt in statements:
            conn.execute(stmt)
        return time.perf_counter() - start


def one_round(pg: EmbeddedPostgres, tmp: Path, name: str, n: int, guarded: bool) -> dict[str, float]:
    db = make_database(pg, tmp, name, "CREATE TABLE synced (id int8 PRIMARY KEY, note text)", ["synced"])
    if not guarded:
        with psycopg.connect(db.url, autocommit=True) as conn:
            for trigger in guard.EVENT_TRIGGERS:
                conn.execute(sql.SQL("DROP EVENT TRIGGER {}").format(sql.Identifier(trigger)))
    tables = [sql.Identifier(f"plain_{i}") for i in range(n)]
    return {
        "CREATE TABLE (not electrified)": _time(
            db.url, [sql.SQL("CREATE TABLE {} (id int8 PRIMARY KEY, v text)").format(t) for t in tables]
        ),
        "ALTER TABLE ADD COLUMN (not electrified)": _time(
            db.url, [sql.SQL("ALTER TABLE {} ADD COLUMN w int4").format(t) for t in tables]
        ),
        "DROP TABLE (not electrified)": _time(db.url, [sql.SQL("DROP TABLE {}").format(t) for t in tables]),
        "ALTER TABLE ADD COLUMN (electrified)": _time(
            db.url,
            [sql.SQL("ALTER TABLE synced ADD COLUMN {} int4").format(sql.Identifier(f"c{i}")) for i in range(n // 10)],
        )
        * 10,  # per 1,000, from n/10 statements (a table has at most 1,600 columns)
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--statements", type=int, default=1000)


QUICK = {"statements": 50}
"""What ``python -m benchmarks --quick`` changes."""


async def run(args: argparse.Namespace, pg: EmbeddedPostgres, tmp: Path) -> None:
    """Blocking work (psycopg), run on the caller's loop: nothing else runs meanwhile."""
    print(
        f"DDL guard: {args.statements:,} statements per kind, {'fsync-off' if args.fast else 'durable'} embedded"
        f" cluster, {args.rounds} rounds, {os.cpu_count()} cores"
    )
    print("   Postgres only (no sync client); ms per statement")
    results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for r in range(args.rounds):
        for guarded in (False, True):
            results[guarded].append(one_round(pg, tmp, f"guard_{int(guarded)}_{r}", args.statements, guarded))
    for kind in results[True][0]:
        without = [x[kind] / args.statements * 1000 for x in results[False]]
        with_ = [x[kind] / args.statements * 1000 for x in results[True]]
        print(f"   {kind}")
        print(f"     without the guard  {runs(without, '{:.3f}')} ms")
        print(f"     with the guard     {runs(with_, '{:.3f}')} ms")
        REPORT.figure(
            SECTION,
            f"{kind}, with the guard's event triggers",
            with_,
            "ms",
            baseline_runs=without,
            baseline_label="without them",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fast", action="store_true", help="fsync=off cluster (default: a durable cluster)")
    add_arguments(parser)
    args = parser.parse_args()
    with EmbeddedPostgres(durable=not args.fast) as pg, tempfile.TemporaryDirectory(prefix="bench-guard-") as tmp:
        asyncio.run(run(args, pg, Path(tmp)))


if __name__ == "__main__":
    main()
