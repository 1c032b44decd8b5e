"""Permissions on the read path: a client receives only the rows and columns its grants show."""

from __future__ import annotations

from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from tests.satellite_client import SatelliteClient
from tests.server_fixtures import Env, subs_req, ws_url


async def reader(server: Server, env: Env, user: str, *tables: str) -> SatelliteClient:
    cl = SatelliteClient(ws_url(server))
    await cl.connect()
    await cl.authenticate(env.token(user))
    await cl.start()
    for t in tables:
        await cl.subscribe(t)
    return cl


def ids(cl: SatelliteClient, table: str) -> set[str]:
    return {str(k[0], "utf-8") for k in cl.table(table)}


async def test_scoped_rows_and_live_moves(server: Server, env: Env) -> None:
    alice = await reader(server, env, "alice", "issues")
    mallory = await reader(server, env, "mallory", "issues")
    try:
        # members of p1 see p1's issues that are not archived; nobody else sees anything
        assert ids(alice, "issues") == {"i1", "i4"}
        assert ids(mallory, "issues") == set()
        env.sql("INSERT INTO issues VALUES ('i5', 'p1', 'new', 'open'), ('i6', 'p2', 'other', 'open')")
        await alice.wait_for(lambda: "i5" in ids(alice, "issues"))
        env.sql("UPDATE issues SET status = 'archived' WHERE id = 'i1'")  # leaves the grant's rows
        await alice.wait_for(lambda: "i1" not in ids(alice, "issues"))
        env.sql("UPDATE issues SET project_id = 'p1' WHERE id = 'i6'")  # moves into alice's scope
        await alice.wait_for(lambda: "i6" in ids(alice, "issues"))
        assert ids(alice, "issues") == {"i4", "i5", "i6"}
        assert ids(mallory, "issues") == set()
    finally:
        await alice.close()
        await mallory.close()


async def test_a_where_clause_cannot_widen_a_shape(server: Server, env: Env) -> None:
    alice = SatelliteClient(ws_url(server))
    await alice.connect()
    await alice.authenticate(env.token("alice"))
    await alice.start()
    try:
        req = pb.SatSubsReq(
            subscription_id="6d8f7c1e-0000-4000-8000-000000000001",
            shape_requests=[
                pb.SatShapeReq(
                    request_id="r",
                    shape_definition=pb.SatShapeDef(
                        selects=[pb.SatShapeDef.Select(tablename="issues", where="this.project_id = 'p2' OR true")]
                    ),
                )
            ],
        )
        await alice.rpc("subscribe", req)
        await alice.wait_for(lambda: "6d8f7c1e-0000-4000-8000-000000000001" in alice.subscriptions_done)
        assert ids(alice, "issues") == {"i1", "i4"}
    finally:
        await alice.close()


async def test_column_grants_hide_columns_and_global_roles(server: Server, env: Env) -> None:
    alice = await reader(server, env, "alice", "users")
    carol = await reader(server, env, "carol", "projects")
    try:
        # alice may read only her own user row, and only its id and name: email never reaches her
        assert ids(alice, "users") == {"alice"}
        (rel,) = [m for m in alice.messages if isinstance(m, pb.SatRelation) and m.table_name == "users"]
        assert [c.name for c in rel.columns] == ["id", "name"]
        assert alice.table("users")[(b"alice",)] == {"id": b"alice", "name": b"Alice"}
        env.sql("UPDATE users SET email = 'new@x.org', name = 'Al' WHERE id = 'alice'")
        await alice.wait_for(lambda: alice.table("users")[(b"alice",)]["name"] == b"Al")
        assert "email" not in alice.table("users")[(b"alice",)]
        # carol is an admin (a global role): every project
        assert ids(carol, "projects") == {"p1", "p2"}
    finally:
        await alice.close()
        await carol.close()


