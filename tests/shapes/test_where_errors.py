"""Where-clause errors point at the offending token, and the typed IR keeps every node's position.

Pure: the relation is built by hand, no Postgres needed. Each case names the token the error must
point at (its first occurrence after ``after``, when the text has it more than once).
"""

from __future__ import annotations

import pytest

from electricctl._expr.parse import parse
from electricctl._model.rows import Column, RelationDef
from electricctl._shapes.compile import ShapeError, compile_where
from electricctl._shapes.where import ir
from electricctl._shapes.where.check import Checker

REL = RelationDef(
    7,
    "public",
    "items",
    tuple(
        Column(name, 0, typ, name == "id", name != "id")
        for name, typ in [
            ("id", "int4"),
            ("n", "int4"),
            ("big", "int8"),
            ("title", "text"),
            ("price", "float8"),
            ("done", "bool"),
            ("due", "date"),
            ("at", "timestamptz"),
            ("ref", "uuid"),
            ("mood", "mood"),
        ]
    ),
)
CLAIMS = {"sub": "u1", "groups": ["a", "b"]}


@pytest.mark.parametrize(
    ("clause", "token", "after", "fragment"),
    [
        # a column that does not exist, or of another table
        ("done AND nope = 1", "nope", 0, "column 'nope' does not exist"),
        ("done AND other.n = 1", "other.n", 0, "does not refer to table"),
        # claims
        ("title = auth.org", "auth.org", 0, "the token has no 'org' claim"),
        ("title = auth.groups", "auth.groups", 0, "claim 'groups' is not a scalar"),
        # functions: wrong argument types or count
        ("done AND lower(n) = 'a'", "lower", 0, "function lower(int) does not exist"),
        ("done AND length(title, title) = 1", "length", 0, "function length(text, text) does not exist"),
        ("done AND abs(title) > 1", "abs", 0, "function abs(text) does not exist"),
        # incompatible operands: the operator
        ("done AND title = due", "=", 0, "operator does not exist: text = date"),
        ("done AND title + 1 > 2", "+", 0, "operator does not exist: text + int"),
        ("done AND due > at", ">", 0, "depends on the time zone"),
        ("done AND ref < 3", "<", 0, "operator does not exist: uuid < int"),
        ("done AND mood < 'x'", "<", 0, "enum values can only be compared with = and <>"),
        ("done AND - title = 'a'", "-", 0, "prefix - needs a number, not text"),
        ("done AND n || 1 = 'x'", "||", 0, "operator does not exist: int || int"),
        ("done AND n BETWEEN 1 AND title", "BETWEEN", 0, "operator does not exist: int <= text"),
        ("done AND n IS DISTINCT FROM title", "IS DISTINCT", 0, "operator does not exist: int IS DISTINCT"),
        # the item of an IN list that does not match
        ("done AND n IN (1, due)", "due", 0, "operator does not exist: int = date"),
        # bad literals: the literal itself
        ("done AND due = 'notadate'", "'notadate'", 0, "invalid input for type date"),
        ("done AND n IN (1, 'x')", "'x'", 0, "invalid input for type int4"),
        ("done AND done = 'maybe'", "'maybe'", 0, "invalid input for type bool"),
        ("done AND at > 'infinity'", "'infinity'", 0, "invalid input for type timestamptz"),
        ("done AND 'x'::date > due", "'x'", 0, "invalid input for type date"),
        # non-boolean operands: the operand
        ("n = 1 AND n", "n", 1, "argument must be boolean, not int"),
        ("done AND NOT title", "title", 0, "argument must be boolean, not text"),
        ("done AND n IS TRUE", "n", 5, "argument must be boolean, not int"),
        ("done AND title LIKE n", "n", 12, "LIKE needs text, not text and int"),
        ("done AND coalesce(n, title) = 1", "title", 0, "COALESCE types int and text cannot be matched"),
        # the whole clause is not a boolean: its top operator
        ("n + 1", "+", 0, "the clause must be a boolean condition, not int"),
        # casts: the cast
        ("done AND ref::int4 = 1", "::", 0, "cannot cast uuid to int4"),
        ("done AND CAST(ref AS int4) = 1", "CAST", 0, "cannot cast uuid to int4"),
        ("done AND n::interval IS NULL", "::", 0, "casts to interval are not supported"),
        # nodes the parser refuses
        ("done AND n = ARRAY[1]", "ARRAY", 0, "A_ArrayExpr is not allowed"),
        ("done AND n = (SELECT 1)", "(SELECT", 0, "subqueries are not allowed"),
        ("done AND now() > at", "now", 0, "function now() is not allowed"),
    ],
)
def test_error_points_at_the_offending_token(clause: str, token: str, after: int, fragment: str) -> None:
    with pytest.raises(ShapeError) as info:
        compile_where(clause, REL, CLAIMS)
    assert fragment in info.value.message
    expected = clause.index(token, after)
    assert info.value.offset == expected, (
        f"{clause!r}: error at {info.value.offset} ({clause[info.value.offset or 0 :]!r}), "
        f"expected at {expected} ({clause[expected:]!r})"
    )


