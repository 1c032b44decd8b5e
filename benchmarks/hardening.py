"""Hardening benchmark: what attacks cost the server, and whether other users notice.

The figures the hardening issue asks for, each a median of several rounds (runs in brackets),
against `electricctl serve` as a subprocess (log fsync on) and a durable embedded cluster:

1. write flood: a hostile client (a raw protocol client: an attacker does not use our library)
   sends N transactions of 20 rows of 30 KB without waiting for acks. Measured: serve's RSS
   growth at its peak until the whole flood is applied, and how long a bystander's `SyncClient`
   write takes to come back from Postgres meanwhile.
2. slow readers: four hostile clients subscribe to a 40 MB table (--slow-rows) and read one frame a second.
   Measured: the time for an ordinary `SyncClient` to subscribe to a small table and have it
   synced (`subscribe` + `synced`), from a fresh start.
3. pre-auth frames: 30 unauthenticated connections each send the header of a 64 MiB frame (no
   payload: its upload would time the attacker, not the server). Measured: the time from sending
   the header until the connection is closed (1009), and serve's RSS growth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import statistics
import struct
import time
import uuid
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from benchmarks.common import Database, Parts, make_database, pct, rss_kb, run_alone, runs, serving, sql
from benchmarks.report import REPORT
from electricctl._auth.tokens import mint
from electricctl._embedded.postgres import EmbeddedPostgres
from electricctl._protocol import codec
from electricctl._protocol import satellite_pb2 as pb
from electricctl.client import SyncClient
from tests.satellite_client import SatelliteClient

SCHEMA = """
CREATE TABLE big (id int4 PRIMARY KEY, payload text);
CREATE TABLE small (id int4 PRIMARY KEY, label text);
CREATE TABLE notes (id text PRIMARY KEY, body text);
INSERT INTO small SELECT i, 'row ' || i FROM generate_series(1, 10) i;
"""
SECTION = "hardening"
TITLE = "Hardening: what attacks cost the server, and whether other users notice"
BIG = pb.SatRelation(
    schema_name="public",
    table_name="big",
    relation_id=9,
    columns=[pb.SatRelationColumn(name="id", type="int4"), pb.SatRelationColumn(name="payload", type="text")],
)


def token(db: Database, sub: str) -> str:
    return mint(db.config.auth, sub)


async def raw_client(url: str, **kw: object) -> ClientConnection:
    return await connect(url, subprotocols=["electric.0.12"], compression=None, **kw)  # type: ignore[arg-type,list-item]


async def rpc(ws: ClientConnection, request_id: int, method: str, body: object) -> None:
    message = body.SerializeToString()  # type: ignore[attr-defined]
    await ws.send(codec.encode(pb.SatRpcRequest(method=method, request_id=request_id, message=message)))


# -- 1. write flood ----------------------------------------------------------------------------
async def flood_round(db: Database, tmp: Path, slot: str, transactions: int) -> tuple[float, list[float]]:
    rows_per_tx, row_bytes = 20, 30_000
    sql(db.url, "DELETE FROM big")  # TRUNCATE of an electrified table is refused
    with serving(db, tmp, slot) as server:
        bystander = SyncClient(str(tmp / f"{slot}-bystander.db"), server.ws_url, token(db, "bystander"))
        await bystander.start()
        await bystander.synced(await bystander.subscribe("notes"))
        flooder = SatelliteClient(server.ws_url)
        await flooder.connect()
        await flooder.authenticate(token(db, "flooder"))
        await flooder.start()
        await flooder.wait_for(lambda: flooder.outbound_lsn is not None)
        before = rss_kb(server.pid)
        payload = os.urandom(row_bytes // 2).hex()

        async def send_all() -> None:
            for t in range(transactions):
                ops = [
                    pb.SatTransOp(
                        insert=pb.SatOpInsert(
                            relation_id=BIG.relation_id,
                            row_data=codec.encode_row([str(t * rows_per_tx + i).encode(), payload.encode()]),
                        )
                    )
                    for i in range(rows_per_tx)
                ]
                await flooder.send_transaction(BIG, ops, t + 1)

        sender = asyncio.create_task(send_all())
        peak = before
        latencies: list[float] = []
        total = transactions * rows_per_tx
        n = 0
        while not sender.done() or sql(db.url, "SELECT count(*) FROM big")[0][0] < total:
            peak = max(peak, rss_kb(server.pid))
            n += 1
            started = time.perf_counter()
            key = f"bystander-{slot}-{n}"
            conn = sqlite3.connect(tmp / f"{slot}-bystander.db", isolation_level=None, timeout=30)
            conn.execute("INSERT INTO notes (id, body) VALUES (?, 'x')", [key])
            conn.close()
            bystander.notify()
            while not sql(db.url, "SELECT 1 FROM notes WHERE id = %s", [key]):
                await asyncio.sleep(0.002)
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)
        await sender
        await flooder.close()
        await bystander.stop()
    return (peak - before) / 1024, latencies


async def bench_flood(pg: EmbeddedPostgres, tmp: Path, rounds: int, transactions: int) -> None:
    db = make_database(pg, tmp, "flood", SCHEMA, ["big", "small", "notes"])
    mb = transactions * 20 * 30_000 / 1e6
    print(f"1. write flood: {transactions} transactions of 20 x 30 KB ({mb:.0f} MB) sent without waiting")
    growths, p50s, p99s = [], [], []
    for r in range(rounds):
        growth, lat = await flood_round(db, tmp, f"flood{r}", transactions)
        growths.append(growth)
        p50s.append(pct(lat, 50) * 1000)
        p99s.append(pct(lat, 99) * 1000)
    print(f"   serve RSS growth at peak          {runs(growths, '{:.0f}')} MB")
    print(f"   bystander write -> Postgres, p50  {runs(p50s, '{:.0f}')} ms")
    print(f"   bystander write -> Postgres, p99  {runs(p99s, '{:.0f}')} ms")
    REPORT.figure(SECTION, f"write flood of {mb:.0f} MB: serve RSS growth at peak", growths, "MB")
    REPORT.figure(SECTION, "write flood: a bystander SyncClient's write -> Postgres, p99", p99s, "ms")


# -- 2. slow readers ---------------------------------------------------------------------------
async def slow_reader(url: str, db: Database, sub: str, stop: asyncio.Event) -> None:
    ws = await raw_client(url, max_queue=1, max_size=None)
    select = pb.SatShapeDef.Select(tablename="big")
    await rpc(ws, 1, "authenticate", pb.SatAuthReq(id=str(uuid.uuid4()), token=token(db, sub)))
    await rpc(ws, 2, "startReplication", pb.SatInStartReplicationReq())
    shape = pb.SatShapeReq(request_id="r", shape_definition=pb.SatShapeDef(selects=[select]))
    await rpc(ws, 3, "subscribe", pb.SatSubsReq(subscription_id=str(uuid.uuid4()), shape_requests=[shape]))
    try:
        while not stop.is_set():
            await ws.recv()
            await asyncio.sleep(1.0)
    except ConnectionClosed:
        pass
    finally:
        ws.transport.abort()


async def bench_slow_readers(pg: EmbeddedPostgres, tmp: Path, rounds: int, big_rows: int, wait: float) -> None:
    db = make_database(pg, tmp, "slow", SCHEMA, ["big", "small", "notes"])
    sql(db.url, "INSERT INTO big SELECT i, repeat(md5(i::text), 60) FROM generate_series(1, %s) i", [big_rows])
    mb = big_rows * 1920 / 1e6
    print(f"2. a small subscription (SyncClient: subscribe + synced) while 4 clients read {mb:.0f} MB at 1 frame/s")
    alone, contended = [], []
    for r in range(rounds):
        with serving(db, tmp, f"slow{r}", ["--send-timeout", "120s"]) as server:
            for label, out in (("alone", alone), ("contended", contended)):
                stop = asyncio.Event()
                readers = []
                if label == "contended":
                    readers = [asyncio.create_task(slow_reader(server.ws_url, db, f"slow-{i}", stop)) for i in range(4)]
                    await asyncio.sleep(wait)  # their deliveries are under way
                cl = SyncClient(str(tmp / f"slow{r}-{label}.db"), server.ws_url, token(db, f"app-{label}"))
                started = time.perf_counter()
                await cl.start()
                await cl.synced(await cl.subscribe("small"))
                out.append((time.perf_counter() - started) * 1000)
                await cl.stop()
                stop.set()
                for t in readers:
                    t.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
    print(f"   no slow readers         {runs(alone, '{:.0f}')} ms")
    print(f"   with 4 slow readers     {runs(contended, '{:.0f}')} ms")
    REPORT.figure(
        SECTION,
        "a SyncClient's small subscription (start -> synced) while 4 slow readers hold big deliveries",
        contended,
        "ms",
        baseline_runs=alone,
        baseline_label="no slow readers",
    )


# -- 3. pre-auth frames ------------------------------------------------------------------------
async def bench_preauth(pg: EmbeddedPostgres, tmp: Path, rounds: int) -> None:
    db = make_database(pg, tmp, "preauth", SCHEMA, ["big", "small", "notes"])
    print("3. 30 unauthenticated connections each send the header of a 64 MiB frame")
    p50s, maxes, growths = [], [], []
    for r in range(rounds):
        with serving(db, tmp, f"preauth{r}") as server:
            before = rss_kb(server.pid)

            async def attack(url: str = server.ws_url) -> float:
                ws = await raw_client(url, max_size=None)
                # the header of a masked binary frame of 64 MiB, and no payload: what the server
                # does with the header alone is what is timed (not the attacker's upload)
                header = struct.pack("!BBQ", 0x82, 0x80 | 127, 64 << 20) + os.urandom(4)
                started = time.perf_counter()
                ws.transport.write(header)
                with contextlib.suppress(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1009, ws.close_code
                return time.perf_counter() - started

            times = await asyncio.gather(*(attack() for _ in range(30)))
            growths.append((rss_kb(server.pid) - before) / 1024)
            p50s.append(statistics.median(times) * 1000)
            maxes.append(max(times) * 1000)
    print(f"   time to close, median   {runs(p50s, '{:.0f}')} ms")
    print(f"   time to close, slowest  {runs(maxes, '{:.0f}')} ms")
    print(f"   serve RSS growth        {runs(growths, '{:.0f}')} MB")
    REPORT.figure(SECTION, "30 pre-auth 64 MiB frame headers: the slowest close", maxes, "ms")


async def run(args: argparse.Namespace, pg: EmbeddedPostgres, tmp: Path) -> None:
    print(
        f"hardening: `electricctl serve` subprocess (log fsync on), {'fsync-off' if args.fast else 'durable'}"
        f" embedded cluster, {args.rounds} rounds, {os.cpu_count()} cores"
    )
    parts = Parts(args.only, "123")
    await parts.step("1", bench_flood(pg, tmp, args.rounds, args.flood))
    await parts.step("2", bench_slow_readers(pg, tmp, args.rounds, args.slow_rows, args.slow_wait))
    await parts.step("3", bench_preauth(pg, tmp, args.rounds))
    print(parts.summary())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flood", type=int, default=600, help="1: transactions in the flood")
    parser.add_argument("--slow-rows", type=int, default=20_000, help="2: rows (of 1.9 KB) the slow readers read")
    parser.add_argument("--slow-wait", type=float, default=3.0, help="2: seconds the slow readers read first")


QUICK = {"flood": 20, "slow_rows": 2000, "slow_wait": 1.0}
"""What ``python -m benchmarks --quick`` changes."""


def main() -> None:
    run_alone(__doc__, add_arguments, run, "bench-hard-")


if __name__ == "__main__":
    main()
