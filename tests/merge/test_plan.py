"""The writer's merge decision on its own: :func:`plan_client_transaction` with no database.

Each test builds the rows' current states by hand (as the writer would read them), plans a client
transaction and checks the statements it asks for, the rows' new states and the permission
checks.
"""

from __future__ import annotations

from electricctl._merge.plan import CurrentRow, plan_client_transaction, shadow_entries, state_row
from electricctl._merge.rules import RowState, Tag
from electricctl._model.client import ClientOp, ClientTransaction
from electricctl._model.rows import Column, RelationDef
from electricctl._perms.policy import Policy

ITEMS = RelationDef(
    1,
    "public",
    "items",
    (
        Column("id", 23, "int4", True, False),
        Column("title", 25, "text", False, False),
        Column("note", 25, "text", False, True),
    ),
)
CLIENT = "client-a"
TS = 2_000


def op(
    kind: str, key: str, tags: tuple[str, ...] = (), old: dict[str, str | None] | None = None, **values: str | None
) -> ClientOp:
    return ClientOp(kind, ITEMS, (key,), {"id": key, **values}, old, tags)  # type: ignore[arg-type]


def tx(*ops: ClientOp, ts: int = TS) -> ClientTransaction:
    return ClientTransaction(CLIENT, lsn=1, commit_ts_ms=ts, ops=list(ops), user_id="alice")


def absent(key: str) -> CurrentRow:
    return CurrentRow(ITEMS, (key,), RowState({"id": key}, {}, frozenset()), present=False)


def present(key: str, title: str, tag: Tag, note: str | None = None) -> CurrentRow:
    values = {"id": key, "title": title, "note": note}
    return CurrentRow(ITEMS, (key,), RowState(values, {"title": tag, "note": tag}, frozenset({tag})), present=True)


def test_an_insert_of_a_new_row_is_one_upsert_tagged_with_the_transaction() -> None:
    current = {("public.items", ("1",)): absent("1")}
    plan = plan_client_transaction(tx(op("insert", "1", title="a", note=None)), current, None)
    (action,) = plan.actions
    assert action.kind == "upsert" and action.values == {"id": "1", "title": "a", "note": None}
    assert plan.written_tags() == {"public.items\x001": (str(Tag(TS, CLIENT)),)}
    assert not plan.checks  # no policy: nothing to check
    # the caller's states are left as they were
    assert current[("public.items", ("1",))].present is False


def test_a_concurrent_newer_postgres_write_wins_its_column_and_the_row_is_still_written() -> None:
    newer = Tag(TS + 500, None)  # written in Postgres after the client's write
    current = {("public.items", ("1",)): present("1", "from postgres", newer)}
    plan = plan_client_transaction(
        tx(op("update", "1", (str(newer),), old={"title": "from postgres"}, title="mine")), current, None
    )
    (action,) = plan.actions
    # the client's write loses the column: the upsert carries Postgres' value, so the echo
    # brings the client back to the resolved row
    assert action.kind == "upsert" and action.values["title"] == "from postgres"


def test_a_delete_that_observed_every_tag_deletes_and_one_that_did_not_is_outlived() -> None:
    seen = Tag(TS - 100, "client-b")
    current = {("public.items", ("1",)): present("1", "x", seen)}
    plan = plan_client_transaction(tx(op("delete", "1", (str(seen),))), current, None)
    assert [a.kind for a in plan.actions] == ["delete"]
    assert not plan.written_tags()  # the row is gone: no tags to echo
    (entry,) = shadow_entries(plan.unique_rows())["public.items"]
    assert entry["deleted"] is True
    # a delete that did not see a concurrent insert's tag: add-wins keeps the row, and rewrites
    # it as it is, so the echo brings it back to the client that deleted it
    unseen = Tag(TS - 50, "client-c")
    current = {("public.items", ("1",)): present("1", "x", unseen)}
    plan = plan_client_transaction(tx(op("delete", "1", (str(seen),))), current, None)
    assert [(a.kind, a.values["title"]) for a in plan.actions] == [("upsert", "x")]
    assert plan.rows[("public.items", ("1",))].present
    assert plan.written_tags() == {"public.items\x001": (str(unseen),)}


