"""Convergence, the write path's acceptance test.

Random histories (hypothesis, derandomized: the same examples every run; set
``ELECTRICCTL_CONVERGENCE_SEED`` to explore others and ``ELECTRICCTL_CONVERGENCE_EXAMPLES`` for more)
of concurrent inserts, updates and deletes of the same few rows, made by two of our clients (one
with a filtered shape), the npm client through ``electrify()``, and direct Postgres writers, while
our clients go offline and come back and ``electricctl serve`` is stopped, killed with SIGKILL and
restarted. After quiescence every client's SQLite must equal Postgres restricted to its shape, row
for row and value for value, and Postgres must agree with its own sync metadata (a row exists
exactly when its tag set is not empty). A failure prints the seed and the history.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from electricctl._log.filelog import FileLog
from electricctl.client import SyncClient
from tests.compat.conftest import Driver
from tests.conftest import Server, fresh_database
from tests.server_fixtures import Env, ServeProcess, build_env

KEYS = [f"k{i}" for i in range(5)]
SHAPES: list[str | None] = [None, "this.n >= 0"]  # our two clients; the npm client holds the whole table

Step = tuple[Any, ...]
STEP = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 2), st.sampled_from(["upsert", "delete"]), st.sampled_from(KEYS), st.booleans()),
    st.tuples(st.just("pg"), st.sampled_from(["upsert", "delete"]), st.sampled_from(KEYS), st.booleans()),
    st.tuples(st.just("offline"), st.integers(0, 1)),
    st.tuples(st.just("online"), st.integers(0, 1)),
    st.tuples(st.just("server"), st.sampled_from(["kill", "term", "start"])),
    st.tuples(st.just("settle")),
)  # fmt: skip

_SEED = os.environ.get("ELECTRICCTL_CONVERGENCE_SEED")


def _local_rows(path: Path, where_n_nonneg: bool = False) -> dict[str, tuple[Any, ...]]:
    conn = sqlite3.connect(path, timeout=10)
    try:
        rows = conn.execute("SELECT id, n, flag FROM items").fetchall()
    finally:
        conn.close()
    return {r[0]: (r[1], r[2]) for r in rows}


UPSERT = "INSERT INTO items (id, n, flag) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET n = excluded.n, flag = excluded.flag"


def _local_write(path: Path, kind: str, key: str, n: int, flag: bool) -> None:
    # one statement: the sync client may apply a remote change to the row at any moment
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        if kind == "upsert":
            conn.execute(UPSERT, [key, n, int(flag)])
        else:
            conn.execute("DELETE FROM items WHERE id = ?", [key])
    finally:
        conn.close()


NPM_THROTTLE_CRASH = "sending a transaction while outbound replication has not started"
"""electric-sql 0.12.1 throws this from a timer, and the app dies, when the trailing call of its push
throttle fires after the connection dropped (a write made just before a server restart): a bug of
the npm client that no server can prevent. The scenario restarts the app on its file, as its
supervisor would, once the server is up (the app would not get further before that anyway)."""


class Scenario:
    def __init__(self, env: Env, tmp: Path) -> None:
        self.env = env
        self.tmp = tmp
        self.serve = ServeProcess(env, log_dir=tmp)
        self.up = False
        self.ours: list[SyncClient | None] = [None, None]
        self.npm: Driver | None = None
        self.npm_crashed = False
        self.serial = 0
        self.history: list[str] = []

    def path(self, i: int) -> Path:
        return self.tmp / f"client{i}.db"

    async def start_client(self, i: int, first: bool = False) -> None:
        cl = SyncClient(str(self.path(i)), self.serve.url, self.env.token(f"user-{i}"), poll_interval=0.01)
        await cl.start()
        self.ours[i] = cl
        if first:
            sub = await cl.subscribe("items", SHAPES[i])
            await cl.synced(sub)

    async def start_serve(self) -> None:
        await asyncio.to_thread(self.serve.start)
        self.up = True

    async def setup(self) -> None:
        self.env.data_dir.mkdir(parents=True, exist_ok=True)
        await self.start_serve()
        for i in range(2):
            await self.start_client(i, first=True)
        base = self.serve.url.replace("ws://", "http://").removesuffix("/ws")
        self.npm = await asyncio.to_thread(Driver, base, self.env.token("npm"), str(self.tmp / "npm.db"))
        await asyncio.to_thread(self.npm.call, "subscribe", table="items")

    def _npm_call(self, cmd: str, **args: Any) -> dict[str, Any] | None:
        """The npm client's answer, or None if it died of :data:`NPM_THROTTLE_CRASH` (then restarted
        right away if the server is up, or at the next start of the server)."""
        assert self.npm is not None
        if not self.npm_crashed:
            try:
                return self.npm.call(cmd, **args)
            except AssertionError as exc:
                if NPM_THROTTLE_CRASH not in str(exc):
                    raise
                self.npm_crashed = True
                self.history.append("npm client crashed (its push-throttle bug)")
        if not self.up:
            return None
        self._restart_npm()
        return self.npm.call(cmd, **args)

    def _restart_npm(self) -> None:
        assert self.npm is not None
        self.npm.close()
        base = self.serve.url.replace("ws://", "http://").removesuffix("/ws")
        self.npm = Driver(base, self.env.token("npm"), str(self.tmp / "npm.db"), migrations=self.npm.migrations)
        self.npm_crashed = False
        self.history.append("npm client restarted on its file")

    async def step(self, step: Step) -> None:
        kind = step[0]
        if kind in ("write", "pg"):
            self.serial += 1
            n = self.serial if step[-1] else -self.serial  # unique values: every write is recognisable
            flag = self.serial % 2 == 0
        if kind == "write":
            _, who, op, key, _ = step
            self.history.append(f"client{who} {op} {key} n={n}")
            if who < 2:
                await asyncio.to_thread(_local_write, self.path(who), op, key, n, flag)
            else:
                await asyncio.to_thread(self._npm_write, op, key, n, flag)
        elif kind == "pg":
            _, op, key, _ = step
            self.history.append(f"postgres {op} {key} n={n}")
            if op == "upsert":
                self.env.sql(
                    "INSERT INTO items (id, n, flag) VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE SET n = %s, flag = %s",
                    [key, n, flag, n, flag],
                )
            else:
                self.env.sql("DELETE FROM items WHERE id = %s", [key])
        elif kind == "offline":
            cl = self.ours[step[1]]
            if cl is not None:
                self.history.append(f"client{step[1]} offline")
                await cl.stop()
                self.ours[step[1]] = None
        elif kind == "online":
            if self.ours[step[1]] is None:
                self.history.append(f"client{step[1]} online")
                await self.start_client(step[1])
        elif kind == "server":
            if step[1] == "start" and not self.up:
                self.history.append("server start")
                await self.start_serve()
                if self.npm_crashed:
                    await asyncio.to_thread(self._restart_npm)
            elif step[1] != "start" and self.up:
                self.history.append(f"server {step[1]}")
                await asyncio.to_thread(self.serve.stop, signal.SIGKILL if step[1] == "kill" else signal.SIGTERM)
                self.up = False
        elif kind == "settle":
            self.history.append("settle")
            await asyncio.sleep(0.3)
        else:
            await self.other_step(step)

    async def other_step(self, step: Step) -> None:
        raise AssertionError(f"unknown step {step}")

    def _npm_write(self, op: str, key: str, n: int, flag: bool) -> None:
        if op == "upsert":
            done = self._npm_call("exec", sql=UPSERT, args=[key, n, int(flag)])
        else:
            done = self._npm_call("exec", sql="DELETE FROM items WHERE id = ?", args=[key])
        if done is None:
            self.history.append(f"(the npm client is down: its {op} {key} was not made)")

    async def quiesce(self) -> None:
        if not self.up:
            await self.start_serve()
        for i in range(2):
            if self.ours[i] is None:
                await self.start_client(i)
        for cl in self.ours:
            assert cl is not None
            await cl.flush(timeout=60)
        assert self.npm is not None
        deadline = time.monotonic() + 60
        while (await asyncio.to_thread(self._npm_call, "oplog") or {"n": 1})["n"]:
            assert time.monotonic() < deadline, (
                f"the npm client's writes never cleared; its log:\n{self.npm.log_tail()}"
            )
            await asyncio.sleep(0.05)

    def expected(self, shape: str | None) -> dict[str, tuple[Any, ...]]:
        rows = self.env.sql("SELECT id, n, flag FROM items")
        return {
            str(r[0]): (r[1], None if r[2] is None else int(bool(r[2])))
            for r in rows
            if shape is None or (r[1] is not None and int(r[1]) >= 0)  # type: ignore[call-overload]
        }

    def actual(self) -> list[dict[str, tuple[Any, ...]]]:
        assert self.npm is not None
        npm_rows = {r["id"]: (r["n"], r["flag"]) for r in self.npm.rows("items")}
        return [_local_rows(self.path(0)), _local_rows(self.path(1)), npm_rows]

    async def converged(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            want = [self.expected(SHAPES[0]), self.expected(SHAPES[1]), self.expected(None)]
            got = await asyncio.to_thread(self.actual)
            if got == want:
                return
            if time.monotonic() > deadline:
                names = ["client0 (all)", "client1 (n >= 0)", "npm client (all)"]
                diffs = "\n".join(
                    f"  {name}: has {g}\n  {' ' * len(name)}  want {w}"
                    for name, g, w in zip(names, got, want)
                    if g != w
                )
                raise AssertionError(f"clients did not converge with Postgres:\n{diffs}")
            await asyncio.sleep(0.1)

    def check_metadata(self) -> None:
        # a row exists exactly when its tag set is not empty (the add-wins rule's bookkeeping)
        bad = self.env.sql(
            """SELECT i.id, s.row_tags, s.deleted FROM items i
                 JOIN electric.shadow s ON s.table_name = 'items' AND s.pk = ARRAY[i.id]
                WHERE s.deleted OR s.row_tags = '[]'
               UNION ALL
               SELECT s.pk[1], s.row_tags, s.deleted FROM electric.shadow s
                WHERE s.table_name = 'items' AND NOT s.deleted
                  AND NOT EXISTS (SELECT 1 FROM items i WHERE i.id = s.pk[1])"""
        )
        assert not bad, f"Postgres rows and their sync metadata disagree: {bad}"

    async def check_log(self) -> None:
        """The durable log holds each transaction once, in commit order (nothing written twice)."""
        if self.up:
            await asyncio.to_thread(self.serve.stop)
            self.up = False
        logged = FileLog(self.env.data_dir / "log", cache_size=1).open()
        lsns = [t.lsn for t in logged.read_after(0, 1_000_000)]
        logged.close()
        assert lsns == sorted(set(lsns)), "the log holds a transaction twice or out of order"

    async def close(self) -> None:
        for cl in self.ours:
            if cl is not None:
                await cl.stop()
        if self.npm is not None:
            await asyncio.to_thread(self.npm.close)
        if self.serve.proc is not None and self.serve.proc.poll() is None:
            self.serve.stop(signal.SIGKILL)


async def run_scenario(steps: list[Step], pg_server: Server, tmp: Path) -> None:
    with fresh_database(pg_server) as url:
        await run_steps(Scenario(build_env(url, tmp), tmp), steps)


async def run_steps(sc: Scenario, steps: list[Step]) -> None:
    """Run ``steps``, quiesce, and check that every client converged with Postgres."""
    try:
        await sc.setup()
        for s in steps:
            await sc.step(s)
        sc.history.append("quiesce")
        await sc.quiesce()
        await sc.converged()
        sc.check_metadata()
        await sc.check_log()
    except BaseException as exc:
        history = "\n".join(f"  {i:2d}. {h}" for i, h in enumerate(sc.history))
        serve_log = sc.serve.log_text()[-3000:]
        raise AssertionError(
            f"convergence failed (seed {_SEED or 'derandomized'}): {exc}\nhistory:\n{history}\n"
            f"server log (tail):\n{serve_log}"
        ) from exc
    finally:
        await sc.close()


def _settings(f: Any, examples: int = 3) -> Any:
    """Hypothesis' settings for a convergence test: ``examples`` random histories (more, or fewer,
    with ELECTRICCTL_CONVERGENCE_EXAMPLES), derandomized unless a seed is given."""
    f = settings(
        max_examples=int(os.environ.get("ELECTRICCTL_CONVERGENCE_EXAMPLES", str(examples))),
        deadline=None,
        derandomize=_SEED is None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: each example runs for seconds
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )(f)
    if _SEED is not None:
        f = seed(int(_SEED))(f)
    return f


@pytest.mark.timeout(600)
@_settings
@given(steps=st.lists(STEP, min_size=12, max_size=24))
def test_clients_postgres_and_restarts_converge(
    steps: list[Step], pg_server: Server, node_modules: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    asyncio.run(run_scenario(steps, pg_server, tmp_path_factory.mktemp("convergence")))
