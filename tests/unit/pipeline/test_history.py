"""Folding derived-topic updates into hourly and daily rollups: buckets, OHLC, nulls, redelivery."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.records import iso
from pipeline.storage.history import Rollup, Update, as_of_of, bucket_start, fold, merge
from web.history_writer import decode

T0 = datetime(2022, 5, 9, tzinfo=UTC).timestamp()


def price(ts: float, value: float, coin: str = "coingecko:terra-luna") -> Update:
    row = {"coin": coin, "symbol": "LUNA", "price": value, "as_of": iso(ts), "stale": False, "source": "t"}
    return ("prices", coin, row | {"candle_1m": {"open": value, "close": value}})


def apy(ts: float, value: float | None, pool: str = "pool-1") -> Update:
    return ("yields", pool, {"pool": pool, "tvl_usd": 1e6, "apy": value, "as_of": iso(ts), "stale": False})


def by_bucket(rollups: list[Rollup], resolution: str) -> dict[tuple[str, datetime], Rollup]:
    return {(r.series_key, r.bucket_start): r for r in rollups if r.resolution == resolution}


def ohlc(rollup: Rollup) -> tuple[float | None, ...]:
    return (rollup.open, rollup.high, rollup.low, rollup.close)


def test_buckets_are_utc_hours_and_days_of_event_time() -> None:
    moment = datetime(2022, 5, 9, 13, 59, 59, 999000, tzinfo=UTC)
    assert bucket_start(moment, 3600) == datetime(2022, 5, 9, 13, tzinfo=UTC)
    assert bucket_start(moment, 86400) == datetime(2022, 5, 9, tzinfo=UTC)
    assert as_of_of({"as_of": "2022-05-09T13:59:59.999000Z"}) == moment
    # A naive time is UTC, as everywhere in the project.
    assert as_of_of({"as_of": "2022-05-09T13:59:59.999"}) == moment
    for bad in ({}, {"as_of": None}, {"as_of": 1652104800}, {"as_of": "yesterday"}):
        with pytest.raises(ValueError):
            as_of_of(bad)


def test_fold_gives_ohlc_per_hour_and_per_day() -> None:
    values = [10.0, 12.0, 8.0, 9.0, 11.0, 7.0, 7.5]
    # Four ticks in hour 0, three in hour 5: all on one day.
    times = [T0 + 60, T0 + 600, T0 + 1800, T0 + 3599, T0 + 5 * 3600, T0 + 5 * 3600 + 1, T0 + 6 * 3600 - 1]
    rollups = fold(price(ts, v) for ts, v in zip(times, values, strict=True))
    hours = by_bucket(rollups, "1h")
    day = by_bucket(rollups, "1d")
    start = datetime(2022, 5, 9, tzinfo=UTC)
    assert sorted(hours) == [("coingecko:terra-luna", start), ("coingecko:terra-luna", start.replace(hour=5))]
    first, second = (
        hours[("coingecko:terra-luna", start)],
        hours[("coingecko:terra-luna", start.replace(hour=5))],
    )
    assert ohlc(first) == (10.0, 12.0, 8.0, 9.0) and first.samples == 4
    assert ohlc(second) == (11.0, 11.0, 7.0, 7.5) and second.samples == 3
    assert first.last_as_of == datetime.fromtimestamp(T0 + 3599, UTC)
    (whole,) = day.values()
    assert ohlc(whole) == (10.0, 12.0, 7.0, 7.5) and whole.samples == 7
    assert whole.metric == "price" and whole.last_as_of == datetime.fromtimestamp(times[-1], UTC)
    # The newest row, restricted to the channel's fields: the one-minute candle is not history.
    assert whole.fields["price"] == 7.5 and "candle_1m" not in whole.fields


def test_series_and_channels_fold_apart() -> None:
    tvl = ("tvl", "chain||Terra", {"kind": "chain", "chain": "Terra", "tvl_usd": 5.0, "as_of": iso(T0)})
    rollups = fold([price(T0, 1.0), price(T0, 2.0, coin="coingecko:bitcoin"), tvl])
    assert {(r.channel, r.series_key, r.metric) for r in rollups} == {
        ("prices", "coingecko:terra-luna", "price"),
        ("prices", "coingecko:bitcoin", "price"),
        ("tvl", "chain||Terra", "tvl_usd"),
    }
    assert len(rollups) == 6  # an hour and a day each
    with pytest.raises(ValueError):
        fold([("chain", "ethereum|0xabc", {"as_of": iso(T0)})])  # an event stream has no rollups


def test_null_apy_is_a_gap_not_a_value() -> None:
    rollups = fold(
        [apy(T0, None), apy(T0 + 60, 4.0), apy(T0 + 120, None), apy(T0 + 180, 2.0), apy(T0 + 240, None)]
    )
    hour = by_bucket(rollups, "1h")[("pool-1", datetime.fromtimestamp(T0, UTC))]
    assert ohlc(hour) == (4.0, 4.0, 2.0, 2.0)
    assert hour.samples == 5
    # The newest row is kept whole, null APY included.
    assert hour.fields["apy"] is None and hour.last_as_of == datetime.fromtimestamp(T0 + 240, UTC)
    only_nulls = fold([apy(T0, None), apy(T0 + 60, None)])
    assert all(ohlc(r) == (None, None, None, None) and r.samples == 2 for r in only_nulls)


def test_redelivery_changes_nothing() -> None:
    updates = [price(T0 + i * 700, 10.0 + (i % 5) - i / 10) for i in range(40)]
    once = fold(updates)
    # The whole stream twice, and a worker restart that publishes a tail again, in order.
    assert fold(updates + updates) == once
    assert fold(updates[:25] + updates[18:]) == once
    # What the store holds already (its newest as_of per series) is skipped too.
    stored = fold(updates[:25])
    newest = {("prices", "coingecko:terra-luna"): max(r.last_as_of for r in stored)}
    tail = fold(updates[18:], after=newest)
    assert min(r.bucket_start for r in tail if r.resolution == "1h") == bucket_start(
        datetime.fromtimestamp(T0 + 25 * 700, UTC), 3600
    )
    # Merging the tail into what is stored, bucket by bucket, is the uninterrupted result.
    merged = {r.bucket: r for r in stored}
    for r in tail:
        merged[r.bucket] = merge(merged[r.bucket], r) if r.bucket in merged else r
    assert sorted(merged.values(), key=_order) == sorted(once, key=_order)


def test_merge_of_folds_is_the_fold_of_the_whole() -> None:
    updates = [apy(T0 + i * 400, None if i % 3 == 0 else float(i % 7)) for i in range(30)]
    whole = {r.bucket: r for r in fold(updates)}
    for cut in (1, 2, 9, 29):
        parts = {r.bucket: r for r in fold(updates[:cut])}
        for r in fold(updates[cut:]):
            parts[r.bucket] = merge(parts[r.bucket], r) if r.bucket in parts else r
        assert parts == whole


def test_decode_skips_what_is_not_an_update() -> None:
    good = b'{"coin": "c", "price": 1.0, "as_of": "2022-05-09T00:00:00Z"}'
    assert decode("prices", b"c", good) == (
        "prices",
        "c",
        {"coin": "c", "price": 1.0, "as_of": "2022-05-09T00:00:00Z"},
    )
    bad: list[tuple[bytes | None, bytes | None]] = [
        (b"c", b"[1, 2]"),
        (b"c", b"not json"),
        (b"c", b'{"price": 1.0}'),
        (b"c", b'{"price": 1.0, "as_of": "soon"}'),
        (b"c", None),  # a tombstone of the compacted topic
        (None, good),
        (b"c" * 301, good),
        (b"c", b'{"price": 1.0, "as_of": "2022-05-09T00:00:00Z", "symbol": "a\\u0000"}'),
    ]
    for key, value in bad:
        with pytest.raises(ValueError):
            decode("prices", key, value)


def _order(r: Rollup) -> Any:
    return (r.resolution, r.bucket_start, r.series_key)