async def test_assignment_changes_take_effect_live(server: Server, env: Env) -> None:
    mallory = await reader(server, env, "mallory", "issues")
    alice = await reader(server, env, "alice", "issues")
    try:
        assert ids(mallory, "issues") == set()
        # mallory becomes a member of p2: p2's readable issues arrive, as if the shape had changed
        env.sql("INSERT INTO memberships VALUES ('m7', 'p2', 'mallory', true)")
        await mallory.wait_for(lambda: ids(mallory, "issues") == {"i2"})
        env.sql("INSERT INTO issues VALUES ('i8', 'p2', 'later', 'open')")  # and new ones follow live
        await mallory.wait_for(lambda: ids(mallory, "issues") == {"i2", "i8"})
        # the membership is deactivated: the rows leave
        env.sql("UPDATE memberships SET active = false WHERE id = 'm7'")
        await mallory.wait_for(lambda: ids(mallory, "issues") == set())
        env.sql("INSERT INTO issues VALUES ('i9', 'p2', 'unseen', 'open')")
        env.sql("UPDATE issues SET title = 'touched' WHERE id = 'i4'")
        await alice.wait_for(lambda: alice.table("issues")[(b"i4",)]["title"] == b"touched")
        assert ids(mallory, "issues") == set()  # nothing of p2 reaches her any more
        assert ids(alice, "issues") == {"i1", "i4"}  # alice was never affected
    finally:
        await mallory.close()
        await alice.close()


async def test_scope_two_foreign_keys_away(server: Server, env: Env) -> None:
    """comments -> issues -> projects: a member reads the comments of its projects' issues, and the
    set follows issues moving between projects."""
    alice = await reader(server, env, "alice", "comments")
    try:
        assert ids(alice, "comments") == {"c1"}  # c1 is on i1, in p1
        env.sql("INSERT INTO comments VALUES ('c2', 'i2', 'on p2')")  # i2 is in p2: not alice's
        env.sql("INSERT INTO issues VALUES ('i7', 'p1', 'fresh', 'open')")
        env.sql("INSERT INTO comments VALUES ('c3', 'i7', 'on a new p1 issue')")
        await alice.wait_for(lambda: ids(alice, "comments") == {"c1", "c3"})
        env.sql("UPDATE issues SET project_id = 'p2' WHERE id = 'i7'")  # its comments leave with it
        await alice.wait_for(lambda: ids(alice, "comments") == {"c1"})
        env.sql("UPDATE issues SET project_id = 'p1' WHERE id = 'i2'")  # and arrive with another
        await alice.wait_for(lambda: ids(alice, "comments") == {"c1", "c2"})
    finally:
        await alice.close()


async def test_a_new_role_widens_rows_and_columns_live(server: Server, env: Env) -> None:
    alice = await reader(server, env, "alice", "users")
    try:
        assert alice.table("users") == {(b"alice",): {"id": b"alice", "name": b"Alice"}}
        env.sql("INSERT INTO admins VALUES ('alice')")  # admins read every user, every column
        await alice.wait_for(lambda: ids(alice, "users") == {"alice", "bob"})
        await alice.wait_for(lambda: alice.table("users")[(b"alice",)].get("email") == b"a@x.org")
        assert alice.table("users")[(b"bob",)]["email"] == b"b@x.org"
        env.sql("DELETE FROM admins WHERE user_id = 'alice'")
        await alice.wait_for(lambda: ids(alice, "users") == {"alice"})
    finally:
        await alice.close()


async def test_grant_conditions_read_token_claims(server: Server, env: Env) -> None:
    """projects: authenticated users read the projects they own (where owner_id = auth.sub)."""
    env.sql("INSERT INTO projects VALUES ('pa', 'alice', 'alice''s'), ('pb', 'bob', 'bob''s')")
    alice = await reader(server, env, "alice", "projects")
    bob = await reader(server, env, "bob", "projects")
    try:
        assert ids(alice, "projects") == {"pa"}
        assert ids(bob, "projects") == {"pb"}
        env.sql("UPDATE projects SET owner_id = 'alice' WHERE id = 'pb'")  # ownership moves
        await alice.wait_for(lambda: ids(alice, "projects") == {"pa", "pb"})
        await bob.wait_for(lambda: ids(bob, "projects") == set())
    finally:
        await alice.close()
        await bob.close()


MIXED = """
version: 1
auth:
  mode: secure
  jwt: {alg: HS256, key: test-secret-test-secret-test-secret}
tables: [users, admins]
adhoc_shapes: allow
assignments:
  - role: admin
    to: admins.user_id
grants:
  - privileges: [select]          # everyone's id and name
    on: users
    to: authenticated
    columns: [id, name]
  - privileges: [select]          # admins also read their own email
    on: users
    to: admin
    columns: [name, email]
    where: "id = auth.sub"
"""


