"""The installed `electricctl` command as a user runs it: a real process, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from electricctl import __version__


def electricctl(
    *args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """The command, with ``env`` added to this process's environment and ``unset`` taken out."""
    base = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        [sys.executable, "-m", "electricctl", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **(env or {})},
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


def test_validate_needs_no_secrets_and_lists_the_variables_the_file_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Pull-request CI from a fork has no secrets: validate passes with DATABASE_URL and
    AUTH_JWT_KEY unset, says which variables the file reads, and --strict-env fails as before."""
    secrets = ("DATABASE_URL", "AUTH_JWT_KEY")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return electricctl(*args, unset=secrets)

    example = str(Path(__file__).parents[1] / "electric.yaml.example")
    out = run("validate", "-f", example)
    assert out.returncode == 0, out.stderr
    assert "It reads the environment: AUTH_JWT_KEY (not set), DATABASE_URL (not set)." in out.stdout
    doc = json.loads(run("validate", "-f", example, "-o", "json").stdout)
    assert doc["valid"] is True and doc["env"] == {
        "needed": ["AUTH_JWT_KEY", "DATABASE_URL"],
        "unset": ["AUTH_JWT_KEY", "DATABASE_URL"],
    }
    strict = run("validate", "-f", example, "--strict-env")
    assert strict.returncode == 1
    assert "environment variable DATABASE_URL is not set" in strict.stderr
    assert "environment variable AUTH_JWT_KEY is not set" in strict.stderr
    # what is wrong elsewhere in the file is still found
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "version: 1\ndatabase: {url: '${DATABASE_URL}'}\nauth: {jwt: {key: '${AUTH_JWT_KEY}'}}\ntables: [a]\nshapes: x\n"
    )
    bad = run("validate", "-f", str(broken))
    assert bad.returncode == 1 and "expected list, got string (at shapes)" in bad.stderr, bad.stderr


def test_apply_needs_no_jwt_key_and_serve_and_token_say_they_do(demo_db: str, write_config) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import DEMO_CONFIG

    keyless = DEMO_CONFIG.replace("auth:\n  mode: insecure\n", "")
    cfg = write_config(keyless)
    env = {"DATABASE_URL": demo_db}
    assert electricctl("plan", "-f", str(cfg), "--detailed-exitcode", env=env).returncode == 2
    applied = electricctl("apply", "-f", str(cfg), env=env)
    assert applied.returncode == 0, applied.stderr
    for command in (["token", "--sub", "u"], ["serve", "--port", "0"]):
        out = electricctl(command[0], "-f", str(cfg), *command[1:], env=env)
        assert out.returncode == 1, out.stderr
        assert "secure mode needs auth.jwt.key" in out.stderr and f"`{command[0]}` cannot run without it" in out.stderr


def test_plan_as_markdown_for_a_pull_request_comment(demo_db: str, write_config) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import DEMO_CONFIG

    cfg = write_config(DEMO_CONFIG)
    env = {"DATABASE_URL": demo_db}
    out = electricctl("plan", "-f", str(cfg), "-o", "markdown", "--detailed-exitcode", env=env)
    assert out.returncode == 2, out.stderr
    text = out.stdout
    assert text.startswith(f"### electricctl plan: `{cfg}` against `")
    assert "**Plan: " in text and " to create, 0 to update, 0 to delete.**" in text
    assert "| | change | what it does | notes |" in text and "| `+` | `" in text
    assert "<details><summary>SQL (" in text and "```sql\n" in text and "ENABLE" in text and "</details>" in text
    assert electricctl("apply", "-f", str(cfg), env=env).returncode == 0
    same = electricctl("plan", "-f", str(cfg), "-o", "markdown", env=env)
    assert same.returncode == 0 and "**No changes.** The database matches the file." in same.stdout


def test_apply_watch_reconciles_file_changes_and_drift(demo_db: str, write_config) -> None:  # type: ignore[no-untyped-def]
    """The GitOps loop: apply, again when the file changes, and every interval (repairing drift made
    by hand); one line a pass; SIGTERM stops it cleanly."""
    import signal
    import time

    import psycopg

    from tests.conftest import DEMO_CONFIG

    cfg = write_config(DEMO_CONFIG)
    proc = subprocess.Popen(
        [sys.executable, "-m", "electricctl", "apply", "-f", str(cfg), "--watch", "--interval", "3s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "DATABASE_URL": demo_db},
    )
    lines: list[str] = []

    def wait_line(fragment: str, timeout: float = 30) -> str:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if fragment in line:
                return line
        raise AssertionError(f"no line with {fragment!r}:\n{''.join(lines)}")

    try:
        assert "start: applied" in wait_line("start:")
        wait_line("interval: no changes")  # the next interval pass is 3 s away: the change is seen first
        cfg.write_text(cfg.read_text().replace("shapes:\n", "shapes:\n  - name: all_users\n    table: users\n", 1))
        assert "applied 1 to create" in wait_line("file changed:")
        with psycopg.connect(demo_db, autocommit=True) as conn:
            conn.execute("ALTER TABLE users DISABLE TRIGGER electric_stamp_truncate")  # drift, by hand
        assert "drift repaired" in wait_line("interval: applied")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in out, "".join(lines) + out


def test_piped_plan_output_is_never_wrapped_at_80_columns(demo_db: str, write_config) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import DEMO_CONFIG

    cfg = write_config(DEMO_CONFIG)
    out = electricctl("plan", "-f", str(cfg), env={"DATABASE_URL": demo_db, "COLUMNS": ""})
    assert out.returncode == 0, out.stderr
    assert max(len(line) for line in out.stdout.splitlines()) > 120  # a CI log gets whole lines


def test_validate_does_not_say_nothing_was_changed(write_config) -> None:  # type: ignore[no-untyped-def]
    bad = write_config("version: 1\nauth: {mode: insecure}\ntabels: [a]\n")
    out = electricctl("validate", "-f", str(bad))
    assert out.returncode == 1 and "(did you mean 'tables'?)" in out.stderr
    assert "nothing was changed" not in out.stderr and "1 error." in out.stderr
