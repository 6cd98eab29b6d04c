"""Readers of DeFiLlama TVL exports: the wide chain TVL CSV and per-protocol TVL histories (JSON)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pipeline.connectors.readers import ReplayRecord

__all__ = ["read_chain_tvl", "read_protocol_tvl", "day_start", "wide_csv_cells"]


def day_start(date_text: str) -> float:
    """Epoch seconds of the day's 00:00 UTC.

    The export's dates carry a ``20:00:00`` artefact (midnight UTC written in UTC-4); DeFiLlama's daily
    points are taken at 00:00 UTC, so only the date part is kept.
    """
    day = datetime.strptime(date_text[:10], "%Y-%m-%d").replace(tzinfo=UTC)
    return day.timestamp()


def wide_csv_cells(path: Path) -> Iterator[tuple[float, str, float]]:
    """(day start, column name, value) of a wide daily CSV ``date,<name>,<name>,...``.

    An empty cell is a gap, not a zero: it yields nothing.
    """
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        columns = next(reader)[1:]
        for row in reader:
            ts = day_start(row[0])
            for column, cell in zip(columns, row[1:], strict=False):
                if cell:
                    yield ts, column, float(cell)


def read_chain_tvl(path: Path) -> Iterator[ReplayRecord]:
    """One ``raw.tvl`` record per (day, chain) with a value."""
    source = f"replay:{path.name}"
    for ts, chain, tvl in wide_csv_cells(path):
        value = {"protocol": None, "chain": chain, "tvl_usd": tvl, "ts": ts, "source": source}
        yield ReplayRecord(ts, "raw.tvl", f"chain|{chain}", value)


def read_protocol_tvl(path: Path) -> Iterator[ReplayRecord]:
    """One ``raw.tvl`` record per day of a protocol's total TVL history."""
    document = json.loads(path.read_bytes())
    name = document["name"]
    source = f"replay:{path.name}"
    for point in sorted(document["tvl"], key=lambda p: p["date"]):
        ts = float(point["date"])
        value = {
            "protocol": name,
            "chain": None,
            "tvl_usd": float(point["totalLiquidityUSD"]),
            "ts": ts,
            "source": source,
        }
        yield ReplayRecord(ts, "raw.tvl", name, value)
