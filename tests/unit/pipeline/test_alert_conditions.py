"""Alert conditions: threshold, crossing, change over a window, robust z-score, and three-valued AND/OR."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from pipeline.alerting.conditions import MAD_SCALE, Sample, Verdict, describe, evaluate
from pipeline.alerting.rules import Condition

HOUR = 3600.0
DAY = 86400.0
CONDITION: TypeAdapter[Condition] = TypeAdapter(Condition)


def cond(**spec: object) -> Condition:
    return CONDITION.validate_python(spec)


def sample(value: float | None, history: list[tuple[float, float]], now: float = 10 * DAY) -> Sample:
    return Sample(now, value, [list(p) for p in history], history[0][0] if history else None)


def test_threshold_compares_the_current_value() -> None:
    below = cond(kind="threshold", op="<", value=0.98)
    assert evaluate(below, sample(0.97, []))[0] == Verdict(True, 0.97, 0.98)
    assert evaluate(below, sample(0.98, []))[0].holds is False
    assert evaluate(cond(kind="threshold", op="<=", value=0.98), sample(0.98, []))[0].holds is True


def test_a_missing_value_is_unknown_and_only_warming_before_any_value_was_seen() -> None:
    below = cond(kind="threshold", op="<", value=1)
    assert evaluate(below, Sample(0, None, [], None))[0] == Verdict(None, warming=True)
    assert evaluate(below, Sample(DAY, None, [[0, 2.0]], 0))[0] == Verdict(None, warming=False)


def test_change_compares_with_the_point_nearest_one_window_ago() -> None:
    change = cond(kind="change", window="1d", op="<", value=-20)
    now = 10 * DAY
    # "One day ago" is day 9: day 9.3 is within half a day of it, day 8.4 is not.
    history = [(8.4 * DAY, 100.0), (9.3 * DAY, 50.0)]
    verdict, _ = evaluate(change, sample(30.0, history, now))
    assert verdict.holds is True and verdict.value == pytest.approx(-40.0) and verdict.threshold == -20


def test_change_without_a_point_within_half_a_window_is_unknown_never_minus_100() -> None:
    change = cond(kind="change", window="1d", op="<", value=-20)
    now = 10 * DAY
    # The only earlier point is 2 days back: not within 12 hours of one day ago.
    verdict, _ = evaluate(change, sample(0.0, [(8 * DAY, 100.0)], now))
    assert verdict.holds is None and verdict.value is None
    assert verdict.warming is False  # watched since day 8: the point a day ago is missing, not pending


def test_change_is_warming_until_the_series_was_watched_a_full_window() -> None:
    change = cond(kind="change", window="1d", op="<", value=-20)
    verdict, _ = evaluate(change, Sample(10 * DAY, 5.0, [[9.9 * DAY, 10.0]], 9.9 * DAY))
    assert verdict.holds is None and verdict.warming is True


def test_change_from_zero_is_unknown() -> None:
    change = cond(kind="change", window="1d", op=">", value=10)
    verdict, _ = evaluate(change, sample(5.0, [(9 * DAY, 0.0)]))
    assert verdict == Verdict(None, threshold=10)


def test_change_never_compares_with_the_current_moment() -> None:
    change = cond(kind="change", window="1h", op="<", value=-1)
    now = 10 * DAY
    # A point at ``now`` itself (a row published twice) is not a comparison point.
    verdict, _ = evaluate(change, Sample(now, 1.0, [[now - 2 * HOUR, 5.0]], 0))
    assert verdict.holds is None


def test_crosses_needs_the_previous_value_on_the_other_side_and_latches_while_past() -> None:
    crosses = cond(kind="crosses", direction="below", value=1.0)
    verdict, latches = evaluate(crosses, sample(0.99, [(0, 1.01)]))
    assert verdict.holds is True and latches == {"c"}
    # Still below on the next update: the crossing holds (the previous value is now below too).
    verdict, latches = evaluate(crosses, sample(0.95, [(0, 1.01), (1, 0.99)]), latches)
    assert verdict.holds is True and latches == {"c"}
    # Back above: false, the latch is gone.
    verdict, latches = evaluate(crosses, sample(1.02, [(1, 0.95)]), latches)
    assert verdict.holds is False and latches == frozenset()


def test_crosses_never_fires_for_a_series_that_starts_past_the_line() -> None:
    crosses = cond(kind="crosses", direction="above", value=100)
    assert evaluate(crosses, sample(150, []))[0].holds is False
    assert evaluate(crosses, sample(160, [(0, 150)]))[0].holds is False


def test_anomaly_is_a_robust_z_score_over_the_trailing_window_excluding_now() -> None:
    anomaly = cond(kind="anomaly", window="1d", z=3.5, direction="below", min_points=8)
    now = 10 * DAY
    values = [100, 101, 99, 100, 102, 98, 100, 101, 99, 100]
    history = [(now - DAY + i * HOUR, float(v)) for i, v in enumerate(values)]
    verdict, _ = evaluate(anomaly, sample(90.0, history, now))
    median, mad = 100.0, 1.0
    assert verdict.value == pytest.approx((90.0 - median) / (MAD_SCALE * mad))
    assert verdict.holds is True and verdict.threshold == -3.5
    # Points older than the window are not part of it.
    stale = [(now - 3 * DAY, 1000.0)] + history
    assert evaluate(anomaly, sample(90.0, stale, now))[0].value == pytest.approx(verdict.value)


def test_anomaly_is_unknown_with_too_few_points_or_a_flat_window() -> None:
    anomaly = cond(kind="anomaly", window="1d", min_points=8)
    now = 10 * DAY
    few = [(now - i * HOUR, 1.0 + i) for i in range(1, 5)]
    assert evaluate(anomaly, Sample(now, 5.0, sorted(list(p) for p in few), 0))[0].holds is None
    flat = [[now - i * HOUR, 1.0] for i in range(12, 0, -1)]
    verdict, _ = evaluate(anomaly, Sample(now, 5.0, flat, 0))
    assert verdict.holds is None and verdict.warming is False


@pytest.mark.parametrize(
    ("kind", "left", "right", "expected"),
    [
        ("all", True, True, True),
        ("all", True, None, None),
        ("all", False, None, False),  # decided despite the unknown
        ("any", True, None, True),
        ("any", False, None, None),
        ("any", False, False, False),
    ],
)
def test_all_and_any_use_three_valued_logic(
    kind: str, left: bool | None, right: bool | None, expected: bool | None
) -> None:
    def leaf(holds: bool | None) -> dict[str, object]:
        # price 1.0: "< 2" holds, "> 2" does not; a change with no history is unknown.
        if holds is None:
            return {"kind": "change", "window": "1h", "op": "<", "value": 0}
        return {"kind": "threshold", "op": "<" if holds else ">", "value": 2}

    combined = cond(kind=kind, conditions=[leaf(left), leaf(right)])
    assert evaluate(combined, Sample(DAY, 1.0, [[0.0, 1.0]], 0.0))[0].holds is expected


def test_the_decisive_condition_reports_value_and_threshold() -> None:
    combined = cond(
        kind="all",
        conditions=[
            {"kind": "threshold", "op": "<", "value": 2},
            {"kind": "threshold", "op": ">", "value": 5},
        ],
    )
    verdict, _ = evaluate(combined, sample(1.0, []))
    assert verdict == Verdict(False, 1.0, 5)


def test_change_takes_the_nearer_of_the_points_around_one_window_ago() -> None:
    change = cond(kind="change", window="1d", op="<", value=0)
    history = [(8.8 * DAY, 100.0), (9.3 * DAY, 50.0)]  # 0.2 and 0.3 days from day 9
    assert evaluate(change, sample(50.0, history))[0].value == pytest.approx(-50.0)


def test_describe_reads_like_the_rule() -> None:
    assert (
        describe(cond(kind="change", window="1d", op="<", value=-20), "tvl_usd")
        == "change of tvl_usd over 1d < -20%"
    )
    assert (
        describe(cond(kind="crosses", direction="below", value=0.98), "price") == "price crosses below 0.98"
    )
    assert describe(cond(kind="anomaly", window="7d"), "apy") == "robust z of apy over 1w beyond ±3.5"