def _nodes(node: ir.Node) -> list[ir.Node]:
    out = [node]
    for name in ("arg", "left", "right", "pattern"):
        child = getattr(node, name, None)
        if child is not None:
            out += _nodes(child)
    for name in ("args", "items"):
        for child in getattr(node, name, ()):
            out += _nodes(child)
    return out


def test_every_ir_node_keeps_its_source_position() -> None:
    text = "n + 2 > -3 AND lower(title) LIKE 'a%' OR coalesce(n, 1) IN (2, 3.5) AND NOT done IS TRUE"
    node = Checker(REL, CLAIMS).condition(parse(text).expr)
    at = {(type(n).__name__, n.offset) for n in _nodes(node)}
    expected = {
        ("Logic", text.index("OR")),
        ("Logic", text.index("AND")),
        ("Logic", text.index("AND NOT")),
        ("Compare", text.index(">")),
        ("Arith", text.index("+")),
        ("ColumnRef", text.index("n +")),
        ("Const", text.index("2 >")),
        ("Const", text.index("-3")),
        ("Like", text.index("LIKE")),
        ("Call", text.index("lower")),
        ("ColumnRef", text.index("title")),
        ("Const", text.index("'a%'")),
        ("InList", text.index("IN (")),
        ("Coalesce", text.index("coalesce")),
        ("ColumnRef", text.index("n, 1")),
        ("Const", text.index("1)")),
        ("Widen", text.index("coalesce")),
        ("Const", text.index("2,")),
        ("Const", text.index("3.5")),
        ("Not", text.index("NOT")),
        ("IsBool", text.index("IS TRUE")),
        ("ColumnRef", text.index("done")),
    }
    assert at == expected


def test_an_operand_that_fails_does_not_decide_and_or() -> None:
    overflow = (b"1", b"1", str(1 << 40).encode(), b"x", None, None, None, None, None, None)
    either = compile_where("big::int4 = 3 OR title = 'x'", REL)
    assert either.matches(overflow)  # the other operand decides
    both = compile_where("big::int4 = 3 AND title = 'y'", REL)
    assert not both.matches(overflow)  # decided by the false operand
    undecided = compile_where("big::int4 = 3 AND title = 'x'", REL)
    assert not undecided.matches(overflow)  # Postgres would raise: the row is not sent


def test_the_equality_index_takes_constants_and_claims_never_another_column() -> None:
    # a claim named like a column must not stand in for that column: `n = big` compares two
    # columns, so the shape cannot be indexed by a value (routing by the claim would miss rows)
    claims = {"sub": "u1", "big": "5", "title": "t"}
    assert compile_where("n = big", REL, claims).equality is None
    assert compile_where("title = title", REL, claims).equality is None
    assert compile_where("n = auth.big", REL, claims).equality == ("n", "5")
    assert compile_where("title = 'x' AND n > 1", REL, claims).equality == ("title", "x")


def test_a_stored_value_python_cannot_hold_makes_the_row_undecided_not_an_error() -> None:
    where = compile_where("at > '2020-01-01' OR n = 1", REL, CLAIMS)
    at, n = ([c.name for c in REL.columns].index(c) for c in ("at", "n"))
    for stored in (b"infinity", b"-infinity", b"0044-03-15 00:00:00+00 BC", b"10000-01-01 00:00:00+00"):
        row: list[bytes | None] = [None] * len(REL.columns)
        row[at] = stored
        assert where.matches(tuple(row)) is False
        row[n] = b"1"  # the other operand of OR still decides
        assert where.matches(tuple(row)) is True


def test_numeric_and_array_columns_are_refused_in_where_clauses() -> None:
    """Postgres compares them by value, the stream carries their text: refused until both agree."""
    rel = RelationDef(8, "public", "t", (Column("id", 0, "int4", True, False), Column("amount", 0, "numeric", False, True),
                                         Column("tags", 0, "_text", False, True)))  # fmt: skip
    for clause, what in (("amount = '1.5'", "numeric"), ("tags IS NULL", "an array")):
        with pytest.raises(ShapeError, match=f"is {what}: where clauses cannot use numeric or array columns yet"):
            compile_where(clause, rel)
