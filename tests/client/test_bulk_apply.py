"""Subscription data on a real SQLite file: written part by part in one held transaction, in bulk.

A subscription's rows arrive in parts; the store writes each as it comes (memory stays bounded)
in one SQLite transaction that the last part commits, so the app sees all of them or none. Rows
with nothing to merge are written in bulk, with the table's oplog triggers dropped inside that
transaction; these tests pin that nothing of that leaks: the app's own triggers still fire, ours
are back afterwards (and after a rollback), and rows with pending local writes are still merged.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from electricctl.client.apply import BULK_ROWS
from electricctl.client.store import Column, RemoteTransaction, RowBatch, Store, Table
from tests.client.conftest import ITEMS, ME


def app(st: Store) -> sqlite3.Connection:
    return sqlite3.connect(st.path, isolation_level=None, timeout=0.2)


def part(first: int, count: int, tag: str = "@0") -> RemoteTransaction:
    batch = RowBatch(ITEMS, [[i, f"row {i}"] for i in range(first, first + count)], [[tag]] * count)
    return RemoteTransaction([], None, None, None, [batch])


def triggers(st: Store) -> list[str]:
    return sorted(r[0] for r in st.db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall())


def count(conn: sqlite3.Connection, table: str = "items") -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_parts_are_committed_together_by_the_last_one(store: Store) -> None:
    before = triggers(store)
    reader = app(store)
    assert store.apply_transactions([part(0, BULK_ROWS)], client_id=ME, hold=True) is None
    assert store.holding
    assert count(store.db) == BULK_ROWS  # written already, in the open transaction...
    assert count(reader) == 0  # ...which nobody else sees yet
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        reader.execute("INSERT INTO items VALUES (-1, 'app')")  # the app's writes wait for the lock
    assert store.apply_transactions([part(BULK_ROWS, 10)], client_id=ME, hold=True) is None
    end = RemoteTransaction([], None, None, "0/9")
    found = store.apply_transactions([end], client_id=ME)
    assert found is not None and found.pending == 0 and not store.holding
    assert count(reader) == BULK_ROWS + 10
    assert store.meta("electricctl.lsn") == "0/9"
    shadow = dict(store.db.execute("SELECT primaryKey, tags FROM _electric_shadow").fetchall())
    assert len(shadow) == BULK_ROWS + 10 and shadow['{"id":"3"}'] == '["@0"]'
    # the oplog triggers dropped for the bulk part are back, and record the app's writes again
    assert triggers(store) == before
    assert store.pending_count() == 0
    reader.execute("UPDATE items SET note = 'mine' WHERE id = 3")
    reader.execute("INSERT INTO items VALUES (-1, 'app')")
    assert [r[0] for r in store.db.execute("SELECT optype FROM _electric_oplog ORDER BY rowid")] == ["UPDATE", "INSERT"]


def test_abandoned_parts_leave_nothing_behind(store: Store) -> None:
    before = triggers(store)
    store.apply_transactions([part(0, BULK_ROWS * 2)], client_id=ME, hold=True)
    store.abandon()
    assert not store.holding and count(app(store)) == 0
    assert store.db.execute("SELECT count(*) FROM _electric_shadow").fetchone()[0] == 0
    assert triggers(store) == before
    app(store).execute("INSERT INTO items VALUES (1, 'app')")
    assert store.pending_count() == 1


def test_nothing_is_stamped_or_sent_while_parts_are_held(store: Store) -> None:
    app(store).execute("INSERT INTO items VALUES (1, 'before')")
    store.apply_transactions([part(10, 5)], client_id=ME, hold=True)
    # stamped inside the held transaction (merged with the parts), but not handed out before commit
    assert store.poll(ME, force=True) is None
    assert store.transactions_after(0) == []
    found = store.apply_transactions([RemoteTransaction([], None, None, None)], client_id=ME)
    assert found is not None and found.stamped == 1 and found.pending == 1
    assert [len(tx.entries) for tx in store.transactions_after(0)] == [1]


def test_the_apps_own_triggers_still_fire_for_bulk_rows(store: Store) -> None:
    conn = app(store)
    conn.execute("CREATE TABLE audit (id INTEGER)")
    conn.execute("CREATE TRIGGER app_audit AFTER INSERT ON items BEGIN INSERT INTO audit VALUES (new.id); END")
    store.apply_transactions([part(0, BULK_ROWS)], client_id=ME, hold=True)
    store.apply_transactions([RemoteTransaction([], None, None, None)], client_id=ME)
    assert count(conn, "audit") == BULK_ROWS
    assert "app_audit" in triggers(store)
    assert store.pending_count() == 0


def test_bulk_rows_with_a_pending_local_write_are_merged(store: Store) -> None:
    conn = app(store)
    conn.execute("INSERT INTO items VALUES (5, 'local')")
    store.stamp(ME)
    store.apply_transactions([part(0, BULK_ROWS)], client_id=ME)
    # the local insert is newer than the server's row: it stays, until the server echoes it
    assert conn.execute("SELECT note FROM items WHERE id = 5").fetchone() == ("local",)
    assert conn.execute("SELECT note FROM items WHERE id = 6").fetchone() == ("row 6",)
    assert count(conn) == BULK_ROWS
    tags = json.loads(conn.execute('SELECT tags FROM _electric_shadow WHERE primaryKey = \'{"id":"5"}\'').fetchone()[0])
    # both inserts' tags: the local one did not observe the server's (the rules, not a bulk write)
    assert len(tags) == 2 and tags[0] == "@0" and tags[1].startswith(f"{ME}@")


def test_a_schema_change_while_parts_are_held_keeps_the_triggers(store: Store) -> None:
    store.apply_transactions([part(0, BULK_ROWS)], client_id=ME, hold=True)
    wider = Table("items", (*ITEMS.columns, Column("qty", "int4", False, True)))
    store.ensure_table(wider)  # a relation message in the middle of the data
    store.apply_transactions([RemoteTransaction([], None, None, None)], client_id=ME)
    app(store).execute("INSERT INTO items (id, note, qty) VALUES (-1, 'app', 2)")
    entry = store.transactions_after(0) or []
    assert store.pending_count() == 1 and not entry  # recorded, not yet stamped
    assert '"qty":2' in store.db.execute("SELECT newRow FROM _electric_oplog").fetchone()[0]


@pytest.mark.parametrize(
    ("pg_type", "keys"),
    [
        ("int2", [1, -32768]),
        ("int4", [7, 2147483647]),
        ("int8", [9, -(2**63)]),
        ("text", ["plain", 'quote "q"', "é 中文", "back\\\\slash", ""]),
        ("uuid", ["6f1c2b52-0d3c-4d9e-9a8e-0c0de0c0de00"]),
        ("bytea", [b"\x00\xff", b""]),
    ],
)
def test_keys_of_bulk_rows_are_the_ones_the_triggers_write(tmp_path: Path, pg_type: str, keys: list[object]) -> None:
    """The shadow row a bulk write makes must be the one the oplog's triggers name, or a later
    local write would not observe the server's tags."""
    st = Store(str(tmp_path / "local.db"))
    table = Table("k", (Column("id", pg_type, True, False), Column("v", "text", False, True)))
    st.ensure_table(table)
    batch = RowBatch(table, [[k, "server"] for k in keys], [["@5"]] * len(keys))
    st.apply_transactions([RemoteTransaction([], None, None, None, [batch])], client_id=ME)
    conn = app(st)
    conn.execute("UPDATE k SET v = 'mine'")
    written = sorted(r[0] for r in conn.execute("SELECT primaryKey FROM _electric_oplog").fetchall())
    assert written == sorted(r[0] for r in conn.execute("SELECT primaryKey FROM _electric_shadow").fetchall())
    assert len(written) == len(keys)
    st.stamp(ME)
    assert [json.loads(r[0]) for r in conn.execute("SELECT clearTags FROM _electric_oplog")] == [["@5"]] * len(keys)


