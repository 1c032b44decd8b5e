"""Large syncs through the real client, end to end: real server, real Postgres, real SQLite files.

A subscription's rows are written as they arrive, in one SQLite transaction: an app never sees
part of a shape, even when the connection breaks in the middle of the data (a TCP proxy between
client and server cuts it); and live transactions that arrive together are applied together,
each still reported to ``on_change`` once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from electricctl.client import RemoteChange, SyncClient
from electricctl.client import session as s
from electricctl.client.link import _apply_runs
from electricctl.client.schema import Column, Table
from electricctl.client.state import SUBSCRIPTIONS_KEY, ClientState, Subscription
from tests.client.test_sync_client import local, until
from tests.server_fixtures import Env


class CuttingProxy:
    """Forwards TCP connections to the server, but stops passing the server's bytes on after
    ``stall_after`` of them (the rest of the data is on its way); :meth:`cut` breaks the
    connections, and while ``refusing`` new ones are closed at once."""

    def __init__(self, target: int, stall_after: int) -> None:
        self.target = target
        self.stall_after = stall_after
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
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        """Break every connection now (both ways), refuse new ones, and pass everything on from now on."""
        self.refusing = True
        self.stall_after = 1 << 62
        for w in self._writers:
            w.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, stall: bool) -> None:
            passed = 0
            with contextlib.suppress(ConnectionError):
                while data := await src.read(4096):
                    if stall and passed + len(data) > self.stall_after:
                        return  # the rest never comes on this connection (cut() breaks it)
                    dst.write(data)
                    await dst.drain()
                    passed += len(data)
            for w in (writer, up_writer):
                w.close()

        for task in (
            asyncio.create_task(pump(reader, up_writer, False)),
            asyncio.create_task(pump(up_reader, writer, True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def test_a_subscription_cut_off_in_the_middle_leaves_no_rows_then_syncs_whole(
    server: Server, env: Env, tmp_path: Path
) -> None:
    rows = 20_000
    env.sql("INSERT INTO other SELECT g, 'label ' || g FROM generate_series(1, %s) g", [rows])
    progress: list[int] = []
    path = tmp_path / "cut.db"
    async with CuttingProxy(server.bound_port, stall_after=150_000) as proxy:
        cl = SyncClient(
            str(path), f"ws://127.0.0.1:{proxy.port}/ws", env.token(), on_progress=lambda _, n: progress.append(n)
        )
        await cl.start()
        try:
            sub = await cl.subscribe("other")
            await until(lambda: bool(progress), what="the first rows written (in the held transaction)")
            proxy.cut()  # the rest of the data was still on its way
            await until(lambda: not cl.connected, what="the client noticing the cut")
            assert progress[-1] < rows

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
    # runs of live transactions are cut at the bound (each is acked once written); data is not
    b = [apply(str(i)) for i in range(5)]
    parts = [apply(str(i), transaction=False) for i in range(5)]
    assert _apply_runs([*b, *parts], max_transactions=2) == [b[:2], b[2:4], b[4:], parts]


async def test_a_subscription_still_waiting_for_its_data_is_neither_resumed_nor_remembered(tmp_path: Path) -> None:
    """Resuming names only the subscriptions whose rows the client holds: one still waiting for its
    data is asked for again (the server may have sent all of it before the connection broke, and
    would otherwise refuse the new request as a duplicate), and a restart does not take it as held."""
    st = ClientState(str(tmp_path / "state.db"), "ws://unused", "token", None, 0.02, None, None, None)
    await st.open()
    try:
        held, waiting = Subscription("held", [{"table": "a"}]), Subscription("waiting", [{"table": "b"}])
        st.subscriptions.update({"held": held, "waiting": waiting})
        await st.save_subscriptions(delivered="held")  # as the driver does, just before it marks it synced
        held.synced.set()
        assert st.held() == ["held"]
        saved = await st.io(lambda: st.store.meta(SUBSCRIPTIONS_KEY) if st.store else None)
        assert saved is not None and json.loads(saved) == {"held": [{"table": "a"}]}
    finally:
        await st.close()
