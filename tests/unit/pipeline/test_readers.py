"""Replay readers: event-time order, bars as ticks, gaps kept as gaps (on the real files)."""

from __future__ import annotations

import itertools
from pathlib import Path

from pipeline.connectors.datasets import DATASETS, records_of
from pipeline.connectors.readers.candles import bar_ticks
from pipeline.observe import Observation, observe
from pipeline.prices import PRICE_SERIES, price_update
from pipeline.records import RawPrice, RawTvl, RawYield


def test_a_bar_becomes_four_ticks_inside_it_whose_candle_is_the_bar() -> None:
    ticks = list(bar_ticks("coingecko:x", "X", 60.0, 60.0, (10.0, 12.0, 9.0, 11.0), "test"))
    assert [t.value["price"] for t in ticks] == [10.0, 9.0, 12.0, 11.0]  # rising bar: low first
    assert all(60.0 <= t.ts < 120.0 for t in ticks)
    store: dict = {}  # type: ignore[type-arg]
    for offset, tick in enumerate(ticks):
        observation = observe(store, PRICE_SERIES, "coingecko:x", tick.ts, tick.value["price"], offset)
    assert isinstance(observation, Observation)
    update = price_update(RawPrice.model_validate(ticks[-1].value), observation, stale=False)
    assert update["candle_1m"] == {
        "open": 10.0,
        "high": 12.0,
        "low": 9.0,
        "close": 11.0,
        "start": "1970-01-01T00:01:00Z",
    }


def test_every_dataset_is_in_event_time_order_and_valid(data_dir: Path) -> None:
    models = {"raw.tvl": RawTvl, "raw.prices": RawPrice, "raw.yields": RawYield}
    for name in DATASETS:
        if name == "demo":
            continue
        records = list(itertools.islice(records_of(name, data_dir), 20_000))
        assert records, name
        assert all(a.ts <= b.ts for a, b in itertools.pairwise(records)), name
        for record in records[:2000]:
            if record.topic in models:
                models[record.topic].model_validate(record.value)


def test_chain_tvl_gaps_stay_gaps(data_dir: Path) -> None:
    """An empty CSV cell is a missing value, not a zero: no record is made for it."""
    terra = [r for r in records_of("chain-tvl", data_dir) if r.key == "chain|Terra"]
    assert terra and all(r.value["tvl_usd"] > 0 for r in terra)
    days = [r.ts for r in terra]
    assert len(days) == len(set(days))
