"""Permissions bound every level of an include tree: a level the user may not read holds nothing
(and so nothing hangs from it), hidden columns stay hidden at every level, and role changes
reassess trees live."""

from __future__ import annotations

from pathlib import Path

import psycopg

from electricctl._server.app import Server
from tests.satellite_client import SatelliteClient
from tests.server.test_include_trees import SCHEMA as TREE_SCHEMA
from tests.server.test_include_trees import subscribe_tree
from tests.server_fixtures import Env, applied_env, running_server, ws_url


async def reader(server: Server, env: Env, user: str) -> SatelliteClient:
    cl = SatelliteClient(ws_url(server))
    await cl.connect()
    await cl.authenticate(env.token(user))
    await cl.start()
    return cl


def ids(cl: SatelliteClient, table: str) -> set[str]:
    return {str(k[0], "utf-8") for k in cl.table(table)}


ISSUES_AND_COMMENTS = [{"table": "comments"}]


async def test_a_level_the_user_may_not_read_holds_nothing(server: Server, env: Env) -> None:
    # carol is an admin: every project, but issues and comments are granted to members only
    carol = await reader(server, env, "carol")
    alice = await reader(server, env, "alice")
    try:
        await subscribe_tree(carol, "projects", "", [{"table": "issues", "include": ISSUES_AND_COMMENTS}])
        assert ids(carol, "projects") == {"p1", "p2"}
        assert ids(carol, "issues") == set() and ids(carol, "comments") == set()
        # alice may read no project (not its owner, not an admin): nothing hangs from nothing
        await subscribe_tree(alice, "projects", "", [{"table": "issues", "include": ISSUES_AND_COMMENTS}])
        assert ids(alice, "projects") == set() and ids(alice, "issues") == set()
        # alice reads p1's open issues and their comments, as a direct subscription would
        await subscribe_tree(alice, "issues", "", ISSUES_AND_COMMENTS)
        assert ids(alice, "issues") == {"i1", "i4"} and ids(alice, "comments") == {"c1"}
        # an issue leaving her grant takes its comments with it
        env.sql("UPDATE issues SET status = 'archived' WHERE id = 'i1'")
        await alice.wait_for(lambda: ids(alice, "issues") == {"i4"} and ids(alice, "comments") == set())
    finally:
        await carol.close()
        await alice.close()


async def test_a_role_change_reassesses_trees_live(server: Server, env: Env) -> None:
    mallory = await reader(server, env, "mallory")
    try:
        await subscribe_tree(mallory, "issues", "", ISSUES_AND_COMMENTS)
        assert ids(mallory, "issues") == set()
        env.sql("INSERT INTO memberships VALUES ('m7', 'p1', 'mallory', true)")
        await mallory.wait_for(lambda: ids(mallory, "issues") == {"i1", "i4"} and ids(mallory, "comments") == {"c1"})
        env.sql("INSERT INTO comments VALUES ('c2', 'i4', 'new')")
        await mallory.wait_for(lambda: ids(mallory, "comments") == {"c1", "c2"})
        env.sql("UPDATE memberships SET active = false WHERE id = 'm7'")
        await mallory.wait_for(lambda: ids(mallory, "issues") == set() and ids(mallory, "comments") == set())
    finally:
        await mallory.close()


HIDDEN = """
version: 1
auth:
  mode: secure
  jwt: {alg: HS256, key: test-secret-test-secret-test-secret}
tables: [users, projects, issues, comments]
adhoc_shapes: allow
grants:
  - privileges: [select]
    on: projects
    to: authenticated
  - privileges: [select]
    on: issues
    to: authenticated
    where: "title <> 'secret'"
  - privileges: [select]
    on: comments
    to: authenticated
    columns: [id, issue_id, author_id]
  - privileges: [select]
    on: users
    to: authenticated
    columns: [id]
"""


async def test_hidden_rows_and_columns_stay_hidden_at_every_level(db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(TREE_SCHEMA)
        conn.execute("""
            INSERT INTO users VALUES ('u1', 'ann'), ('u2', 'bob');
            INSERT INTO projects VALUES ('p1', 'u1', 'active');
            INSERT INTO issues VALUES ('i1', 'p1', 'open'), ('i2', 'p1', 'secret');
            INSERT INTO comments VALUES ('c1', 'i1', 'u1', 'visible row'), ('c2', 'i2', 'u2', 'under a secret');
        """)
    env = applied_env(db_url, tmp_path, HIDDEN)
    async with running_server(env) as srv:
        cl = await reader(srv, env, "u1")
        try:
            tree = [
                {
                    "table": "issues",
                    "include": [{"table": "comments", "include": [{"table": "users", "fk": ["author_id"]}]}],
                }
            ]
            await subscribe_tree(cl, "projects", "", tree)
            assert ids(cl, "issues") == {"i1"}  # the secret issue, and all under it, never arrive
            assert ids(cl, "comments") == {"c1"} and ids(cl, "users") == {"u1"}
            assert cl.table("comments")[(b"c1",)] == {"id": b"c1", "issue_id": b"i1", "author_id": b"u1"}
            assert cl.table("users")[(b"u1",)] == {"id": b"u1"}
            env.sql("UPDATE issues SET title = 'open now' WHERE id = 'i2'")  # enters the grant: its subtree follows
            await cl.wait_for(lambda: ids(cl, "comments") == {"c1", "c2"} and ids(cl, "users") == {"u1", "u2"})
            assert cl.table("comments")[(b"c2",)] == {"id": b"c2", "issue_id": b"i2", "author_id": b"u2"}
        finally:
            await cl.close()
