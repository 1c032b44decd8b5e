"""The client's local file on its own: oplog stamping and remote changes applied, on a real SQLite file.

The store batches its SQL (one statement for many rows) and formats plain primary keys in Python;
these tests pin that the outcome is the one the row-by-row rules give, and that a key formatted
in Python is byte for byte the ``primaryKey`` the oplog triggers write.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from electricctl.client.store import Column, RemoteChange, Store, Table
from tests.client.conftest import ITEMS, ME


def app(st: Store) -> sqlite3.Connection:
    return sqlite3.connect(st.path, isolation_level=None)


def oplog(st: Store) -> list[tuple[str, str, str, list[str]]]:
    rows = st.db.execute("SELECT optype, primaryKey, timestamp, clearTags FROM _electric_oplog ORDER BY rowid")
    return [(op, pk, ts, json.loads(tags)) for op, pk, ts, tags in rows.fetchall()]


def shadow(st: Store) -> dict[str, list[str]]:
    rows = st.db.execute("SELECT primaryKey, tags FROM _electric_shadow WHERE tablename = 'items'").fetchall()
    return {pk: json.loads(tags) for pk, tags in rows}


KEYS = Table(
    "keys",
    (
        Column("a b", "text", True, False),
        Column("n", "int4", True, False),
        Column("big", "int8", True, False),
        Column("raw", "bytea", True, False),
        Column("flag", "bool", True, False),
        Column("x", "float8", True, False),
        Column("v", "text", False, True),
    ),
)
TEXTS = ["plain", "", "with space", 'quote "q"', "back\\slash", "tab\tnew\nline", "\x01\x1f\x7f", "é ü 中文 😀", "/"]


def test_primary_keys_formatted_in_python_match_the_triggers(tmp_path: Path) -> None:
    st = Store(str(tmp_path / "local.db"))
    st.ensure_table(KEYS)
    conn = app(st)
    rows = [
        (text, n, big, raw, flag, x)
        for i, text in enumerate(TEXTS)
        for n, big, raw, flag, x in [
            (i, -(2**62) + i, bytes([i, 255, 0]), i % 2, 0.1 + i),
            (-i, 2**63 - 1 - i, b"", 1 - i % 2, 1e300 / (i + 1)),
        ]
    ]
    conn.executemany("INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, 'v')", rows)
    written = [pk for _, pk, _, _ in oplog(st)]
    names = ["a b", "n", "big", "raw", "flag", "x"]
    computed = [st.pk_json(KEYS, dict(zip(names, row, strict=True))) for row in rows]
    assert computed == written
    # keys with no float: text, integers and bytes, formatted in Python where plain
    named = Table("named", (Column("name", "text", True, False), Column("n", "int4", True, False)))
    st.ensure_table(named)
    conn.executemany("INSERT INTO named VALUES (?, ?)", [(t, i) for i, t in enumerate(TEXTS)])
    written = [pk for _, pk, _, _ in oplog(st)][len(rows) :]
    assert [st.pk_json(named, {"name": t, "n": i}) for i, t in enumerate(TEXTS)] == written
    st.ensure_table(ITEMS)
    conn.executemany("INSERT INTO items VALUES (?, 'n')", [(i,) for i in (0, -1, 2**63 - 1, -(2**63))])
    written = [pk for _, pk, _, _ in oplog(st)][len(rows) + len(TEXTS) :]
    assert [st.pk_json(ITEMS, {"id": i}) for i in (0, -1, 2**63 - 1, -(2**63))] == written


def test_a_batch_stamps_each_write_with_the_tags_it_observed(store: Store) -> None:
    conn = app(store)
    conn.execute("INSERT INTO items VALUES (1, 'old')")
    first = store.stamp(ME)
    assert first is not None
    conn.execute("BEGIN")
    conn.execute("UPDATE items SET note = 'a' WHERE id = 1")  # observes the first transaction's tag
    conn.execute("UPDATE items SET note = 'b' WHERE id = 1")  # observes this batch's own first write
    conn.execute("INSERT INTO items VALUES (2, 'x')")
    conn.execute("DELETE FROM items WHERE id = 2")
    conn.execute("COMMIT")
    second = store.stamp(ME)
    assert second is not None and second > first
    own1, own2 = f"{ME}@{first}", f"{ME}@{second}"
    assert oplog(store) == [
        ("INSERT", '{"id":"1"}', str(first), []),
        ("UPDATE", '{"id":"1"}', str(second), [own1]),
        ("UPDATE", '{"id":"1"}', str(second), [own2]),
        ("INSERT", '{"id":"2"}', str(second), []),
        ("DELETE", '{"id":"2"}', str(second), [own2]),
    ]
    assert shadow(store) == {'{"id":"1"}': [own2]}
    assert store.stamp(ME) is None


def change(kind: str, row: dict[str, object], tag: str | None = None) -> RemoteChange:
    return RemoteChange("items", kind, dict(row), None, [tag] if tag else [])  # type: ignore[arg-type]


def rows(st: Store) -> list[tuple[object, ...]]:
    return st.db.execute("SELECT id, note FROM items ORDER BY id").fetchall()


def test_several_changes_to_one_row_in_one_transaction_end_as_the_last(store: Store) -> None:
    app(store).execute("INSERT INTO items VALUES (9, 'kept')")  # a row the batch does not touch
    store.apply_remote(
        [change("insert", {"id": 9, "note": "kept"}, "@5")], client_id=ME, origin=None, timestamp=5, lsn="1"
    )
    batch = [
        change("insert", {"id": 1, "note": "a"}, "@10"),
        change("update", {"id": 1, "note": "b"}, "@10"),
        change("insert", {"id": 2, "note": "x"}, "@10"),
        change("delete", {"id": 2, "note": "x"}),
        change("delete", {"id": 3, "note": "y"}),
        change("insert", {"id": 3, "note": "again"}, "@10"),
        change("gone", {"id": 9}),
    ]
    app(store).execute("INSERT INTO items VALUES (3, 'local')")
    store.stamp(ME)
    store.apply_remote(batch, client_id=ME, origin=None, timestamp=10, lsn="2")
    assert rows(store) == [(1, "b"), (3, "local")]  # the pending local insert of 3 is newer than the server's
    assert shadow(store)['{"id":"1"}'] == ["@10"]
    assert '{"id":"2"}' not in shadow(store) and '{"id":"9"}' not in shadow(store)
    assert store.meta("electricctl.lsn") == "2"


def test_a_remote_update_merges_with_a_pending_local_write_column_by_column(tmp_path: Path) -> None:
    st = Store(str(tmp_path / "local.db"))
    two = Table(
        "two", (Column("id", "int4", True, False), Column("a", "text", False, True), Column("b", "text", False, True))
    )
    st.ensure_table(two)
    st.apply_remote(
        [RemoteChange("two", "insert", {"id": 1, "a": "a0", "b": "b0"}, None, ["@1"])],
        client_id=ME, origin=None, timestamp=1, lsn="1",
    )  # fmt: skip
    app(st).execute("UPDATE two SET a = 'mine' WHERE id = 1")
    st.stamp(ME)
    old = {"id": 1, "a": "a0", "b": "b0"}
    st.apply_remote(
        [RemoteChange("two", "update", {"id": 1, "a": "a0", "b": "theirs"}, old, ["@2"])],
        client_id=ME, origin=None, timestamp=2, lsn="2",
    )  # fmt: skip
    assert st.db.execute("SELECT id, a, b FROM two").fetchall() == [(1, "mine", "theirs")]
    assert st.pending_count() == 1  # still waiting for its echo


def test_a_write_made_before_a_column_was_added_is_sent_without_it(store: Store) -> None:
    """A migration lands (the table's relation grows) while a local insert waits to be sent: that
    insert goes under a relation without the new column, so Postgres gives the row the column's
    default rather than a NULL the app never wrote; a later write goes under the wider relation."""
    from electricctl._protocol import satellite_pb2 as pb
    from electricctl.client.session import ClientSession

    conn = app(store)
    conn.execute("INSERT INTO items VALUES (1, 'before')")
    wider = Table("items", (*ITEMS.columns, Column("qty", "int4", False, True)))
    store.ensure_table(wider)  # what a relation with the new column does
    conn.execute("INSERT INTO items (id, note, qty) VALUES (2, 'after', 3)")
    store.stamp(ME)
    session = ClientSession(ME, clock=lambda: 0.0)
    session.connection_made()
    session.receive(
        pb.SatRpcRequest(
            method="startReplication", request_id=0, message=pb.SatInStartReplicationReq().SerializeToString()
        )
    )
    (tx,) = store.transactions_after(0)
    narrow, wide, oplog = session.outgoing(tx, store.tables)
    assert isinstance(narrow, pb.SatRelation) and isinstance(wide, pb.SatRelation) and isinstance(oplog, pb.SatOpLog)
    assert [c.name for c in narrow.columns] == ["id", "note"]
    assert [c.name for c in wide.columns] == ["id", "note", "qty"]
    assert [op.insert.relation_id for op in oplog.ops[1:-1]] == [narrow.relation_id, wide.relation_id]
