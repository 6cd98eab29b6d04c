"""Event-time history of one value per key, stored in buckets, for changes over windows and candles.

Why buckets and not faust windowed tables: faust expires windows on wall-clock time, its
``on_window_close`` does not receive the aggregate, and windows restored after a restart may never
expire (see docs/architecture.md). Instead each key's points live in small time buckets of a plain
changelog-backed table (key ``"b|<series>@<bucket number>"``). A new point rewrites one small bucket, not
the whole history, so the changelog stays cheap; buckets that fall out of the longest window are
deleted as the key's event time moves on. A small index per series and group of ``INDEX_SPAN``
buckets lists the non-empty buckets, so finding "the last point before t" across a gap, and expiring,
take a bounded number of lookups instead of a walk over every empty bucket.

Everything here is a pure function of the points: inserting a point is idempotent (same timestamp
replaces), and the order points arrive in does not change the result. That is what makes an
at-least-once restart, which reprocesses records the changelog already holds, end in the same state.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SeriesSpec",
    "Point",
    "record_point",
    "bucket_points",
    "value_near",
    "changes",
    "expire_buckets",
    "candle",
    "pct_change",
    "INDEX_SPAN",
    "difference",
    "Compare",
]

Point = list[float]  # [epoch seconds, value]; a list because that is what JSON gives back
# Holds buckets (lists of points), index entries (lists of bucket numbers) and, in pipeline.observe,
# latest entries: one table per aggregation (see pipeline.observe for why).
Store = MutableMapping[str, Any]


@dataclass(frozen=True)
class SeriesSpec:
    """How a kind of series is kept: bucket width, the windows changes are computed over, tolerance."""

    bucket_s: int
    windows: tuple[tuple[str, int], ...]  # (name, seconds), e.g. ("1h", 3600)
    # The comparison point is the one nearest "one window ago", at most this fraction of the window
    # away. Past that, the change is unknown (null) rather than computed against stale data.
    tolerance: float = 0.5
    # Bounds a bucket's size when a source ticks faster than needed; the newest point always wins.
    max_points_per_bucket: int = 240

    @property
    def retention_s(self) -> float:
        longest = max(seconds for _, seconds in self.windows)
        return longest * (1 + self.tolerance) + self.bucket_s

    def bucket_of(self, ts: float) -> int:
        return math.floor(ts / self.bucket_s)


INDEX_SPAN = 64  # buckets per index entry


def _key(series: str, bucket: int) -> str:
    return f"b|{series}@{bucket}"


def _index_key(series: str, group: int) -> str:
    return f"i|{series}#{group}"


def record_point(store: Store, spec: SeriesSpec, series: str, ts: float, value: float) -> list[Point]:
    """Insert (ts, value) into its bucket, replacing a point with the same timestamp; returns the bucket."""
    bucket = spec.bucket_of(ts)
    key = _key(series, bucket)
    stored = store.get(key)
    points = list(stored) if stored else []
    index = bisect.bisect_left(points, ts, key=lambda p: p[0])
    if index < len(points) and points[index][0] == ts:
        if points[index][1] == value:
            return points  # nothing changed: spare the changelog a write
        points[index] = [ts, value]
    else:
        points.insert(index, [ts, value])
        if len(points) > spec.max_points_per_bucket:
            # Keep the bucket's first and last points (they define a candle's open and close).
            del points[-2]
    if not stored:
        # Index before bucket: a crash between the two writes leaves an index entry for a bucket that
        # the redelivered record then writes, never a bucket the index does not know.
        _index_add(store, series, bucket)
    store[key] = points
    return points


def _index_add(store: Store, series: str, bucket: int) -> None:
    key = _index_key(series, bucket // INDEX_SPAN)
    buckets = list(store.get(key) or ())
    position = bisect.bisect_left(buckets, bucket)
    if position == len(buckets) or buckets[position] != bucket:
        buckets.insert(position, bucket)
        store[key] = buckets


def bucket_points(store: Store, spec: SeriesSpec, series: str, ts: float) -> list[Point]:
    """The points of the bucket ``ts`` falls in (empty when there are none)."""
    return list(store.get(_key(series, spec.bucket_of(ts))) or ())


def _last_bucket_before(store: Store, series: str, bucket: int, oldest: int) -> int | None:
    """The newest non-empty bucket in [oldest, bucket), found through the index."""
    group = bucket // INDEX_SPAN
    while group >= oldest // INDEX_SPAN:
        buckets = store.get(_index_key(series, group))
        if buckets:
            position = bisect.bisect_left(buckets, bucket)
            if position and buckets[position - 1] >= oldest:
                return int(buckets[position - 1])
            if position:
                return None
        group -= 1
    return None


def value_near(
    store: Store, spec: SeriesSpec, series: str, target: float, tolerance: float, now: float
) -> float | None:
    """The value of the point nearest ``target`` within ``tolerance``, never later than ``now``.

    Nearest, not "last before": sources poll at slightly different times each day, and the last point
    before "exactly a day ago" is then often two days old.
    """
    before = _last_point_at_or_before(store, spec, series, target)
    after = _first_point_after(store, spec, series, target, min(target + tolerance, now))
    candidates = [
        p for p in (before, after) if p is not None and abs(p[0] - target) <= tolerance and p[0] < now
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda p: abs(p[0] - target))[1]


def _last_point_at_or_before(store: Store, spec: SeriesSpec, series: str, at: float) -> Point | None:
    bucket = spec.bucket_of(at)
    points: list[Point] | None = store.get(_key(series, bucket))
    if points:
        index = bisect.bisect_right(points, at, key=lambda p: p[0])
        if index:
            return points[index - 1]
    # Lookups never need more than the retention: older buckets are gone anyway.
    earlier = _last_bucket_before(store, series, bucket, spec.bucket_of(at - spec.retention_s))
    if earlier is None:
        return None
    points = store.get(_key(series, earlier))
    return points[-1] if points else None


def _first_point_after(
    store: Store, spec: SeriesSpec, series: str, after: float, limit: float
) -> Point | None:
    """The first point later than ``after`` and not later than ``limit``."""
    bucket = spec.bucket_of(after)
    points = store.get(_key(series, bucket))
    if points:
        index = bisect.bisect_right(points, after, key=lambda p: p[0])
        if index < len(points):
            return points[index] if points[index][0] <= limit else None
    later = _first_bucket_after(store, series, bucket, spec.bucket_of(limit))
    points = store.get(_key(series, later)) if later is not None else None
    return points[0] if points and points[0][0] <= limit else None


def _first_bucket_after(store: Store, series: str, bucket: int, newest: int) -> int | None:
    """The oldest non-empty bucket in (bucket, newest], found through the index."""
    for group in range(bucket // INDEX_SPAN, newest // INDEX_SPAN + 1):
        buckets = store.get(_index_key(series, group))
        if buckets:
            position = bisect.bisect_right(buckets, bucket)
            if position < len(buckets):
                return int(buckets[position]) if buckets[position] <= newest else None
    return None


def pct_change(now: float, then: float | None) -> float | None:
    """Percent change; unknown (None) when there is no comparison point or it is zero, never 0 or -100."""
    if then is None or then == 0:
        return None
    return (now - then) / then * 100.0


def difference(now: float, then: float | None) -> float | None:
    """Absolute change, for values that are already percentages (an APY's change in points)."""
    return None if then is None else now - then


Compare = Callable[[float, float | None], float | None]


def changes(
    store: Store, spec: SeriesSpec, series: str, ts: float, value: float, compare: Compare = pct_change
) -> dict[str, float | None]:
    """``compare(value, value one window earlier)`` for each window (percent change by default)."""
    result: dict[str, float | None] = {}
    for name, seconds in spec.windows:
        then = value_near(store, spec, series, ts - seconds, seconds * spec.tolerance, ts)
        result[name] = compare(value, then)
    return result


def expire_buckets(store: Store, spec: SeriesSpec, series: str, previous_ts: float | None, ts: float) -> int:
    """Delete the buckets that fell out of retention when the key's latest time moved to ``ts``."""
    if previous_ts is None or ts <= previous_ts:
        return 0
    newest_expired = spec.bucket_of(ts - spec.retention_s) - 1
    # What was retained at previous_ts lies in these groups, at most retention/(bucket*span) + 2 of them,
    # however long the gap since.
    first_group = spec.bucket_of(previous_ts - spec.retention_s) // INDEX_SPAN - 1
    last_group = min(newest_expired, spec.bucket_of(previous_ts)) // INDEX_SPAN
    deleted = 0
    for group in range(first_group, last_group + 1):
        index_key = _index_key(series, group)
        buckets = store.get(index_key)
        if not buckets:
            continue
        keep = [bucket for bucket in buckets if bucket > newest_expired]
        for bucket in buckets[: len(buckets) - len(keep)]:
            key = _key(series, bucket)
            if key in store:
                del store[key]
                deleted += 1
        if not keep:
            del store[index_key]
        elif len(keep) != len(buckets):
            store[index_key] = keep
    return deleted


def candle(points: list[Point]) -> tuple[float, float, float, float]:
    """(open, high, low, close) of one bucket's points (sorted by time: first is open, last is close)."""
    values = [value for _, value in points]
    return values[0], max(values), min(values), values[-1]
