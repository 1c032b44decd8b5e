"""Routing changes to shapes (pure): move-in/out decisions, primary key changes, the indexes."""

from __future__ import annotations

from electricctl._model.rows import Change, Column, RelationDef, Transaction
from electricctl._model.table import TableRef
from electricctl._shapes.compile import compile_where
from electricctl._shapes.router import Router
from electricctl._shapes.routing import Shape, TableShapes, route, route_transaction

REL = RelationDef(
    9,
    "public",
    "t",
    (
        Column("id", 23, "int4", True, False),
        Column("owner", 25, "text", False, True),
        Column("n", 23, "int4", False, True),
    ),
)
TX = Transaction(100, 108, 5, 0, None, ())


def shape(where: str, sub: str = "s") -> Shape:
    return Shape(sub, "r", TableRef("public", "t"), REL, compile_where(where, REL) if where else None, where)


def row(i: int, owner: str, n: int) -> tuple[bytes, bytes, bytes]:
    return (str(i).encode(), owner.encode(), str(n).encode())


def test_route_decisions() -> None:
    shapes = [shape("n > 5")]
    assert route(shapes, TX, Change("I", REL, row(1, "a", 9), None)) == [Change("I", REL, row(1, "a", 9), None)]
    assert route(shapes, TX, Change("I", REL, row(1, "a", 1), None)) == []
    move_in = route(shapes, TX, Change("U", REL, row(1, "a", 9), row(1, "a", 1)))
    assert move_in == [Change("I", REL, row(1, "a", 9), None)]
    move_out = route(shapes, TX, Change("U", REL, row(1, "a", 1), row(1, "a", 9)))
    assert move_out == [Change("G", REL, None, row(1, "a", 9))]
    assert route(shapes, TX, Change("D", REL, None, row(1, "a", 9))) == [Change("D", REL, None, row(1, "a", 9))]
    assert route(shapes, TX, Change("D", REL, None, row(1, "a", 1))) == []
    assert route(shapes, TX, Change("U", REL, row(1, "a", 9), row(1, "a", 9))) == []  # nothing changed
    assert route(shapes, TX, Change("T", REL, None, None)) == []


def test_primary_key_change_is_delete_plus_insert() -> None:
    shapes = [shape("")]
    got = route(shapes, TX, Change("U", REL, row(2, "a", 1), row(1, "a", 1)))
    assert got == [Change("D", REL, None, row(1, "a", 1)), Change("I", REL, row(2, "a", 1), None)]


def test_overlapping_shapes_hold_a_row_until_none_matches() -> None:
    shapes = [shape("n > 5", "low"), shape("owner = 'a'", "mine")]
    # leaves one shape but stays in the other: an update, not GONE
    assert route(shapes, TX, Change("U", REL, row(1, "a", 1), row(1, "a", 9)))[0].op == "U"
    assert route(shapes, TX, Change("U", REL, row(1, "b", 1), row(1, "a", 9)))[0].op == "G"


def test_table_shapes_index_only_evaluates_matching_keys() -> None:
    ts = TableShapes()
    many = [shape(f"owner = 'u{k}'", f"s{k}") for k in range(1000)]
    for s in many:
        ts.add(s)
    ranged = shape("n > 100", "ranged")
    ts.add(ranged)
    ch = Change("U", REL, row(1, "u7", 1), row(1, "u8", 1))
    assert {s.subscription_id for s in ts.candidates(ch)} == {"s7", "s8", "ranged"}
    routed = route_transaction({"public.t": ts}, Transaction(1, 2, 3, 0, None, (ch,)))
    assert [c.op for c in routed] == ["U"]  # held before (u8) and after (u7)
    ts.remove(many[7])
    assert {s.subscription_id for s in ts.candidates(ch)} == {"s8", "ranged"}


def test_router_narrows_connections() -> None:
    router = Router()
    for k in range(100):
        router.add(f"conn{k}", "public.t", shape(f"owner = 'u{k}'"))
    router.add("ranged", "public.t", shape("n > 1"))
    router.add("bool", "public.t", shape("owner = 'u1' AND n = 3"))
    ch = Change("I", REL, row(1, "u42", 0), None)
    assert router.candidates([ch]) == {"conn42", "ranged"}
    assert router.candidates([Change("T", REL, None, None)]) >= {"conn0", "conn99", "ranged", "bool"}
    router.remove("conn42", "public.t", shape("owner = 'u42'"))
    assert router.candidates([ch]) == {"ranged"}
    router.remove_connection("ranged")
    assert router.candidates([ch]) == set()
    other = RelationDef(10, "public", "other", REL.columns)
    assert router.candidates([Change("I", other, row(1, "u1", 0), None)]) == set()
