"""Control-plane benchmark: plan + apply of 100 electrified tables, and a no-op apply.

Goals (issue #2): plan plus apply for 100 tables in 3 s or less; a no-op apply in 1 s or less.
Run with `scripts/bench`. It prints medians of several rounds, each on a fresh database, measured
two ways: in-process (the library calls) and as the `electricctl` CLI a CI job runs (a new Python
process each time, so it includes interpreter start-up and imports).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from benchmarks.common import runs
from benchmarks.report import REPORT
from electricctl._apply import applier
from electricctl._config.loader import load_file
from electricctl._embedded.postgres import EmbeddedPostgres

SECTION = "control_plane"
TITLE = "Control plane: plan + apply of electrified tables, and a no-op apply"


def make_schema(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(n):
            parent = f", parent_id uuid REFERENCES t{i - 1:03d} (id)" if i % 10 else ""
            conn.execute(
                f"CREATE TABLE t{i:03d} (id uuid PRIMARY KEY, name text NOT NULL, n int4, flag bool,"
                f" created_at timestamptz, doc jsonb{parent})"
            )


def make_config(path: Path, n: int) -> None:
    lines = ["version: 1", "auth: {mode: insecure}", "tables:"]
    lines += [f"  - t{i:03d}" for i in range(n)]
    lines += ["grants:"]
    lines += [f"  - {{privileges: read, on: t{i:03d}, to: authenticated, where: 'flag'}}" for i in range(n)]
    lines += ["shapes:"]
    lines += [f"  - {{name: s{i:03d}, table: t{i:03d}, where: 'n > 0'}}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def timed(fn: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def cli(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "electricctl", *map(str, args)], check=True, capture_output=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tables", type=int, default=100)
    parser.set_defaults(rounds=5)


QUICK = {"tables": 10}
"""What ``python -m benchmarks --quick`` changes."""


async def run(args: argparse.Namespace, pg: EmbeddedPostgres, tmp: Path) -> None:
    """Blocking work (the library and the CLI), run on the caller's loop: nothing else runs meanwhile."""
    print(
        f"control plane, {args.tables} tables (+{args.tables} grants, {args.tables} shapes), "
        f"{'fsync off' if args.fast else 'durable cluster'}, {args.rounds} rounds, {os.cpu_count()} cores"
    )
    results: dict[str, list[float]] = {
        k: [] for k in ("plan", "apply", "plan+apply", "noop apply", "cli plan+apply", "cli noop apply")
    }
    cfg_path = tmp / "electric.yaml"
    make_config(cfg_path, args.tables)
    for r in range(args.rounds):
        for mode in ("lib", "cli"):
            db = f"bench_{mode}_{r}"
            with psycopg.connect(pg.url(), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {db}")
            url = pg.url(db)
            make_schema(url, args.tables)
            if mode == "lib":
                config = load_file(cfg_path, database_url=url)
                t_plan = timed(applier.load_plan, config, url)
                t_apply = timed(applier.apply, config, url)
                results["plan"].append(t_plan)
                results["apply"].append(t_apply)
                results["plan+apply"].append(t_plan + t_apply)
                results["noop apply"].append(timed(applier.apply, config, url))
            else:
                t = timed(cli, "plan", "-f", str(cfg_path), "--database-url", url)
                t += timed(cli, "apply", "-f", str(cfg_path), "--database-url", url)
                results["cli plan+apply"].append(t)
                results["cli noop apply"].append(timed(cli, "apply", "-f", str(cfg_path), "--database-url", url))
    goals = {"plan+apply": 3.0, "noop apply": 1.0, "cli plan+apply": 3.0, "cli noop apply": 1.0}
    for name, values in results.items():
        goal = f"  (goal <= {goals[name]:.0f} s)" if name in goals else ""
        print(f"  {name:<16} {runs(values, '{:.3f}')} s{goal}")
        if name in goals:
            REPORT.figure(
                SECTION,
                f"{name} of {args.tables} tables"
                + (" (the CLI: a new process each)" if name.startswith("cli") else ""),
                values,
                "s",
                goal=("<=", goals[name]) if args.tables == 100 else None,
                key=8 if name == "cli plan+apply" else 0,
                note="" if args.tables == 100 else "goal is for 100 tables",
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fast", action="store_true", help="fsync=off (default: a durable cluster)")
    add_arguments(parser)
    args = parser.parse_args()
    with EmbeddedPostgres(durable=not args.fast) as pg, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, pg, Path(tmp)))


if __name__ == "__main__":
    main()
