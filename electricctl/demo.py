"""``electricctl demo``: the main job on the embedded default, end to end.

Starts a throwaway PostgreSQL with wal_level=logical, creates the demo schema from
``recipes/demo/schema.sql``, then validates, plans and applies ``electric.yaml.example`` against it,
shows that a second plan is empty, and that a write made directly in Postgres is tagged.
"""

from __future__ import annotations

import secrets
import signal
import threading
import uuid
from pathlib import Path

import psycopg
from rich.console import Console

from electricctl._apply import applier
from electricctl._config.loader import load_file
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl._resources import resource
from electricctl.cli import render

DEMO_DB = "electric_demo"


def run(con: Console, *, keep: bool = False, data_dir: str | None = None) -> None:
    pg = EmbeddedPostgres(Path(data_dir) if data_dir else None)
    con.rule("1. a throwaway PostgreSQL with wal_level=logical")
    pg.start()
    try:
        url = pg.url(DEMO_DB)
        with psycopg.connect(pg.url(), autocommit=True) as admin:
            exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DEMO_DB]).fetchone()
            if not exists:
                admin.execute(f"CREATE DATABASE {DEMO_DB}")
        con.print(f"PostgreSQL running from {pg.bindir} on port {pg.port}: [bold]{url}[/bold]")

        con.rule("2. the demo schema (recipes/demo/schema.sql)")
        schema = resource("recipes/demo/schema.sql").read_text(encoding="utf-8")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(schema.encode())
        con.print("created users, projects, memberships, admins, issues, comments (and audit_log, not synced)")

        con.rule("3. validate, plan and apply electric.yaml.example")
        example = resource("electric.yaml.example")
        env = {"DATABASE_URL": url, "AUTH_JWT_KEY": secrets.token_urlsafe(32)}
        config = load_file(example, env=env)
        con.print(f"{example}: valid")
        result = applier.apply(config, url)
        render.plan(con, result.plan, database=url, show_sql=False, verb="made")

        con.rule("4. apply again: nothing to do")
        again = applier.apply(config, url)
        render.plan(con, again.plan, database=url, show_sql=False)

        con.rule("5. a write made directly in Postgres is tagged for conflict resolution")
        with psycopg.connect(url, autocommit=True) as conn:
            uid = uuid.uuid4()
            conn.execute("INSERT INTO users (id, name) VALUES (%s, 'Ada')", [uid])
            conn.execute("UPDATE users SET email = 'ada@example.com' WHERE id = %s", [uid])
            row = conn.execute(
                "SELECT row_tags::text, col_tags::text FROM electric.shadow WHERE table_name = 'users' AND pk = %s",
                [[str(uid)]],
            ).fetchone()
        con.print(f"users {uid}: row tags {row[0] if row else None}\n  column tags {row[1] if row else None}")

        con.rule("6. status")
        render.status_report(con, applier.status(config, url), file_hash=result.plan.config_hash)
        if keep:
            con.print(f"\nPostgres keeps running at [bold]{url}[/bold]; press Ctrl-C to stop it.")
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
    finally:
        pg.stop(cleanup=data_dir is None)
        con.print("PostgreSQL stopped.")
