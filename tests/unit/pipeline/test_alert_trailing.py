"""Trailing histories of alert metrics: how much is kept, how it is thinned, when it is complete."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.alerting.rules import Rule
from pipeline.alerting.trailing import MAX_EVIDENCE, MAX_POINTS, Need, Trail, evidence, need_of

NOW = datetime(2024, 1, 1, tzinfo=UTC)
DAY = 86400.0


def rule(condition: dict[str, object], **spec: object) -> Rule:
    body = {
        "id": "r",
        "owner": "o",
        "name": "n",
        "channel": "prices",
        "metric": "price",
        "condition": condition,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Rule.model_validate(body | spec)


def test_needs_follow_the_windows_and_for() -> None:
    change = need_of(rule({"kind": "change", "window": "1d", "op": "<", "value": 0}))
    assert change == Need(1.5 * DAY, DAY / 20)
    pending = need_of(rule({"kind": "threshold", "op": "<", "value": 1}, **{"for": "30m"}))
    assert pending.span == 1800 and pending.resolution == 1800 / 50
    assert need_of(rule({"kind": "threshold", "op": "<", "value": 1})) == Need(0.0, 0.0)
    assert change.combine(pending) == Need(1.5 * DAY, 36.0)


def test_a_fast_series_under_a_long_window_stays_bounded() -> None:
    need = need_of(rule({"kind": "change", "window": "7d", "op": "<", "value": 0}))
    trail = Trail()
    for second in range(0, int(14 * DAY), 60):  # a tick a minute for two weeks
        trail.add(float(second), 1.0, need)
    assert len(trail.points) <= need.span / need.effective_resolution() + 2
    assert (
        trail.points[-1][0] == 14 * DAY - 60
        and trail.points[0][0] >= 14 * DAY - 60 - need.span - need.resolution
    )
    assert len(trail.points) < MAX_POINTS


def test_the_previous_point_is_exact_and_two_points_are_always_kept() -> None:
    trail = Trail()
    trail.add(0.0, 1.0, Need(0.0, 0.0))
    trail.add(5.0, 2.0, Need(0.0, 0.0))
    trail.add(9.0, 3.0, Need(0.0, 0.0))
    assert trail.points == [[5.0, 2.0], [9.0, 3.0]] and trail.before(9.0) == [[5.0, 2.0]]


def test_since_marks_where_the_history_is_complete() -> None:
    trail = Trail()
    trail.add(0.0, None, Need(DAY, 60))
    assert trail.since is None
    trail.add(100.0, 1.0, Need(DAY, 60))
    assert trail.since == 100.0
    for t in range(2, 50):
        trail.add(t * 3600.0, 1.0, Need(DAY, 60))
    # A rule with a longer window arrives: what was trimmed under the old span is gone.
    trail.add(50 * 3600.0, 1.0, Need(7 * DAY, 60))
    assert trail.since == 49 * 3600.0 - DAY


def test_evidence_covers_the_span_and_is_bounded() -> None:
    points = [[float(t), float(t)] for t in range(1000)]
    shown = evidence(points, 1000.0, 5.0, span=100.0)
    assert shown[0] == [900.0, 900.0] and shown[-1] == [1000.0, 5.0] and len(shown) == 101
    many = evidence(points, 1000.0, 5.0, span=1000.0)
    assert len(many) == MAX_EVIDENCE and many[0] == [0.0, 0.0] and many[-1] == [1000.0, 5.0]
    assert evidence(points, 1000.0, 5.0, span=0.0) == [[999.0, 999.0], [1000.0, 5.0]]
