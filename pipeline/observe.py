"""One new observation of a keyed series: store it, decide whether it is the latest, compute its changes.

All state of an aggregation lives in one table, so every write an observation makes goes to the same
changelog partition (the source record's) in order, and the series' "latest" entry is written last.
After a crash the changelog therefore holds a prefix of those writes: if the latest entry of a record
is there, everything before it is too. Records redelivered after a restart (offset at or below the
latest entry's) change nothing and are published again, so the derived topic is at-least-once and
its last value per key is the same as in a run that never crashed.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
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

__all__ = ["Observation", "observe", "latest_key", "Watermarks"]


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
) -> Observation | None:
    """Record (ts, value) of ``series`` read at source ``offset``; None when it is late.

    A late point (older than the series' latest) still enters the history, since later changes are
    computed against it, but it is not published: the derived topics are compacted by key and hold
    the latest state, which a late point must not roll back.
    """
    key = latest_key(series)
    previous = state.get(key)
    if previous is not None and offset <= previous["offset"]:
        return _observation(state, spec, series, ts, value, compare, redelivered=True)
    record_point(state, spec, series, ts, value)
    previous_ts = previous["ts"] if previous is not None else None
    if previous_ts is not None and ts < previous_ts:
        return None
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
