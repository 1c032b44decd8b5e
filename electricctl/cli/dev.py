"""``electricctl dev``: the embedded default for app developers.

A PostgreSQL cluster under ``./.electric/`` (it survives restarts: the data stays), the app's schema
run once when the database is made, electric.yaml applied, and ``serve`` on a local port, with the
URLs and a development token printed. While it runs, a change to electric.yaml is applied at once
(with ``--prune``: what the file no longer declares goes) and serve's hot reload moves connected
clients to it; a file that does not validate is reported and left unapplied. Ctrl-C stops serve and
Postgres cleanly; the next ``dev`` starts where this one stopped. A key for secure mode (HS*) is made once and kept with the cluster
when the environment gives none.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg import sql
from rich.console import Console
from rich.text import Text

from electricctl._apply import applier
from electricctl._auth.tokens import AuthError, mint
from electricctl._config.loader import load_file, require_auth_key
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl._server.app import Server
from electricctl._server.options import ServeOptions
from electricctl.cli import render
from electricctl.cli.summaries import counts
from electricctl.errors import ElectricError

DATABASE = "app"
PORT_FILE = "port"
KEY_FILE = "jwt.key"


def run(
    con: Console,
    file: str,
    *,
    directory: str,
    schema: Sequence[str],
    port: int,
    sub: str,
    ready_file: str | None = None,
) -> None:
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    pg_port = int((base / PORT_FILE).read_text()) if (base / PORT_FILE).exists() else None
    pg = EmbeddedPostgres(base / "pg", port=pg_port, durable=True)
    (base / PORT_FILE).write_text(str(pg.port))  # the same URL every time
    key_path = base / KEY_FILE
    if not key_path.exists():
        key_path.write_text(secrets.token_urlsafe(32))
        key_path.chmod(0o600)
    pg.start()
    try:
        url = pg.url(DATABASE)
        made = _ensure_database(pg)
        if made:
            for path in schema:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(Path(path).read_bytes())
                con.print(f"ran {path}")
        env = {**os.environ, "DATABASE_URL": url}
        env.setdefault("AUTH_JWT_KEY", key_path.read_text().strip())
        config = load_file(file, env=env, database_url=url)
        require_auth_key(config, "dev")  # a file with no key at all: serve could verify no token
        result = applier.apply(config, url)
        render.plan(con, result.plan, database=url, show_sql=False, verb="made")
        try:
            token = mint(config.auth, sub, {}, 24 * 3600)
        except AuthError as exc:
            token = f"(cannot mint one: {exc}; use your own)"
        ws = f"ws://127.0.0.1:{port}/ws"
        con.print(f"\nDATABASE_URL={url}\nsync service: {ws}\ntoken for {sub!r} (24 h): {token}")
        con.print("Ctrl-C stops serve and PostgreSQL (the data stays in " + str(base) + ").")
        options = ServeOptions(port=port, data_dir=base / "serve", slot="electricctl_dev")
        reapply = _Reapply(con, file, env, url)
        asyncio.run(_serve(Server(config, url, options), ready_file, ws, token, reapply))
    finally:
        pg.stop(cleanup=False)
        con.print("stopped.")


def _ensure_database(pg: EmbeddedPostgres) -> bool:
    """Create the app's database if it is not there; True if it was made now."""
    with psycopg.connect(pg.url(), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone():
            return False
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    return True


class _Reapply:
    """Apply electric.yaml again whenever it changes, until ``stop``; one line per change."""

    def __init__(self, con: Console, file: str, env: dict[str, str], url: str) -> None:
        self.con, self.file, self.env, self.url = con, file, env, url

    async def run(self, stop: asyncio.Event) -> None:
        import watchfiles

        async for _ in watchfiles.awatch(self.file, stop_event=stop, debounce=200):
            try:
                result = await asyncio.to_thread(self._apply)
            except ElectricError as exc:
                self.con.print(Text(f"{self.file} changed and was not applied:\n{exc}", style="red"))
                continue
            n = counts(result.plan)
            self.con.print(
                Text(
                    f"{self.file} changed: applied ({n['create']} to create, {n['update']} to update,"
                    f" {n['delete']} to delete)"
                    if result.applied
                    else f"{self.file} changed: nothing to apply"
                )
            )

    def _apply(self) -> applier.ApplyResult:
        config = load_file(self.file, env=self.env, database_url=self.url)
        return applier.apply(config, self.url, prune=True)


async def _serve(server: Server, ready_file: str | None, ws: str, token: str, reapply: _Reapply) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    started = asyncio.Event()
    task = asyncio.create_task(server.run(stop, started))
    ready = asyncio.create_task(started.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()  # serve may have stopped before it was ready: nothing is left waiting
    watching = asyncio.create_task(reapply.run(stop)) if started.is_set() else None
    if started.is_set() and ready_file:
        Path(ready_file).write_text(f"{ws}\n{token}\n")
    try:
        await task
    finally:
        stop.set()
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