def test_a_commit_that_stamps_local_writes_reaches_the_disk_before_they_can_be_sent(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Remote changes commit without an fsync (a power cut loses them with their position, and the
    server sends them again); a stamped local transaction may be sent as soon as its commit returns,
    so that commit is made at synchronous=FULL."""
    import electricctl.client.store as store_module

    seen: list[str] = []
    store.db.set_trace_callback(seen.append)

    def commits_at() -> list[str]:
        """The synchronous level in force at each COMMIT since the last call."""
        level, out = "NORMAL", []
        for statement in seen:
            if statement.startswith("PRAGMA synchronous = "):
                level = statement.rsplit(" ", 1)[1]
            elif statement == "COMMIT":
                out.append(level)
        seen.clear()
        return out

    store.apply_transactions([part(0, 3)], client_id=ME)
    assert commits_at() == ["NORMAL"]
    app(store).execute("INSERT INTO items VALUES (-1, 'local')")
    store.apply_transactions([part(10, 3)], client_id=ME)  # stamps the local write in the same commit
    assert commits_at() == ["FULL"]
    app(store).execute("INSERT INTO items VALUES (-2, 'local')")
    assert store.poll(ME, force=True) is not None
    assert set(commits_at()) == {"FULL"}  # (the last commit of stamp_all's loop finds nothing more)
    # an app commits between the check and BEGIN: the commit that stamped it is followed by one at FULL
    app(store).execute("INSERT INTO items VALUES (-3, 'local')")
    monkeypatch.setattr(store_module, "has_unstamped", lambda db: False)
    found = store.apply_transactions([part(20, 3)], client_id=ME)
    assert found is not None and found.stamped == 1
    assert commits_at() == ["NORMAL", "FULL"]
    assert store.meta(store_module.SYNCED_KEY)
    assert store.db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL again
