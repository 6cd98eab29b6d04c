"""The trailing history of one metric of one series, as alert conditions need it: bounded and thinned.

Kept per (series, metric) only while some rule on the series uses the metric, only as far back as the
longest need among those rules (windows plus tolerance, ``for``), and thinned to at most one point per
cell of ``resolution`` seconds (the newest point of each cell survives), so a series that ticks every
second under a 7-day rule holds a few hundred points, not 600,000.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.alerting.conditions import TOLERANCE
from pipeline.alerting.rules import AllOf, Anomaly, AnyOf, Change, Condition, RuleSpec, longest_window

__all__ = ["Need", "Trail", "need_of", "MAX_POINTS", "MAX_EVIDENCE", "evidence", "evidence_span"]

MAX_POINTS = 2000  # per (series, metric); a mix of very short and very long windows coarsens the short one
MAX_EVIDENCE = 200  # points in a transition's evidence window
EVIDENCE_POINTS = 50  # points kept over ``for`` when only the evidence needs history
KEEP_LAST = 2  # always kept whatever the span: a crossing needs the previous value


@dataclass(frozen=True, slots=True)
class Need:
    """How much history of a metric a rule needs: ``span`` seconds back, at ``resolution`` seconds."""

    span: float
    resolution: float

    def combine(self, other: Need) -> Need:
        return Need(max(self.span, other.span), min(self.resolution, other.resolution))

    def effective_resolution(self) -> float:
        return max(self.resolution, self.span / MAX_POINTS)


def _windows(condition: Condition) -> list[tuple[int, int]]:
    """(window, points wanted in it) of every windowed node."""
    if isinstance(condition, AllOf | AnyOf):
        return [w for child in condition.conditions for w in _windows(child)]
    if isinstance(condition, Change):
        return [(condition.window, 20)]  # the comparison point within 5% of "one window ago"
    if isinstance(condition, Anomaly):
        return [(condition.window, max(100, 2 * condition.min_points))]
    return []


def need_of(rule: RuleSpec) -> Need:
    span = max(longest_window(rule.condition) * (1 + TOLERANCE), float(rule.for_))
    windows = _windows(rule.condition)
    if windows:
        resolution = min(window / points for window, points in windows)
    else:
        resolution = span / EVIDENCE_POINTS if span else 0.0
    return Need(span, resolution)


def evidence_span(rule: RuleSpec) -> float:
    return float(max(longest_window(rule.condition), rule.for_))


@dataclass
class Trail:
    """Points (oldest first) and ``since``: the event time from which they are complete (None before the
    first value). Stored as ``{"since", "span", "points"}``."""

    points: list[list[float]] = field(default_factory=list)
    since: float | None = None
    span: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Trail:
        if not data:
            return cls()
        return cls([list(p) for p in data["points"]], data.get("since"), float(data.get("span", 0.0)))

    def to_json(self) -> dict[str, Any]:
        return {"since": self.since, "span": self.span, "points": self.points}

    def before(self, now: float) -> list[list[float]]:
        """The points strictly before ``now`` (a record published twice has the same ``as_of``)."""
        end = len(self.points)
        while end and self.points[end - 1][0] >= now:
            end -= 1
        return self.points if end == len(self.points) else self.points[:end]

    def add(self, now: float, value: float | None, need: Need) -> None:
        """Record the value at ``now`` (if any) and drop what no rule needs any more."""
        if need.span > self.span and self.since is not None and self.points:
            # The points older than the previous span are gone: the history is complete only from there.
            self.since = max(self.since, self.points[-1][0] - self.span)
        self.span = need.span
        if value is not None:
            if self.since is None:
                self.since = now
            self._insert(now, value, need.effective_resolution())
        if self.points:
            horizon = self.points[-1][0] - need.span
            drop = 0
            while drop < len(self.points) - KEEP_LAST and self.points[drop][0] < horizon:
                drop += 1
            if drop:
                del self.points[:drop]

    def _insert(self, now: float, value: float, resolution: float) -> None:
        points = self.points
        if points and points[-1][0] == now:
            points[-1] = [now, value]
        elif points and points[-1][0] > now:
            return  # late: the rows a condition sees only move forward
        elif (
            len(points) >= KEEP_LAST
            and resolution > 0
            and math.floor(points[-1][0] / resolution) == math.floor(now / resolution)
        ):
            # One point per cell, its newest. Conditions are evaluated before the insert, so the previous
            # value a crossing compares with is always the exact previous row.
            points[-1] = [now, value]
        else:
            points.append([now, value])


def evidence(
    points: Sequence[Sequence[float]], now: float, value: float | None, span: float
) -> list[list[float]]:
    """[as_of, value] over ``span`` before ``now`` and the current point, at most MAX_EVIDENCE, oldest
    first; with no span, the previous point and the current one."""
    if span > 0:
        chosen = [list(p) for p in points if now - span <= p[0] < now]
    else:
        chosen = [list(p) for p in points if p[0] < now][-1:]
    if value is not None:
        chosen = [*chosen, [now, value]]
    if len(chosen) > MAX_EVIDENCE:
        step = (len(chosen) - 1) / (MAX_EVIDENCE - 1)
        chosen = [chosen[round(i * step)] for i in range(MAX_EVIDENCE)]
    return chosen
