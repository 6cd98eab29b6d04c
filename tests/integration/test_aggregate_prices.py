"""The price agent on the real broker: LUNA's one-minute bars of May 2022 become candles and changes."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.connectors.datasets import records_of
from pipeline.settings import Settings
from tests.integration.support import WorkerProcess, read_topic, send_records

pytestmark = pytest.mark.integration


def luna_bars(data_dir: Path) -> dict[str, tuple[float, float, float, float]]:
    """Minute start (ISO) -> (open, high, low, close), read straight from the kline file."""
    with (data_dir / "prices" / "binance_LUNAUSDT_1m_2022-05.csv").open(newline="") as handle:
        return {
            datetime.fromtimestamp(int(row[0]) / 1000, UTC).isoformat().replace("+00:00", "Z"): (
                float(row[1]),
                float(row[2]),
                float(row[3]),
                float(row[4]),
            )
            for row in csv.reader(handle)
        }


async def test_luna_candles_and_hourly_change_match_the_file(
    topics: Settings, ready_worker: WorkerProcess, data_dir: Path
) -> None:
    records = list(records_of("luna", data_dir))
    await send_records(topics, records)
    messages = await read_topic(
        topics, "price.updates", until=lambda ms: len(ms) >= len(records), timeout=180
    )
    assert len(messages) == len(records)
    assert {m.key for m in messages} == {"coingecko:terra-luna"}

    # The last update of each minute carries that minute's complete candle.
    last_of_minute: dict[str, dict] = {}  # type: ignore[type-arg]
    for m in messages:
        update = m.json()
        last_of_minute[update["candle_1m"]["start"]] = update
    bars = luna_bars(data_dir)
    assert set(last_of_minute) == set(bars)
    for start, (open_, high, low, close) in bars.items():
        candle = last_of_minute[start]["candle_1m"]
        assert (candle["open"], candle["high"], candle["low"], candle["close"]) == (
            open_,
            high,
            low,
            close,
        ), start

    at_noon = last_of_minute["2022-05-12T12:00:00Z"]
    close_noon, close_hour_before = bars["2022-05-12T12:00:00Z"][3], bars["2022-05-12T11:00:00Z"][3]
    expected = (close_noon - close_hour_before) / close_hour_before * 100
    assert at_noon["change_1h_pct"] == pytest.approx(expected, rel=1e-9)
    assert at_noon["price"] == close_noon
    close_5m_before = bars["2022-05-12T11:55:00Z"][3]
    assert at_noon["change_5m_pct"] == pytest.approx((close_noon / close_5m_before - 1) * 100, rel=1e-9)
    close_day_before = bars["2022-05-11T12:00:00Z"][3]
    assert at_noon["change_24h_pct"] == pytest.approx((close_noon / close_day_before - 1) * 100, rel=1e-9)

    # After the file's gap (05-13 to 05-31) there is nothing an hour back: unknown, never -100%.
    first_after_gap = last_of_minute[min(s for s in bars if s.startswith("2022-05-31"))]
    assert first_after_gap["change_1h_pct"] is None and first_after_gap["change_24h_pct"] is None
