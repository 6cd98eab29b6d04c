"""The event-time series engine, on a plain dict standing in for the faust table."""

from __future__ import annotations

import random

import pytest

from pipeline.observe import Observation, Skipped, latest_key, observe
from pipeline.series import (
    SeriesSpec,
    candle,
    changes,
    difference,
    expire_buckets,
    pct_change,
    record_point,
    value_near,
)

MINUTE_SPEC = SeriesSpec(bucket_s=60, windows=(("5m", 300), ("1h", 3600), ("24h", 86400)))
HOURLY_SPEC = SeriesSpec(bucket_s=3600, windows=(("1h", 3600), ("1d", 86400), ("7d", 7 * 86400)))


def test_value_near_finds_the_nearest_point_within_tolerance_and_before_now() -> None:
    store: dict = {}  # type: ignore[type-arg]
    for ts, value in [(0, 1.0), (30, 2.0), (59.5, 3.0), (600, 4.0)]:
        record_point(store, MINUTE_SPEC, "c", ts, value)
    assert value_near(store, MINUTE_SPEC, "c", 30, 0.1, now=1000) == 2.0
    assert (
        value_near(store, MINUTE_SPEC, "c", 40, 15, now=1000) == 2.0
    )  # 59.5 is 19.5 s away: beyond tolerance
    # Across empty buckets, through the index, forwards and backwards.
    assert value_near(store, MINUTE_SPEC, "c", 500, 200, now=1000) == 4.0
    assert value_near(store, MINUTE_SPEC, "c", 330, 300, now=1000) == 4.0  # 270 s away beats 270.5 s
    assert value_near(store, MINUTE_SPEC, "c", 100, 60, now=1000) == 3.0
    # Nothing within tolerance, or only later than now: unknown.
    assert value_near(store, MINUTE_SPEC, "c", 500, 200, now=600) is None
    assert value_near(store, MINUTE_SPEC, "c", -1, 0.5, now=1000) is None


def test_changes_are_exact_and_unknown_without_a_comparison_point() -> None:
    store: dict = {}  # type: ignore[type-arg]
    record_point(store, HOURLY_SPEC, "k", 0, 100.0)
    record_point(store, HOURLY_SPEC, "k", 86400, 57.0)
    result = changes(store, HOURLY_SPEC, "k", 86400, 57.0)
    assert result["1d"] == pytest.approx(-43.0)
    assert result["1h"] is None  # the point a day back is far older than an hour back
    assert result["7d"] is None  # nothing a week back: unknown, never -100 or 0


def test_zero_or_missing_base_gives_no_percent_change() -> None:
    assert pct_change(5.0, 0.0) is None
    assert pct_change(5.0, None) is None
    assert difference(5.0, 3.0) == 2.0 and difference(5.0, None) is None


def test_inserting_is_idempotent_and_order_independent() -> None:
    points = [(i * 17.0, float(i % 7) + 1) for i in range(500)]
    ordered: dict = {}  # type: ignore[type-arg]
    for ts, value in points:
        record_point(ordered, MINUTE_SPEC, "c", ts, value)
    shuffled: dict = {}  # type: ignore[type-arg]
    for ts, value in random.Random(7).sample(points, len(points)) + points[:100]:
        record_point(shuffled, MINUTE_SPEC, "c", ts, value)
    assert shuffled == ordered


def test_expiry_deletes_buckets_and_index_entries_out_of_retention() -> None:
    store: dict = {}  # type: ignore[type-arg]
    ts = 0.0
    for step in range(4000):  # about 66 hours of one point a minute
        ts = step * 60.0
        assert isinstance(observe(store, MINUTE_SPEC, "c", ts, 1.0 + step, offset=step), Observation)
    oldest_kept = ts - MINUTE_SPEC.retention_s
    buckets = [int(k.split("@")[1]) for k in store if k.startswith("b|")]
    assert min(buckets) * 60 >= oldest_kept - 120
    assert len(buckets) <= MINUTE_SPEC.retention_s / 60 + 2
    indexed = sorted(b for k, v in store.items() if k.startswith("i|") for b in v)
    assert indexed == sorted(buckets)


def test_expiry_after_a_long_gap_clears_everything_old() -> None:
    store: dict = {}  # type: ignore[type-arg]
    for step in range(300):
        record_point(store, MINUTE_SPEC, "c", step * 60.0, 1.0)
    expire_buckets(store, MINUTE_SPEC, "c", 299 * 60.0, 400 * 86400.0)
    assert store == {}


