"""Hourly and daily rollups of the derived topics in SQL: pure folding, an idempotent upsert, range reads."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.channels import CHANNELS
from pipeline.storage.models import HistoryPoint

__all__ = [
    "METRIC",
    "RESOLUTIONS",
    "Update",
    "Rollup",
    "as_of_of",
    "bucket_start",
    "fold",
    "merge",
    "stored_watermarks",
    "upsert_rollups",
    "record_updates",
    "read_history",
]

METRIC = {"tvl": "tvl_usd", "prices": "price", "yields": "apy"}
RESOLUTIONS = {"1h": 3600, "1d": 86400}

# (channel, series key, row): one derived-topic message, as the writer decoded it.
Update = tuple[str, str, dict[str, Any]]
SeriesId = tuple[str, str]
BucketId = tuple[str, str, str, datetime]

# 12 bind parameters per row: well under PostgreSQL's 32,767 and SQLite's 32,766 per statement.
_ROWS_PER_STATEMENT = 1000
# Series keys per IN list when reading stored watermarks (two parameters each).
_KEYS_PER_QUERY = 2000
_TABLE = cast(Table, HistoryPoint.__table__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Rollup:
    """One bucket of one series: OHLC of the channel's metric over its updates, and the newest row."""

    channel: str
    series_key: str
    resolution: str
    bucket_start: datetime
    metric: str
    open: float | None
    high: float | None
    low: float | None
    close: float | None
    samples: int
    last_as_of: datetime
    fields: dict[str, Any]

    @property
    def bucket(self) -> BucketId:
        return (self.channel, self.series_key, self.resolution, self.bucket_start)


def _utc(moment: datetime) -> datetime:
    # SQLite keeps no zone: naive values read back, or given by a caller, are UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def as_of_of(row: Mapping[str, Any]) -> datetime:
    """The row's event time (``as_of``, ISO 8601) as an aware UTC datetime; ValueError when unusable."""
    text = row.get("as_of")
    if not isinstance(text, str):
        raise ValueError(f"as_of missing or not a string: {text!r}")
    return _utc(datetime.fromisoformat(text))


def bucket_start(moment: datetime, seconds: int) -> datetime:
    """Start of the UTC-aligned bucket of ``seconds`` that ``moment`` falls in."""
    offset = (_utc(moment) - _EPOCH).total_seconds()
    return datetime.fromtimestamp(offset - offset % seconds, UTC)


def _metric_value(row: Mapping[str, Any], metric: str) -> float | None:
    value = row.get(metric)
    # bool is an int to Python, never a metric; NaN/inf never come from the topics but would poison max/min.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _pick(choose: Any, a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else cast(float, choose(a, b))


def merge(older: Rollup, newer: Rollup) -> Rollup:
    """Fold a newer rollup of the same bucket into an older one (the SQL upsert does the same).

    Null metric values (a pool without APY) are gaps, like missing ticks of a candle: open is the first
    known value, close the last known one, and the newest row is kept whole in ``fields``.
    """
    return replace(
        older,
        metric=newer.metric,
        open=older.open if older.open is not None else newer.open,
        high=_pick(max, older.high, newer.high),
        low=_pick(min, older.low, newer.low),
        close=newer.close if newer.close is not None else older.close,
        samples=older.samples + newer.samples,
        last_as_of=newer.last_as_of,
        fields=newer.fields,
    )


def _fields(channel: str, row: Mapping[str, Any]) -> dict[str, Any]:
    # Only the channel's fields, so history rows filter like live rows (drops e.g. the 1-minute candle).
    known = CHANNELS[channel].fields
    return {name: value for name, value in row.items() if name in known}


def fold(updates: Iterable[Update], *, after: Mapping[SeriesId, datetime] | None = None) -> list[Rollup]:
    """One rollup per (channel, key, resolution, bucket) of updates given in arrival order.

    Within a key the topics publish in ``as_of`` order, so an update not newer than the key's newest
    one seen so far (or than ``after[(channel, key)]``, what the store already holds) is a redelivery
    and is dropped: feeding the same updates twice, or a replayed tail, changes nothing.
    """
    newest: dict[SeriesId, datetime] = dict(after or {})
    rollups: dict[BucketId, Rollup] = {}
    for channel, key, row in updates:
        metric = METRIC.get(channel)
        if metric is None:
            raise ValueError(f"channel {channel!r} has no history")
        as_of = as_of_of(row)
        seen = newest.get((channel, key))
        if seen is not None and as_of <= seen:
            continue
        newest[(channel, key)] = as_of
        value = _metric_value(row, metric)
        fields = _fields(channel, row)
        for resolution, seconds in RESOLUTIONS.items():
            sample = Rollup(
                channel, key, resolution, bucket_start(as_of, seconds), metric,
                value, value, value, value, 1, as_of, fields,
            )  # fmt: skip
            current = rollups.get(sample.bucket)
            rollups[sample.bucket] = sample if current is None else merge(current, sample)
    return list(rollups.values())


