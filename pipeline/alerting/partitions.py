"""What the evaluator remembers in memory about one input partition: its series, event-time watermarks and
no-data deadlines. Rebuilt from the state table when the partition is first seen after a (re)start.

Watermarks and deadlines are kept per *stream*: the rows of one channel that come from one raw partition
(pipeline/alerting/origin.py), the only rows whose event times arrive in order."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SeriesInfo", "PartitionState", "SERIES_PREFIX"]

SERIES_PREFIX = "s|"


@dataclass(slots=True)
class SeriesInfo:
    channel: str
    stream: str
    as_of: float
    row: Mapping[str, Any]
    open: frozenset[str]  # ids of the rules with a stored (not plain normal) instance on this series


@dataclass
class PartitionState:
    series: dict[str, SeriesInfo] = field(default_factory=dict)
    # Newest event time seen per stream: what "no update for no_data_after" is measured against.
    watermarks: dict[str, float] = field(default_factory=dict)
    # Per stream, a heap of (deadline, series, as_of when pushed); entries of a series that has since
    # updated are stale and dropped when they surface.
    deadlines: dict[str, list[tuple[float, str, float]]] = field(default_factory=dict)
    with_open: set[str] = field(default_factory=set)
    generation: int = -1  # the rule book generation whose removals were last swept here

    @classmethod
    def rebuild(
        cls,
        partition: int,
        records: Iterable[tuple[Any, Any]],
        stream_of: Callable[[str, Mapping[str, Any]], str],
    ) -> PartitionState:
        """From the state table's series records of this partition (``s|<series>``)."""
        state = cls()
        for key, record in records:
            if not (isinstance(key, str) and key.startswith(SERIES_PREFIX)) or not isinstance(record, dict):
                continue
            if record.get("partition") != partition:
                continue
            state.note(
                key[len(SERIES_PREFIX) :],
                record["channel"],
                stream_of(record["channel"], record["row"]),
                record["as_of"],
                record["row"],
                frozenset(record.get("open", ())),
            )
        return state

    def note(
        self,
        series: str,
        channel: str,
        stream: str,
        as_of: float,
        row: Mapping[str, Any],
        open_: frozenset[str],
    ) -> None:
        self.series[series] = SeriesInfo(channel, stream, as_of, row, open_)
        if open_:
            self.with_open.add(series)
        else:
            self.with_open.discard(series)
        if as_of > self.watermarks.get(stream, float("-inf")):
            self.watermarks[stream] = as_of

    def set_open(self, series: str, open_: frozenset[str]) -> None:
        info = self.series.get(series)
        if info is not None:
            info.open = open_
        if open_:
            self.with_open.add(series)
        else:
            self.with_open.discard(series)

    def push_deadline(self, stream: str, deadline: float, series: str, as_of: float) -> None:
        heapq.heappush(self.deadlines.setdefault(stream, []), (deadline, series, as_of))

    def due(self, stream: str) -> list[tuple[str, SeriesInfo]]:
        """Series of ``stream`` whose deadline its watermark has passed (popped), current entries only."""
        heap = self.deadlines.get(stream)
        watermark = self.watermarks.get(stream)
        if not heap or watermark is None:
            return []
        due: list[tuple[str, SeriesInfo]] = []
        while heap and heap[0][0] <= watermark:
            _, series, as_of = heapq.heappop(heap)
            info = self.series.get(series)
            if info is not None and info.as_of == as_of and all(s != series for s, _ in due):
                due.append((series, info))
        return due
