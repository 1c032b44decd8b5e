"""Large syncs through the real client, end to end: real server, real Postgres, real SQLite files.

A subscription's rows are written as they arrive, in one SQLite transaction: an app never sees
part of a shape, even when the connection breaks in the middle of the data (a TCP proxy between
client and server cuts it); and live transactions that arrive together are applied together,
each still reported to ``on_change`` once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from electricctl.client import RemoteChange, SyncClient
from electricctl.client import session as s
from electricctl.client.link import _apply_runs
from electricctl.client.schema import Column, Table
from tests.client.test_sync_client import local, until
from tests.server_fixtures import Env


class CuttingProxy:
    """Forwards TCP connections to the server; :meth:`cut` breaks them, and while ``refusing``
    new connections are closed at once."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.refusing = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        """Break every connection now (both ways), and refuse new ones."""
        self.refusing = True
        for w in self._writers:
            w.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            for w in (writer, up_writer):
                w.close()

        for task in (asyncio.create_task(pump(reader, up_writer)), asyncio.create_task(pump(up_reader, writer))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def test_a_subscription_cut_off_in_the_middle_leaves_no_rows_then_syncs_whole(
    server: Server, env: Env, tmp_path: Path
) -> None:
    rows = 20_000
    env.sql("INSERT INTO other SELECT g, 'label ' || g FROM generate_series(1, %s) g", [rows])
    progress: list[int] = []
    path = tmp_path / "cut.db"
    async with CuttingProxy(server.bound_port) as proxy:

        def on_progress(_: str, received: int) -> None:
            if not progress:
                proxy.cut()  # some of the rows are written (in the held transaction): break the connection
            progress.append(received)

        cl = SyncClient(str(path), f"ws://127.0.0.1:{proxy.port}/ws", env.token(), on_progress=on_progress)
        await cl.start()
        try:
            sub = await cl.subscribe("other")
            await until(lambda: bool(progress) and not cl.connected, what="the cut, and the client noticing it")
            assert progress[0] < rows

            def app_can_write() -> bool:
                try:
                    local(path, "INSERT OR IGNORE INTO _electric_meta (key, value) VALUES ('app', 1)")
                except sqlite3.OperationalError:
                    return False
                return True

            await until(app_can_write, what="the client letting go of the file")
            assert local(path, "SELECT count(*) FROM other") == [(0,)]  # ...and none of it stayed
            assert not sub.synced.is_set()
            proxy.refusing = False
            await cl.synced(sub, timeout=60)
            assert local(path, "SELECT count(*), min(id), max(id) FROM other") == [(rows, 1, rows)]
            assert local(path, "SELECT count(*) FROM _electric_shadow WHERE tablename = 'other'") == [(rows,)]
            # the oplog triggers, dropped for the bulk write, are back: the app's writes are sent
            local(path, "UPDATE other SET label = 'mine' WHERE id = 7")
            cl.notify()
            await cl.flush(timeout=30)
            assert env.sql("SELECT label FROM other WHERE id = 7") == [("mine",)]
        finally:
            await cl.stop()


async def test_transactions_that_arrive_together_are_each_reported_in_order(
    server: Server, env: Env, tmp_path: Path
) -> None:
    seen: list[tuple[int, list[int]]] = []

    def on_change(changes: list[RemoteChange], origin: str | None) -> None:
        seen.append((len(seen), [int(ch.values["id"]) for ch in changes]))  # type: ignore[arg-type]

    cl = SyncClient(
        str(tmp_path / "live.db"), f"ws://127.0.0.1:{server.bound_port}/ws", env.token(), on_change=on_change
    )
    await cl.start()
    try:
        await cl.synced(await cl.subscribe("other"))
        for i in range(200):  # 200 transactions of 3 rows, as fast as Postgres takes them
            env.sql("INSERT INTO other VALUES (%s, 'a'), (%s, 'b'), (%s, 'c')", [3 * i, 3 * i + 1, 3 * i + 2])
        await until(lambda: sum(len(ids) for _, ids in seen) == 600, what="every row reported")
        assert [ids for _, ids in seen] == [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(200)]
        assert local(tmp_path / "live.db", "SELECT count(*) FROM other") == [(600,)]
    finally:
        await cl.stop()


def test_acks_wait_for_the_writes_they_acknowledge_and_other_effects_keep_their_place() -> None:
    def apply(lsn: str, transaction: bool = True) -> s.Apply:
        return s.Apply((), {}, None, 1, lsn, transaction)

    ack = s.Send(pb.SatOpLogAck(lsn=b"2"))
    table = s.EnsureTable(Table("t", (Column("id", "int8", True, False),)))
    a1, a2, a3, data = apply("1"), apply("2"), apply("3"), apply("4", transaction=False)
    runs = _apply_runs([a1, s.AckLater(0.2), a2, ack, table, a3, data, s.Delivered("sub")])
    assert runs == [[a1, a2], s.AckLater(0.2), ack, table, [a3], [data], s.Delivered("sub")]
