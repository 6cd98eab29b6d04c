"""Readers of exchange candles and daily price exports; each bar becomes four ticks on ``raw.prices``."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from pipeline.connectors.readers import ReplayRecord
from pipeline.connectors.readers.defillama_tvl import wide_csv_cells

__all__ = [
    "bar_ticks",
    "read_binance_csv",
    "read_binance_klines",
    "read_cdd_csv",
    "read_usdc_json",
    "read_daily_prices",
]

# The exchange files are candles, not ticks. A bar is replayed as the ticks that make it:
# open at its start, the two extremes inside it, close just before its end. The one-minute candle
# the pipeline builds from these ticks then equals the file's bar, and the close of a bar is the
# price "at" the bar's end for change computations.
CLOSE_BEFORE_END_S = 0.001


def bar_ticks(
    coin: str, symbol: str, start: float, interval: float, bar: tuple[float, float, float, float], source: str
) -> Iterator[ReplayRecord]:
    open_, high, low, close = bar
    # A rising bar most likely went down first, a falling bar up first.
    first, second = (low, high) if close >= open_ else (high, low)
    times_prices = (
        (start, open_),
        (start + interval / 3, first),
        (start + 2 * interval / 3, second),
        (start + interval - CLOSE_BEFORE_END_S, close),
    )
    for ts, price in times_prices:
        value = {
            "coin": coin,
            "symbol": symbol,
            "price": price,
            "ts": ts,
            "confidence": 0.99,
            "source": source,
        }
        yield ReplayRecord(ts, "raw.prices", coin, value)


def _parse_time(text: str) -> float:
    text = text.strip().replace("Z", "+00:00")
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _bars_to_ticks(
    coin: str,
    symbol: str,
    interval: float,
    source: str,
    bars: Iterable[tuple[float, tuple[float, float, float, float]]],
) -> Iterator[ReplayRecord]:
    for start, bar in sorted(bars, key=lambda item: item[0]):
        yield from bar_ticks(coin, symbol, start, interval, bar, source)


def read_binance_csv(path: Path, coin: str, symbol: str, interval: float) -> Iterator[ReplayRecord]:
    """``timestamp,open,high,low,close,volume`` (or ``timestamp_utc,...``) with a header."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    time_column = "timestamp" if "timestamp" in rows[0] else "timestamp_utc"
    bars = (
        (
            _parse_time(r[time_column]),
            (float(r["open"]), float(r["high"]), float(r["low"]), float(r["close"])),
        )
        for r in rows
    )
    return _bars_to_ticks(coin, symbol, interval, f"replay:{path.name}", bars)


def read_binance_klines(path: Path, coin: str, symbol: str) -> Iterator[ReplayRecord]:
    """Binance kline CSV without header: open_time_ms, open, high, low, close, volume, close_time_ms, ..."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    bars = []
    for row in rows:
        start = int(row[0]) / 1000
        interval = (int(row[6]) + 1) / 1000 - start
        bars.append((start, interval, (float(row[1]), float(row[2]), float(row[3]), float(row[4]))))
    source = f"replay:{path.name}"
    for start, interval, bar in sorted(bars, key=lambda item: item[0]):
        yield from bar_ticks(coin, symbol, start, interval, bar, source)


def read_cdd_csv(path: Path, coin: str, symbol: str) -> Iterator[ReplayRecord]:
    """CryptoDataDownload hourly CSV, newest row first; ``unix`` is in seconds or milliseconds."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    bars = []
    for r in rows:
        unix = float(r["unix"])
        start = unix / 1000 if unix > 1e11 else unix
        bars.append((start, (float(r["open"]), float(r["high"]), float(r["low"]), float(r["close"]))))
    return _bars_to_ticks(coin, symbol, 3600, f"replay:{path.name}", bars)


def read_usdc_json(path: Path, coin: str, symbol: str) -> Iterator[ReplayRecord]:
    """``{"data": [{"dt", "o", "h", "l", "c", "v"}]}`` 15-minute bars."""
    data = json.loads(path.read_bytes())["data"]
    bars = (
        (_parse_time(b["dt"]), (float(b["o"]), float(b["h"]), float(b["l"]), float(b["c"]))) for b in data
    )
    return _bars_to_ticks(coin, symbol, 900, f"replay:{path.name}", bars)


def read_daily_prices(path: Path) -> Iterator[ReplayRecord]:
    """Wide daily CSV ``Date,<coingecko id>,...``: one tick per coin and day; an empty cell is a gap.

    A zero or negative cell is sent as it is: validation at the edge, not the reader, rejects it.
    """
    source = f"replay:{path.name}"
    for ts, slug, price in wide_csv_cells(path):
        coin = f"coingecko:{slug}"
        value = {"coin": coin, "price": price, "ts": ts, "confidence": 0.9, "source": source}
        yield ReplayRecord(ts, "raw.prices", coin, value)
