"""``electricctl demo``: the main job on the embedded default, end to end.

Starts a throwaway PostgreSQL with wal_level=logical, creates the demo schema from
``recipes/demo/schema.sql``, then validates, plans and applies ``electric.yaml.example`` against it,
shows that a second plan is empty and that a write made directly in Postgres is tagged, then runs
the sync service and a client that receives the initial data and a live change.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
import uuid
from pathlib import Path

import psycopg
from rich.console import Console

from electricctl._apply import applier
from electricctl._auth.tokens import mint
from electricctl._config.loader import load_file
from electricctl._config.model import ElectricConfig
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl._resources import resource
from electricctl._server.app import Server
from electricctl.cli import render
from electricctl.client.satellite import SatelliteClient

DEMO_DB = "electric_demo"


async def _serve(con: Console, config: ElectricConfig, url: str, data_dir: Path, keep: bool) -> None:
    server = Server(config, url, port=0, data_dir=data_dir)
    stop = asyncio.Event()
    started = asyncio.Event()
    task = asyncio.create_task(server.run(stop, started))
    await started.wait()
    while not server.replication_ok:
        await asyncio.sleep(0.05)
    ws = f"ws://127.0.0.1:{server.bound_port}/ws"
    con.print(f"sync service on [bold]{ws}[/bold] (health: http://127.0.0.1:{server.bound_port}/health)")
    client = await SatelliteClient(ws).connect()
    token = mint(config.auth, "demo-user")
    await client.authenticate(token)
    await client.start()
    await client.subscribe("users")
    con.print(f"a client subscribed to users and received {len(client.table('users'))} row(s)")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, name) VALUES (%s, 'Grace')", [uuid.uuid4()])
    started_at = time.monotonic()
    await client.wait_for(lambda: len(client.table("users")) == 2)
    con.print(
        f"an INSERT made with SQL reached the client {1000 * (time.monotonic() - started_at):.1f} ms later: "
        f"{sorted(str(r['name'], 'utf-8') for r in client.table('users').values() if r['name'])}"
    )
    await client.close()
    if keep:
        con.print(f"\nServing until Ctrl-C. Postgres: [bold]{url}[/bold]\nA client token: {token}")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    else:
        stop.set()
    await task


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

        con.rule("7. serve: logical replication in, the Satellite protocol out")
        asyncio.run(_serve(con, config, url, pg.base_dir / "serve", keep))
    finally:
        pg.stop(cleanup=data_dir is None)
        con.print("PostgreSQL stopped.")