def _upsert_statement(dialect: str, rows: list[dict[str, Any]]) -> Any:
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(_TABLE).values(rows)
        greatest: Any = func.greatest
        least: Any = func.least
    elif dialect == "sqlite":
        stmt = sqlite.insert(_TABLE).values(rows)
        # SQLite's scalar max()/min() with two arguments.
        greatest, least = func.max, func.min
    else:
        raise ValueError(f"history rollups need PostgreSQL or SQLite, not {dialect}")
    new, old = stmt.excluded, _TABLE.c

    def either(a: ColumnElement[Any], b: ColumnElement[Any]) -> tuple[ColumnElement[Any], ...]:
        # GREATEST/LEAST of coalesced pairs: a null on one side (no APY) never hides the other value.
        return (func.coalesce(a, b), func.coalesce(b, a))

    return stmt.on_conflict_do_update(
        index_elements=[old.channel, old.series_key, old.resolution, old.bucket_start],
        set_={
            "metric": new.metric,
            "open": func.coalesce(old.open, new.open),
            "high": greatest(*either(old.high, new.high)),
            "low": least(*either(old.low, new.low)),
            "close": func.coalesce(new.close, old.close),
            "samples": old.samples + new.samples,
            "last_as_of": new.last_as_of,
            "fields": new.fields,
        },
        # A redelivered bucket (nothing newer than what is stored) is left as it is.
        where=new.last_as_of > old.last_as_of,
    )


def _row(rollup: Rollup) -> dict[str, Any]:
    return {
        "channel": rollup.channel,
        "series_key": rollup.series_key,
        "resolution": rollup.resolution,
        "bucket_start": _utc(rollup.bucket_start),
        "metric": rollup.metric,
        "open": rollup.open,
        "high": rollup.high,
        "low": rollup.low,
        "close": rollup.close,
        "samples": rollup.samples,
        "last_as_of": _utc(rollup.last_as_of),
        "fields": rollup.fields,
    }


async def upsert_rollups(engine: AsyncEngine, rollups: Sequence[Rollup]) -> None:
    """Insert new buckets and merge into stored ones, in one transaction, many rows per statement."""
    merged: dict[BucketId, Rollup] = {}
    for rollup in rollups:
        # One statement may not touch a row twice (PostgreSQL refuses): merge repeats first.
        current = merged.get(rollup.bucket)
        merged[rollup.bucket] = rollup if current is None else merge(current, rollup)
    rows = [_row(r) for r in merged.values()]
    if not rows:
        return
    async with engine.begin() as connection:
        for start in range(0, len(rows), _ROWS_PER_STATEMENT):
            chunk = rows[start : start + _ROWS_PER_STATEMENT]
            await connection.execute(_upsert_statement(engine.dialect.name, chunk))


async def stored_watermarks(
    engine: AsyncEngine, earliest: Mapping[SeriesId, datetime]
) -> dict[SeriesId, datetime]:
    """Newest ``last_as_of`` stored per series, looking at hourly buckets from the series' given time on.

    An update at time t that was stored lies in the hour bucket of t, so scanning from the hour of the
    earliest update of a batch finds it, and the primary key's index bounds the scan.
    """
    found: dict[SeriesId, datetime] = {}
    series = list(earliest)
    t = _TABLE.c
    async with engine.connect() as connection:
        for start in range(0, len(series), _KEYS_PER_QUERY):
            chunk = series[start : start + _KEYS_PER_QUERY]
            since = bucket_start(min(earliest[s] for s in chunk), RESOLUTIONS["1h"])
            query = (
                select(t.channel, t.series_key, func.max(t.last_as_of))
                .where(tuple_(t.channel, t.series_key).in_(chunk))
                .where(t.resolution == "1h", t.bucket_start >= since)
                .group_by(t.channel, t.series_key)
            )
            for channel, key, newest in await connection.execute(query):
                found[(channel, key)] = _utc(newest)
    return found


async def record_updates(engine: AsyncEngine, updates: Sequence[Update]) -> int:
    """Fold a batch of updates into the store, skipping what it already holds; returns rows upserted."""
    earliest: dict[SeriesId, datetime] = {}
    for channel, key, row in updates:
        # min, not first: a replayed tail within the batch may go back in time.
        as_of = as_of_of(row)
        seen = earliest.get((channel, key))
        earliest[(channel, key)] = as_of if seen is None else min(seen, as_of)
    after = await stored_watermarks(engine, earliest) if earliest else {}
    rollups = fold(updates, after=after)
    await upsert_rollups(engine, rollups)
    return len(rollups)


def _rollup(row: Any) -> Rollup:
    return Rollup(
        row.channel, row.series_key, row.resolution, _utc(row.bucket_start), row.metric,
        row.open, row.high, row.low, row.close, row.samples, _utc(row.last_as_of), dict(row.fields),
    )  # fmt: skip


async def read_history(
    engine: AsyncEngine,
    channel: str,
    resolution: str,
    start: datetime,
    end: datetime,
    *,
    limit: int,
    series_keys: Sequence[str] | None = None,
) -> list[Rollup]:
    """Buckets of a channel with ``start <= bucket_start < end``, by bucket then key, at most ``limit``."""
    if channel not in METRIC or resolution not in RESOLUTIONS:
        raise ValueError(f"no {resolution!r} history of channel {channel!r}")
    if series_keys is not None and not series_keys:
        return []
    t = _TABLE.c
    query = select(_TABLE).where(
        t.channel == channel,
        t.resolution == resolution,
        t.bucket_start >= _utc(start),
        t.bucket_start < _utc(end),
    )
    if series_keys is not None:
        query = query.where(t.series_key.in_(list(series_keys)))
    query = query.order_by(t.bucket_start, t.series_key).limit(limit)
    async with engine.connect() as connection:
        return [_rollup(row) for row in await connection.execute(query)]
