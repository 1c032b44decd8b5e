"""The installed `electricctl` command as a user runs it: a real process, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from electricctl import __version__


def electricctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "electricctl", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_version_and_help() -> None:
    out = electricctl("--version")
    assert out.returncode == 0 and __version__ in out.stdout
    helped = electricctl("--help")
    assert helped.returncode == 0
    for command in ("validate", "plan", "apply", "status", "demo"):
        assert command in helped.stdout


def test_usage_errors_exit_64_not_2() -> None:
    # 2 means "changes present" for plan --detailed-exitcode; usage errors must not look like it
    out = electricctl("plan", "--no-such-flag")
    assert out.returncode == 64
    assert "No such option" in out.stderr


def test_plan_against_a_real_database_exit_codes(demo_db: str, write_config) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import DEMO_CONFIG

    cfg = write_config(DEMO_CONFIG.replace("version: 1", "version: 1\ndatabase:\n  url: ${DATABASE_URL}"))
    env = {"DATABASE_URL": demo_db}
    assert electricctl("plan", "-f", str(cfg), "--detailed-exitcode", env=env).returncode == 2
    assert electricctl("apply", "-f", str(cfg), env=env).returncode == 0
    assert electricctl("plan", "-f", str(cfg), "--detailed-exitcode", env=env).returncode == 0
    assert electricctl("status", "-f", str(cfg), "--detailed-exitcode", env=env).returncode == 0


def test_demo_runs_the_main_job_end_to_end() -> None:
    out = electricctl("demo")
    assert out.returncode == 0, out.stderr
    assert "Plan: 51 to create, 0 to update, 0 to delete." in out.stdout
    assert "No changes." in out.stdout
    assert "row tags [[" in out.stdout and "In sync" in out.stdout
    assert "Ada's laptop.db and phone.db subscribed to the shape 'team': ['Ada']" in out.stdout
    assert "an INSERT made with SQL in Postgres reached the phone" in out.stdout and "['Ada', 'Grace']" in out.stdout
    assert "Ada renamed herself in laptop.db (plain SQL): in Postgres and on the phone" in out.stdout
    assert "Ada renamed Grace in laptop.db: refused (update on public.users is not allowed" in out.stdout
    assert "the later write won: ('Countess Ada',)" in out.stdout
    assert "PostgreSQL stopped." in out.stdout


def test_validate_warns_of_nothing_served_in_part(run_cli, write_config) -> None:  # type: ignore[no-untyped-def]
    """Include trees are served (issue 14) and sqlite statements shipped: no not_enforced warning."""
    path = write_config(
        """
        version: 1
        auth: {mode: insecure}
        tables: [projects, issues]
        shapes:
          - name: tree
            table: projects
            include:
              - table: issues
        sqlite:
          - "CREATE INDEX IF NOT EXISTS i ON issues(id)"
        """
    )
    result = run_cli("validate", "-f", str(path))
    assert result.code == 0
    assert "warning" not in result.err
    as_json = run_cli("validate", "-f", str(path), "-o", "json")
    doc = json.loads(as_json.out)
    assert doc["valid"] is True
    assert doc["diagnostics"] == []
