"""The npm client's ``db.projects.sync({where, include})`` (electric-sql@0.12.1, electrify() over
better-sqlite3) against include trees: a project with its issues, their comments and the comments'
authors, synced in one go and kept live as rows move in and out."""

from __future__ import annotations

import asyncio
import json

import pytest

from electricctl._server.app import Server
from tests.compat.conftest import Driver
from tests.server.test_include_trees import tree_env, tree_server  # noqa: F401  (fixtures)
from tests.server_fixtures import Env, ws_url

pytestmark = pytest.mark.asyncio

TEXT = ["TEXT", "text", "TEXT"]
TABLES = {
    "users": [["id", *TEXT], ["name", *TEXT]],
    "projects": [["id", *TEXT], ["owner_id", *TEXT], ["status", *TEXT]],
    "issues": [["id", *TEXT], ["project_id", *TEXT], ["title", *TEXT]],
    "comments": [["id", *TEXT], ["issue_id", *TEXT], ["author_id", *TEXT], ["body", *TEXT]],
}
# what `electric-sql generate` describes: [relation field, from field, to field, related table, relation name]
RELATIONS = {
    "users": [["projects", "", "", "projects", "ProjectToUser"], ["comments", "", "", "comments", "CommentToUser"]],
    "projects": [["owner", "owner_id", "id", "users", "ProjectToUser"], ["issues", "", "", "issues", "IssueToProject"]],
    "issues": [
        ["project", "project_id", "id", "projects", "IssueToProject"],
        ["comments", "", "", "comments", "CommentToIssue"],
    ],
    "comments": [
        ["issue", "issue_id", "id", "issues", "CommentToIssue"],
        ["author", "author_id", "id", "users", "CommentToUser"],
    ],
}


async def test_the_npm_client_syncs_a_four_level_tree_and_its_moves(
    tree_server: Server,  # noqa: F811
    tree_env: Env,  # noqa: F811
    drivers: list[Driver],
) -> None:
    env = tree_env
    url = ws_url(tree_server).replace("ws://", "http://").removesuffix("/ws")
    d = await asyncio.to_thread(Driver, url, env.token(), tables=json.dumps(TABLES), relations=json.dumps(RELATIONS))
    drivers.append(d)

    def ids(table: str) -> set[str]:
        return {r["id"] for r in d.rows(table)}

    async def until(table: str, want: set[str]) -> None:
        await asyncio.to_thread(d.wait_rows, table, lambda rs: {r["id"] for r in rs} == want)

    include = {"issues": {"include": {"comments": {"include": {"author": True}}}}}
    await asyncio.to_thread(d.call, "sync", table="projects", where={"status": "active"}, include=include)
    assert ids("projects") == {"p1", "p3"} and ids("issues") == {"i1", "i2", "i4"}
    assert ids("comments") == {"c1", "c2", "c4"} and ids("users") == {"u2", "u3"}

    env.sql("INSERT INTO comments VALUES ('c5', 'i2', 'u4', 'new')")  # a child of a held row, with its author
    await until("comments", {"c1", "c2", "c4", "c5"})
    await until("users", {"u2", "u3", "u4"})
    env.sql("UPDATE issues SET project_id = 'p2' WHERE id = 'i1'")  # out, with c1, c2 and u2
    await until("comments", {"c4", "c5"})
    await until("users", {"u3", "u4"})
    env.sql("UPDATE projects SET status = 'active' WHERE id = 'p2'")  # p2 in, with i1, i3 and theirs
    await until("issues", {"i1", "i2", "i3", "i4"})
    await until("comments", {"c1", "c2", "c3", "c4", "c5"})
    await until("users", {"u2", "u3", "u4"})
    env.sql("UPDATE projects SET status = 'archived' WHERE id = 'p2'")  # and out again
    await until("projects", {"p1", "p3"})
    await until("comments", {"c4", "c5"})
    await until("users", {"u3", "u4"})
