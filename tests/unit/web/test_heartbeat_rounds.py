"""Paced heartbeats: every connection hears one per interval, never all of them in one tick."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any, cast

from web.connection import Connection
from web.stream_ticks import HeartbeatRounds

INTERVAL, TICK = 15.0, 0.05


def connections(n: int) -> list[Connection]:
    return cast(list[Connection], [object() for _ in range(n)])


def run(rounds: HeartbeatRounds, conns: list[Any], start: float, seconds: float) -> dict[int, list[float]]:
    beats: dict[int, list[float]] = defaultdict(list)
    for tick in range(1, int(seconds / TICK) + 1):
        now = start + tick * TICK
        for conn in rounds.due(conns, now):
            beats[id(conn)].append(now)
    return beats


def test_each_connection_hears_one_heartbeat_per_interval_and_ticks_carry_a_slice() -> None:
    conns = connections(15_000)
    rounds = HeartbeatRounds(INTERVAL, TICK, now=0.0)
    per_tick: Counter[float] = Counter()
    beats: dict[int, list[float]] = defaultdict(list)
    for tick in range(1, int(53 / TICK) + 1):  # rounds start at 15, 30 and 45 s
        now = tick * TICK
        due = rounds.due(conns, now)
        per_tick[now] = len(due)
        for conn in due:
            beats[id(conn)].append(now)
    assert all(len(times) == 3 for times in beats.values()) and len(beats) == len(conns)
    gaps = [b - a for times in beats.values() for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) > INTERVAL - 2 * TICK and max(gaps) < INTERVAL + 2 * TICK
    # Spread over half the interval (150 ticks): 100 a tick, not 15,000 at once.
    assert max(per_tick.values()) == math.ceil(15_000 / (INTERVAL * 0.5 / TICK))


def test_a_connection_opened_mid_round_joins_the_next_round() -> None:
    first, later = connections(10), connections(1)
    rounds = HeartbeatRounds(INTERVAL, TICK, now=0.0)
    beats = run(rounds, first, 0.0, 16.0)
    assert len(beats) == 10
    beats = run(rounds, first + later, 16.0, 15.0)
    assert id(later[0]) in beats


def test_a_loop_too_busy_to_tick_beats_the_last_rounds_leftovers_at_once() -> None:
    conns = connections(1000)
    rounds = HeartbeatRounds(INTERVAL, TICK, now=0.0)
    started = rounds.due(conns, 15.0)  # the round starts: the first slice
    assert 0 < len(started) < len(conns)
    # The loop stalls for a whole interval: the next round first beats everyone the last one missed.
    stalled = rounds.due(conns, 30.0)
    assert len(stalled) == len(conns) - len(started) + rounds.per_tick
