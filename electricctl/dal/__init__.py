"""The typed data-access client: what packages made by ``electricctl generate`` build on.

    from myapp.db import electrify, IssueCreate          # the generated package
    db = await electrify("app.db", "ws://127.0.0.1:5133/ws", token=get_token)
    shape = await db.projects.sync(where={"id": pid}, include={"issues": {"include": {"comments": True}}})
    await shape.synced
    rows = await db.projects.find_many(where={"status": "active"}, order_by={"created_at": "desc"}, limit=20)
    await db.issues.create(IssueCreate(id=uuid4(), project_id=pid, title="..."))
    async for rows in db.projects.live_many(where={"status": "active"}):
        render(rows)

:mod:`~electricctl.dal.runtime` holds the database, tables and live queries;
:mod:`~electricctl.dal.query` compiles filters to SQL; :mod:`~electricctl.dal.values` converts
values; :mod:`~electricctl.dal.spec` is the schema a generated package describes.
"""

from electricctl.dal.query import FilterError
from electricctl.dal.runtime import Database, LiveQuery, LocalDb, Order, Shape, Table
from electricctl.dal.spec import ColumnSpec, MigrationSpec, RelationSpec, SchemaSpec, TableSpec
from electricctl.dal.values import ColumnValueError, JsonValue, now_date, now_naive, now_utc
from electricctl.errors import (
    CheckViolation,
    ConstraintError,
    ForeignKeyViolation,
    NotNullViolation,
    UniqueViolation,
)

__all__ = [
    "CheckViolation",
    "ColumnSpec",
    "ColumnValueError",
    "ConstraintError",
    "Database",
    "FilterError",
    "ForeignKeyViolation",
    "JsonValue",
    "LiveQuery",
    "LocalDb",
    "MigrationSpec",
    "NotNullViolation",
    "Order",
    "RelationSpec",
    "SchemaSpec",
    "Shape",
    "Table",
    "TableSpec",
    "UniqueViolation",
    "now_date",
    "now_naive",
    "now_utc",
]
