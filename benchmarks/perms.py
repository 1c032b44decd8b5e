"""Permission overhead benchmark: the same workloads with and without grants.

Target (the permissions issue): with 1,000 users and 10,000 role assignments, permission checks
add no more than 20% to stream latency and to write-path throughput.

Schema: 100 projects, 1,000 users with 10 memberships each (10,000 assignments of the scoped role
``projects:member``), issues in the projects. "With grants": members may read and write the issues
of their projects; "open": no grants (every authenticated client may do everything). Medians of
several rounds, runs in brackets.

1. write path: a member inserts issues of its project in transactions of 100 rows (the client
   library, as in benchmarks/writes.py), timed until Postgres holds them and the oplog is empty.
2. stream latency: Postgres inserts issues of the member's project at 50/s; timed from the
   INSERT's commit to the row committed in the member's ``SyncClient`` file (its ``on_change``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sqlite3
import time
from pathlib import Path

import psycopg

from benchmarks.common import Parts, pct, run_alone, runs, serving, sql, until
from benchmarks.report import REPORT
from electricctl._apply import applier
from electricctl._auth.tokens import mint
from electricctl._config.loader import load_text
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl.client import RemoteChange, SyncClient

SECTION = "perms"
TITLE = "Permissions: the same workloads with and without grants"

SCHEMA = """
CREATE TABLE projects (id text PRIMARY KEY, name text);
CREATE TABLE memberships (id int8 PRIMARY KEY, project_id text NOT NULL REFERENCES projects (id), user_id text NOT NULL);
CREATE INDEX ON memberships (user_id);
CREATE TABLE issues (id text PRIMARY KEY, project_id text NOT NULL REFERENCES projects (id), title text);
INSERT INTO projects SELECT 'p' || g, 'project ' || g FROM generate_series(0, 99) g;
INSERT INTO memberships SELECT g, 'p' || ((g * 7) % 100), 'u' || (g / 10) FROM generate_series(0, 9999) g;
"""

OPEN = "version: 1\nauth: {mode: insecure}\ntables: [projects, memberships, issues]\nadhoc_shapes: allow\n"
GRANTS = (
    OPEN
    + """assignments:
  - {role: "projects:member", to: memberships.user_id, scope: memberships.project_id}
grants:
  - {privileges: [select, insert, update, delete], on: issues, to: "projects:member"}
  - {privileges: [select], on: projects, to: "projects:member"}
