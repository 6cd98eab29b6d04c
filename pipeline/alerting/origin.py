"""Which raw partition a derived row came from: the stream whose event time ages a silent series.

A derived partition interleaves rows from several raw partitions, and a fast replay reads one raw partition
days ahead of another; only within one raw partition do rows arrive in event-time order. So "no update for
``no_data_after``" is measured against the newest row that shares both the series' derived partition and
its raw partition: the rows that reach the evaluator as one ordered stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka.partitioner import murmur2

__all__ = ["raw_key", "raw_partition"]


def raw_key(channel: str, row: Mapping[str, Any]) -> str | None:
    """The raw topic's key of the records behind a row (docs/topics.md: protocol name or ``chain|<chain>``
    for TVL, coin id, pool id)."""
    if channel == "tvl":
        protocol = row.get("protocol")
        return str(protocol) if protocol else f"chain|{row.get('chain') or ''}"
    value = row.get("coin" if channel == "prices" else "pool")
    return str(value) if value is not None else None


def raw_partition(channel: str, row: Mapping[str, Any], partitions: int) -> int:
    """The raw partition Kafka's default partitioner (murmur2, as every producer here uses) gives the key."""
    key = raw_key(channel, row)
    if key is None:
        return 0
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions
