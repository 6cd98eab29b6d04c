"""Keyset pages for the alerts API's listings: newest first by (time, id), resumable from the last row."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVarTuple

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

__all__ = ["Cursor", "newest_first", "utc"]

# (time, id) of the last row of the previous page.
Cursor = tuple[datetime, str | int]
Ts = TypeVarTuple("Ts")


def utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def newest_first(
    query: Select[*Ts],
    time_column: InstrumentedAttribute[datetime],
    id_column: InstrumentedAttribute[Any],
    after: Cursor | None,
    limit: int,
) -> Select[*Ts]:
    """``query`` ordered newest first, starting after ``after``; ties in time are broken by id so that no
    row is skipped or repeated between pages, whatever is inserted meanwhile."""
    if after is not None:
        moment, last_id = after
        query = query.where(or_(time_column < moment, and_(time_column == moment, id_column < last_id)))
    return query.order_by(time_column.desc(), id_column.desc()).limit(limit)
