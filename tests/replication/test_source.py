"""The replication source against a real cluster: what it costs while its consumer is busy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import psycopg

from electricctl._model.rows import Transaction
from electricctl._replication.source import ReplicationSource


async def test_a_busy_consumer_leaves_the_event_loop_idle(db_url: str) -> None:
    """While the consumer awaits (serve's log write in a thread, a send), WAL that arrived meanwhile
    must not make the event loop spin: the socket is readable, and nobody reads it until the
    consumer returns. A reader left registered was called on every turn of the loop (serve spent a
    third of its CPU there while streaming)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("CREATE PUBLICATION p FOR TABLE t")
    source = ReplicationSource(db_url, "busy_consumer", publication="p")
    source.ensure_slot()
    await asyncio.to_thread(source.start, 0)
    stop = asyncio.Event()
    busy: list[tuple[float, float]] = []  # (wall, this thread's CPU) during each busy await
    seen: list[int] = []

    async def consume(batch: Sequence[Transaction]) -> None:
        seen.extend(len(tx.changes) for tx in batch)
        if busy:
            return
        with psycopg.connect(db_url, autocommit=True) as writer:  # more WAL, while we are busy
            for i in range(20):
                writer.execute(
                    "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(%s::int, %s::int) g",
                    [i * 100 + 1, i * 100 + 100],
                )
        wall, cpu = time.monotonic(), time.thread_time()
        await asyncio.sleep(1.0)
        busy.append((time.monotonic() - wall, time.thread_time() - cpu))

    run = asyncio.create_task(source.run(consume, stop))
    try:
        with psycopg.connect(db_url, autocommit=True) as writer:
            writer.execute("INSERT INTO t VALUES (0, 'first')")
        deadline = time.monotonic() + 30
        while sum(seen) < 2001:
            assert time.monotonic() < deadline, f"only {sum(seen)} of 2001 rows arrived"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(run, 10)
        source.close()
    (wall, cpu), *_ = busy
    # a spinning loop burns most of the wall time, even on a loaded machine
    assert cpu < 0.1 * wall, f"the event loop used {cpu:.2f} s of CPU while the consumer slept {wall:.2f} s"