def test_operations_on_one_row_chain_and_two_spellings_of_a_key_share_one_state() -> None:
    row = absent("1")
    # the client spelled the key two ways; the writer found one row for both
    current = {("public.items", ("1",)): row, ("public.items", ("01",)): row}
    first = op("insert", "1", title="a")
    second = ClientOp("delete", ITEMS, ("01",), {"id": "01"}, None, (str(Tag(TS, CLIENT)),))
    plan = plan_client_transaction(tx(first, second), current, None)
    assert [a.kind for a in plan.actions] == ["upsert", "delete"]
    assert len(plan.unique_rows()) == 1 and not plan.unique_rows()[0].present
    # each batch holds one kind of action on one table, each key once
    assert [[a.kind for a in b] for b in plan.batches()] == [["upsert"], ["delete"]]


def test_batches_split_where_a_key_repeats_and_keep_every_action_in_order() -> None:
    keys = [str(i) for i in range(300)] + ["7", "8", "300"]
    current = {("public.items", (k,)): absent(k) for k in keys}
    ops = [op("insert", k, title="a") for k in keys[:300]] + [op("update", k, title="b") for k in keys[300:]]
    plan = plan_client_transaction(tx(*ops), current, None)
    batches = plan.batches()
    # one batch of the 300 new keys; the second writes of 7 and 8 (and then 300) start the next
    assert [len(b) for b in batches] == [300, 3]
    assert [a for b in batches for a in b] == plan.actions
    assert all(len({a.key for a in b}) == len(b) for b in batches)


def test_a_compensation_revives_a_deleted_row_only_when_it_is_complete() -> None:
    tag = Tag(TS - 10, "client-b")
    tombstone = CurrentRow(ITEMS, ("1",), RowState({"id": "1", "title": "t", "note": None}, {}, frozenset()), False)
    plan = plan_client_transaction(
        tx(op("compensation", "1", (str(tag),))), {("public.items", ("1",)): tombstone}, None
    )
    assert [a.kind for a in plan.actions] == ["upsert"]
    # no title (NOT NULL) known: nothing to revive the row from
    bare = absent("1")
    plan = plan_client_transaction(tx(op("compensation", "1", (str(tag),))), {("public.items", ("1",)): bare}, None)
    assert plan.actions == []


def test_checks_name_the_privilege_as_the_operation_takes_effect() -> None:
    policy = Policy.from_catalog(
        {"g": {"privileges": ["insert"], "table": "public.items", "role": "authenticated"}}, {}
    )
    rows = {("public.items", ("1",)): absent("1"), ("public.items", ("2",)): present("2", "x", Tag(1, None))}
    plan = plan_client_transaction(
        tx(op("insert", "1", title="a"), op("update", "2", old={"title": "x"}, title="y")), rows, policy
    )
    insert, update = plan.checks
    # an insert of a new row needs insert, and a grant may allow it; an "insert" of an existing
    # row is an update, which no grant allows: it is refused before anything is written
    assert (insert.privilege, [g.name for g in insert.grants]) == ("insert", ["g"])
    assert (update.privilege, update.grants) == ("update", ())
    assert plan.refused_outright() is update
    denied = update.denied(tx())
    assert "operation 2 (update on public.items): permission denied" in str(denied)


def test_the_current_state_is_read_from_the_row_and_its_shadow() -> None:
    pk = ["id"]
    # a row from before the table was electrified: no shadow entry, one implicit Postgres tag
    old = state_row(ITEMS, pk, ("1",), [True, "1", "t", None, None, None, None])
    assert old.present and old.state.tags == frozenset({Tag(0, None)})
    # a deleted row: its last values come from the tombstone
    gone = state_row(ITEMS, pk, ("2",), [False, None, None, None, [], {}, {"id": "2", "title": "last"}])
    assert not gone.present and gone.state.values["title"] == "last" and not gone.state.exists
