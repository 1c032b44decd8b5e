"""`python -m benchmarks --quick` (what `scripts/bench --quick` runs): every benchmark, small, in a
subprocess, writing its report to a temporary path. Checks that it ran and what the report holds,
never a figure's value (the machine is shared and noisy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import MODULES

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(1200)
def test_quick_run_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,  # generous: about a minute alone, far more on a loaded 2-core CI machine
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    report = out.read_text()

    assert "## Machine" in report
    for field in ("cores:", "memory:", "Python:", "PostgreSQL: PostgreSQL", "SQLite", "git commit:"):
        assert field in report, f"the machine section has no {field!r}"
    assert "## Summary: the key user-facing figures" in report
    assert "## Every recorded figure" in report
    for name in MODULES:
        assert f"(`{name}`)" in report, f"no section for the {name} benchmark"
    assert "It failed:" not in report
    for figure in (
        "initial sync into a fresh SyncClient",
        "SyncClient process peak RSS",
        "live rows into one SyncClient",
        "commit -> row in SyncClient's SQLite, p50",
        "commit -> row in SyncClient's SQLite, p99",
        "1 row per app transaction, notify()",
        "npm client electric-sql@0.12.1",
    ):
        assert figure in report, f"the report has no figure {figure!r}"
    for baseline in (
        "raw COPY -> SQLite bulk insert",
        "server-only pgoutput decode + TxBuilder",
        "psycopg inserts straight into Postgres",
    ):
        assert baseline in report, f"the report has no baseline {baseline!r}"
