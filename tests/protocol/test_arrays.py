"""Arrays between Postgres' text form and clients' JSON (pure), and what a client may not send."""

from __future__ import annotations

import pytest

from electricctl._model.arrays import element_type, json_to_pg, pg_to_json


@pytest.mark.parametrize(
    ("element", "pg", "as_json"),
    [
        ("int4", "{1,2,NULL}", "[1, 2, null]"),
        ("int4", "{}", "[]"),
        ("int4", "{{1,2},{3,NULL}}", "[[1, 2], [3, null]]"),
        ("text", '{"a b","q\\"uote","back\\\\slash","",NULL,"NULL"}', '["a b", "q\\"uote", "back\\\\slash", "", null, "NULL"]'),
        ("float8", "{NaN,Infinity,-Infinity,1.7976931348623157e+308,-0}", '["NaN", "Infinity", "-Infinity", 1.7976931348623157e+308, -0]'),
        ("bool", "{t,f}", "[true, false]"),
        ("numeric", "{1.50,NaN}", '["1.50", "NaN"]'),
        ("bytea", '{"\\\\x00ff"}', '["\\\\x00ff"]'),
    ],
)  # fmt: skip
def test_postgres_text_and_json_convert_both_ways(element: str, pg: str, as_json: str) -> None:
    assert pg_to_json(pg, element) == as_json
    back = json_to_pg(as_json, element)
    # every element comes back quoted (or NULL): Postgres reads it with the element type's input
    assert pg_to_json(back, element) == as_json


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{1,2}", "not JSON"),
        ('{"a": 1}', "not a JSON array"),
        ("[[1, 2], [3]]", "must be rectangular"),
        ("[[1], 2]", "must be rectangular"),
        ('[{"a": 1}]', "a JSON dict in an array of int4"),
        ("[true]", "a boolean in an array of int4"),
        ("[NaN]", "NaN is not JSON"),
    ],
)
def test_a_client_value_that_is_not_an_array_of_the_type_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        json_to_pg(text, "int4")


def test_lower_bounds_other_than_one_have_no_json_form() -> None:
    with pytest.raises(ValueError, match="lower bound 1"):
        pg_to_json("[0:1]={1,2}", "int4")
    assert element_type("_int4") == "int4" and element_type("int4") is None
