"""Include trees against Postgres as the oracle: random trees (depth 1 to 4, following foreign keys
both ways, with where clauses) and random writes (inserts, value changes, reparenting, deletes with
their cascades). After each step the client's rows equal what the tree's SQL query selects now.

The oracle query is built here, level by level with nested ``IN`` subqueries, independently of the
engine's (which keeps state and loads levels with arrays of joining values).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from electricctl._protocol import satellite_pb2 as pb
from tests.conftest import Server as PgServer
from tests.conftest import fresh_database
from tests.satellite_client import SatelliteClient
from tests.server_fixtures import Env, ServeProcess, applied_env

EXAMPLES = int(os.environ.get("ELECTRICCTL_TREE_EXAMPLES", "12"))
SEEDED = os.environ.get("ELECTRICCTL_ORACLE_RANDOM") is None
IDS = range(1, 6)

SCHEMA = """
CREATE TABLE a (id int PRIMARY KEY, v int);
CREATE TABLE d (id int PRIMARY KEY, v int);
CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a(id) ON DELETE CASCADE, v int);
CREATE TABLE c (
    id int PRIMARY KEY,
    b_id int REFERENCES b(id) ON DELETE SET NULL,
    d_id int REFERENCES d(id) ON DELETE CASCADE,
    v int
);
"""
CONFIG = """
version: 1
auth:
  mode: secure
  jwt: {alg: HS256, key: test-secret-test-secret-test-secret}
