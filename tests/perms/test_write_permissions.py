"""Permissions on the write path: a matrix of roles x operations x tables, and escalation attempts.

Real server and Postgres; clients are Satellite protocol clients authenticated as different
users. Each denied transaction gets PERMISSION_DENIED naming the table and operation, leaves
Postgres unchanged, leaves an audit line, and the connection carries on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from electricctl._server.common import NATIVE_HEADER
from tests.satellite_client import SatelliteClient
from tests.server.test_writes import Writer, delete, insert, update
from tests.server_fixtures import Env, ws_url


def relation(rid: int, table: str, *columns: str) -> pb.SatRelation:
    return pb.SatRelation(
        schema_name="public",
        table_name=table,
        relation_id=rid,
        columns=[pb.SatRelationColumn(name=c, type="text") for c in columns],
    )


USERS = relation(1, "users", "id", "name")
PROJECTS = relation(2, "projects", "id", "owner_id", "name")
MEMBERSHIPS = relation(3, "memberships", "id", "project_id", "user_id")
ISSUES = relation(4, "issues", "id", "project_id", "title", "status")
COMMENTS = relation(5, "comments", "id", "issue_id", "body")


def snapshot(env: Env) -> dict[str, list[tuple[object, ...]]]:
    return {
        t: env.sql(f"SELECT * FROM {t} ORDER BY 1") for t in ("users", "projects", "memberships", "issues", "comments")
    }


async def as_user(server: Server, env: Env, user: str) -> Writer:
    cl = SatelliteClient(ws_url(server), headers={NATIVE_HEADER: "1"})
    await cl.connect()
    await cl.authenticate(env.token(user))
    await cl.start()
    await cl.wait_for(lambda: cl.outbound_lsn is not None)
    return Writer(cl)


SEEN = ["@0"]  # the rows above predate electrification: a client that saw them saw the tag @0

# (case, user, relation, op, allowed)
CASES: list[tuple[str, str, pb.SatRelation, pb.SatTransOp, bool]] = [
    ("member inserts an issue in their project", "alice", ISSUES, insert(ISSUES, "n1", "p1", "new", "open"), True),
    ("member inserts an issue in another project", "alice", ISSUES, insert(ISSUES, "n2", "p2", "new", "open"), False),
    (
        "member updates an issue of their project",
        "alice",
        ISSUES,
        update(ISSUES, ["i1", "p1", "renamed", "open"], ["i1", "p1", "first", "open"]),
        True,
    ),
    (
        "member moves an issue out of their scope",
        "alice",
        ISSUES,
        update(ISSUES, ["i1", "p2", "first", "open"], ["i1", "p1", "first", "open"]),
        False,
    ),
    (
        "member archives an issue (where fails on the new row)",
        "alice",
        ISSUES,
        update(ISSUES, ["i1", "p1", "first", "archived"], ["i1", "p1", "first", "open"]),
        False,
    ),
    (
        "member edits an archived issue (where fails on the old row)",
        "alice",
        ISSUES,
        update(ISSUES, ["i3", "p1", "old", "open"], ["i3", "p1", "old", "archived"]),
        False,
    ),
    (
        "member deletes an issue of their project",
        "alice",
        ISSUES,
        delete(ISSUES, "i4", "p1", "spare", "open", tags=SEEN),
        True,
    ),
    (
        "member deletes another project's issue",
        "alice",
        ISSUES,
        delete(ISSUES, "i2", "p2", "second", "open", tags=SEEN),
        False,
    ),
    ("member comments two hops into their scope", "alice", COMMENTS, insert(COMMENTS, "c2", "i1", "hi"), True),
    ("member comments on another project's issue", "alice", COMMENTS, insert(COMMENTS, "c3", "i2", "hi"), False),
    (
        "member edits a comment (no update grant)",
        "alice",
        COMMENTS,
        update(COMMENTS, ["c1", "i1", "edited"], ["c1", "i1", "hello"]),
        False,
    ),
    ("inactive member (if fails)", "dave", ISSUES, insert(ISSUES, "n3", "p1", "new", "open"), False),
    ("no role at all", "mallory", ISSUES, insert(ISSUES, "n4", "p1", "new", "open"), False),
    ("granting oneself a role", "mallory", MEMBERSHIPS, insert(MEMBERSHIPS, "m9", "p1", "mallory"), False),
    ("admin creates a project", "carol", PROJECTS, insert(PROJECTS, "p9", "carol", "nine"), True),
    (
        "admin deletes a project",
        "carol",
        PROJECTS,
        delete(PROJECTS, "p2", "carol", "two", tags=SEEN),
        False,
    ),  # p2 has rows referencing it
    ("authenticated creates their own project", "alice", PROJECTS, insert(PROJECTS, "pa", "alice", "mine"), True),
    (
        "authenticated creates a project for someone else",
        "alice",
        PROJECTS,
        insert(PROJECTS, "pb", "bob", "yours"),
        False,
    ),
    (
        "authenticated deletes a project (no grant)",
        "alice",
        PROJECTS,
        delete(PROJECTS, "p1", "carol", "one", tags=SEEN),
        False,
    ),
    ("user renames themself (column grant)", "alice", USERS, update(USERS, ["alice", "Al"], ["alice", "Alice"]), True),
    ("user renames someone else", "alice", USERS, update(USERS, ["bob", "Bobby"], ["bob", "Bob"]), False),
    ("user inserts a user (no insert grant)", "alice", USERS, insert(USERS, "eve", "Eve"), False),
]


@pytest.mark.parametrize(("case", "user", "rel", "op", "allowed"), CASES, ids=[c[0] for c in CASES])
async def test_write_matrix(
    server: Server, env: Env, case: str, user: str, rel: pb.SatRelation, op: pb.SatTransOp, allowed: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    w = await as_user(server, env, user)
    try:
        before = snapshot(env)
        with caplog.at_level(logging.WARNING, logger="electricctl.audit"):
            ts = await w.send(rel, op)
            await w.echo(ts)
            if allowed:
                assert snapshot(env) != before, "an allowed write must land"
                assert w.cl.errors == []
            else:
                await w.cl.wait_for(lambda: bool(w.cl.errors))
                (err,) = w.cl.errors
                assert snapshot(env) == before, "a denied transaction must leave Postgres unchanged"
                if err.error_type == pb.SatErrorResp.PERMISSION_DENIED:
                    assert f"on public.{rel.table_name}" in err.message and "permission denied" in err.message
                    assert any('"event": "permission_denied"' in r.getMessage() for r in caplog.records)
                else:  # the admin's delete of a project with issues: Postgres refuses it (foreign key)
                    assert case == "admin deletes a project" and "foreign key" in err.message
        # the connection carries on: a later write of the same client is handled
        ok = await w.send(USERS, update(USERS, [user, "x"], [user, None]))
        await w.echo(ok)
        assert w.cl.closed_with is None
    finally:
        await w.cl.close()


async def test_a_denied_transaction_is_refused_whole(server: Server, env: Env) -> None:
    w = await as_user(server, env, "alice")
    try:
        before = snapshot(env)
        ts = await w.send(
            ISSUES, insert(ISSUES, "ok1", "p1", "fine", "open"), insert(ISSUES, "bad", "p2", "no", "open")
        )
        await w.echo(ts)
        await w.cl.wait_for(lambda: bool(w.cl.errors))
        assert w.cl.errors[0].error_type == pb.SatErrorResp.PERMISSION_DENIED
        assert "operation 2 (insert on public.issues)" in w.cl.errors[0].message
        assert snapshot(env) == before
    finally:
        await w.cl.close()


async def test_an_assignment_written_a_moment_ago_counts(server: Server, env: Env) -> None:
    w = await as_user(server, env, "mallory")
    try:
        env.sql("INSERT INTO memberships VALUES ('m5', 'p2', 'mallory', true)")
        await w.echo(await w.send(ISSUES, insert(ISSUES, "mm", "p2", "by mallory", "open")))
        assert env.sql("SELECT project_id FROM issues WHERE id = 'mm'") == [("p2",)]
        env.sql("UPDATE memberships SET active = false WHERE id = 'm5'")
        await w.echo(
            await w.send(ISSUES, update(ISSUES, ["mm", "p2", "again", "open"], ["mm", "p2", "by mallory", "open"]))
        )
        await w.cl.wait_for(lambda: bool(w.cl.errors))
        assert env.sql("SELECT title FROM issues WHERE id = 'mm'") == [("by mallory",)]
    finally:
        await w.cl.close()


async def test_our_client_rolls_back_only_the_denied_transaction(server: Server, env: Env, tmp_path: Path) -> None:
    import sqlite3

    from electricctl.client import SyncClient

    path = tmp_path / "alice.db"
    cl = SyncClient(str(path), ws_url(server), env.token("alice"))
    await cl.start()
    try:
        await cl.synced(await cl.subscribe("issues"))
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("INSERT INTO issues (id, project_id, title, status) VALUES ('bad', 'p2', 'no', 'open')")
        cl.notify()
        await cl.flush()
        assert len(cl.refused) == 1 and "permission denied" in cl.refused[0]
        assert conn.execute("SELECT count(*) FROM issues WHERE id = 'bad'").fetchone() == (0,)  # undone locally
        assert env.sql("SELECT count(*) FROM issues WHERE id = 'bad'") == [(0,)]
        conn.execute("INSERT INTO issues (id, project_id, title, status) VALUES ('good', 'p1', 'yes', 'open')")
        cl.notify()
        await cl.flush()
        assert env.sql("SELECT title FROM issues WHERE id = 'good'") == [("yes",)]
        assert len(cl.refused) == 1 and cl.status().connected
        conn.close()
    finally:
        await cl.stop()
