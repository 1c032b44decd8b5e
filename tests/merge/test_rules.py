"""The shared conflict rules: LWW per column, add-wins rows, order-independence of concurrent writes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from electricctl._merge.rules import ABSENT, RowState, Tag, Write, merge, merge_all

COLS = ("a", "b", "c")
BASE_TAG = Tag(100, "base")
BASE = merge(ABSENT, Write("insert", BASE_TAG, frozenset(), {"a": 1, "b": 2, "c": 3}))


def test_tags_format_and_parse() -> None:
    assert str(Tag(1674210220785, "fcb57d30")) == "fcb57d30@1674210220785"
    assert str(Tag(5, None)) == "@5"
    assert Tag.parse("client-1@42") == Tag(42, "client-1")
    assert Tag.parse("@42") == Tag(42, None)
    assert Tag.parse("a@b@7") == Tag(7, "a@b")
    with pytest.raises(ValueError):
        Tag.parse("nope")


def test_last_writer_wins_with_tie_breaks() -> None:
    assert Tag(2, "a").beats(Tag(1, "z"))
    assert Tag(1, None).beats(Tag(1, "zzz"))  # Postgres wins ties
    assert not Tag(1, "zzz").beats(Tag(1, None))
    assert Tag(1, "b").beats(Tag(1, "a"))  # then the greater origin
    older = Write("update", Tag(90, "x"), frozenset({BASE_TAG}), {"a": 9}, frozenset({"a"}))
    assert merge(BASE, older).values["a"] == 1  # an older write loses its column
    newer = Write("update", Tag(110, "x"), frozenset({BASE_TAG}), {"a": 9, "b": 2, "c": 3}, frozenset({"a"}))
    state = merge(BASE, newer)
    assert dict(state.values) == {"a": 9, "b": 2, "c": 3}
    assert state.col_tags["a"] == Tag(110, "x") and state.col_tags["b"] == BASE_TAG


def test_add_wins_a_concurrent_update_survives_a_delete() -> None:
    delete = Write("delete", Tag(120, "d"), frozenset({BASE_TAG}))
    update = Write("update", Tag(110, "u"), frozenset({BASE_TAG}), {"a": 7}, frozenset({"a"}))
    for order in ((delete, update), (update, delete)):
        state = merge_all(BASE, order)
        assert state.exists and state.tags == {Tag(110, "u")} and state.values["a"] == 7
    # a delete that saw the update removes the row
    seen = Write("delete", Tag(130, "d"), frozenset({BASE_TAG, Tag(110, "u")}))
    assert not merge_all(BASE, (update, seen)).exists


def test_compensation_revives_a_concurrently_deleted_parent() -> None:
    delete = Write("delete", Tag(120, "d"), frozenset({BASE_TAG}))
    compensation = Write("compensation", Tag(121, "c"), frozenset({BASE_TAG}))
    for order in ((delete, compensation), (compensation, delete)):
        state = merge_all(BASE, order)
        assert dict(state.values) == {"a": 1, "b": 2, "c": 3}
    assert merge_all(BASE, (delete, compensation)).exists


writes = st.builds(
    lambda kind, ts, origin, changed, value: Write(
        kind,
        Tag(ts, origin),
        frozenset({BASE_TAG}),  # concurrent: each writer saw only the base row
        {c: value for c in COLS} if kind != "delete" else {},
        frozenset(changed) if kind != "delete" else None,
    ),
    st.sampled_from(["update", "update", "delete", "insert"]),
    st.integers(95, 105),
    st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])),
    st.sets(st.sampled_from(COLS), min_size=1),
    st.integers(0, 9),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(writes, min_size=2, max_size=4, unique_by=lambda w: w.tag))
def test_concurrent_writes_converge_in_any_order(batch: list[Write]) -> None:
    results = {_freeze(merge_all(BASE, order)) for order in itertools.permutations(batch)}
    assert len(results) == 1, results


def _freeze(state: RowState) -> tuple[object, ...]:
    return (tuple(sorted(state.values.items())), tuple(sorted(state.col_tags.items(), key=str)), state.tags)


def test_an_observed_postgres_tag_covers_earlier_postgres_tags() -> None:
    from electricctl._merge.rules import remove_observed

    tags = frozenset({Tag(100, None), Tag(120, None), Tag(110, "c")})
    # a client knows a Postgres write by its commit time, never earlier than the tag's row time
    assert remove_observed(tags, frozenset({Tag(105, None)})) == {Tag(120, None), Tag(110, "c")}
    assert remove_observed(tags, frozenset({Tag(110, "c")})) == {Tag(100, None), Tag(120, None)}
    assert remove_observed(tags, frozenset()) == tags


def test_later_operations_of_one_transaction_override_earlier_ones() -> None:
    tag = Tag(200, "x")
    state = merge(BASE, Write("update", tag, frozenset({BASE_TAG}), {"a": 5}, frozenset({"a"})))
    state = merge(state, Write("update", tag, frozenset({tag}), {"a": 6}, frozenset({"a"})))
    assert state.values["a"] == 6 and state.tags == {tag}
