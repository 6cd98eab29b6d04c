"""The evaluation engine over a plain dict store: redelivery, crashes, rule changes, no-data by age."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.alerting.backtest import backtest
from pipeline.alerting.engine import Engine, Outcome, apply_writes
from pipeline.alerting.messages import AlertTransition, fingerprint
from pipeline.alerting.rule_book import RuleBook
from pipeline.alerting.rules import Rule
from pipeline.alerting.transition import Position
from pipeline.records import iso

NOW = datetime(2024, 1, 1, tzinfo=UTC)
DAY = 86400.0
T0 = datetime(2022, 5, 1, tzinfo=UTC).timestamp()


def rule(rule_id: str = "r1", **spec: Any) -> Rule:
    body: dict[str, Any] = {
        "id": rule_id,
        "owner": "o",
        "name": "drop",
        "channel": "tvl",
        "scope": 'kind == "chain"',
        "metric": "tvl_usd",
        "condition": {"kind": "change", "window": "1d", "op": "<", "value": -20},
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Rule.model_validate(body | spec)


def row(chain: str, day: float, tvl: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "chain",
        "protocol": None,
        "chain": chain,
        "tvl_usd": tvl,
        "as_of": iso(T0 + day * DAY),
    } | extra


class Harness:
    """An engine, its store and a Kafka-like offset counter for one partition."""

    def __init__(self, *rules: Rule) -> None:
        self.book = RuleBook()
        for r in rules:
            self.book.put(r)
        self.engine = Engine(self.book)
        self.store: dict[str, Any] = {}
        self.offset = 0

    def feed(self, chain: str, day: float, tvl: float | None, **extra: Any) -> Outcome:
        outcome = self.process(chain, row(chain, day, tvl, **extra), self.offset)
        self.offset += 1
        return outcome

    def process(self, chain: str, values: dict[str, Any], offset: int, apply: bool = True) -> Outcome:
        outcome = self.engine.process(
            self.store, "tvl", f"chain||{chain}", values, Position("tvl.updates", 0, offset)
        )
        if apply:
            apply_writes(self.store, outcome.writes)
        return outcome


def states(transitions: list[AlertTransition]) -> list[tuple[str, str, str]]:
    return [(t["series_key"].split("|")[-1], t["state"], t["as_of"][:10]) for t in transitions]


def test_a_drop_fires_and_a_recovery_resolves_with_the_first_day_only_warming_up() -> None:
    h = Harness(rule())
    out = [h.feed("A", d, v) for d, v in enumerate([100.0, 95.0, 70.0, 50.0, 51.0])]
    assert [o.transitions for o in out[:2]] == [[], []]  # day 0 has no comparison yet: not no-data
    assert states(out[2].transitions) == [("A", "firing", "2022-05-03")]
    assert out[3].transitions == []  # still firing: no transition
    assert states(out[4].transitions) == [("A", "resolved", "2022-05-05")]
    firing = out[2].transitions[0]
    assert firing["fingerprint"] == fingerprint("r1", "chain||A") and firing["source"] == "tvl.updates:0:2"
    assert firing["value"] == pytest.approx((70 - 95) / 95 * 100) and firing["threshold"] == -20


def test_a_redelivered_row_changes_nothing_and_emits_nothing() -> None:
    h = Harness(rule())
    for d, v in enumerate([100.0, 70.0]):
        h.feed("A", d, v)
    before = dict(h.store)
    again = h.process("A", row("A", 1, 70.0), 1)
    older = h.process("A", row("A", 0, 100.0), 0)
    assert again.skipped == "redelivered" and older.skipped == "redelivered"
    assert again.transitions == [] and again.writes == {} and h.store == before


def test_a_crash_midway_repeats_a_transition_only_with_the_same_idempotency_key() -> None:
    reference = Harness(rule())
    for d, v in enumerate([100.0, 70.0, 71.0]):
        reference.feed("A", d, v)
    for cut in range(4):
        h = Harness(rule())
        h.feed("A", 0, 100.0)
        first = h.process("A", row("A", 1, 70.0), 1, apply=False)
        # The transition was delivered, then the worker died after ``cut`` of the row's writes.
        apply_writes(h.store, dict(list(first.writes.items())[:cut]))
        h.engine = Engine(h.book)  # a restarted worker rebuilds its memory from the table
        again = h.process("A", row("A", 1, 70.0), 1)
        keys = {(t["fingerprint"], t["source"], t["state"]) for t in first.transitions + again.transitions}
        assert len(keys) <= 1 and states(first.transitions) == [("A", "firing", "2022-05-02")]
        h.process("A", row("A", 2, 71.0), 2)
        assert h.store == reference.store, cut


def test_a_late_row_is_not_evaluated() -> None:
    h = Harness(rule())
    h.feed("A", 1, 100.0)
    assert h.process("A", row("A", 0, 10.0), 5).skipped == "late"


def test_missing_metric_after_data_is_no_data_and_never_a_minus_100_change() -> None:
    h = Harness(rule())
    h.feed("A", 0, 100.0)
    h.feed("A", 1, 100.0)
    out = h.feed("A", 2, None)
    assert states(out.transitions) == [("A", "no_data", "2022-05-03")]
    assert out.transitions[0]["value"] is None
    # Back with a value but nothing a day before it: still no data, not -100%.
    assert h.feed("A", 3, 0.0).transitions == []
    assert states(h.feed("A", 4, 50.0).transitions) == []  # compared with 0: unknown
    assert states(h.feed("A", 5, 50.0).transitions) == [("A", "normal", "2022-05-06")]


def test_stale_rows_move_to_stale() -> None:
    h = Harness(rule())
    h.feed("A", 0, 100.0)
    assert states(h.feed("A", 1, 10.0, stale=True).transitions) == [("A", "stale", "2022-05-02")]
    assert states(h.feed("A", 2, 10.0).transitions) == [("A", "normal", "2022-05-03")]


def test_a_silent_series_ages_into_no_data_against_its_stream_and_survives_a_restart() -> None:
    h = Harness(rule(no_data_after="2d"))
    for d in range(3):
        h.feed("A", d, 100.0)
        h.feed("B", d, 100.0)
    assert h.feed("B", 3, 100.0).transitions == []
    h.engine = Engine(h.book)  # restart: deadlines are rebuilt from the table
    aged = h.feed("B", 4, 100.0)
    assert states(aged.transitions) == [("A", "no_data", "2022-05-05")]
    assert aged.transitions[0]["source"] == f"tvl.updates:0:{h.offset - 1}"
    assert h.feed("B", 5, 100.0).transitions == []  # once
    assert states(h.feed("A", 6, 100.0).transitions) == []  # nothing a day before: still no data
    # B, silent since day 5, ages in turn against A's rows.
    assert states(h.feed("A", 7, 100.0).transitions) == [
        ("A", "normal", "2022-05-08"),
        ("B", "no_data", "2022-05-08"),
    ]


def test_deleting_a_rule_resolves_its_firing_instances_at_the_next_row_of_the_partition() -> None:
    h = Harness(rule())
    for chain in ("A", "B"):
        h.feed(chain, 0, 100.0)
    assert states(h.feed("A", 1, 50.0).transitions) == [("A", "firing", "2022-05-02")]
    h.book.remove("r1")
    out = h.feed("B", 1, 100.0)
    assert states(out.transitions) == [("A", "resolved", "2022-05-02")]
    assert out.transitions[0]["rule_name"] == "drop" and out.transitions[0]["ends_at"] is not None
    assert not [k for k in h.store if k.startswith("f|")]
    assert h.feed("A", 2, 10.0).transitions == []


def test_a_rule_change_that_only_touches_labels_keeps_the_firing_alert_silent() -> None:
    h = Harness(rule())
    h.feed("A", 0, 100.0)
    h.feed("A", 1, 50.0)
    h.book.put(rule(labels={"team": "risk"}, version=2))
    assert h.feed("A", 2, 25.0).transitions == []
    resolved = h.feed("A", 3, 25.0).transitions
    assert states(resolved) == [("A", "resolved", "2022-05-04")] and resolved[0]["labels"]["team"] == "risk"
    assert resolved[0]["rule_version"] == 2


def test_the_backtest_gives_what_the_engine_emits() -> None:
    values = [100.0, 70.0, 71.0, 40.0, None, 50.0, 50.0]
    h = Harness(rule(no_data_after="2d"))
    emitted = [t for d, v in enumerate(values) for t in h.feed("A", d, v).transitions]
    rows = [("chain||A", row("A", d, v)) for d, v in enumerate(values)]
    tested = backtest(rule(no_data_after="2d", enabled=False), rows)
    assert [(t["state"], t["as_of"], t["value"]) for t in tested] == [
        (t["state"], t["as_of"], t["value"]) for t in emitted
    ]
    assert [t["state"] for t in tested] == ["firing", "resolved", "firing", "no_data", "normal"]
    assert all(t["source"].startswith("backtest:0:") for t in tested)
