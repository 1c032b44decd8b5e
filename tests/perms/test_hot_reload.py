"""Hot reload: `electricctl apply` changes grants or declared shapes while clients are connected,
and serve reassesses them live (rows leave as GONE, rows arrive), with no reconnect."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid

import psycopg
import pytest

from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from tests.perms.conftest import CONFIG
from tests.perms.test_read_permissions import ids, reader
from tests.satellite_client import SatelliteClient
from tests.server_fixtures import Env, running_server

ISSUES_GRANT = """  - privileges: [select, insert, update, delete]
    on: issues
    to: "projects:member"
    where: "status <> 'archived'"
"""


async def apply(env: Env, text: str) -> float:
    """Write ``text`` as the file and run `electricctl apply --prune` on it, as CI would (without blocking
    the server, which runs in this process); the time it exited."""
    env.config_path.write_text(text)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "electricctl",
        "apply",
        "-f",
        str(env.config_path),
        "--database-url",
        env.url,
        "--prune",  # a grant or shape taken out of the file goes from the database too
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, (out + err).decode()
    return time.monotonic()


async def test_a_grant_removed_from_the_file_leaves_connected_clients_at_once(server: Server, env: Env) -> None:
    assert ISSUES_GRANT in CONFIG
    alice = await reader(server, env, "alice", "issues", "users")
    ws = alice.ws
    try:
        assert ids(alice, "issues") == {"i1", "i4"}
        assert ids(alice, "users") == {"alice"}
        applied = await apply(env, CONFIG.replace(ISSUES_GRANT, ""))
        await alice.wait_for(lambda: ids(alice, "issues") == set(), timeout=10)
        # within a second of apply returning (its notification is delivered at its commit)
        assert time.monotonic() - applied < 1.0
        assert alice.ws is ws and alice.closed_with is None  # the same connection, never dropped
        assert ids(alice, "users") == {"alice"}  # a grant that did not change keeps its rows
        # and nothing of the table reaches her afterwards
        env.sql("INSERT INTO issues VALUES ('i5', 'p1', 'new', 'open')")
        env.sql("UPDATE users SET name = 'Alice B' WHERE id = 'alice'")
        await alice.wait_for(lambda: alice.table("users")[(b"alice",)]["name"] == b"Alice B")
        assert ids(alice, "issues") == set()

        # the grant comes back narrower: the rows it gives arrive, live
        narrower = ISSUES_GRANT.replace("status <> 'archived'", "status = 'open' AND title <> 'spare'")
        await apply(env, CONFIG.replace(ISSUES_GRANT, narrower))
        await alice.wait_for(lambda: ids(alice, "issues") == {"i1", "i5"}, timeout=10)
        env.sql("INSERT INTO issues VALUES ('i6', 'p1', 'spare', 'open'), ('i7', 'p1', 'later', 'open')")
        await alice.wait_for(lambda: "i7" in ids(alice, "issues"))
        assert ids(alice, "issues") == {"i1", "i5", "i7"}
        assert alice.ws is ws and alice.closed_with is None
        assert server.stats["catalog_reloads"] == 2
    finally:
        await alice.close()


SHAPES_CONFIG = CONFIG.replace("adhoc_shapes: allow", "adhoc_shapes: deny") + (
    """shapes:
  - name: open_issues
    table: issues
    where: "status = 'open'"
