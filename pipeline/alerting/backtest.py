"""Run one rule over stored history: the transitions it would have made, by the evaluator's own code."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.alerting.engine import Engine, apply_writes
from pipeline.alerting.messages import AlertTransition
from pipeline.alerting.rule_book import RuleBook
from pipeline.alerting.rules import Rule
from pipeline.alerting.transition import Position

__all__ = ["backtest", "BACKTEST_TOPIC"]

# The ``source`` of a back-test transition is "backtest:0:<row number>": not a Kafka position.
BACKTEST_TOPIC = "backtest"


def backtest(rule: Rule, rows: Iterable[tuple[str, Mapping[str, Any]]]) -> list[AlertTransition]:
    """Transitions of ``rule`` over ``rows`` ((series key, channel row with ISO ``as_of``), in event-time
    order), as the evaluate_alerts agent would emit them.

    The rule is evaluated even if disabled (tuning comes before enabling). Rows share one partition, so
    ``no_data_after`` is measured against the newest row of any series given, where the agent measures
    against the newest row of the series' partition."""
    book = RuleBook()
    book.put(rule if rule.enabled else rule.model_copy(update={"enabled": True}))
    engine = Engine(book)
    store: dict[str, Any] = {}
    transitions: list[AlertTransition] = []
    for number, (series, row) in enumerate(rows):
        outcome = engine.process(store, rule.channel, series, row, Position(BACKTEST_TOPIC, 0, number))
        apply_writes(store, outcome.writes)
        transitions.extend(outcome.transitions)
    return transitions
