"""The leader lease of instances sharing a JetStream log (in-process servers, a real nats-server)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.nats_fixtures import NatsServer
from tests.server_fixtures import Env, running_server


async def _leading(srv: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not (getattr(srv, "role", None) == "leader" and getattr(srv, "replication_ok", False)):
        assert time.monotonic() < deadline, "no instance leads"
        await asyncio.sleep(0.05)


async def test_a_busy_event_loop_does_not_cost_the_leader_its_lease(
    env: Env, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Renewals run in a thread of their own: a leader whose event loop is blocked for longer than
    its lease (thousands of clients disconnecting at once) keeps it, and nothing changes hands."""
    shared = {"log_url": f"{nats_server.url}/busy", "lease_seconds": 1.0}
    async with running_server(env, data_dir=tmp_path / "a", **shared) as first:
        await _leading(first)
        assert first.lease is not None
        epoch = first.lease.revision
        async with running_server(env, data_dir=tmp_path / "b", **shared) as second:
            assert second.role == "follower"
            time.sleep(2.5)  # blocks both servers' loop, 2.5x the lease
            await asyncio.sleep(2.0)  # the follower tries for the lease every 0.5 s meanwhile
            assert first.role == "leader" and second.role == "follower"
            assert first.lease.revision > epoch  # renewed all along, under the same lease
            env.sql("INSERT INTO items (id, n) VALUES ('after', 1)")
            deadline = time.monotonic() + 10
            while second.log.last_lsn < first.log.last_lsn or first.log.last_lsn == 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
