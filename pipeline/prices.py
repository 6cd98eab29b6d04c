"""Price series: windows of 5m/1h/24h and the one-minute candle, turned into a ``price.updates`` value."""

from __future__ import annotations

from pipeline.observe import Observation
from pipeline.records import PriceUpdate, RawPrice, iso
from pipeline.series import SeriesSpec, candle

__all__ = ["PRICE_SERIES", "price_update"]

MINUTE = 60

# One-minute buckets double as the one-minute candles: a bucket's points are that minute's ticks.
PRICE_SERIES = SeriesSpec(
    bucket_s=MINUTE, windows=(("5m", 5 * MINUTE), ("1h", 60 * MINUTE), ("24h", 24 * 60 * MINUTE))
)


def price_update(record: RawPrice, observation: Observation, stale: bool) -> PriceUpdate:
    ts = record.ts.timestamp()
    open_, high, low, close = candle(observation.bucket)
    change = observation.changes
    return {
        "coin": record.coin,
        "symbol": record.symbol,
        "price": record.price,
        "change_5m_pct": change["5m"],
        "change_1h_pct": change["1h"],
        "change_24h_pct": change["24h"],
        "candle_1m": {
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "start": iso(PRICE_SERIES.bucket_of(ts) * MINUTE),
        },
        "as_of": iso(ts),
        "confidence": record.confidence,
        "stale": stale,
        "source": record.source,
    }
