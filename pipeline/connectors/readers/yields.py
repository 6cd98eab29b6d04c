"""Readers of DeFiLlama yields exports: daily pool charts (joined to pool metadata) and pool snapshots."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pipeline.connectors.readers import ReplayRecord

__all__ = ["read_pool_snapshot", "read_pool_chart", "pool_metadata"]


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def _number(cell: str) -> float | None:
    return float(cell) if cell not in ("", "NaN", "nan", "None") else None


def pool_metadata(*snapshots: Path) -> dict[str, dict[str, str]]:
    """pool id -> {chain, project, symbol}, from the DEX pool snapshots (later files win)."""
    meta: dict[str, dict[str, str]] = {}
    for path in snapshots:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                meta[row["pool"]] = {
                    "chain": row["chain"],
                    "project": row["protocol_slug"],
                    "symbol": row["symbol"],
                }
    return meta


def _record(ts: float, pool: str, meta: dict[str, str], row: dict[str, str], source: str) -> ReplayRecord:
    value = {
        "pool": pool,
        **meta,
        "tvl_usd": float(row["tvl_usd"]),
        "apy": _number(row["apy"]),
        "apy_base": _number(row["apy_base"]),
        "apy_reward": _number(row["apy_reward"]),
        "ts": ts,
        "source": source,
    }
    return ReplayRecord(ts, "raw.yields", pool, value)


def read_pool_snapshot(path: Path) -> Iterator[ReplayRecord]:
    """``pools_dex_*.csv``: one observation per pool at the row's own timestamp."""
    source = f"replay:{path.name}"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    records = [
        _record(
            _ts(row["timestamp"]),
            row["pool"],
            {"chain": row["chain"], "project": row["protocol_slug"], "symbol": row["symbol"]},
            row,
            source,
        )
        for row in rows
    ]
    return iter(sorted(records, key=lambda r: r.ts))


def read_pool_chart(path: Path, meta: dict[str, dict[str, str]]) -> Iterator[ReplayRecord]:
    """``pool_chart_daily``: daily history per pool; pools without metadata are skipped (and counted)."""
    source = f"replay:{path.name}"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    records = [
        _record(_ts(row["timestamp"]), row["pool_id"], meta[row["pool_id"]], row, source)
        for row in rows
        if row["pool_id"] in meta
    ]
    return iter(sorted(records, key=lambda r: r.ts))