"""
)
USER, PROJECT = "u0", "p0"  # u0 is a member of p0 (membership 0)


class Db:
    def __init__(self, pg: EmbeddedPostgres, tmp: Path, name: str, config: str) -> None:
        sql(pg.url(), f"CREATE DATABASE {name}")
        self.url = pg.url(name)
        sql(self.url, SCHEMA)
        self.config_path = tmp / f"{name}.yaml"
        self.config_path.write_text(config)
        self.config = load_text(config, str(self.config_path), env={})
        applier.apply(self.config, self.url)

    def token(self) -> str:
        return mint(self.config.auth, USER)


async def bench_writes(pg: EmbeddedPostgres, tmp: Path, rounds: int, rows: int) -> None:
    print(f"1. write path: {rows:,} issue inserts in transactions of 100, one member")
    by_label: dict[str, list[float]] = {}
    for label, config in (("open", OPEN), ("with grants", GRANTS)):
        rates = []
        for r in range(rounds):
            name = f"pw_{label.replace(' ', '_')}_{r}"
            db = Db(pg, tmp, name, config)
            with serving(db, tmp, f"slot_{name}") as server:  # type: ignore[arg-type]
                path = tmp / f"{name}.db"
                cl = SyncClient(str(path), server.ws_url, db.token())
                await cl.start()
                await cl.synced(await cl.subscribe("issues"))
                conn = sqlite3.connect(path, isolation_level=None)
                start = time.perf_counter()
                for i in range(0, rows, 100):
                    conn.execute("BEGIN")
                    conn.executemany(
                        "INSERT INTO issues (id, project_id, title) VALUES (?, ?, ?)",
                        [(f"i{j}", PROJECT, "t") for j in range(i, min(rows, i + 100))],
                    )
                    conn.execute("COMMIT")
                    cl.notify()
                    await asyncio.sleep(0)
                await cl.flush(timeout=600)
                rates.append(rows / (time.perf_counter() - start))
                count = sql(db.url, "SELECT count(*) FROM issues")[0][0]
                assert count == rows, f"Postgres has {count} of {rows} (refused: {cl.refused[:1]})"
                conn.close()
                await cl.stop()
        print(f"   {label:>12}: {runs(rates, '{:,.0f}')} row operations/s")
        by_label[label] = rates
    REPORT.figure(
        SECTION,
        f"member writes through SyncClient -> Postgres, with grants ({rows:,} rows, 100 per transaction)",
        by_label["with grants"],
        "rows/s",
        baseline_runs=by_label["open"],
        baseline_label="no grants",
        ratio_goal=1 / 1.2,
    )


def contains_all(seen: dict[object, float], keys: list[str]) -> bool:
    return all(k in seen for k in keys)


async def bench_latency(pg: EmbeddedPostgres, tmp: Path, rounds: int, samples: int) -> None:
    print(f"2. stream latency: {samples} single-row Postgres transactions at 50/s to one member's SyncClient")
    medians: dict[str, list[float]] = {}
    for label, config in (("open", OPEN), ("with grants", GRANTS)):
        p50s, p99s = [], []
        for r in range(rounds):
            name = f"pl_{label.replace(' ', '_')}_{r}"
            db = Db(pg, tmp, name, config)
            with serving(db, tmp, f"slot_{name}") as server:  # type: ignore[arg-type]
                seen: dict[object, float] = {}

                def on_change(
                    changes: list[RemoteChange], origin: str | None, seen: dict[object, float] = seen
                ) -> None:
                    now = time.perf_counter()
                    for ch in changes:
                        seen.setdefault(ch.values["id"], now)

                cl = SyncClient(str(tmp / f"{name}.db"), server.ws_url, db.token(), on_change=on_change)
                await cl.start()
                await cl.synced(await cl.subscribe("issues"))
                sent: dict[str, float] = {}
                with psycopg.connect(db.url, autocommit=True) as conn:
                    for i in range(samples):
                        key = f"l{i}"
                        conn.execute("INSERT INTO issues VALUES (%s, %s, 't')", [key, PROJECT])
                        sent[key] = time.perf_counter()  # the commit returned (autocommit)
                        await asyncio.sleep(0.02)
                await until(functools.partial(contains_all, seen, list(sent)), 30, "every issue in the client")
                lat = [(seen[k] - sent[k]) * 1000 for k in sent]
                p50s.append(pct(lat, 50))
                p99s.append(pct(lat, 99))
                await cl.stop()
        print(f"   {label:>12}: p50 {runs(p50s)} ms, p99 {runs(p99s)} ms")
        medians[label] = p50s
    REPORT.figure(
        SECTION,
        "stream latency to a member's SyncClient, p50, with grants (1,000 users, 10,000 assignments)",
        medians["with grants"],
        "ms",
        baseline_runs=medians["open"],
        baseline_label="no grants",
        ratio_goal=1 / 1.2,
    )


async def run(args: argparse.Namespace, pg: EmbeddedPostgres, tmp: Path) -> None:
    print(f"permissions: 1,000 users, 10,000 assignments; {args.rounds} rounds, {os.cpu_count()} cores")
    parts = Parts(args.only, "12")
    await parts.step("1", bench_writes(pg, tmp, args.rounds, args.rows))
    await parts.step("2", bench_latency(pg, tmp, args.rounds, args.samples))
    print(parts.summary())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=200)


QUICK = {"rows": 500, "samples": 20}
"""What ``python -m benchmarks --quick`` changes."""


def main() -> None:
    run_alone(__doc__, add_arguments, run, "bench-perms-")


if __name__ == "__main__":
    main()
