"""Replay passes: a looped pass follows what the topics hold, by whole days, so nothing it sends is late."""

from __future__ import annotations

from pipeline.connectors.readers import ReplayRecord
from pipeline.replay import DAY, continuation_shift, shifted

FIRST, LAST = 1651708800.0, 1651708800.0 + 14.5 * DAY  # 5 May 2022 00:00 UTC, a window of 14.5 days


def test_the_first_pass_keeps_real_event_time() -> None:
    assert continuation_shift(FIRST, LAST, None) == 0
    assert continuation_shift(FIRST, LAST, FIRST - DAY) == 0


def test_a_pass_after_earlier_ones_starts_after_them_on_the_day_grid() -> None:
    assert continuation_shift(FIRST, LAST, LAST) == 15 * DAY
    assert continuation_shift(FIRST, LAST, FIRST + 3 * DAY) == 15 * DAY  # an interrupted earlier pass
    assert continuation_shift(FIRST, LAST, LAST + 15 * DAY) == 30 * DAY
    assert continuation_shift(FIRST, LAST, LAST) % DAY == 0


def test_shifting_moves_the_record_and_its_value_together() -> None:
    record = ReplayRecord(FIRST, "raw.tvl", "chain|Terra", {"chain": "Terra", "tvl_usd": 1.0, "ts": FIRST})
    (moved,) = shifted([record], 15 * DAY)
    assert moved.ts == moved.value["ts"] == FIRST + 15 * DAY
    assert record.value["ts"] == FIRST  # the original is untouched