"""
)


async def by_name(cl: SatelliteClient, name: str) -> str:
    req = pb.SatSubsReq(
        subscription_id=str(uuid.uuid4()),
        shape_requests=[
            pb.SatShapeReq(
                request_id="r", shape_definition=pb.SatShapeDef(selects=[pb.SatShapeDef.Select(tablename=name)])
            )
        ],
    )
    resp = await cl.rpc("subscribe", req)
    assert isinstance(resp, pb.SatSubsResp) and not resp.HasField("err"), resp
    await cl.wait_for(lambda: req.subscription_id in cl.subscriptions_done)
    return req.subscription_id


async def test_a_declared_shape_redefined_moves_its_subscribers(db_url: str, tmp_path: object, env: Env) -> None:
    await apply(env, SHAPES_CONFIG)
    async with running_server(env) as server:
        alice = await reader(server, env, "alice")
        sub = await by_name(alice, "open_issues")
        assert ids(alice, "issues") == {"i1", "i4"}
        # the shape is redefined: i4 leaves, and the new definition follows live
        await apply(
            env, SHAPES_CONFIG.replace("where: \"status = 'open'\"", "where: \"status = 'open' AND id <> 'i4'\"")
        )
        await alice.wait_for(lambda: ids(alice, "issues") == {"i1"}, timeout=10)
        env.sql("INSERT INTO issues VALUES ('i4b', 'p1', 'x', 'open')")
        await alice.wait_for(lambda: "i4b" in ids(alice, "issues"))
        await alice.ack()
        await alice.close()

        # redefined again while she is away: her resume is moved to it, without a resync
        await apply(env, SHAPES_CONFIG.replace("status = 'open'", "status IN ('open', 'archived')"))
        again, resp = await alice.resume(env.token("alice"), [sub])
        try:
            assert not resp.HasField("err"), resp
            # i4 is back; i3 (archived) matches the shape now, but no grant shows archived issues
            await again.wait_for(lambda: ids(again, "issues") == {"i1", "i4", "i4b"}, timeout=10)

            # the shape is no longer declared: what it gave leaves
            await apply(env, CONFIG.replace("adhoc_shapes: allow", "adhoc_shapes: deny"))
            await again.wait_for(lambda: ids(again, "issues") == set(), timeout=10)
            assert again.closed_with is None
        finally:
            await again.close()


async def test_without_watch_connected_clients_keep_what_they_were_given(env: Env) -> None:
    async with running_server(env, watch=False) as server:
        alice = await reader(server, env, "alice", "issues")
        try:
            await apply(env, CONFIG.replace(ISSUES_GRANT, ""))
            await asyncio.sleep(1.5)
            assert ids(alice, "issues") == {"i1", "i4"}
            assert server.stats["catalog_reloads"] == 0
        finally:
            await alice.close()


async def test_the_watch_reconnects_after_its_connection_is_killed(env: Env) -> None:
    async with running_server(env) as server:
        alice = await reader(server, env, "alice", "issues")
        try:
            with psycopg.connect(env.url, autocommit=True) as conn:
                killed = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'electricctl-reload'"
                ).fetchall()
            assert killed == [(True,)]
            await apply(env, CONFIG.replace(ISSUES_GRANT, ""))
            await alice.wait_for(lambda: ids(alice, "issues") == set(), timeout=15)
            assert alice.closed_with is None
        finally:
            await alice.close()


async def test_an_apply_whose_notification_never_came_is_found_by_the_poll(env: Env) -> None:
    """As behind a pooler that drops notifications: the catalog changes and a new apply is
    recorded, with no pg_notify; the poll finds it."""
    async with running_server(env, watch_interval=0.5) as server:
        alice = await reader(server, env, "alice", "issues")
        try:
            with psycopg.connect(env.url) as conn:
                conn.execute("DELETE FROM electric.grants WHERE definition->>'table' = 'public.issues'")
                conn.execute(
                    "INSERT INTO electric.applied_configs (config_hash, electricctl_version, changes)"
                    " VALUES ('by-hand', 'test', '[]')"
                )
            await alice.wait_for(lambda: ids(alice, "issues") == set(), timeout=10)
            assert server.watcher.listening and alice.closed_with is None
        finally:
            await alice.close()


async def test_a_reload_says_when_the_served_file_differs_from_what_was_applied(
    server: Server, env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """An apply made from another copy of the file (another checkout, CI): serve's own file now
    has changes that are not applied, and serve says so at the reload."""
    other = env.config_path.with_name("other.yaml")
    other.write_text(CONFIG.replace(ISSUES_GRANT, ""))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "electricctl", "apply", "-f", str(other), "--database-url", env.url, "--prune",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await proc.wait() == 0
    with caplog.at_level(logging.WARNING, logger="electricctl.server"):
        deadline = time.monotonic() + 10
        while "has changes that are not applied (1 to create" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.1)
    assert str(env.config_path) in caplog.text


async def test_http_shapes_follow_an_apply_too(server: Server, env: Env) -> None:
    """Over the HTTP Shape API: a grant removed moves rows out of the log (deletes), a declared shape
    redefined rotates its log (409 and the new handle)."""
    from tests.perms.test_http_permissions import started

    alice = await started(server, env, "alice", table="issues")
    assert alice.ids() == {"i1", "i4"}
    await apply(env, CONFIG.replace(ISSUES_GRANT, ""))
    await alice.until(lambda: alice.ids() == set())

    await apply(env, SHAPES_CONFIG)
    named = await started(server, env, "alice", table="open_issues")
    assert named.ids() == {"i1", "i4"}
    await apply(env, SHAPES_CONFIG.replace("status = 'open'", "status = 'open' AND id <> 'i4'"))
    status, headers, body = await named.get(live=True)
    assert status == 409 and body == [{"headers": {"control": "must-refetch"}}]
    assert headers["electric-handle"] != named.handle
    fresh = await started(server, env, "alice", table="open_issues")
    assert fresh.ids() == {"i1"}


async def test_a_client_away_during_a_change_of_its_grants_or_roles_is_moved_when_it_resumes(
    server: Server, env: Env
) -> None:
    """What it was last told it holds is kept with its state: it resumes without a resync, rows it
    may no longer read leave, and rows it now may read arrive (they were never in the stream)."""
    alice = await reader(server, env, "alice", "issues")
    mallory = await reader(server, env, "mallory", "issues")
    subs = {cl.client_id: list(cl.subscriptions_done) for cl in (alice, mallory)}
    assert ids(alice, "issues") == {"i1", "i4"} and ids(mallory, "issues") == set()
    for cl in (alice, mallory):
        await cl.ack()
        await cl.close()
    # while they are away: alice's grant narrows, mallory joins p2 (rows that existed before)
    await apply(env, CONFIG.replace(ISSUES_GRANT, ISSUES_GRANT.replace("status <> 'archived'", "title <> 'spare'")))
    env.sql("INSERT INTO memberships VALUES ('m9', 'p2', 'mallory', true)")
    back_a, resp_a = await alice.resume(env.token("alice"), subs[alice.client_id])
    back_m, resp_m = await mallory.resume(env.token("mallory"), subs[mallory.client_id])
    try:
        assert not resp_a.HasField("err") and not resp_m.HasField("err")  # no resync
        await back_a.wait_for(lambda: ids(back_a, "issues") == {"i1", "i3"}, timeout=10)
        await back_m.wait_for(lambda: ids(back_m, "issues") == {"i2"}, timeout=10)
    finally:
        await back_a.close()
        await back_m.close()
