"""Evaluate a rule's condition for one series at one moment, in three-valued logic (true, false, unknown)."""

from __future__ import annotations

import bisect
import operator
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline.alerting.durations import format_duration
from pipeline.alerting.rules import AllOf, Anomaly, AnyOf, Change, Condition, Crosses, Threshold

__all__ = ["Sample", "Verdict", "evaluate", "describe", "comparison_point", "TOLERANCE", "MAD_SCALE"]

Point = Sequence[float]  # (epoch seconds, value)

# The comparison point of a change is the one nearest "one window ago" within half a window, as the
# pipeline computes its own change_* fields (docs/architecture.md, "Event-time state").
TOLERANCE = 0.5
# 1.4826 * MAD estimates the standard deviation of normally distributed data.
MAD_SCALE = 1.4826

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True, slots=True)
class Sample:
    """What a condition sees of one series at ``now``: the metric's current value (None when the row has
    none) and its trailing history strictly before ``now``, oldest first.

    ``since`` is the event time from which that history is complete (None: no value seen yet). A window
    reaching back before it cannot be judged yet: that is warming up, not missing data."""

    now: float
    value: float | None
    history: Sequence[Point]
    since: float | None
    # Comparison points by window, shared by the rules on this series that look back as far.
    points: dict[float, Point | None] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Verdict:
    """``holds`` is None when unknown. ``value`` is the tested quantity (the metric, a change in percent or
    a z-score) and ``threshold`` what it was compared with, for the message."""

    holds: bool | None
    value: float | None = None
    threshold: float | None = None
    # Unknown only because the series has not been watched for long enough (never a missing input).
    warming: bool = False


def evaluate(
    condition: Condition, sample: Sample, latches: frozenset[str] = frozenset(), path: str = "c"
) -> tuple[Verdict, frozenset[str]]:
    """The verdict and the crossing latches after this evaluation (see ``Crosses``).

    ``latches`` names the Crosses nodes (by path in the condition tree) that crossed their line and have
    stayed past it since; the caller keeps them with the alert instance."""
    if isinstance(condition, Threshold):
        if sample.value is None:
            return Verdict(None, warming=sample.since is None), latches
        holds = _OPS[condition.op](sample.value, condition.value)
        return Verdict(holds, sample.value, condition.value), latches
    if isinstance(condition, Change):
        return _change(condition, sample), latches
    if isinstance(condition, Crosses):
        return _crosses(condition, sample, latches, path)
    if isinstance(condition, Anomaly):
        return _anomaly(condition, sample), latches
    return _combine(condition, sample, latches, path)


def _crosses(
    condition: Crosses, sample: Sample, latches: frozenset[str], path: str
) -> tuple[Verdict, frozenset[str]]:
    if sample.value is None:
        return Verdict(None, warming=sample.since is None), latches
    past = (
        sample.value < condition.value if condition.direction == "below" else sample.value > condition.value
    )
    if not past:
        return Verdict(False, sample.value, condition.value), latches - {path}
    if path in latches:
        return Verdict(True, sample.value, condition.value), latches
    previous = sample.history[-1][1] if sample.history else None
    # A series first seen already past the line has not crossed it: it must come back first.
    crossed = previous is not None and not (
        previous < condition.value if condition.direction == "below" else previous > condition.value
    )
    return Verdict(crossed, sample.value, condition.value), (latches | {path}) if crossed else latches


def comparison_point(history: Sequence[Point], target: float, tolerance: float, now: float) -> Point | None:
    """The point nearest ``target`` within ``tolerance``, strictly before ``now`` (ties: the earlier)."""
    index = bisect.bisect_left(history, target, key=lambda p: p[0])
    candidates = [history[i] for i in (index - 1, index) if 0 <= i < len(history)]
    near = [p for p in candidates if abs(p[0] - target) <= tolerance and p[0] < now]
    return min(near, key=lambda p: abs(p[0] - target)) if near else None


def _change(condition: Change, sample: Sample) -> Verdict:
    window = condition.window
    if sample.value is None:
        return Verdict(None, threshold=condition.value, warming=sample.since is None)
    if window in sample.points:
        point = sample.points[window]
    else:
        point = sample.points[window] = comparison_point(
            sample.history, sample.now - window, window * TOLERANCE, sample.now
        )
    if point is None:
        # Not watched for a full window (plus tolerance) yet: nothing is known to be missing.
        warming = sample.since is None or sample.since > sample.now - window * (1 + TOLERANCE)
        return Verdict(None, threshold=condition.value, warming=warming)
    then = point[1]
    if then == 0:
        return Verdict(None, threshold=condition.value)  # a change from 0 has no percentage
    change = (sample.value - then) / then * 100.0
    return Verdict(_OPS[condition.op](change, condition.value), change, condition.value)


def _anomaly(condition: Anomaly, sample: Sample) -> Verdict:
    window = condition.window
    start = bisect.bisect_left(sample.history, sample.now - window, key=lambda p: p[0])
    values = [p[1] for p in sample.history[start:]]
    threshold = -condition.z if condition.direction == "below" else condition.z
    if sample.value is None or len(values) < condition.min_points:
        warming = sample.since is None or sample.since > sample.now - window
        return Verdict(None, threshold=threshold, warming=warming)
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    if mad == 0:
        return Verdict(None, threshold=threshold)  # a flat window has no scale to measure against
    z = (sample.value - median) / (MAD_SCALE * mad)
    if condition.direction == "above":
        holds = z > condition.z
    elif condition.direction == "below":
        holds = z < -condition.z
    else:
        holds = abs(z) > condition.z
    return Verdict(holds, z, threshold)


def _combine(
    condition: AllOf | AnyOf, sample: Sample, latches: frozenset[str], path: str
) -> tuple[Verdict, frozenset[str]]:
    verdicts: list[Verdict] = []
    for n, child in enumerate(condition.conditions):
        # Every child is evaluated (no short cut) so each Crosses keeps its latch current.
        verdict, latches = evaluate(child, sample, latches, f"{path}.{n}")
        verdicts.append(verdict)
    decisive = False if isinstance(condition, AllOf) else True
    for verdict in verdicts:
        if verdict.holds is decisive:
            return verdict, latches
    unknown = [v for v in verdicts if v.holds is None]
    if unknown:
        return Verdict(None, unknown[0].value, unknown[0].threshold, all(v.warming for v in unknown)), latches
    return verdicts[0], latches


def describe(condition: Condition, metric: str) -> str:
    """Human-readable form: ``change of tvl_usd over 1d < -20%``."""
    if isinstance(condition, Threshold):
        return f"{metric} {condition.op} {condition.value:g}"
    if isinstance(condition, Crosses):
        return f"{metric} crosses {condition.direction} {condition.value:g}"
    if isinstance(condition, Change):
        return (
            f"change of {metric} over {format_duration(condition.window)} {condition.op} {condition.value:g}%"
        )
    if isinstance(condition, Anomaly):
        side = {"above": ">", "below": "<", "either": "beyond ±"}[condition.direction]
        limit = f"-{condition.z:g}" if condition.direction == "below" else f"{condition.z:g}"
        window = format_duration(condition.window)
        return f"robust z of {metric} over {window} {side}{'' if side.endswith('±') else ' '}{limit}"
    joiner = " and " if isinstance(condition, AllOf) else " or "
    return "(" + joiner.join(describe(c, metric) for c in condition.conditions) + ")"
