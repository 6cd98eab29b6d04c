"""TVL series: how a raw TVL record is keyed, windowed and turned into a ``tvl.updates`` value."""

from __future__ import annotations

from pipeline.observe import Observation
from pipeline.records import RawTvl, TvlUpdate, iso
from pipeline.series import SeriesSpec

__all__ = ["TVL_SERIES", "tvl_key", "tvl_update"]

HOUR = 3600
DAY = 24 * HOUR

# Hourly buckets: DeFiLlama's own resolution is hourly at best (daily in history).
TVL_SERIES = SeriesSpec(bucket_s=HOUR, windows=(("1h", HOUR), ("1d", DAY), ("7d", 7 * DAY)))


def tvl_key(record: RawTvl) -> str:
    """``kind|protocol|chain``: chain rows ``chain||Ethereum``, a protocol's total ``protocol|Aave|``."""
    kind = "chain" if record.protocol is None else "protocol"
    return f"{kind}|{record.protocol or ''}|{record.chain or ''}"


def tvl_update(record: RawTvl, observation: Observation, stale: bool) -> TvlUpdate:
    change = observation.changes
    return {
        "kind": "chain" if record.protocol is None else "protocol",
        "protocol": record.protocol,
        "chain": record.chain,
        "tvl_usd": record.tvl_usd,
        "change_1h_pct": change["1h"],
        "change_1d_pct": change["1d"],
        "change_7d_pct": change["7d"],
        "as_of": iso(record.ts.timestamp()),
        "stale": stale,
        "source": record.source,
    }
