"""Every benchmark in one process, sharing one embedded cluster, and the report: BENCHMARKS.md.

    .venv/bin/python -m benchmarks                       # everything, full size (scripts/bench runs this)
    .venv/bin/python -m benchmarks --quick --out /tmp/b.md   # a small version of everything
    .venv/bin/python -m benchmarks --only serve:13,writes     # some benchmarks (and parts of them)
    .venv/bin/python -m benchmarks --args serve="--sync-rows 100000 --npm-rounds 0"

Each module still runs alone too (``python -m benchmarks.serve --help``). Here each one's printed
output goes to stdout and into its section of the report, and the figures it records
(benchmarks/report.py) make the report's tables. The process exits non-zero when a benchmark
failed (the others still run, and the report says which failed).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType

import psycopg

from benchmarks.common import raise_open_files
from benchmarks.report import REPORT, machine_info
from electricctl._embedded.postgres import EmbeddedPostgres

MODULES = (
    "control_plane",
    "serve",
    "shapes",
    "trees",
    "writes",
    "perms",
    "hardening",
    "ddl_guard",
    "migrations",
    "typed_client",
    "http_shapes",
    "cluster",
)
"""In the order they run (benchmarks/<name>.py)."""


def parse_only(text: str | None) -> dict[str, str | None]:
    """``serve:13,writes`` -> {"serve": "13", "writes": None}; every module when empty."""
    if not text:
        return dict.fromkeys(MODULES)
    chosen: dict[str, str | None] = {}
    for item in text.split(","):
        name, _, parts = item.strip().partition(":")
        if name not in MODULES:
            raise SystemExit(f"--only: unknown benchmark {name!r} (one of {', '.join(MODULES)})")
        chosen[name] = parts or None
    return {name: chosen[name] for name in MODULES if name in chosen}  # in the order they run


def module_args(
    module: ModuleType, quick: bool, rounds: int | None, fast: bool, parts: str | None, extra: str
) -> argparse.Namespace:
    """The module's own options: its defaults, then --quick's, then ``--args NAME=...``, then ours."""
    from benchmarks.common import Parts

    parser = argparse.ArgumentParser(prog=f"benchmarks.{module.__name__.rsplit('.', 1)[1]}")
    Parts.add_arguments(parser)
    module.add_arguments(parser)
    if quick:
        parser.set_defaults(**module.QUICK, rounds=1)
    args = parser.parse_args(shlex.split(extra))
    if rounds is not None:
        args.rounds = rounds
    args.fast = fast or args.fast
    if parts is not None:
        args.only = parts
    return args


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small version of everything (1 round, small sizes)")
    parser.add_argument("--out", default="BENCHMARKS.md", help="where to write the report (default: BENCHMARKS.md)")
    parser.add_argument("--rounds", type=int, help="rounds for every benchmark (default: each one's own)")
    parser.add_argument("--fast", action="store_true", help="an fsync=off cluster (default: a durable cluster)")
    parser.add_argument("--only", help="comma-separated benchmarks, each optionally with parts: serve:13,writes")
    parser.add_argument(
        "--args",
        action="append",
        default=[],
        metavar="NAME=OPTIONS",
        help="options for one benchmark, as its own command line takes them (repeatable)",
    )
    opts = parser.parse_args()
    chosen = parse_only(opts.only)
    extra: dict[str, str] = {}
    for item in opts.args:
        name, sep, text = item.partition("=")
        if not sep or name not in MODULES:
            raise SystemExit(f"--args: expected NAME=OPTIONS with NAME one of {', '.join(MODULES)}, got {item!r}")
        extra[name] = f"{extra.get(name, '')} {text}"
    modules = {name: importlib.import_module(f"benchmarks.{name}") for name in chosen}
    prepared = {
        name: module_args(mod, opts.quick, opts.rounds, opts.fast, chosen[name], extra.get(name, ""))
        for name, mod in modules.items()
    }
    raise_open_files()
    out = Path(opts.out)
    start = time.perf_counter()
    failed: list[str] = []
    with EmbeddedPostgres(durable=not opts.fast) as pg, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            row = conn.execute("SELECT version()").fetchone()
        REPORT.machine = machine_info(str(row[0]) if row else "unknown")
        REPORT.options = {
            "command": shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]]),
            "mode": "quick (small sizes: the figures are not comparable with the goals)" if opts.quick else "full",
            "cluster": f"one embedded cluster for every benchmark, {'fsync off' if opts.fast else 'durable'}",
            "benchmarks": ", ".join(f"{n}{':' + p if p else ''}" for n, p in chosen.items()),
        }
        for name, mod in modules.items():
            args = prepared[name]
            print(f"\n=== {name}: {mod.TITLE}", flush=True)
            work = Path(tmp) / name
            work.mkdir()
            try:
                with REPORT.section(name, mod.TITLE):
                    asyncio.run(mod.run(args, pg, work))
            except Exception:
                traceback.print_exc()
                failed.append(name)
            sys.stdout.flush()
            REPORT.options["total wall time"] = f"{time.perf_counter() - start:.0f} s"
            out.write_text(REPORT.render())  # after each benchmark: a failure later keeps what was measured
    print(f"\nreport written to {out} ({time.perf_counter() - start:.0f} s)")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
