"""Permissions through the HTTP Shape API and POST /v1/transactions match the Satellite path's: a
client never reads or writes past its grants through this door either."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from electricctl._server.app import Server
from tests.server_fixtures import Env

Reply = tuple[int, dict[str, str], Any]


def _call(url: str, token: str | None, body: object = None) -> Reply:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=40) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read() or b"null")


class HttpClient:
    """A bare HTTP shape client (what the npm client does, without its parsing): follows one shape."""

    def __init__(self, server: Server, env: Env, user: str, **params: str) -> None:
        self.base = f"http://127.0.0.1:{server.bound_port}"
        self.token = env.token(user)
        self.params = params
        self.rows: dict[str, dict[str, Any]] = {}
        self.handle = ""
        self.offset = "-1"
        self.txids: list[int] = []
        self.headers: dict[str, str] = {}

    async def get(self, live: bool = False, **extra: str) -> Reply:
        query = {**self.params, "offset": self.offset, **extra}
        if self.offset != "-1":
            query["handle"] = self.handle
        if live:
            query.update(live="true", cursor="")
        url = f"{self.base}/v1/shape?{urllib.parse.urlencode(query)}"
        return await asyncio.to_thread(_call, url, self.token)

    async def sync(self, live: bool = False) -> list[dict[str, Any]]:
        """One request: its messages applied to ``rows``."""
        status, headers, body = await self.get(live)
        assert status == 200, (status, body)
        self.headers = headers
        self.handle, self.offset = headers["electric-handle"], headers["electric-offset"]
        for m in body:
            op = m["headers"].get("operation")
            if op == "insert":
                self.rows[m["key"]] = dict(m["value"])
            elif op == "update":
                self.rows[m["key"]].update(m["value"])
            elif op == "delete":
                self.rows.pop(m["key"], None)
            self.txids.extend(m["headers"].get("txids", []))
        return list(body)

    async def until(self, predicate: Any, tries: int = 20) -> None:
        for _ in range(tries):
            if predicate():
                return
            await self.sync(live=True)
        raise AssertionError(f"never reached: rows {self.rows}")

    def ids(self) -> set[str]:
        return {v["id"] for v in self.rows.values()}

    async def write(self, *mutations: dict[str, Any]) -> Reply:
        return await asyncio.to_thread(
            _call, f"{self.base}/v1/transactions", self.token, {"mutations": list(mutations)}
        )


async def started(server: Server, env: Env, user: str, **params: str) -> HttpClient:
    cl = HttpClient(server, env, user, **params)
    await cl.sync()  # the snapshot
    await cl.sync()  # up to date
    return cl


async def test_rows_and_columns_follow_the_grants_live(server: Server, env: Env) -> None:
    alice = await started(server, env, "alice", table="issues")
    mallory = await started(server, env, "mallory", table="issues")
    assert alice.ids() == {"i1", "i4"} and mallory.ids() == set()
    env.sql("INSERT INTO issues VALUES ('i5', 'p1', 'new', 'open'), ('i6', 'p2', 'other', 'open')")
    await alice.until(lambda: "i5" in alice.ids())
    env.sql("UPDATE issues SET status = 'archived' WHERE id = 'i1'")  # leaves the grant's rows
    await alice.until(lambda: "i1" not in alice.ids())
    # mallory joins p2: its readable issues arrive, live (a role change reassessed)
    env.sql("INSERT INTO memberships VALUES ('m7', 'p2', 'mallory', true)")
    await mallory.until(lambda: mallory.ids() == {"i2", "i6"})
    assert alice.ids() == {"i4", "i5"}
    # columns: alice may read users.id and users.name of her own row, never email
    users = await started(server, env, "alice", table="users")
    assert list(users.rows.values()) == [{"id": "alice", "name": "Alice"}]
    _, headers, _ = await users.get()
    schema = json.loads(headers["electric-schema"])
    assert set(schema) == {"id", "name"}
    # the responses are hers alone: never kept by a shared cache
    assert headers["cache-control"].startswith("private") and "Authorization" in headers["vary"]


async def test_a_where_clause_cannot_read_past_the_grants(server: Server, env: Env) -> None:
    alice = HttpClient(server, env, "alice", table="users", where="email LIKE $1")
    alice.params["params[1]"] = "a%"
    status, _, body = await alice.get()
    assert status == 400
    assert "column 'email' is not readable" in body["errors"]["where"][0]
    # and the grant's own filter holds whatever the clause asks for
    wide = await started(server, env, "alice", table="issues", where="status <> $1 OR true", **{"params[1]": "x"})
    assert wide.ids() == {"i1", "i4"}


async def test_writes_are_checked_against_the_grants_and_their_txid_streams(server: Server, env: Env) -> None:
    alice = await started(server, env, "alice", table="issues")
    status, _, body = await alice.write(
        {
            "type": "insert",
            "table": "issues",
            "modified": {"id": "x1", "project_id": "p1", "title": "ok", "status": "open"},
        }
    )
    assert status == 200 and isinstance(body["txid"], int)
    await alice.until(lambda: body["txid"] in alice.txids and "x1" in alice.ids())
    # a project she is not a member of: refused whole, naming the table and operation
    status, _, denied = await alice.write(
        {
            "type": "insert",
            "table": "issues",
            "modified": {"id": "x2", "project_id": "p1", "title": "ok", "status": "open"},
        },
        {
            "type": "insert",
            "table": "issues",
            "modified": {"id": "x3", "project_id": "p2", "title": "no", "status": "open"},
        },
    )
    assert status == 403, denied
    assert denied["table"] == "public.issues" and denied["operation"] == "insert"
    assert env.sql("SELECT id FROM issues WHERE id IN ('x2', 'x3')") == []  # nothing of it applied
    # an update and a delete she may make
    status, _, _ = await alice.write(
        {
            "type": "update",
            "table": "issues",
            "modified": {"id": "x1", "title": "edited"},
            "original": {"id": "x1", "title": "ok"},
        }
    )
    assert status == 200 and env.sql("SELECT title FROM issues WHERE id = 'x1'") == [("edited",)]
    status, _, _ = await alice.write({"type": "delete", "table": "issues", "original": {"id": "x1"}})
    assert status == 200 and env.sql("SELECT count(*) FROM issues WHERE id = 'x1'") == [(0,)]
    # no token, or a bad one: 401
    assert (await asyncio.to_thread(_call, f"{alice.base}/v1/transactions", None, {"mutations": []}))[0] == 401
    assert (await asyncio.to_thread(_call, f"{alice.base}/v1/shape?table=issues&offset=-1", "junk"))[0] == 401


async def test_a_shared_cache_never_gives_one_users_rows_to_another(server: Server, env: Env) -> None:
    """Two users, one URL, an RFC 9111 shared cache between them and serve: each gets their own rows."""
    from tests.http_cache import SharedCache

    cache = SharedCache()
    url = f"http://127.0.0.1:{server.bound_port}/v1/shape?table=issues&offset=-1"
    seen = {}
    for user in ("alice", "bob", "alice", "bob"):
        status, headers, body, hit = await asyncio.to_thread(
            cache.get, url, {"Authorization": f"Bearer {env.token(user)}"}
        )
        assert status == 200 and not hit, "a response with one user's rows was served from the shared cache"
        assert headers["cache-control"].startswith("private")
        seen[user] = {m["value"]["id"] for m in json.loads(body) if "key" in m}
    assert seen == {"alice": {"i1", "i4"}, "bob": {"i2"}}
    assert cache.hits == 0 and not cache.entries


async def test_a_subset_snapshot_reads_only_what_the_grants_show(server: Server, env: Env) -> None:
    alice = await started(server, env, "alice", table="issues")
    base = f"{alice.base}/v1/shape?table=issues&offset={alice.offset}&handle={alice.handle}"
    status, headers, body = await asyncio.to_thread(
        _call, base + "&subset__where=project_id%20%3D%20%27p2%27%20OR%20true&subset__order_by=id", alice.token
    )
    assert status == 200 and headers["electric-snapshot"] == "true"
    assert [m["value"]["id"] for m in body["data"]] == ["i1", "i4"]  # never p2's, whatever it asks
    users = await started(server, env, "alice", table="users")
    ubase = f"{users.base}/v1/shape?table=users&offset={users.offset}&handle={users.handle}"
    for query, field in (
        ("subset__where=email%20%3D%20%27x%27", "subset__where"),
        ("subset__order_by=email", "subset__order_by"),
    ):
        status, _, body = await asyncio.to_thread(_call, f"{ubase}&{query}", users.token)
        assert status == 400 and "not readable" in body["errors"][field][0], body
