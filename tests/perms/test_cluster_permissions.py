"""Permissions on every instance of a shared JetStream log: a client on a follower is reassessed
live when `apply` changes its grants (each instance LISTENs for it) and when its roles change in
the assignment tables (each instance sees those rows in the stream it follows)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.nats_fixtures import NatsServer
from tests.perms.conftest import CONFIG
from tests.perms.test_hot_reload import ISSUES_GRANT, apply
from tests.perms.test_read_permissions import ids, reader
from tests.server_fixtures import Env, running_server


async def test_grants_and_roles_are_reassessed_on_a_follower(env: Env, nats_server: NatsServer, tmp_path: Path) -> None:
    shared = {"log_url": f"{nats_server.url}/perms", "lease_seconds": 2.0}
    async with running_server(env, data_dir=tmp_path / "a", **shared) as first:
        for _ in range(100):
            if first.role == "leader" and first.replication_ok:
                break
            await asyncio.sleep(0.1)
        assert first.role == "leader"
        async with running_server(env, data_dir=tmp_path / "b", **shared) as second:
            assert second.role == "follower"
            alice = await reader(second, env, "alice", "issues")
            ws = alice.ws
            try:
                assert ids(alice, "issues") == {"i1", "i4"}
                # a row written in Postgres reaches her through the follower
                env.sql("INSERT INTO issues VALUES ('i5', 'p1', 'new', 'open')")
                await alice.wait_for(lambda: "i5" in ids(alice, "issues"))
                # apply takes the grant away: the follower reassesses her at once
                await apply(env, CONFIG.replace(ISSUES_GRANT, ""))
                await alice.wait_for(lambda: ids(alice, "issues") == set(), timeout=10)
                await apply(env, CONFIG)
                await alice.wait_for(lambda: ids(alice, "issues") == {"i1", "i4", "i5"}, timeout=10)
                # her membership ends (a row of the assignment table, through the stream)
                env.sql("UPDATE memberships SET active = false WHERE id = 'm1'")
                await alice.wait_for(lambda: ids(alice, "issues") == set(), timeout=10)
                assert alice.ws is ws and alice.closed_with is None  # never dropped
                assert second.role == "follower" and first.role == "leader"
                assert b"electricctl_leader 1.0" in await first.metrics.exposition()
                page = await second.metrics.exposition()
                assert b"electricctl_leader 0.0" in page and b"electricctl_shared_log_lag_messages" in page
            finally:
                await alice.close()
