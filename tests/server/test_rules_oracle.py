"""Postgres equals what the rules say: random histories checked against an independent oracle.

Three clients send transactions with chosen timestamps (in and out of order, with ties) and
chosen observed tags (everything, a part, or nothing of what the row has), interleaved with
direct Postgres writes. Each step waits for its echo, so the order the server applied them is
known. The oracle replays the same history with a naive model written here from the documented
semantics, not with :mod:`electricctl._merge.rules` (which the writer itself calls, so checking
against it would check the code against itself):

- a row exists while its set of tags is not empty (add-wins, observed-remove);
- an insert or update removes the tags its writer observed and adds its own; a delete only
  removes the observed ones; a compensation adds the observed ones back;
- an observed Postgres tag ``@T`` also removes every older Postgres tag (a later direct write to
  the row waited for that commit, so clients only ever see the newest);
- each column keeps the value of the write whose tag ranks highest by (timestamp, written in
  Postgres, origin): the later timestamp, then Postgres over any client, then the greater origin;
  an equal tag is a later operation of the same transaction and overrides;
- a deleted row keeps its last values, so a write that revives it merges column by column;
- a direct Postgres write replaces the row's tag set with its own tag and tags the columns it
  changed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from electricctl._merge.rules import ABSENT, RowState, Tag
from electricctl._protocol import satellite_pb2 as pb
from electricctl._server.common import NATIVE_HEADER
from tests.conftest import Server as PgServer
from tests.conftest import fresh_database
from tests.satellite_client import SatelliteClient
from tests.server.test_writes import ITEMS, Writer, delete, insert, row, update
from tests.server_fixtures import Env, ServeProcess, build_env

KEYS = ["k0", "k1", "k2"]
EXAMPLES = int(os.environ.get("ELECTRICCTL_ORACLE_EXAMPLES", "40"))
SEEDED = os.environ.get("ELECTRICCTL_ORACLE_RANDOM") is None
"""Derandomized (the same examples every run) unless ELECTRICCTL_ORACLE_RANDOM is set."""
BASE_TS = 1_800_000_000_000
COLS = ("n", "flag")
FLAG = "CASE WHEN flag THEN 't' WHEN NOT flag THEN 'f' END"  # bool as the wire writes it

STEP = st.one_of(
    st.tuples(
        st.just("client"),
        st.integers(0, 2),
        st.sampled_from(["insert", "update", "delete", "compensation"]),
        st.sampled_from(KEYS),
        st.integers(-3, 3),  # timestamp offset: ties and reordering
        st.sampled_from(["all", "some", "none"]),  # what the client had observed
        st.one_of(st.none(), st.integers(0, 99)),
        st.booleans(),
    ),
    st.tuples(st.just("pg"), st.sampled_from(["upsert", "delete"]), st.sampled_from(KEYS), st.integers(0, 99)),
)


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "t" if v else "f"
    return str(v)


def _rank(tag: Tag) -> tuple[int, int, str]:
    return (tag.ts, 1 if tag.origin is None else 0, tag.origin or "")


class Oracle:
    def __init__(self) -> None:
        self.rows: dict[str, RowState] = {}

    def state(self, key: str) -> RowState:
        return self.rows.get(key, ABSENT)

    def client(
        self,
        key: str,
        kind: str,
        tag: Tag,
        observed: frozenset[Tag],
        values: dict[str, str | None],
        changed: frozenset[str],
    ) -> None:
        s = self.state(key)
        newest_pg = max((t.ts for t in observed if t.origin is None), default=None)
        kept = set()
        for t in s.tags:
            seen = t in observed or (t.origin is None and newest_pg is not None and t.ts <= newest_pg)
            if not seen:
                kept.add(t)
        if kind == "compensation":
            self.rows[key] = RowState(s.values, s.col_tags, frozenset(s.tags | observed))
            return
        if kind == "delete":
            self.rows[key] = RowState(s.values, s.col_tags, frozenset(kept))
            return
        kept.add(tag)
        new_values = dict(s.values)
        new_col_tags = dict(s.col_tags)
        for col in changed:
            old = new_col_tags.get(col)
            if old is None or old == tag or _rank(tag) > _rank(old):
                new_values[col] = values[col]
                new_col_tags[col] = tag
        self.rows[key] = RowState(new_values, new_col_tags, frozenset(kept))

    def direct(self, key: str, new: dict[str, str | None] | None, tag: Tag) -> None:
        s = self.state(key)
        if new is None:  # a direct delete observed every tag
            if s.exists:
                self.rows[key] = RowState(s.values, s.col_tags, frozenset())
            return
        if not s.exists:
            self.rows[key] = RowState(dict(new), dict.fromkeys(COLS, tag), frozenset({tag}))
            return
        changed = {c for c in COLS if s.values.get(c) != new[c]}
        self.rows[key] = RowState(dict(new), {**s.col_tags, **dict.fromkeys(changed, tag)}, frozenset({tag}))


async def _client(url: str, env: Env) -> Writer:
    cl = SatelliteClient(url, headers={NATIVE_HEADER: "1"})
    await cl.connect()
    await cl.authenticate(env.token())
    await cl.start()
    await cl.wait_for(lambda: cl.outbound_lsn is not None)
    return Writer(cl)


async def run(steps: list[tuple[Any, ...]], env: Env, url: str, prefix: str) -> None:
    clients = [await _client(url, env) for _ in range(3)]
    oracle = Oracle()
    history: list[str] = []
    try:
        for i, step in enumerate(steps):
            if step[0] == "client":
                _, who, kind, key, offset, seen, n, flag = step
                key = prefix + key
                w = clients[who]
                ts = BASE_TS + i * 2 + offset
                current = sorted(oracle.state(key).tags, key=lambda t: (t.ts, t.origin or ""))
                observed = current if seen == "all" else current[: len(current) // 2] if seen == "some" else []
                tags = [str(t) for t in observed]
                old = oracle.state(key).values
                new_row = (key, _text(n), _text(flag))
                old_row = (key, old.get("n"), old.get("flag"))
                if kind == "insert":
                    op = insert(ITEMS, *new_row, tags=tags)
                elif kind == "update":
                    op = update(ITEMS, new_row, old_row, tags=tags)
                elif kind == "delete":
                    op = delete(ITEMS, *old_row, tags=tags)
                else:
                    op = pb.SatTransOp(
                        compensation=pb.SatOpCompensation(
                            relation_id=ITEMS.relation_id, pk_data=row(key, None, None), tags=tags
                        )
                    )
                history.append(f"client{who} {kind} {key} ts={ts} n={n} flag={flag} observed={tags}")
                await w.echo(await w.send(ITEMS, op, ts=ts))
                tag = Tag(ts, w.cl.client_id)
                values = {"id": key, "n": _text(n), "flag": _text(flag)}
                if kind == "insert":
                    changed = frozenset(COLS)
                elif kind == "update":
                    changed = frozenset(c for c in COLS if values[c] != old.get(c))
                else:
                    changed = frozenset()
                oracle.client(key, kind, tag, frozenset(observed), values, changed)
            else:
                _, kind, key, n = step
                key = prefix + key
                history.append(f"postgres {kind} {key} n={n}")
                if kind == "upsert":
                    env.sql(
                        "INSERT INTO items (id, n, flag) VALUES (%s, %s, true) ON CONFLICT (id) DO UPDATE SET n = %s",
                        [key, n, n],
                    )
                else:
                    env.sql("DELETE FROM items WHERE id = %s", [key])
                rows = env.sql(f"SELECT n::text, {FLAG} FROM items WHERE id = %s", [key])
                shadow = env.sql(
                    "SELECT row_tags FROM electric.shadow WHERE table_name = 'items' AND pk = ARRAY[%s]", [key]
                )
                tags = shadow[0][0] if shadow else []
                if rows:
                    tag = Tag(int(tags[0][0]), None)  # type: ignore[index]
                    oracle.direct(key, {"id": key, "n": rows[0][0], "flag": rows[0][1]}, tag)  # type: ignore[dict-item]
                else:
                    oracle.direct(key, None, Tag(0, None))
        _compare(env, oracle, history, prefix)
    finally:
        for w in clients:
            await w.cl.close()


def _compare(env: Env, oracle: Oracle, history: list[str], prefix: str) -> None:
    pg = {
        r[0]: (r[1], r[2]) for r in env.sql(f"SELECT id, n::text, {FLAG} FROM items WHERE id LIKE %s", [prefix + "%"])
    }
    want = {k: (s.values.get("n"), s.values.get("flag")) for k, s in oracle.rows.items() if s.exists}
    shadow = {
        r[0]: (frozenset(Tag(int(t[0]), t[1]) for t in r[1]), {c: Tag(int(t[0]), t[1]) for c, t in r[2].items()})  # type: ignore[attr-defined]
        for r in env.sql(
            "SELECT pk[1], row_tags, col_tags FROM electric.shadow WHERE table_name = 'items' AND pk[1] LIKE %s",
            [prefix + "%"],
        )
    }
    problems = []
    if pg != want:
        problems.append(f"rows: postgres {pg} != rules {want}")
    for key, state in oracle.rows.items():
        tags, col_tags = shadow.get(key, (frozenset(), {}))
        if tags != state.tags:
            problems.append(
                f"{key} row tags: postgres {sorted(map(str, tags))} != rules {sorted(map(str, state.tags))}"
            )
        for c in COLS:
            if c in state.col_tags and col_tags.get(c) != state.col_tags[c]:
                problems.append(f"{key}.{c} tag: postgres {col_tags.get(c)} != rules {state.col_tags[c]}")
    if problems:
        lines = "\n".join(f"  {i:2d}. {h}" for i, h in enumerate(history))
        raise AssertionError("\n".join(problems) + f"\nhistory:\n{lines}")


def test_postgres_equals_the_rules(pg_server: PgServer, tmp_path: Path) -> None:
    with fresh_database(pg_server) as url:
        env = build_env(url, tmp_path)
        env.data_dir.mkdir(parents=True, exist_ok=True)
        serve = ServeProcess(env).start()
        counter = itertools.count()
        try:

            @settings(max_examples=EXAMPLES, deadline=None, derandomize=SEEDED, suppress_health_check=list(HealthCheck))
            @given(steps=st.lists(STEP, min_size=4, max_size=16))
            def check(steps: list[tuple[Any, ...]]) -> None:
                # one server for every example; each example writes its own keys
                asyncio.run(run(steps, env, serve.url, f"e{next(counter)}-"))

            check()
        finally:
            serve.stop()
