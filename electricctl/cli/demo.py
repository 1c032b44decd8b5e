"""``electricctl demo``: the main job on the embedded default, end to end.

Starts a throwaway PostgreSQL with wal_level=logical, creates the demo schema from
``recipes/demo/schema.sql``, then validates, plans and applies ``electric.yaml.example`` against it,
shows that a second plan is empty and that a write made directly in Postgres is tagged, then runs
the sync service with two clients on SQLite files: changes flow from Postgres to them, from one to
the other through Postgres, and concurrent offline edits merge.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable
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
from electricctl._server.options import ServeOptions
from electricctl.cli import render
from electricctl.client import SyncClient

DEMO_DB = "electric_demo"


async def _serve(con: Console, config: ElectricConfig, url: str, data_dir: Path, keep: bool, ada: uuid.UUID) -> None:
    server = Server(config, url, ServeOptions(port=0, data_dir=data_dir))
    stop = asyncio.Event()
    started = asyncio.Event()
    task = asyncio.create_task(server.run(stop, started))
    await started.wait()
    while not server.replication_ok:
        await asyncio.sleep(0.05)
    ws = f"ws://127.0.0.1:{server.bound_port}/ws"
    for name in ("electricctl.server", "electricctl.client", "electricctl.audit"):
        logging.getLogger(name).setLevel(logging.ERROR)  # the demo prints what happens itself
    con.print(f"sync service on [bold]{ws}[/bold] (health: http://127.0.0.1:{server.bound_port}/health)")
    token = mint(config.auth, str(ada))  # the laptop and the phone are Ada's
    files = [data_dir / "laptop.db", data_dir / "phone.db"]
    laptop, phone = (SyncClient(str(f), ws, token) for f in files)
    for cl in (laptop, phone):
        await cl.start()
        await cl.synced(await cl.subscribe("team"))  # a shape declared in electric.yaml
    con.print(f"Ada's laptop.db and phone.db subscribed to the shape 'team': {_names(files[0])}")

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, name) VALUES (%s, 'Grace')", [uuid.uuid4()])
    ms = await _until(lambda: "Grace" in _names(files[1]))
    con.print(f"an INSERT made with SQL in Postgres reached the phone {ms:.1f} ms later: {_names(files[1])}")

    _local(files[0], "UPDATE users SET name = 'Ada Lovelace' WHERE id = ?", str(ada))
    laptop.notify()
    ms = await _until(lambda: "Ada Lovelace" in _names(files[1]))
    con.print(f"Ada renamed herself in laptop.db (plain SQL): in Postgres and on the phone {ms:.1f} ms later")

    _local(files[0], "UPDATE users SET name = 'Grace H.' WHERE name = 'Grace'")
    laptop.notify()
    await _until(lambda: bool(laptop.refused) and "Grace" in _names(files[0]))
    reason = laptop.refused[0].partition("permission denied: ")[2]
    con.print(f"Ada renamed Grace in laptop.db: refused ({reason}); undone in laptop.db")

    # an edit made offline meets a concurrent one: per column, the last writer wins everywhere
    await phone.stop()
    _local(files[0], "UPDATE users SET name = 'Ada (laptop)' WHERE id = ?", str(ada))
    laptop.notify()
    await laptop.flush()
    _local(files[1], "UPDATE users SET name = 'Countess Ada' WHERE id = ?", str(ada))
    phone = SyncClient(str(files[1]), ws, token)
    await phone.start()
    await phone.flush()
    await _until(lambda: "Countess Ada" in _names(files[0]))
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT name FROM users WHERE id = %s", [ada]).fetchone()
    con.print(f"the laptop renamed Ada while the phone was offline, then the phone did; the later write won: {row}")
    for cl in (laptop, phone):
        await cl.stop()
    if keep:
        con.print(f"\nServing until Ctrl-C. Postgres: [bold]{url}[/bold]\nA client token: {token}")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    else:
        stop.set()
    await task


def _local(path: Path, query: str, *params: object) -> list[tuple[object, ...]]:
    """What an app does: plain SQL on its own SQLite connection."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def _names(path: Path) -> list[str]:
    return sorted(str(r[0]) for r in _local(path, "SELECT name FROM users"))


async def _until(predicate: Callable[[], bool], timeout: float = 20) -> float:
    """Wait for ``predicate``; return the milliseconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError("the demo's clients did not sync in time")
        await asyncio.sleep(0.002)
    return 1000 * (time.monotonic() - start)


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
        asyncio.run(_serve(con, config, url, pg.base_dir / "serve", keep, uid))
    finally:
        pg.stop(cleanup=data_dir is None)
        con.print("PostgreSQL stopped.")
