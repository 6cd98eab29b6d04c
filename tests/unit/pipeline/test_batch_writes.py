"""Evaluating a batch against the table seen through its pending writes gives exactly what evaluating row
by row gives: the same transitions, the same state, and each write made under its own row's event."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import faust
from faust import streams

from pipeline.alerting.batch_writes import BatchWrites
from pipeline.alerting.engine import Engine, apply_writes
from pipeline.alerting.messages import AlertTransition
from pipeline.alerting.rule_book import RuleBook
from pipeline.alerting.rules import Rule
from pipeline.alerting.transition import Position
from pipeline.faust_context import as_current_event
from pipeline.records import iso

NOW = datetime(2024, 1, 1, tzinfo=UTC)
T0 = datetime(2022, 5, 1, tzinfo=UTC).timestamp()
HOUR = 3600.0


def rule(rule_id: str, scope: str, condition: dict[str, Any], **spec: Any) -> Rule:
    body: dict[str, Any] = {
        "id": rule_id, "owner": "o", "name": rule_id, "channel": "tvl", "scope": scope,
        "metric": "tvl_usd", "condition": condition, "created_at": NOW, "updated_at": NOW,
    }  # fmt: skip
    return Rule.model_validate(body | spec)


RULES = [
    rule("drop", 'kind == "chain"', {"kind": "change", "window": "6h", "op": "<", "value": -20}),
    rule("low", 'chain in ("A", "B")', {"kind": "threshold", "op": "<", "value": 50}, for_="2h"),
    rule("cross", 'chain == "C"', {"kind": "crosses", "direction": "below", "value": 60}),
    rule("quiet", 'kind == "chain"', {"kind": "threshold", "op": ">", "value": 1e12}, no_data_after="5h"),
]


def rows(count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """Chains A-E updated in a shuffled order each hour (E falls silent half-way), with drops,
    recoveries, missing values and a repeated row."""
    rng = random.Random(seed)
    level = {chain: 100.0 for chain in "ABCDE"}
    out: list[tuple[str, dict[str, Any]]] = []
    for hour in range(count):
        chains = [c for c in "ABCDE" if not (c == "E" and hour > count // 2)]
        rng.shuffle(chains)
        for chain in chains:
            level[chain] = max(1.0, level[chain] * rng.choice([0.6, 0.9, 1.0, 1.05, 1.3, 1.6]))
            tvl = None if rng.random() < 0.03 else round(level[chain], 2)
            row = {"kind": "chain", "protocol": None, "chain": chain, "tvl_usd": tvl,
                   "as_of": iso(T0 + hour * HOUR)}  # fmt: skip
            out.append((f"chain||{chain}", row))
            if rng.random() < 0.05:
                out.append((f"chain||{chain}", row))  # the same row again, a later offset
    return out


def engine() -> Engine:
    book = RuleBook()
    for r in RULES:
        book.put(r)
    return Engine(book)


def without_clock(transitions: list[AlertTransition]) -> list[dict[str, Any]]:
    return [{k: v for k, v in t.items() if k != "emitted_at"} for t in transitions]  # wall-clock time


def one_at_a_time(feed: list[tuple[str, dict[str, Any]]]) -> tuple[list[AlertTransition], dict[str, Any]]:
    evaluator, store = engine(), {}
    transitions: list[AlertTransition] = []
    for offset, (series, row) in enumerate(feed):
        outcome = evaluator.process(store, "tvl", series, row, Position("tvl.updates", 0, offset))
        transitions += outcome.transitions
        apply_writes(store, outcome.writes)
    return transitions, store


@contextmanager
def noting(log: list[int], offset: int) -> Iterator[int]:
    log.append(offset)
    yield offset


def in_batches(
    feed: list[tuple[str, dict[str, Any]]], seed: int
) -> tuple[list[AlertTransition], dict[str, Any], list[int]]:
    rng = random.Random(seed)
    evaluator, store = engine(), {}
    sources: list[int] = []
    transitions: list[AlertTransition] = []
    start = 0
    while start < len(feed):
        end = min(len(feed), start + rng.randint(1, 40))
        batch = BatchWrites[int](store, lambda o: noting(sources, o))
        for offset in range(start, end):
            series, row = feed[offset]
            outcome = evaluator.process(batch, "tvl", series, row, Position("tvl.updates", 0, offset))
            transitions += outcome.transitions
            batch.add(offset, outcome.writes)
        batch.apply()
        start = end
    return transitions, store, sources


def test_batches_of_any_size_give_the_transitions_and_state_of_one_row_at_a_time() -> None:
    for seed in range(5):
        feed = rows(60, seed)
        expected, expected_store = one_at_a_time(feed)
        assert len({t["state"] for t in expected}) >= 3, "the feed should exercise several states"
        got, store, sources = in_batches(feed, seed)
        assert without_clock(got) == without_clock(expected)
        assert store == expected_store
        assert sources == sorted(sources), "writes are made in the rows' order"


def test_reads_see_the_batch_writes_and_deletions_before_they_are_made() -> None:
    table = {"kept": 1, "deleted": 2, "changed": 3}
    batch = BatchWrites[str](table, lambda s: noting([], 0))
    batch.add("row 1", {"deleted": None, "changed": 30, "new": 4})
    assert (batch.get("kept"), batch.get("deleted"), batch.get("changed"), batch.get("new")) == (
        1,
        None,
        30,
        4,
    )
    assert dict(batch.items()) == {"kept": 1, "changed": 30, "new": 4}
    assert table == {"kept": 1, "deleted": 2, "changed": 3}, "nothing is written before apply"
    batch.apply()
    assert table == {"kept": 1, "changed": 30, "new": 4}
    assert dict(batch.items()) == table, "and the batch starts empty"
    batch.apply()
    assert table == {"kept": 1, "changed": 30, "new": 4}


def test_as_current_event_is_what_faust_reads_and_is_restored() -> None:
    app = faust.App("batch-writes-test", broker="memory://")
    event = faust.Event(app, b"k", b"v", {}, message=None)  # type: ignore[arg-type]
    assert streams.current_event() is None
    with as_current_event(event):
        assert streams.current_event() is event
    assert streams.current_event() is None