tables: [a, b, c, d]
adhoc_shapes: allow
"""
FKS = {"b": {"a_id": "a"}, "c": {"b_id": "b", "d_id": "d"}}
"""table -> its foreign key columns -> the table each references (by id)."""
EDGES: dict[str, list[tuple[str, str, str]]] = {
    # parent -> (child, fk column, direction)
    "a": [("b", "a_id", "one_to_many")],
    "b": [("c", "b_id", "one_to_many"), ("a", "a_id", "many_to_one")],
    "c": [("b", "b_id", "many_to_one"), ("d", "d_id", "many_to_one")],
    "d": [("c", "d_id", "one_to_many")],
}


@dataclass
class Level:
    table: str
    fk: str = ""
    direction: str = ""
    where: int | None = None
    """``v < where`` (one-to-many and root levels only)."""
    children: list[Level] = field(default_factory=list)

    def select(self) -> pb.SatShapeDef.Select:
        return pb.SatShapeDef.Select(
            tablename=self.table,
            where="" if self.where is None else f"v < {self.where}",
            include=[pb.SatShapeDef.Relation(foreign_key=[c.fk], select=c.select()) for c in self.children],
        )

    def describe(self) -> str:
        w = "" if self.where is None else f"[v<{self.where}]"
        via = f"({self.fk})" if self.fk else ""
        inner = ", ".join(c.describe() for c in self.children)
        return f"{self.table}{via}{w}" + (f"{{{inner}}}" if inner else "")


@st.composite
def trees(draw: st.DrawFn) -> Level:
    def grow(level: Level, depth: int, back: tuple[str, str] | None) -> None:
        if depth >= 4:
            return
        options = [e for e in EDGES[level.table] if (e[0], e[1]) != back]
        if not options:
            return
        for child, fk, direction in draw(st.lists(st.sampled_from(options), max_size=2, unique=True)):
            where = None if direction == "many_to_one" else draw(st.one_of(st.none(), st.integers(1, 9)))
            node = Level(child, fk, direction, where)
            level.children.append(node)
            grow(node, depth + 1, (level.table, fk))

    root = Level(draw(st.sampled_from(sorted(EDGES))), where=draw(st.one_of(st.none(), st.integers(1, 9))))
    grow(root, 0, None)
    return root


def oracle_query(level: Level, parent: Level | None = None, parent_query: str = "") -> list[tuple[str, str]]:
    """(table, SQL selecting the ids this level holds) for the level and every level under it."""
    cond = "true" if level.where is None else f"v < {level.where}"
    if parent is None:
        query = f"SELECT id FROM {level.table} WHERE {cond}"
    elif level.direction == "one_to_many":
        query = f"SELECT id FROM {level.table} WHERE {cond} AND {level.fk} IN ({parent_query})"
    else:
        query = f"SELECT id FROM {level.table} WHERE id IN (SELECT {level.fk} FROM {parent.table} WHERE id IN ({parent_query}))"
    out = [(level.table, query)]
    for child in level.children:
        out.extend(oracle_query(child, level, query))
    return out


def expected(url: str, root: Level) -> dict[str, dict[int, tuple[Any, ...]]]:
    want: dict[str, dict[int, tuple[Any, ...]]] = {t: {} for t in EDGES}
    with psycopg.connect(url, autocommit=True) as conn:
        for table, query in oracle_query(root):
            cols = ", ".join(["id", *FKS.get(table, {}), "v"])
            for row in conn.execute(f"SELECT {cols} FROM {table} WHERE id IN ({query})").fetchall():  # type: ignore[call-overload]
                want[table][row[0]] = tuple(None if x is None else str(x).encode() for x in row[1:])
    return want


def held(cl: SatelliteClient) -> dict[str, dict[int, tuple[Any, ...]]]:
    out: dict[str, dict[int, tuple[Any, ...]]] = {t: {} for t in EDGES}
    for table in EDGES:
        for key, values in cl.table(table).items():
            assert key[0] is not None
            out[table][int(key[0])] = tuple(values[c] for c in [*FKS.get(table, {}), "v"])
    return out


WRITE = st.one_of(
    st.tuples(st.just("upsert"), st.sampled_from(sorted(EDGES)), st.sampled_from(IDS), st.integers(0, 9)),
    st.tuples(st.just("value"), st.sampled_from(sorted(EDGES)), st.sampled_from(IDS), st.integers(0, 9)),
    st.tuples(st.just("reparent"), st.sampled_from(["b", "c"]), st.sampled_from(IDS), st.sampled_from([*IDS, None])),
    st.tuples(st.just("delete"), st.sampled_from(sorted(EDGES)), st.sampled_from(IDS)),
)
STEPS = st.lists(st.lists(WRITE, min_size=1, max_size=3), min_size=2, max_size=7)
"""Each step is one transaction of one to three writes."""


def write(conn: psycopg.Connection[Any], op: tuple[Any, ...]) -> None:
    kind, table = op[0], op[1]
    if kind == "upsert":
        fks = list(FKS.get(table, {}))
        # a new row points at existing parents (or none)
        parents = [
            conn.execute(f"SELECT min(id) FROM {FKS[table][f]} WHERE id >= %s", [op[2]]).fetchone()[0]  # type: ignore[index]
            for f in fks
        ]
        cols = ", ".join(["id", *fks, "v"])
        marks = ", ".join(["%s"] * (len(fks) + 2))
        conn.execute(
            f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",  # type: ignore[arg-type]
            [op[2], *parents, op[3]],
        )
    elif kind == "value":
        conn.execute(f"UPDATE {table} SET v = %s WHERE id = %s", [op[3], op[2]])  # type: ignore[arg-type]
    elif kind == "reparent":
        fk = "a_id" if table == "b" else ("b_id" if op[2] % 2 else "d_id")
        target = FKS[table][fk]
        exists = op[3] is None or conn.execute(f"SELECT 1 FROM {target} WHERE id = %s", [op[3]]).fetchone()  # type: ignore[arg-type]
        if exists:
            conn.execute(f"UPDATE {table} SET {fk} = %s WHERE id = %s", [op[3], op[2]])  # type: ignore[arg-type]
    else:
        conn.execute(f"DELETE FROM {table} WHERE id = %s", [op[2]])  # type: ignore[arg-type]


async def run(env: Env, url: str, root: Level, seed: list[tuple[Any, ...]], steps: list[list[tuple[Any, ...]]]) -> None:
    with psycopg.connect(env.url) as conn:
        conn.execute("DELETE FROM c; DELETE FROM b; DELETE FROM a; DELETE FROM d")
        for op in seed:
            write(conn, op)
        conn.commit()
    cl = await SatelliteClient(url).connect()
    history = [f"tree {root.describe()}"]
    try:
        await cl.authenticate(env.token())
        await cl.start()
        sub_id = str(uuid.uuid4())
        req = pb.SatSubsReq(
            subscription_id=sub_id,
            shape_requests=[pb.SatShapeReq(request_id="r", shape_definition=pb.SatShapeDef(selects=[root.select()]))],
        )
        resp = await cl.rpc("subscribe", req)
        assert isinstance(resp, pb.SatSubsResp) and not resp.HasField("err"), str(resp)
        await cl.wait_for(lambda: sub_id in cl.subscriptions_done)
        await converged(cl, env.url, root, history)
        for i, step in enumerate(steps):
            away = i == len(steps) // 2
            if away:  # halfway, this step is written while the client is away
                await cl.close()
            with psycopg.connect(env.url) as conn:
                for op in step:
                    write(conn, op)
                conn.commit()
            history.append(f"tx {step}" + (" (client away, then resumed)" if away else ""))
            if away:
                # the server reconciles its trees from the keys it kept (TreeHold.prune forgot
                # those of rows that left and whose leaving the client acknowledged)
                cl, resp = await cl.resume(env.token(), [sub_id])
                assert not resp.HasField("err"), str(resp)
            await converged(cl, env.url, root, history)
            await cl.ack()
    finally:
        await cl.close()


async def converged(cl: SatelliteClient, url: str, root: Level, history: list[str]) -> None:
    want = expected(url, root)
    try:
        await cl.wait_for(lambda: held(cl) == want, 10)
    except TimeoutError:
        got = held(cl)
        diff = {t: (sorted(got[t].items()), sorted(want[t].items())) for t in EDGES if got[t] != want[t]}
        lines = "\n".join(f"  {h}" for h in history)
        raise AssertionError(f"client (left) != tree query (right): {diff}\nhistory:\n{lines}") from None


def test_trees_equal_their_query_after_every_write(pg_server: PgServer, tmp_path: Path) -> None:
    with fresh_database(pg_server) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SCHEMA)
        env = applied_env(url, tmp_path, CONFIG)
        env.data_dir.mkdir(parents=True, exist_ok=True)
        serve = ServeProcess(env).start()
        counter = itertools.count()
        try:

            @settings(max_examples=EXAMPLES, deadline=None, derandomize=SEEDED, suppress_health_check=list(HealthCheck))
            @given(
                root=trees(),
                seed=st.lists(
                    st.tuples(
                        st.just("upsert"),
                        st.sampled_from(["a", "d", "b", "c"]),
                        st.sampled_from(IDS),
                        st.integers(0, 9),
                    ),
                    min_size=4,
                    max_size=16,
                ),
                steps=STEPS,
            )
            def check(root: Level, seed: list[tuple[Any, ...]], steps: list[list[tuple[Any, ...]]]) -> None:
                next(counter)
                # parents first, so that a seeded child finds one to point at
                order = {"a": 0, "d": 0, "b": 1, "c": 2}
                asyncio.run(run(env, serve.url, root, sorted(seed, key=lambda op: order[op[1]]), steps))

            check()
        finally:
            serve.stop()
