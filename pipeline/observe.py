"""One new observation of a keyed series: store it, decide whether it is the latest, compute its changes.

All state of an aggregation lives in one table, so every write an observation makes goes to the same
changelog partition (the source record's) in order, and the series' "latest" entry is written last.
After a crash the changelog therefore holds a prefix of those writes: if the latest entry of a record
is there, everything before it is too. Records redelivered after a restart (offset at or below the
latest entry's) change nothing. The one whose offset equals the latest entry's is published again, so
the last value per key always reaches the derived topic; older ones are not, because their updates were
handed to the producer before their own changelog writes and so were delivered (on one broker, which
sends requests in order), and recomputing them now would use history that has since expired.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pipeline.series import (
    Compare,
    Point,
    SeriesSpec,
    bucket_points,
    changes,
    expire_buckets,
    pct_change,
    record_point,
)

__all__ = ["Observation", "Skipped", "observe", "latest_key", "Watermarks"]


class Skipped(Enum):
    """Why an observation publishes nothing (the value is the metrics label)."""

    LATE = "late"  # older than the series' latest point
    REDELIVERED = "redelivered"  # read again after a restart; already in the state and published


@dataclass(frozen=True, slots=True)
class Observation:
    changes: dict[str, float | None]
    bucket: list[Point]  # this observation's bucket up to its own time (for candles)
    redelivered: bool = False


def latest_key(series: str) -> str:
    return f"l|{series}"


def observe(
    state: MutableMapping[str, Any],
    spec: SeriesSpec,
    series: str,
    ts: float,
    value: float,
    offset: int,
    compare: Compare = pct_change,
) -> Observation | Skipped:
    """Record (ts, value) of ``series`` read at source ``offset``, or say why there is nothing to publish.

    A late point (older than the series' latest) still enters the history, since later changes are
    computed against it, but it is not published: the derived topics are compacted by key and hold
    the latest state, which a late point must not roll back.
    """
    key = latest_key(series)
    previous = state.get(key)
    if previous is not None and offset <= previous["offset"]:
        if offset < previous["offset"]:
            return Skipped.REDELIVERED
        return _observation(state, spec, series, ts, value, compare, redelivered=True)
    record_point(state, spec, series, ts, value)
    previous_ts = previous["ts"] if previous is not None else None
    if previous_ts is not None and ts < previous_ts:
        return Skipped.LATE
    expire_buckets(state, spec, series, previous_ts, ts)
    observation = _observation(state, spec, series, ts, value, compare, redelivered=False)
    state[key] = {"ts": ts, "offset": offset, "value": value}  # last write of this observation
    return observation


def _observation(
    state: MutableMapping[str, Any],
    spec: SeriesSpec,
    series: str,
    ts: float,
    value: float,
    compare: Compare,
    redelivered: bool,
) -> Observation:
    bucket = bucket_points(state, spec, series, ts) or [[ts, value]]
    return Observation(
        changes=changes(state, spec, series, ts, value, compare),
        bucket=[point for point in bucket if point[0] <= ts],
        redelivered=redelivered,
    )


class Watermarks:
    """Newest event time seen per (source, partition), to flag values that arrive already stale.

    Per partition because partitions are consumed at their own pace: a watermark shared across them
    would call the records of a partition that is merely behind "stale".
    """

    def __init__(self) -> None:
        self._newest: dict[str, float] = {}

    def is_stale(self, source: str, partition: int, ts: float, stale_after_s: float) -> bool:
        key = f"{source}@{partition}"
        newest = self._newest.get(key, ts)
        if ts > newest:
            newest = ts
        self._newest[key] = newest
        return newest - ts > stale_after_s
