"""Issue 10, point 4: a client that floods transactions without waiting costs bounded server
memory (the server stops reading its socket), and other clients do not notice."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.common import NATIVE_HEADER
from tests.satellite_client import SatelliteClient
from tests.server.test_writes import ITEMS, Writer, insert
from tests.server_fixtures import Env, ServeProcess

pytestmark = pytest.mark.asyncio

BIG = pb.SatRelation(
    schema_name="public",
    table_name="big",
    relation_id=9,
    columns=[pb.SatRelationColumn(name="id", type="int4"), pb.SatRelationColumn(name="payload", type="text")],
)

FLOOD_TRANSACTIONS = int(os.environ.get("ELECTRICCTL_FLOOD_TRANSACTIONS", "400"))
ROWS_PER_TRANSACTION = 20  # of 30 KB each: 600 KB per transaction, 240 MB in all
ROW_BYTES = 30_000


async def _writer(url: str, env: Env, sub: str) -> Writer:
    cl = SatelliteClient(url, headers={NATIVE_HEADER: "1"})
    cl.auto_ack = True
    await cl.connect()
    await cl.authenticate(env.token(sub))
    await cl.start()
    await cl.wait_for(lambda: cl.outbound_lsn is not None)
    return Writer(cl)


@pytest.mark.serve_args("--log-cache-mb", "16")  # the log's memory is bounded on its own: keep it small here
async def test_a_write_flood_costs_bounded_memory_and_others_are_served(serve_process: ServeProcess, env: Env) -> None:
    serve_process.start()
    other = await _writer(serve_process.url, env, "bystander")
    await other.cl.subscribe("other")
    flood = await _writer(serve_process.url, env, "flooder")
    before = serve_process.rss_kb()
    payload = os.urandom(ROW_BYTES // 2).hex()

    async def send_all() -> None:
        for t in range(FLOOD_TRANSACTIONS):
            ops = [insert(BIG, str(t * ROWS_PER_TRANSACTION + i), payload) for i in range(ROWS_PER_TRANSACTION)]
            await flood.send(BIG, *ops)  # no waiting for acks

    sender = asyncio.create_task(send_all())
    total = FLOOD_TRANSACTIONS * ROWS_PER_TRANSACTION
    peak = before
    bystander_latencies: list[float] = []
    deadline = time.monotonic() + 180
    # until the whole flood is applied: what the server holds, it holds until then
    while not sender.done() or env.sql("SELECT count(*) FROM big")[0][0] < total:
        assert time.monotonic() < deadline, "the flood was not applied"
        peak = max(peak, serve_process.rss_kb())
        if len(bystander_latencies) < 5:
            # meanwhile, another client writes and sees a direct Postgres change
            started = time.monotonic()
            n = len(bystander_latencies)
            await other.send(ITEMS, insert(ITEMS, f"bystander-{n}", str(n), "t"))
            env.sql("INSERT INTO other VALUES (%s, 'during the flood')", [n])
            await other.cl.wait_for(
                lambda n=n: (
                    (str(n).encode(),) in other.cl.table("other")
                    and any(t.origin == other.cl.client_id for t in other.cl.transactions[-50:])
                ),
                timeout=20,
            )
            bystander_latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.05)
    await sender
    growth_mb = (peak - before) / 1024
    latencies = ", ".join(f"{x * 1000:.0f} ms" for x in bystander_latencies)
    print(
        f"flood: RSS {before / 1024:.0f} MB -> peak {peak / 1024:.0f} MB (+{growth_mb:.0f} MB); bystander {latencies}"
    )
    assert growth_mb < 150, f"serve grew by {growth_mb:.0f} MB under the flood"
    assert len(bystander_latencies) == 5
    assert env.sql("SELECT count(*), count(DISTINCT id) FROM big")[0] == (total, total)  # none lost, none twice
    await flood.cl.close()
    await other.cl.close()
    serve_process.stop()