async def test_columns_are_shown_per_row_by_the_grants_showing_it(env: Env) -> None:
    """Two grants show different columns of different rows: a row's column reaches the client only
    if a grant that shows that row shows that column (else it arrives as NULL)."""
    from electricctl._apply import applier
    from electricctl._config.loader import load_text
    from tests.server_fixtures import running_server

    env.sql("INSERT INTO admins VALUES ('alice')")
    env.config_path.write_text(MIXED)
    env.config = load_text(MIXED, str(env.config_path), env={})
    applier.apply(env.config, env.url, prune=True)
    async with running_server(env) as srv:
        alice = await reader(srv, env, "alice", "users")
        try:
            assert alice.table("users") == {
                (b"alice",): {"id": b"alice", "name": b"Alice", "email": b"a@x.org"},
                (b"bob",): {"id": b"bob", "name": b"Bob", "email": None},  # bob's email is not hers to read
            }
            env.sql("UPDATE users SET email = 'b2@x.org', name = 'Bobby' WHERE id = 'bob'")
            await alice.wait_for(lambda: alice.table("users")[(b"bob",)]["name"] == b"Bobby")
            assert alice.table("users")[(b"bob",)]["email"] is None
        finally:
            await alice.close()


async def _subscribe_where(cl: SatelliteClient, table: str, where: str) -> pb.SatSubsResp:
    resp = await cl.rpc("subscribe", subs_req(table, where))
    assert isinstance(resp, pb.SatSubsResp)
    return resp


SHAPE_ERR = pb.SatSubsResp.SatSubsError.ShapeReqError


async def test_a_where_clause_cannot_read_hidden_columns(server: Server, env: Env) -> None:
    """Issue 10, point 8: alice may read users.id and users.name of her own row, not email. A where
    clause on email (directly, or through LIKE, length(), lower()) would tell her the value by
    whether a row comes back, so it is refused, naming the column and its position."""
    alice = await reader(server, env, "alice")
    try:
        for where in (
            "email = 'a@x.org'",
            "email LIKE 'a%'",
            "length(email) > 3",
            "lower(email) = 'a@x.org'",
            "name = 'Alice' AND (email IS NULL OR email IS NOT NULL)",
            "coalesce(email, '') <> ''",
        ):
            resp = await _subscribe_where(alice, "users", where)
            assert resp.HasField("err"), where
            (problem,) = resp.err.shape_request_error
            assert problem.code == SHAPE_ERR.INVALID_WHERE_CLAUSE
            assert "column 'email' is not readable" in problem.message
            assert f"position {where.index('email') + 1}" in problem.message
        assert not alice.table("users")
        # columns she may read are fine
        resp = await _subscribe_where(alice, "users", "name = 'Alice'")
        assert not resp.HasField("err")
        await alice.wait_for(lambda: ids(alice, "users") == {"alice"})
    finally:
        await alice.close()


async def test_a_where_clause_may_use_only_columns_readable_in_every_row(env: Env) -> None:
    """With per-row columns (an admin reads her own email, not others'), email is readable in
    some rows only: filtering on it would tell bob's email. Refused; name is fine."""
    from electricctl._apply import applier
    from electricctl._config.loader import load_text
    from tests.server_fixtures import running_server

    env.sql("INSERT INTO admins VALUES ('alice')")
    env.config_path.write_text(MIXED)
    env.config = load_text(MIXED, str(env.config_path), env={})
    applier.apply(env.config, env.url, prune=True)
    async with running_server(env) as srv:
        alice = await reader(srv, env, "alice")
        try:
            resp = await _subscribe_where(alice, "users", "email = 'b@x.org'")
            assert resp.HasField("err")
            assert "column 'email' is not readable" in resp.err.shape_request_error[0].message
            resp = await _subscribe_where(alice, "users", "name = 'Bob'")
            assert not resp.HasField("err")
            await alice.wait_for(lambda: ids(alice, "users") == {"bob"})
        finally:
            await alice.close()
