"""API tiers and the limits each sets (requests, connections, subscriptions, data delay, alert quota)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["TierName", "TierLimits", "TIERS"]

TierName = Literal["free", "pro", "enterprise", "api-premium"]


@dataclass(frozen=True)
class TierLimits:
    requests_per_minute: int
    ws_connections: int
    ws_subscriptions: int
    # True: sees every channel LLAMA_FREE_TIER_DELAY_S (5 minutes) late.
    delayed: bool
    alerts_per_month: int


# Anonymous clients (no key) get the free tier's limits, counted per client address.
TIERS: dict[str, TierLimits] = {
    "free": TierLimits(
        requests_per_minute=60, ws_connections=2, ws_subscriptions=10, delayed=True, alerts_per_month=5
    ),
    "pro": TierLimits(
        requests_per_minute=1_000, ws_connections=20, ws_subscriptions=50, delayed=False, alerts_per_month=200
    ),
    "api-premium": TierLimits(
        requests_per_minute=3_000,
        ws_connections=100,
        ws_subscriptions=50,
        delayed=False,
        alerts_per_month=1_000,
    ),
    "enterprise": TierLimits(
        requests_per_minute=10_000,
        ws_connections=1_000,
        ws_subscriptions=50,
        delayed=False,
        alerts_per_month=100_000,
    ),
}
