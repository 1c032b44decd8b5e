"""The TransactionLog contract, against both implementations: the file log and the JetStream log
(a real ``nats-server -js`` of the test's own). The same tests, parametrized; what only one of them
has (torn tails and full disks for files; fencing, split messages and NATS restarts for JetStream)
follows at the end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from electricctl._log.base import TransactionLog
from electricctl._log.filelog import FileLog
from electricctl._log.jetstream import JetStreamLog, LeadershipLost, NatsTarget, encode
from electricctl._model.rows import Change, Column, RelationDef, Transaction
from tests.nats_fixtures import NatsServer

REL = RelationDef(7, "public", "items", (Column("id", 25, "text", True, False), Column("n", 23, "int4", False, True)))
REL2 = RelationDef(7, "public", "items", (*REL.columns, Column("m", 25, "text", False, True)))


def tx(lsn: int, rel: RelationDef = REL, ts: int | None = None, payload: bytes | None = None) -> Transaction:
    values: tuple[bytes | None, ...] = (str(lsn).encode(), payload, *((b"m",) if len(rel.columns) == 3 else ()))
    stamp = int(time.time() * 1000) if ts is None else ts
    return Transaction(lsn, lsn + 8, lsn // 10, stamp, None, (Change("I", rel, values, None),))


class Harness:
    """One kind of log, opened as one instance of serve would open it (and again, as another)."""

    kind: str

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.opened: list[TransactionLog] = []
        self.instances = 0

    async def new(self, *, write: bool = True, **options: Any) -> TransactionLog:
        raise NotImplementedError

    async def settle(self, log: TransactionLog, lsn: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while log.last_lsn < lsn:
            assert time.monotonic() < deadline, f"the log did not reach {lsn} (at {log.last_lsn})"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for log in self.opened:
            await log.aclose()
            log.close()


class FileHarness(Harness):
    kind = "file"

    async def new(self, *, write: bool = True, **options: Any) -> TransactionLog:
        # a file log is one process's: "another instance" is the same directory opened again
        for log in self.opened:
            log.close()
        log = FileLog(self.tmp / "log", **options).open()
        self.opened.append(log)
        return log


class JetStreamHarness(Harness):
    kind = "jetstream"

    def __init__(self, tmp: Path, nats: NatsServer) -> None:
        super().__init__(tmp)
        self.nats = nats
        self.epoch = 0

    async def new(self, *, write: bool = True, **options: Any) -> TransactionLog:
        # another instance: its own, empty mirror; what it reads comes from the stream
        self.instances += 1
        log = JetStreamLog(
            NatsTarget.parse(self.nats.url + "/contract"), self.tmp / f"mirror-{self.instances}", **options
        )
        log.open()
        await log.connect()
        self.opened.append(log)
        if write:
            for other in self.opened[:-1]:
                assert isinstance(other, JetStreamLog)
                other.step_down()
            self.epoch += 1
            await log.take_over(self.epoch)
        return log


@pytest.fixture(params=["file", "jetstream"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    h: Harness
    if request.param == "file":
        h = FileHarness(tmp_path)
    else:
        nats = NatsServer(tmp_path / "nats-store").start()
        request.addfinalizer(nats.stop)
        h = JetStreamHarness(tmp_path, nats)
    try:
        yield h
    finally:
        await h.close()


async def test_appends_in_commit_order_and_reads_from_an_lsn(harness: Harness) -> None:
    log = await harness.new()
    published: list[int] = []
    log.on_published = lambda txns: published.extend(t.lsn for t in txns)
    assert [t.lsn for t in await log.store([tx(10), tx(20)])] == [10, 20]
    assert [t.lsn for t in await log.store([tx(20), tx(30, REL2)])] == [
        30
    ]  # 20 again: Postgres resends after a restart; stored once
    await harness.settle(log, 30)
    got = log.read_after(0)
    assert [t.lsn for t in got] == [10, 20, 30]
    assert got[2].changes[0].relation == REL2 and got[0].changes[0].new == tx(10).changes[0].new
    assert [t.lsn for t in log.read_after(15)] == [20, 30]
    assert log.read_after(30) == []
    assert [t.lsn for t in log.read_after(0, limit=2)] == [10, 20]
    assert published == [10, 20, 30]


async def test_what_was_stored_survives_and_another_instance_reads_it(harness: Harness) -> None:
    log = await harness.new()
    await log.store([tx(10), tx(20, REL2)])
    await log.store([tx(30)])
    await harness.settle(log, 30)
    again = await harness.new(write=False)
    await harness.settle(again, 30)
    got = again.read_after(0)
    assert [t.lsn for t in got] == [10, 20, 30]
    assert got[1].changes[0].relation == REL2 and got[2].changes[0].relation == REL
    # one shared object per definition, as the file log gives (per-change caches compare identity)
    assert got[0].changes[0].relation is got[2].changes[0].relation


async def test_a_transaction_larger_than_a_message_is_stored_whole(harness: Harness) -> None:
    log = await harness.new()
    big = Transaction(
        50,
        58,
        5,
        int(time.time() * 1000),
        None,
        tuple(Change("I", REL, (f"r{i}".encode(), b"x" * 40_000), None) for i in range(80)),
    )  # ~3.2 MB: over NATS' default max_payload of 1 MiB
    await log.store([tx(40), big, tx(60)])
    await harness.settle(log, 60)
    other = await harness.new(write=False)
    await harness.settle(other, 60)
    for reader in (log, other):
        got = reader.read_after(40)
        assert [t.lsn for t in got] == [50, 60]
        assert got[0] == big


async def test_the_horizon_is_persisted_and_a_gap_is_seen_by_every_reader(harness: Harness) -> None:
    log = await harness.new()
    assert not log.has_horizon
    await asyncio.to_thread(log.set_horizon, 0)  # serve sets it from a worker thread
    assert log.has_horizon
    await log.store([tx(10), tx(20)])
    await harness.settle(log, 20)
    assert log.covers(10) and log.covers(0)
    gaps: list[int] = []
    log.on_gap = gaps.append
    await asyncio.to_thread(log.mark_gap, 500)  # the slot was made again: it resumes at 500
    await log.store([tx(600)])
    await harness.settle(log, 600)
    assert not log.covers(20) and log.covers(500) and log.horizon == 500
    again = await harness.new(write=False)
    await harness.settle(again, 600)
    assert again.has_horizon and again.horizon == 500 and not again.covers(20)
    assert [t.lsn for t in again.read_after(500)] == [600]
    if harness.kind == "jetstream":
        assert gaps == [500]  # the writer's own mirror learns it from the stream, in order


async def test_a_retention_window_moves_the_horizon(harness: Harness, tmp_path: Path) -> None:
    log = await harness.new(retention_seconds=2)
    await asyncio.to_thread(log.set_horizon, 0)
    old = int((time.time() - 3600) * 1000)
    if harness.kind == "file":
        assert isinstance(log, FileLog)
        log.segment_bytes = 1  # one transaction per segment: each can be dropped alone
    await log.store([tx(10, ts=old), tx(20, ts=old)])
    await harness.settle(log, 20)
    time.sleep(2.5)  # the stream's max_age is in real time
    await log.store([tx(30)])
    await harness.settle(log, 30)
    if harness.kind == "file":
        log.prune()
        assert not log.covers(10) and log.covers(20) and log.covers(30)
    else:
        # a new instance finds 10 and 20 gone from the stream: what it lacks, it says it lacks
        again = await harness.new(write=False, retention_seconds=2)
        await harness.settle(again, 30)
        assert [t.lsn for t in again.read_after(0)] == [30]
        assert not again.covers(10) and again.covers(20)


# -- JetStream only ---------------------------------------------------------------------------------


@pytest.fixture
async def nats(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats-store").start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_paused_leader_cannot_append_after_its_successor(nats: NatsServer, tmp_path: Path) -> None:
    target = NatsTarget.parse(nats.url + "/fenced")
    logs = [JetStreamLog(target, tmp_path / f"mirror-{i}").open() for i in range(3)]
    old, new, reader = logs
    try:
        for log in logs:
            await log.connect()
        await old.take_over(1)
        await old.store([tx(10)])
        # the old leader pauses (it still believes it leads, with its view of the stream's end)
        # and its lease expires; the new one takes over under epoch 2 and appends
        await new.take_over(2)
        await new.store([tx(20)])
        with pytest.raises(LeadershipLost):  # the old one wakes up: the stream refuses it
            await old.store([tx(30)])
        assert old.epoch == 0
        await new.store([tx(30)])
        await JetStreamHarness(tmp_path, nats).settle(reader, 30)
        assert [t.lsn for t in reader.read_after(0)] == [10, 20, 30]
        assert (await reader.stream_state())["messages"] == 3
    finally:
        for log in logs:
            await log.aclose()
            log.close()


async def test_a_split_transaction_left_half_stored_by_a_dead_leader_is_finished_once(
    nats: NatsServer, tmp_path: Path
) -> None:
    h = JetStreamHarness(tmp_path, nats)
    try:
        dead = await h.new(part_bytes=64 << 10)
        assert isinstance(dead, JetStreamLog) and dead.js is not None
        await dead.store([tx(10)])
        big = Transaction(20, 28, 2, int(time.time() * 1000), None, (Change("I", REL, (b"big", b"y" * 300_000), None),))
        body = encode(big)
        parts = [body[i : i + (64 << 10)] for i in range(0, len(body), 64 << 10)]
        assert len(parts) == 5
        for i, part in enumerate(parts[:2], 1):  # it died after two of five parts
            await dead.js.publish(
                dead.target.subject,
                part,
                headers={
                    "Nats-Msg-Id": f"{20:x}.{i}",
                    "Electric-Lsn": "20",
                    "Electric-Prev": "10",
                    "Electric-Epoch": "1",
                    "Electric-Part": f"{i}/5",
                },
            )
        successor = await h.new(part_bytes=64 << 10)  # the slot sends 20 again, and then 30
        await successor.store([big, tx(30)])
        reader = await h.new(write=False)
        await h.settle(reader, 30)
        got = reader.read_after(0)
        assert [t.lsn for t in got] == [10, 20, 30] and got[1] == big
        assert isinstance(successor, JetStreamLog)
        info = await successor.stream_state()
        assert info["messages"] == 1 + 5 + 1  # each part stored once
    finally:
        await h.close()


async def test_a_nats_restart_loses_nothing_and_readers_resume(nats: NatsServer, tmp_path: Path) -> None:
    h = JetStreamHarness(tmp_path, nats)
    try:
        writer = await h.new()
        reader = await h.new(write=False)
        await writer.store([tx(10), tx(20)])
        await h.settle(reader, 20)
        nats.restart()
        deadline = time.monotonic() + 30
        while True:  # the writer's first appends may fail while it reconnects; serve retries them
            try:
                await writer.store([tx(30)])
                break
            except Exception:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.3)
        await h.settle(reader, 30, timeout=30)
        assert [t.lsn for t in reader.read_after(0)] == [10, 20, 30]
    finally:
        await h.close()


async def test_a_serve_moving_from_the_file_log_keeps_its_history_and_others_know_they_lack_it(
    nats: NatsServer, tmp_path: Path
) -> None:
    # the file log of a serve that ran alone, in the directory its mirror now uses
    old = FileLog(tmp_path / "mirror-1").open()
    old.set_horizon(0)
    old.append([tx(10), tx(20)])
    old.close()
    h = JetStreamHarness(tmp_path, nats)
    try:
        leader = await h.new()  # mirror-1: the history above
        await leader.store([tx(30)])
        await h.settle(leader, 30)
        assert leader.covers(10) and [t.lsn for t in leader.read_after(0)] == [10, 20, 30]
        newcomer = await h.new(write=False)  # mirror-2: only the stream
        await h.settle(newcomer, 30)
        assert [t.lsn for t in newcomer.read_after(0)] == [30]
        assert not newcomer.covers(10) and newcomer.covers(20)  # a client at 10 resyncs, one at 20 resumes
    finally:
        await h.close()


async def test_a_mirror_that_lost_its_tail_reads_it_again(nats: NatsServer, tmp_path: Path) -> None:
    """Mirrors are not fsynced (the stream is the durable copy): one that lost what it had taken in
    (a power loss) while its sequence file survived reads the stream again."""
    h = JetStreamHarness(tmp_path, nats)
    try:
        writer = await h.new()
        reader = await h.new(write=False)  # mirror-2
        await writer.store([tx(10), tx(20), tx(30)])
        await h.settle(reader, 30)
        await reader.aclose()
        reader.close()
        h.opened.remove(reader)
        for seg in (tmp_path / "mirror-2").glob("seg-*.log"):
            seg.unlink()  # gone; its jetstream.json still says it took everything in
        again = JetStreamLog(NatsTarget.parse(nats.url + "/contract"), tmp_path / "mirror-2").open()
        h.opened.append(again)
        await again.connect()
        await h.settle(again, 30)
        assert [t.lsn for t in again.read_after(0)] == [10, 20, 30]
    finally:
        await h.close()
