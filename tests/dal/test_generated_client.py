"""The generated typed client, end to end: `electricctl generate` over a real database, the package
checked by mypy --strict and ruff, then imported and used against a real serve: sync with an
include tree, typed reads, writes that reach Postgres, remote changes through live queries."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import importlib
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from electricctl._server.app import Server
from electricctl.errors import UniqueViolation
from tests.client.test_sync_client import until
from tests.server_fixtures import Env, applied_env, running_server, ws_url

pytestmark = pytest.mark.asyncio

SCHEMA = """
CREATE TYPE status AS ENUM ('active', 'archived');
CREATE TABLE users (id uuid PRIMARY KEY, name text NOT NULL);
CREATE TABLE projects (
    id uuid PRIMARY KEY,
    owner_id uuid REFERENCES users (id),
    name text NOT NULL,
    status status NOT NULL DEFAULT 'active',
    budget numeric,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE issues (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    title text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    tags text[],
    meta jsonb,
    due date,
    n int4,
    score float8
);
"""

CONFIG = """
version: 1
auth:
  mode: secure
  jwt: {alg: HS256, key: test-secret-test-secret-test-secret}
tables: [users, projects, issues]
adhoc_shapes: allow
shapes:
  - name: active_projects
    table: projects
    where: "status = 'active'"
    include:
      - table: issues
"""

U1, P1, P2 = uuid.UUID(int=1), uuid.UUID(int=101), uuid.UUID(int=102)
I1, I2, I3 = uuid.UUID(int=201), uuid.UUID(int=202), uuid.UUID(int=203)


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Env:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("INSERT INTO users VALUES (%s, 'ann')", [U1])
        conn.execute(
            "INSERT INTO projects VALUES (%s, %s, 'alpha', 'active', 12.50, '2026-11-30 10:00:00+00'),"
            " (%s, NULL, 'beta', 'archived', NULL, '2026-11-30 11:00:00+00')",
            [P1, U1, P2],
        )
        conn.execute(
            "INSERT INTO issues VALUES (%s, %s, 'one', false, '{a,b}', '{\"k\": 1}', '2026-12-01', 3, 1.5),"
            " (%s, %s, 'two', true, NULL, NULL, NULL, NULL, NULL),"
            " (%s, %s, 'three', false, NULL, NULL, NULL, NULL, NULL)",
            [I1, P1, I2, P1, I3, P2],
        )
    return applied_env(db_url, tmp_path, CONFIG)


def generate(env: Env, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "electricctl", "generate", "-f", str(env.config_path), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env={"DATABASE_URL": env.url, "PATH": "/usr/bin:/bin"},
    )


@pytest_asyncio.fixture
async def package(env: Env, tmp_path: Path) -> AsyncIterator[ModuleType]:
    name = f"appdb_{uuid.uuid4().hex[:8]}"
    out = tmp_path / "gen" / name
    done = generate(env, out)
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(out.parent))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(out.parent))
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[mod]


async def test_generate_writes_a_package_that_mypy_strict_and_ruff_accept_and_is_deterministic(
    env: Env, tmp_path: Path
) -> None:
    out = tmp_path / "appdb"
    first = generate(env, out)
    assert first.returncode == 0, first.stderr
    assert "3 tables at schema version" in first.stdout
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"__init__.py", "models.py", "schema.py", "database.py", "py.typed"}
    again = generate(env, out)
    assert again.returncode == 0 and "is up to date" in again.stdout, again.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the same bytes
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert mypy.returncode == 0, mypy.stdout
    ruff = Path(sys.executable).parent / "ruff"
    lint = subprocess.run([ruff, "check", "--isolated", str(out)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run([ruff, "format", "--isolated", "--check", str(out)], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout
    models = (out / "models.py").read_text()
    assert 'Status = Literal["active", "archived"]' in models
    assert "class Project:" in models and "budget: decimal.Decimal | None" in models
    assert "created_at: datetime.datetime" in models and "tags: list[str | None] | None" in models
    # create types fill in the defaults a client can compute; the others stay required
    assert "    created_at: datetime.datetime = field(default_factory=now_utc)\n" in models
    assert '    status: Status = "active"\n' in models and "    done: bool = False\n" in models
    assert "    id: uuid.UUID = field(default_factory=uuid.uuid4)\n" in models
    # a migration: run again, and the package follows
    env.sql("ALTER TABLE issues ADD COLUMN estimate int4")
    third = generate(env, out)
    assert third.returncode == 0 and "models.py" in third.stdout, third.stdout
    assert "estimate: int | None" in (out / "models.py").read_text()


async def test_generate_says_what_is_wrong(env: Env, tmp_path: Path, db_url: str) -> None:
    bad = generate(env, tmp_path / "x", "--database-url", "postgresql://nobody@127.0.0.1:1/none")
    assert bad.returncode == 1 and "cannot read the schema from the database" in bad.stderr, bad.stderr
    service = generate(env, tmp_path / "y", "--service", "http://127.0.0.1:1")
    assert service.returncode == 1 and "cannot reach http://127.0.0.1:1/api/migrations" in service.stderr


async def test_the_whole_flow_against_a_real_serve(env: Env, package: Any, tmp_path: Path) -> None:
    db_mod = package
    async with running_server(env) as srv:
        db = await db_mod.electrify(str(tmp_path / "app.db"), ws_url(srv), token=env.token())
        try:
            await flow(db_mod, db, env, srv)
        finally:
            await db.close()


async def flow(pkg: Any, db: Any, env: Env, srv: Server) -> None:
    # before any sync the tables are there (the bundled migrations), empty
    assert await db.projects.find_many() == []
    shape = await db.projects.sync(where={"status": "active"}, include={"issues": True})
    await shape.synced
    (alpha,) = await db.projects.find_many()
    assert alpha == pkg.Project(
        id=P1,
        owner_id=U1,
        name="alpha",
        status="active",
        budget=decimal.Decimal("12.50"),
        created_at=dt.datetime(2026, 11, 30, 10, tzinfo=dt.UTC),
    )
    # a filter on a synced timestamp matches: values are written as the server sends them
    at = dt.datetime(2026, 11, 30, 10, tzinfo=dt.UTC)
    assert await db.projects.find_many(where={"created_at": at}) == [alpha]
    env.sql("UPDATE projects SET created_at = '2026-11-30 10:00:00.25+00' WHERE id = %s", [P1])
    later = at.replace(microsecond=250000)
    await until_async(db, lambda rows: rows and rows[0].created_at == later)
    assert [p.id for p in await db.projects.find_many(where={"created_at": {"eq": later}})] == [P1]
    issues = await db.issues.find_many(order_by={"title": "asc"})
    assert [i.title for i in issues] == ["one", "two"]  # i3 is under the archived project
    one = issues[0]
    assert one.tags == ["a", "b"] and one.meta == {"k": 1} and one.due == dt.date(2026, 12, 1)
    assert one.n == 3 and one.score == 1.5 and one.done is False
    # typed filters
    assert [i.id for i in await db.issues.find_many(where={"done": True})] == [I2]
    assert await db.issues.count(where={"OR": [{"n": {"gte": 3}}, {"title": {"like": "t%"}}]}) == 2
    assert await db.issues.find_many(where={"meta": {"is_null": True}, "NOT": {"done": True}}) == []

    # a live query: the current result, then a new one on each real change
    results: list[list[str]] = []
    live = db.issues.live_many(where={"done": False}, order_by={"title": "asc"})

    async def watch() -> None:
        async for rows in live:
            results.append([r.title for r in rows])

    watcher = asyncio.create_task(watch())
    try:
        await until(lambda: results == [["one"]], what="the live query's first result")
        # a local write goes to Postgres
        new_id = uuid.uuid4()
        created = await db.issues.create(
            pkg.IssueCreate(id=new_id, project_id=P1, title="local", done=False, tags=["x", None], meta=[1, "two"])
        )
        assert created.tags == ["x", None] and created.meta == [1, "two"]
        await until(lambda: results[-1] == ["local", "one"], what="the local write in the live result")
        await until_pg(
            env, "SELECT title, tags, meta FROM issues WHERE id = %s", [new_id], [("local", ["x", None], [1, "two"])]
        )
        # a remote write arrives through the live query
        env.sql("INSERT INTO issues (id, project_id, title) VALUES (%s, %s, 'remote')", [uuid.uuid4(), P1])
        await until(lambda: results[-1] == ["local", "one", "remote"], what="the remote write in the live result")
        # a write by another connection to the file (another process of the app): seen too
        other = sqlite3.connect(db.client.path)
        with other:
            other.execute(
                "INSERT INTO issues (id, project_id, title, done) VALUES (?, ?, 'elsewhere', 0)",
                [str(uuid.uuid4()), str(P1)],
            )
        other.close()
        await until(lambda: results[-1] == ["elsewhere", "local", "one", "remote"], what="another connection's write")
        await until_pg(env, "SELECT count(*) FROM issues WHERE title = 'elsewhere'", [], [(1,)])
        # an update through the client: to Postgres, and out of the live result
        assert await db.issues.update(where={"id": new_id}, data={"done": True}) == 1
        await until(lambda: results[-1] == ["elsewhere", "one", "remote"], what="the update in the live result")
        await until_pg(env, "SELECT done FROM issues WHERE id = %s", [new_id], [(True,)])
        # a write that does not change the result, and one to another table: no new result
        count = len(results)
        env.sql("UPDATE issues SET n = 4 WHERE id = %s", [I2])  # done: outside the live query
        env.sql("UPDATE projects SET name = 'alpha2' WHERE id = %s", [P1])
        await until_async(db, lambda rows: rows and rows[0].name == "alpha2")
        assert len(results) == count
        # the defaults Postgres would fill in, filled in by the client (the write carries every column)
        made = await db.issues.create(pkg.IssueCreate(project_id=P1, title="defaults"))
        assert isinstance(made.id, uuid.UUID) and made.done is False
        await until_pg(env, "SELECT done FROM issues WHERE id = %s", [made.id], [(False,)])
        # constraint errors are typed
        with pytest.raises(UniqueViolation) as info:
            await db.issues.create(pkg.IssueCreate(id=I1, project_id=P1, title="dup", done=False))
        assert info.value.table == "issues" and info.value.columns == ("id",)
        # raw SQL stays available
        assert await db.raw("SELECT count(*) FROM issues WHERE done = ?", [1]) == [(2,)]
        assert await db.issues.delete(where={"id": new_id}) == 1
        await until_pg(env, "SELECT count(*) FROM issues WHERE id = %s", [new_id], [(0,)])
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        live.close()
    # a uuid in a sync filter (sent to the server as a literal of the where clause)
    users = await db.users.sync(where={"id": {"in": [U1, uuid.UUID(int=9)]}, "name": {"like": "a%"}})
    await users.synced
    assert await db.users.find_many() == [pkg.User(id=U1, name="ann")]
    # a declared shape by name
    archived = await db.sync_shape("active_projects")
    await archived.synced


async def until_async(db: Any, predicate: Any, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate(await db.projects.find_many()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting for the project's new name")
        await asyncio.sleep(0.02)


async def until_pg(env: Env, sql: str, params: list[Any], want: list[tuple[Any, ...]], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (got := env.sql(sql, params)) != want:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"Postgres has {got}, expected {want}")
        await asyncio.sleep(0.05)


async def test_generate_from_a_running_service(env: Env, tmp_path: Path) -> None:
    """The schema from a service's /api/migrations: NOT NULL from the Postgres dialect's DDL, foreign
    keys both ways; enum labels are not in the protocol, so enum columns are str."""
    async with running_server(env) as srv:
        out = tmp_path / "fromservice"
        done = await asyncio.to_thread(generate, env, out, "--service", ws_url(srv))
    assert done.returncode == 0, done.stderr
    models = (out / "models.py").read_text()
    assert "class Project:" in models and "    name: str\n" in models and "    status: str\n" in models
    assert "    owner_id: uuid.UUID | None\n" in models and "    created_at: datetime.datetime\n" in models
    assert "class ProjectInclude(TypedDict, total=False):" in models
    assert "    issues: bool | IssueIncludeArgs\n" in models and "    users: bool | UserIncludeArgs\n" in models
    schema = (out / "schema.py").read_text()
    assert '"active_projects"' in schema  # the declared shapes, from the file given with -f


def has(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


async def test_generate_watch_follows_migrations_and_the_config_file(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "watched"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "electricctl",
        "generate",
        "-f",
        str(env.config_path),
        "--out",
        str(out),
        "--watch",
        "--interval",
        "0.2s",
        env={"DATABASE_URL": env.url, "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await until(lambda: has(out / "models.py", "class Issue:"), 30, what="the regenerated package")
        env.sql("ALTER TABLE issues ADD COLUMN estimate int4")  # a migration: picked up at the next look
        await until(lambda: has(out / "models.py", "    estimate: int | None\n"), 30, what="the regenerated package")
        text = env.config_path.read_text().replace("shapes:\n", "shapes:\n  - name: everyone\n    table: users\n")
        env.config_path.write_text(text)  # the config file: watched
        await until(lambda: has(out / "database.py", '"everyone"'), 30, what="the regenerated package")
    finally:
        proc.terminate()
        out_text = (await proc.communicate())[0].decode()
    assert "watching" in out_text and "wrote" in out_text, out_text