def test_late_point_enters_history_but_is_not_latest() -> None:
    store: dict = {}  # type: ignore[type-arg]
    assert isinstance(observe(store, MINUTE_SPEC, "c", 1000.0, 1.0, offset=1), Observation)
    assert observe(store, MINUTE_SPEC, "c", 500.0, 2.0, offset=2) is Skipped.LATE
    assert value_near(store, MINUTE_SPEC, "c", 500.0, 10.0, now=1000.0) == 2.0
    assert store[latest_key("c")] == {"ts": 1000.0, "offset": 1, "value": 1.0}


def test_a_redelivered_record_changes_nothing_and_only_the_latest_is_published_again() -> None:
    store: dict = {}  # type: ignore[type-arg]
    first = [observe(store, MINUTE_SPEC, "c", 60.0 * i, 1.0 + i, offset=i) for i in range(100)]
    before = {k: list(v) if isinstance(v, list) else dict(v) for k, v in store.items()}
    assert observe(store, MINUTE_SPEC, "c", 60.0 * 50, 51.0, offset=50) is Skipped.REDELIVERED
    again = observe(store, MINUTE_SPEC, "c", 60.0 * 99, 100.0, offset=99)
    assert store == before
    assert isinstance(again, Observation) and again.redelivered
    assert again.changes == first[99].changes  # type: ignore[union-attr]


def test_a_crash_between_writes_is_repaired_by_reprocessing() -> None:
    """Any prefix of a record's writes, then the record again, ends as if it never crashed."""

    class Recording(dict):  # type: ignore[type-arg]
        def __init__(self) -> None:
            super().__init__()
            self.log: list[tuple[str, object]] = []

        def __setitem__(self, key: str, value: object) -> None:
            self.log.append((key, value))
            super().__setitem__(key, value)

        def __delitem__(self, key: str) -> None:
            self.log.append((key, None))
            super().__delitem__(key)

    points = [(3600.0 * 24 * i, 100.0 + i) for i in range(20)]
    reference: dict = {}  # type: ignore[type-arg]
    for offset, (ts, value) in enumerate(points):
        observe(reference, HOURLY_SPEC, "k", ts, value, offset)
    recorder = Recording()
    for offset, (ts, value) in enumerate(points[:12]):
        observe(recorder, HOURLY_SPEC, "k", ts, value, offset)
    before = len(recorder.log)
    observe(recorder, HOURLY_SPEC, "k", points[12][0], points[12][1], 12)
    writes = recorder.log[before:]
    for cut in range(len(writes) + 1):
        crashed: dict = {}  # type: ignore[type-arg]
        for key, value in recorder.log[:before] + writes[:cut]:  # the changelog as it survived
            if value is None:
                crashed.pop(key, None)
            else:
                crashed[key] = value
        for offset in range(12, len(points)):  # redelivery from the last committed offset
            observe(crashed, HOURLY_SPEC, "k", points[offset][0], points[offset][1], offset)
        assert crashed == reference, cut


def test_candle_of_a_bucket() -> None:
    store: dict = {}  # type: ignore[type-arg]
    for ts, price in [(60, 10.0), (80, 8.0), (100, 12.0), (119.999, 11.0)]:
        bucket = record_point(store, MINUTE_SPEC, "c", ts, price)
    assert candle(bucket) == (10.0, 12.0, 8.0, 11.0)


def test_a_full_bucket_keeps_its_first_and_last_points() -> None:
    spec = SeriesSpec(bucket_s=60, windows=(("1h", 3600),), max_points_per_bucket=4)
    store: dict = {}  # type: ignore[type-arg]
    for i in range(10):
        bucket = record_point(store, spec, "c", i * 5.0, float(i))
    assert len(bucket) == 4 and bucket[0] == [0.0, 0.0] and bucket[-1] == [45.0, 9.0]


def test_the_comparison_point_is_the_nearest_to_one_window_ago() -> None:
    """Daily polls drift by minutes: a day's change must still compare with yesterday's poll."""
    store: dict = {}  # type: ignore[type-arg]
    polls = [(0.0, 10.0), (86400.0 - 900, 11.0), (2 * 86400.0 + 600, 12.0)]  # 15 min early, then 10 min late
    for ts, apy in polls:
        record_point(store, HOURLY_SPEC, "p", ts, apy)
    second = changes(store, HOURLY_SPEC, "p", polls[1][0], 11.0, difference)
    third = changes(store, HOURLY_SPEC, "p", polls[2][0], 12.0, difference)
    assert second["1d"] == pytest.approx(1.0)  # vs the poll 23h45m earlier
    assert third["1d"] == pytest.approx(1.0)  # vs the poll 24h25m earlier, not the one 48h before
    assert third["7d"] is None
