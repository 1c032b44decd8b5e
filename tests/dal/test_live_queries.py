"""Live queries on a real SQLite file: a new result once per real change, none for a write that does
not change the result or touches another table, released when cancelled. (Remote changes reaching
live queries are in test_generated_client.py, against a real serve.)"""

from __future__ import annotations

import asyncio
import importlib
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from electricctl._codegen import write_package
from electricctl._codegen.build import build_schema
from electricctl._codegen.render import render
from electricctl.dal import FilterError
from tests.client.test_sync_client import until
from tests.dal.schemas import ITEMS

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Any]:
    name = f"itemsdb_{uuid.uuid4().hex[:8]}"
    write_package(tmp_path / name, render(build_schema(ITEMS)))
    sys.path.insert(0, str(tmp_path))
    try:
        pkg = importlib.import_module(name)
        # offline: the bundled migrations make the tables; nothing connects
        database = await pkg.electrify(str(tmp_path / "app.db"), "ws://127.0.0.1:1/ws", token="t", connect=False)
        database.pkg = pkg
        try:
            yield database
        finally:
            await database.close()
    finally:
        sys.path.remove(str(tmp_path))


async def next_result(it: AsyncIterator[Any], timeout: float = 5) -> Any:
    return await asyncio.wait_for(it.__anext__(), timeout)


async def test_a_live_query_yields_once_per_real_change(db: Any) -> None:
    Item = db.pkg.ItemCreate
    live = db.items.live_many(where={"n": {"gt": 5}}, order_by={"id": "asc"})
    it = aiter(live)
    assert await next_result(it) == []  # the current result first
    await db.items.create(Item(id="a", n=10, label="x"))
    assert [r.id for r in await next_result(it)] == ["a"]
    # not changing the result: a row outside the filter, a write to another table, a no-op update
    await db.items.create(Item(id="b", n=1))
    await db.other.create(db.pkg.OtherCreate(id=1, v="w"))
    await db.items.update(where={"id": "a"}, data={"n": 10})
    pending = asyncio.ensure_future(it.__anext__())
    await asyncio.sleep(0.3)
    assert not pending.done()
    # each real change: one new result
    await db.items.update(where={"id": "b"}, data={"n": 7})
    assert [(r.id, r.n) for r in await asyncio.wait_for(pending, 5)] == [("a", 10), ("b", 7)]
    await db.raw("UPDATE items SET label = 'y' WHERE id = ?", ["b"])  # raw SQL counts too
    assert [r.label for r in await next_result(it)] == ["x", "y"]
    await db.items.delete(where={"id": "a"})
    assert [r.id for r in await next_result(it)] == ["b"]
    await it.aclose()  # type: ignore[attr-defined]
    assert not db._lives  # released


async def test_callbacks_and_raw_live_queries_and_release(db: Any) -> None:
    seen: list[list[tuple[Any, ...]]] = []
    live = db.live_raw("SELECT id, n FROM items WHERE n IS NOT NULL ORDER BY id")
    stop = live.subscribe(seen.append)
    await until(lambda: seen == [[]])
    await db.items.create(db.pkg.ItemCreate(id="a", n=1))
    await until(lambda: seen == [[], [("a", 1)]])
    await db.other.create(db.pkg.OtherCreate(id=2))  # another table: the query does not even run
    await asyncio.sleep(0.2)
    assert len(seen) == 2
    stop()
    assert not db._lives
    await db.items.create(db.pkg.ItemCreate(id="b", n=2))
    await asyncio.sleep(0.2)
    assert len(seen) == 2  # released: no more calls
    # breaking out of an async for releases it too (the event loop closes the dropped iterator)
    async for rows in db.items.live_many():
        assert len(rows) == 2
        break
    await until(lambda: not db._lives)


async def test_bad_filters_say_what_is_wrong(db: Any) -> None:
    with pytest.raises(FilterError, match="items has no column 'nope'"):
        await db.items.find_many(where={"nope": 1})
    with pytest.raises(FilterError, match=r"items.n: unknown operator 'between'"):
        await db.items.find_many(where={"n": {"between": [1, 2]}})
    with pytest.raises(FilterError, match=r"items.n: expected an int, got str"):
        await db.items.find_many(where={"n": "3"})
    with pytest.raises(FilterError, match=r"items\.id is part of the primary key"):
        await db.items.update(where={"id": "a"}, data={"id": "b"})
    with pytest.raises(FilterError, match="order is 'asc' or 'desc'"):
        await db.items.find_many(order_by={"n": "up"})


async def test_times_are_written_as_postgres_prints_them() -> None:
    """A value written locally must equal the same value synced (filters compare the text)."""
    import datetime as dt

    from electricctl.dal.values import to_local

    tz = dt.timezone(dt.timedelta(hours=2))
    assert to_local("timestamptz")(dt.datetime(2026, 11, 30, 12, 0, 0, 250000, tzinfo=tz)) == "2026-11-30 10:00:00.25Z"
    assert to_local("timestamptz")(dt.datetime(2026, 11, 30, 10, tzinfo=dt.UTC)) == "2026-11-30 10:00:00Z"
    assert to_local("timestamp")(dt.datetime(2026, 11, 30, 10, 0, 0, 500)) == "2026-11-30 10:00:00.0005"
    assert to_local("time")(dt.time(9, 5, 7, 120000)) == "09:05:07.12"
    assert to_local("date")(dt.date(2026, 1, 2)) == "2026-01-02"
