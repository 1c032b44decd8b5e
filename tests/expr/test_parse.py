"""The expression whitelist: what parses, what is refused, and that nothing else escapes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from electricctl._expr import ast
from electricctl._expr.parse import ExprError, is_boolean_shaped, parse


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("owner_id = auth.sub", "owner_id = auth.sub"),
        ("status  <>  'archived'", "status <> 'archived'"),
        ("a != 1", "a <> 1"),
        ("this.n > 1 AND NOT (x IS NULL)", "this.n > 1 AND NOT x IS NULL"),
        ("lower(name) LIKE 'a%' OR name ILIKE 'B%'", "lower(name) LIKE 'a%' OR name ILIKE 'B%'"),
        ("x::int BETWEEN 1 AND 2", "CAST(x AS integer) BETWEEN 1 AND 2"),
        ("x NOT IN ('a', 'b')", "x NOT IN ('a', 'b')"),
        ("flag IS NOT TRUE", "flag IS NOT TRUE"),
        ("coalesce(a, b) = -1", "COALESCE(a, b) = -1"),
        ("a IS DISTINCT FROM b", "a IS DISTINCT FROM b"),
        ("starts_with(name, 'x')", "starts_with(name, 'x')"),
    ],
)
def test_allowed_expressions_parse_and_normalise(text: str, canonical: str) -> None:
    parsed = parse(text)
    assert parsed.canonical == canonical
    assert parse(parsed.canonical) == parse(parsed.canonical)  # canonical text re-parses


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1=1; DROP TABLE x", "not several statements"),
        ("x = 1; SELECT pg_sleep(1)", "not several statements"),
        ("true UNION SELECT 1", "not a query fragment"),
        ("true ORDER BY 1", "not a query fragment"),
        ("true LIMIT 1", "not a query fragment"),
        ("now() > created_at", "function now() is not allowed"),
        ("random() < 0.5", "function random() is not allowed"),
        ("pg_catalog.pg_read_file('/etc/passwd') IS NULL", "function pg_catalog.pg_read_file() is not allowed"),
        ("x IN (SELECT 1)", "subqueries are not allowed"),
        ("EXISTS (SELECT 1)", "subqueries are not allowed"),
        ("x = $1", "parameters ($1) are not allowed"),
        ("x::regclass IS NULL", "cast to regclass is not allowed"),
        ("x::int[] IS NULL", "cast to pg_catalog.int4 is not allowed"),
        ("x ~ 'a'", "operator ~ is not allowed"),
        ("count(*) > 1", "function count() is not allowed"),
        ("x = ARRAY[1]", "A_ArrayExpr is not allowed"),
        ("x = (SELECT 1)", "subqueries are not allowed"),
        ("t.* IS NULL", "`*` is not allowed"),
        ("a.b.c = 1", "too many parts"),
        ("", "the expression is empty"),
        ("x = ", "syntax error"),
    ],
)
def test_refused_expressions(text: str, fragment: str) -> None:
    with pytest.raises(ExprError) as info:
        parse(text)
    assert fragment in info.value.message


def test_columns_are_collected_with_offsets() -> None:
    cols = list(ast.columns(parse("a = 1 AND this.b = auth.sub").expr))
    assert [(c.qualifier, c.name, c.offset) for c in cols] == [(None, "a", 0), ("this", "b", 10), ("auth", "sub", 19)]


def test_boolean_shape() -> None:
    assert is_boolean_shaped(parse("a = 1").expr) is True
    assert is_boolean_shaped(parse("a").expr) is None
    assert is_boolean_shaped(parse("a || 'x'").expr) is False
    assert is_boolean_shaped(parse("1").expr) is False


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abc xyz_019()'\";:=<>!|*-+.,$\\\n")), max_size=40))
def test_arbitrary_text_either_parses_into_the_whitelist_or_raises_expr_error(text: str) -> None:
    try:
        parsed = parse(text)
    except ExprError:
        return
    allowed = (ast.Column, ast.Const, ast.Op, ast.BoolOp, ast.In, ast.Like, ast.Between, ast.IsNull, ast.IsBool)
    allowed += (ast.Distinct, ast.Func, ast.Cast, ast.Coalesce)
    assert all(isinstance(node, allowed) for node in ast.walk(parsed.expr))
    # whatever was accepted prints back as exactly one expression (a ';' may only sit inside a string)
    from pglast import parse_sql

    assert len(parse_sql("SELECT 1 WHERE " + parsed.canonical)) == 1
    assert parse(parsed.canonical).canonical == parsed.canonical


def test_every_node_keeps_its_offset() -> None:
    text = "x::varchar(3) = -12 AND y IN (NULL, true, 1.5, 'a') AND z = date '2000-01-01' OR coalesce(a, 1) > 2"
    at = {(type(n).__name__, n.offset) for n in ast.walk(parse(text).expr) if not isinstance(n, ast.Column)}
    assert at == {
        ("BoolOp", text.index("OR")),
        ("BoolOp", text.index("AND")),
        ("Op", text.index("= -12")),
        ("Cast", text.index("::")),
        ("Const", text.index("-12")),
        ("In", text.index("IN")),
        ("Const", text.index("NULL")),
        ("Const", text.index("true")),
        ("Const", text.index("1.5")),
        ("Const", text.index("'a'")),
        ("Op", text.index("= date")),
        ("Cast", text.index("date")),
        ("Const", text.index("'2000")),
        ("Op", text.index("> 2")),
        ("Coalesce", text.index("coalesce")),
        ("Const", text.index("1)")),
        ("Const", text.index("2", text.index("> 2"))),
    }
    # positions are not part of a node's meaning
    assert parse("x = 1").expr == ast.Op("=", ast.Column(None, "x", 0), ast.Const(1))
