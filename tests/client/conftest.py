"""The local file's shared fixture: a Store on a fresh SQLite file with one synced table."""

from __future__ import annotations

from pathlib import Path

import pytest

from electricctl.client.store import Column, Store, Table

ME = "me"
ITEMS = Table("items", (Column("id", "int8", True, False), Column("note", "text", False, True)))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    st = Store(str(tmp_path / "local.db"))
    st.ensure_table(ITEMS)
    return st
