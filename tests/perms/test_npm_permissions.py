"""The permission matrix with the real npm client (electric-sql@0.12.1 through electrify()).

It has no rollback of its own: a denied transaction must leave Postgres unchanged, clear from its
oplog (no endless resend), put its local rows back to what it may see, and leave it connected.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from electricctl._server.app import Server
from tests.compat.conftest import Driver, ensure_node_modules
from tests.server_fixtures import Env, ws_url

T = ["TEXT", "text", "TEXT"]
TABLES = json.dumps(
    {
        "users": [["id", *T], ["name", *T], ["email", *T]],
        "projects": [["id", *T], ["owner_id", *T], ["name", *T]],
        "memberships": [["id", *T], ["project_id", *T], ["user_id", *T], ["active", "INTEGER", "bool", "BOOL"]],
        "issues": [["id", *T], ["project_id", *T], ["title", *T], ["status", *T]],
        "comments": [["id", *T], ["issue_id", *T], ["body", *T]],
    }
)

# (case, user, tables to subscribe, local SQL, allowed)
CASES = [
    (
        "insert an issue in one's project",
        "alice",
        ["issues"],
        "INSERT INTO issues VALUES ('n1', 'p1', 'new', 'open')",
        True,
    ),
    ("insert an issue elsewhere", "alice", ["issues"], "INSERT INTO issues VALUES ('n2', 'p2', 'new', 'open')", False),
    (
        "move an issue out of one's scope",
        "alice",
        ["issues"],
        "UPDATE issues SET project_id = 'p2' WHERE id = 'i1'",
        False,
    ),
    ("archive an issue", "alice", ["issues"], "UPDATE issues SET status = 'archived' WHERE id = 'i1'", False),
    (
        "comment two keys into one's scope",
        "alice",
        ["comments"],
        "INSERT INTO comments VALUES ('c2', 'i1', 'hi')",
        True,
    ),
    (
        "edit a comment without an update grant",
        "alice",
        ["comments"],
        "UPDATE comments SET body = 'x' WHERE id = 'c1'",
        False,
    ),
    ("grant oneself a role", "mallory", [], "INSERT INTO memberships VALUES ('m9', 'p1', 'mallory', 1)", False),
    ("rename oneself", "alice", ["users"], "UPDATE users SET name = 'Al' WHERE id = 'alice'", True),
    ("admin creates a project", "carol", ["projects"], "INSERT INTO projects VALUES ('p9', 'carol', 'nine')", True),
]


def snapshot(env: Env) -> dict[str, list[tuple[object, ...]]]:
    return {
        t: env.sql(f"SELECT * FROM {t} ORDER BY 1") for t in ("users", "projects", "memberships", "issues", "comments")
    }


def local_rows(d: Driver, tables: list[str]) -> dict[str, list[dict[str, object]]]:
    return {t: d.rows(t) for t in tables}


@pytest.mark.parametrize(("case", "user", "tables", "statement", "allowed"), CASES, ids=[c[0] for c in CASES])
async def test_npm_matrix(
    server: Server, env: Env, case: str, user: str, tables: list[str], statement: str, allowed: bool
) -> None:
    ensure_node_modules()
    base = ws_url(server).replace("ws://", "http://").removesuffix("/ws")
    d = await asyncio.to_thread(Driver, base, env.token(user), ":memory:", TABLES)
    try:
        for t in tables:
            await asyncio.to_thread(d.call, "subscribe", table=t)
        seen_before = await asyncio.to_thread(local_rows, d, tables)
        before = snapshot(env)
        # the tables have their foreign keys locally too (from the migrations), and the user may
        # not hold a parent row: the write bypasses the local checks, so the server's are tested
        await asyncio.to_thread(d.call, "exec", sql=statement, fk=False)
        deadline = time.monotonic() + 20
        while (await asyncio.to_thread(d.call, "oplog"))["n"]:  # cleared by the echo, allowed or not
            assert time.monotonic() < deadline, "the npm client's oplog never cleared"
            await asyncio.sleep(0.05)
        if allowed:
            assert snapshot(env) != before
        else:
            assert snapshot(env) == before
            # its local rows are back to what it may see
            for _ in range(100):
                if await asyncio.to_thread(local_rows, d, tables) == seen_before:
                    break
                await asyncio.sleep(0.05)
            assert await asyncio.to_thread(local_rows, d, tables) == seen_before
        # still connected: a harmless allowed write of its own still goes through
        await asyncio.to_thread(
            d.call, "exec", sql=f"INSERT INTO projects VALUES ('own-{user}', '{user}', 'mine')", fk=False
        )
        for _ in range(200):
            if env.sql("SELECT 1 FROM projects WHERE id = %s", [f"own-{user}"]):
                break
            await asyncio.sleep(0.05)
        assert env.sql("SELECT owner_id FROM projects WHERE id = %s", [f"own-{user}"]) == [(user,)]
    finally:
        await asyncio.to_thread(d.close)
