"""``GET /api/migrations`` and ``/api/status`` on a running server, read back as the legacy
generator reads them (../shared/reference/electric-legacy.md §5 and §9)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import urllib.error
import urllib.request
import zipfile

from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.app import Server
from tests.server_fixtures import Env


def get(srv: Server, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.bound_port}{path}", timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


async def fetch(srv: Server, path: str) -> tuple[int, str, bytes]:
    return await asyncio.to_thread(get, srv, path)


def read_zip(data: bytes) -> dict[str, tuple[str, dict[str, object], list[pb.SatOpMigrate]]]:
    out = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        versions = sorted({name.split("/", 1)[0] for name in zf.namelist()})
        assert sorted(zf.namelist()) == sorted(f"{v}/{f}" for v in versions for f in ("metadata.json", "migration.sql"))
        for v in versions:
            meta = json.loads(zf.read(f"{v}/metadata.json"))
            ops = [pb.SatOpMigrate.FromString(base64.b64decode(o)) for o in meta["ops"]]
            out[v] = (zf.read(f"{v}/migration.sql").decode(), meta, ops)
    return out


async def test_migrations_zip_in_both_dialects_and_after_a_version(server: Server, env: Env) -> None:
    status, ctype, data = await fetch(server, "/api/migrations?dialect=sqlite")
    assert status == 200 and ctype == "application/zip"
    baseline = read_zip(data)
    ((version, (sql, meta, ops)),) = baseline.items()  # the first apply: one version for every table
    assert set(meta) == {"format", "ops", "protocol_version", "version"}
    assert (meta["format"], meta["protocol_version"], meta["version"]) == (
        "SatOpMigrate",
        "Electric.Satellite",
        version,
    )
    assert {op.table.name for op in ops} >= {"items", "parents", "children"}
    assert all(op.version == version and op.stmts[0].type == pb.SatOpMigrate.CREATE_TABLE for op in ops)
    assert 'CREATE TABLE "items" (' in sql and "WITHOUT ROWID" in sql

    env.sql("ALTER TABLE items ADD COLUMN qty int4")
    status, _, data = await fetch(server, f"/api/migrations?dialect=sqlite&version={version}")
    assert status == 200
    ((added_version, (sql, meta, ops)),) = read_zip(data).items()
    assert added_version > version
    assert sql == 'ALTER TABLE "items" ADD COLUMN "qty" INTEGER;\n'
    (op,) = ops
    assert op.stmts[0].type == pb.SatOpMigrate.ALTER_ADD_COLUMN
    assert [c.name for c in op.table.columns][-1] == "qty" and list(op.table.pks) == ["id"]  # the whole table

    status, _, data = await fetch(server, f"/api/migrations?dialect=postgresql&version={version}")
    assert status == 200 and read_zip(data)[added_version][0] == 'ALTER TABLE "items" ADD COLUMN "qty" integer;\n'
    # nothing after the newest: 204, the other answer the generator accepts
    assert (await fetch(server, f"/api/migrations?dialect=sqlite&version={added_version}"))[:1] == (204,)


async def test_bad_requests_say_what_is_wrong_and_status_answers(server: Server) -> None:
    status, _, body = await fetch(server, "/api/migrations?dialect=mysql")
    assert status == 400 and b"dialect must be one of sqlite, postgresql" in body
    status, _, body = await fetch(server, "/api/migrations?dialect=sqlite&version=1%27%20OR%201=1")
    assert status == 400 and b"version must be digits and underscores" in body
    status, _, body = await fetch(server, "/api/status")
    assert status == 200 and json.loads(body)["status"] == "ok"


async def test_a_client_with_a_schema_newer_than_the_servers_is_refused(server: Server, env: Env) -> None:
    """Issue 12: a client on a newer schema than the server has seen (a database restored from an
    older backup) is refused at startReplication with a clear error; an older or equal one is not."""
    from tests.satellite_client import SatelliteClient
    from tests.server_fixtures import ws_url

    (newest,) = env.sql("SELECT max(version) FROM electric.migrations")[0]
    for version, refused in (("99991231235959999", True), (newest, False), ("1", False)):
        cl = await SatelliteClient(ws_url(server)).connect()
        try:
            await cl.authenticate(env.token())
            resp = await cl.start(schema_version=version)
            assert resp.HasField("err") is refused, version
            if refused:
                assert resp.err.code == pb.SatInStartReplicationResp.ReplicationError.UNKNOWN_SCHEMA_VSN
                assert f"newer than any migration this server has ({newest})" in resp.err.message
        finally:
            await cl.close()
