"""Readers of the real data files: each yields ``ReplayRecord``s in event-time order for a raw topic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ReplayRecord"]


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    ts: float  # event time, epoch seconds UTC
    topic: str  # logical raw topic: raw.tvl, raw.prices, raw.yields, raw.chain
    key: str
    value: dict[str, Any]  # a raw record as the topic's schema in pipeline.records describes it
