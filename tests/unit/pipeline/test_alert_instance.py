"""The alert instance state machine: for, keep_firing_for, no-data, stale, warm-up, rule changes."""

from __future__ import annotations

from pipeline.alerting.conditions import Verdict
from pipeline.alerting.instance import Instance, Timing, age_out, close, is_silent, step

TRUE = Verdict(True, 1.0, 0.5)
FALSE = Verdict(False, 0.0, 0.5)
UNKNOWN = Verdict(None)
WARMING = Verdict(None, warming=True)


def run(
    verdicts: list[tuple[float, Verdict]], timing: Timing, stale_at: frozenset[float] = frozenset()
) -> list[str]:
    instance = Instance()
    states = []
    for now, verdict in verdicts:
        instance = step(instance, verdict, frozenset(), now, timing, "d", stale=now in stale_at)
        states.append(instance.state)
    return states


def test_for_zero_fires_at_once_and_resolves_at_once() -> None:
    assert run([(0, FALSE), (1, TRUE), (2, TRUE), (3, FALSE), (4, FALSE)], Timing()) == [
        "normal",
        "firing",
        "firing",
        "resolved",
        "normal",
    ]


def test_pending_lasts_for_in_event_time_and_resets_when_false() -> None:
    timing = Timing(for_=30)
    states = run([(0, TRUE), (10, TRUE), (20, FALSE), (25, TRUE), (50, TRUE), (55, TRUE)], timing)
    assert states == ["pending", "pending", "normal", "pending", "pending", "firing"]


def test_firing_records_starts_at_and_resolved_records_ends_at() -> None:
    instance = Instance()
    for now, verdict in [(0, TRUE), (30, TRUE), (45, FALSE)]:
        instance = step(instance, verdict, frozenset(), now, Timing(for_=30), "d")
    assert instance.state == "resolved" and instance.fired_at == 30 and instance.ended_at == 45


def test_keep_firing_for_holds_a_firing_alert_through_short_recoveries() -> None:
    timing = Timing(keep_firing_for=60)
    verdicts = [(0, TRUE), (10, FALSE), (40, TRUE), (50, FALSE), (100, FALSE), (110, FALSE)]
    assert run(verdicts, timing) == ["firing", "firing", "firing", "firing", "firing", "resolved"]


def test_resolved_goes_back_to_pending_or_normal_on_the_next_evaluation() -> None:
    assert run([(0, TRUE), (1, FALSE), (2, TRUE)], Timing(for_=10))[-1] == "pending"
    assert run([(0, TRUE), (1, FALSE), (2, TRUE)], Timing())[-1] == "firing"
    assert is_silent("resolved", "normal") and not is_silent("resolved", "pending")
    assert not is_silent("no_data", "normal") and is_silent("firing", "firing")


def test_unknown_moves_to_no_data_which_never_fires_and_ends_a_firing() -> None:
    instance = Instance()
    instance = step(instance, TRUE, frozenset(), 0, Timing(), "d")
    instance = step(instance, UNKNOWN, frozenset(), 5, Timing(), "d")
    assert instance.state == "no_data" and instance.fired_at == 0 and instance.ended_at == 5
    assert run([(0, UNKNOWN), (100, UNKNOWN)], Timing())[-1] == "no_data"
    # Back from no data: the pending clock starts again.
    assert run([(0, TRUE), (5, UNKNOWN), (6, TRUE), (20, TRUE)], Timing(for_=10)) == [
        "pending",
        "no_data",
        "pending",
        "firing",
    ]


def test_warming_up_is_not_no_data() -> None:
    assert run([(0, WARMING), (1, WARMING), (2, FALSE)], Timing()) == ["normal", "normal", "normal"]
    # Once data was judged, a warming verdict from a firing alert (e.g. a longer window) is no data.
    assert run([(0, TRUE), (1, WARMING)], Timing()) == ["firing", "no_data"]


def test_stale_rows_move_to_stale_and_back() -> None:
    assert run([(0, TRUE), (1, TRUE), (2, TRUE)], Timing(), stale_at=frozenset({1})) == [
        "firing",
        "stale",
        "firing",
    ]


def test_age_out_and_close() -> None:
    firing = step(Instance(), TRUE, frozenset(), 0, Timing(), "d")
    aged = age_out(firing, 100)
    assert aged.state == "no_data" and aged.ended_at == 100
    assert age_out(aged, 200) is aged
    closed = close(firing, 50)
    assert closed.state == "resolved" and closed.ended_at == 50
    assert close(step(Instance(), TRUE, frozenset(), 0, Timing(for_=10), "d"), 1).blank


def test_a_changed_definition_restarts_the_pending_clock_but_keeps_a_firing_alert() -> None:
    pending = step(Instance(), TRUE, frozenset(), 0, Timing(for_=30), "v1")
    later = step(pending, TRUE, frozenset(), 20, Timing(for_=30), "v2")
    assert later.state == "pending" and later.active_at == 20
    assert step(later, TRUE, frozenset(), 50, Timing(for_=30), "v2").state == "firing"
    firing = step(Instance(), TRUE, frozenset(), 0, Timing(), "v1")
    kept = step(firing, TRUE, frozenset(), 10, Timing(), "v2")
    assert kept.state == "firing" and kept.fired_at == 0 and kept.definition == "v2"


def test_instances_round_trip_through_json() -> None:
    instance = Instance("firing", 1.0, 2.0, 3.0, None, frozenset({"c.1"}), "abc")
    assert Instance.from_json(instance.to_json()) == instance
    assert Instance.from_json(None) == Instance() and Instance().blank
