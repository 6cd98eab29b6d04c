"""Small SQL helpers the notifier's modules share: inserts with ON CONFLICT on PostgreSQL or SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["insert_on_conflict", "table_of", "utc"]


def insert_on_conflict(connection: AsyncConnection, table: Table) -> Any:
    """An INSERT with ON CONFLICT clauses, on PostgreSQL or SQLite (call .on_conflict_do_nothing() or
    .on_conflict_do_update())."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def table_of(model: type[Any]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def utc(moment: datetime | None) -> datetime | None:
    """An aware UTC time (SQLite returns naive ones, which are UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
