"""Yield series: pool APY (changes in percentage points) and TVL, as ``yields.updates`` values."""

from __future__ import annotations

from pipeline.observe import Observation
from pipeline.records import RawYield, YieldUpdate, iso
from pipeline.series import SeriesSpec

__all__ = ["YIELD_SERIES", "apy_series", "tvl_series", "yield_update"]

DAY = 86400
YIELD_SERIES = SeriesSpec(bucket_s=3600, windows=(("1d", DAY), ("7d", 7 * DAY)))


def apy_series(pool: str) -> str:
    return f"apy|{pool}"


def tvl_series(pool: str) -> str:
    return f"tvl|{pool}"


def yield_update(record: RawYield, apy: Observation | None, tvl: Observation, stale: bool) -> YieldUpdate:
    apy_changes = apy.changes if apy is not None else {}
    return {
        "pool": record.pool,
        "chain": record.chain,
        "project": record.project,
        "symbol": record.symbol,
        "tvl_usd": record.tvl_usd,
        "apy": record.apy,
        "apy_base": record.apy_base,
        "apy_reward": record.apy_reward,
        "apy_change_1d": apy_changes.get("1d"),
        "apy_change_7d": apy_changes.get("7d"),
        "tvl_change_1d_pct": tvl.changes["1d"],
        "as_of": iso(record.ts.timestamp()),
        "stale": stale,
        "source": record.source,
    }
