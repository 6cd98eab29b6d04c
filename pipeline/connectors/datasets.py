"""The replayable datasets: a name, what it is, and the readers over ../shared/data that make it."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.connectors.readers import ReplayRecord, candles, defillama_tvl, protocol_meta, yields

__all__ = ["Dataset", "DATASETS", "default_data_dir", "records_of"]

Reader = Callable[[Path], Iterator[ReplayRecord]]


@dataclass(frozen=True)
class Dataset:
    name: str
    doc: str
    readers: tuple[Reader, ...]


def default_data_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _chain_logs(data: Path) -> Iterator[ReplayRecord]:
    from pipeline.connectors.readers.chain_logs import read_raw_logs

    folder = data / "chain" / "univ3_2024-01-05"
    # *.tx.raw.csv are the pool's transactions, not logs.
    paths = sorted(p for p in folder.glob("*.raw.csv") if not p.name.endswith(".tx.raw.csv"))
    return heapq.merge(*(read_raw_logs(path) for path in paths), key=lambda r: r.ts)


def _protocols(data: Path) -> Iterator[ReplayRecord]:
    paths = sorted((data / "defillama" / "protocol_tvl").glob("*.json"))
    return heapq.merge(*(defillama_tvl.read_protocol_tvl(p) for p in paths), key=lambda r: r.ts)


def _pool_chart(data: Path) -> Iterator[ReplayRecord]:
    folder = data / "yields"
    meta = yields.pool_metadata(folder / "pools_dex_2025-09-26.csv", folder / "pools_dex_2025-10-06.csv")
    return yields.read_pool_chart(folder / "pool_chart_daily_2023-2025.csv", meta)


def _pool_snapshots(data: Path) -> Iterator[ReplayRecord]:
    folder = data / "yields"
    return heapq.merge(
        yields.read_pool_snapshot(folder / "pools_dex_2025-09-26.csv"),
        yields.read_pool_snapshot(folder / "pools_dex_2025-10-06.csv"),
        key=lambda r: r.ts,
    )


def _protocol_meta(data: Path) -> Iterator[ReplayRecord]:
    return protocol_meta.read_protocol_meta(data / "defillama" / "protocols_2025-12-08.json")


def _prices(name: str, coin: str, symbol: str, interval: float) -> Reader:
    return lambda data: candles.read_binance_csv(data / "prices" / name, coin, symbol, interval)


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "chain-tvl",
            "daily TVL of 200 chains, 2018-2023 (Terra, FTX)",
            (
                lambda data: defillama_tvl.read_chain_tvl(
                    data / "defillama" / "chain_tvl_daily_2018-2023.csv"
                ),
            ),
        ),
        Dataset(
            "protocol-tvl", "daily total TVL of 38 protocols, 2021-2025 (exploits, depegs)", (_protocols,)
        ),
        Dataset(
            "luna",
            "LUNA/USDT one-minute bars, May 2022",
            (
                lambda data: candles.read_binance_klines(
                    data / "prices" / "binance_LUNAUSDT_1m_2022-05.csv", "coingecko:terra-luna", "LUNA"
                ),
            ),
        ),
        Dataset(
            "usdc",
            "USDC 15-minute bars around the SVB depeg, March 2023",
            (
                lambda data: candles.read_usdc_json(
                    data / "prices" / "usdc_15m_depeg_2023-03.json", "coingecko:usd-coin", "USDC"
                ),
            ),
        ),
        Dataset(
            "usde",
            "USDe/USDT one-minute bars, 5-15 October 2025",
            (_prices("binance_USDEUSDT_1m_2025-10-05_2025-10-15.csv", "coingecko:ethena-usde", "USDe", 60),),
        ),
        Dataset(
            "eth-btc-hourly",
            "ETH and BTC hourly bars 2022-2025 (Terra, FTX, SVB)",
            (
                _prices("binance_ETHUSDT_1h_2022-2025.csv", "coingecko:ethereum", "ETH", 3600),
                _prices("binance_BTCUSDT_1h_2022-2025.csv", "coingecko:bitcoin", "BTC", 3600),
            ),
        ),
        Dataset(
            "stablecoins",
            "daily prices of 20 stablecoins 2020-2023 (UST, USDC depegs)",
            (
                lambda data: candles.read_daily_prices(
                    data / "defillama" / "stablecoin_prices_daily_2020-2023.csv"
                ),
            ),
        ),
        Dataset("pool-chart", "daily APY and TVL of 479 pools, 2023-2025", (_pool_chart,)),
        Dataset("pool-snapshots", "two snapshots of ~5.9k DEX pools, ten days apart", (_pool_snapshots,)),
        Dataset(
            "protocol-meta",
            "name, slug, category and chains of 6,600 protocols (DeFiLlama /protocols, 2025-12-08)",
            (_protocol_meta,),
        ),
        Dataset("univ3-logs", "one day of Uniswap v3 USDC/WETH pool logs, 2024-01-05", (_chain_logs,)),
    )
}

# What `make up` replays: every kind of source, crises included.
DATASETS["demo"] = Dataset(
    "demo",
    "chain and protocol TVL, crisis prices, pools and Uniswap logs, merged by event time per source",
    tuple(
        reader
        for name in ("chain-tvl", "protocol-tvl", "luna", "usdc", "stablecoins", "pool-chart", "univ3-logs")
        for reader in DATASETS[name].readers
    ),
)


def records_of(name: str, data: Path | None = None) -> Iterator[ReplayRecord]:
    """All records of a dataset in event-time order."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    folder = data or default_data_dir()
    streams = [reader(folder) for reader in DATASETS[name].readers]
    return heapq.merge(*streams, key=lambda r: r.ts) if len(streams) > 1 else streams[0]
