"""The channels clients read (tvl, prices, yields, chain): their topic, key and typed fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["FieldType", "Channel", "CHANNELS", "channel_of_topic"]

# "time" fields hold ISO 8601 UTC strings as the derived topics write them ("2022-05-09T00:00:00Z").
FieldType = Literal["string", "number", "int", "bool", "time"]


@dataclass(frozen=True)
class Channel:
    name: str
    topic: str  # logical topic name (pipeline/topics.py)
    key_doc: str
    fields: dict[str, FieldType]
    # Fields every row has a value for, in the order a table would show them first.
    identity: tuple[str, ...]
    # A stream of events rather than latest-per-key state: snapshots send the most recent events.
    is_event_stream: bool = False


_CHANGE: FieldType = "number"

CHANNELS: dict[str, Channel] = {
    c.name: c
    for c in (
        Channel(
            "tvl",
            "tvl.updates",
            "'<kind>|<protocol>|<chain>'",
            {
                "kind": "string",
                "protocol": "string",
                "chain": "string",
                # Joined from protocols.meta by the sidecar; null when the protocol is unknown there.
                "category": "string",
                "tvl_usd": "number",
                "change_1h_pct": _CHANGE,
                "change_1d_pct": _CHANGE,
                "change_7d_pct": _CHANGE,
                "as_of": "time",
                "stale": "bool",
                "source": "string",
            },
            ("kind", "protocol", "chain"),
        ),
        Channel(
            "prices",
            "price.updates",
            "coin id",
            {
                "coin": "string",
                "symbol": "string",
                "price": "number",
                "change_5m_pct": _CHANGE,
                "change_1h_pct": _CHANGE,
                "change_24h_pct": _CHANGE,
                "confidence": "number",
                "as_of": "time",
                "stale": "bool",
                "source": "string",
            },
            ("coin",),
        ),
        Channel(
            "yields",
            "yields.updates",
            "pool id",
            {
                "pool": "string",
                "chain": "string",
                "project": "string",
                "symbol": "string",
                "tvl_usd": "number",
                "apy": "number",
                "apy_base": "number",
                "apy_reward": "number",
                "apy_change_1d": "number",
                "apy_change_7d": "number",
                "tvl_change_1d_pct": "number",
                "as_of": "time",
                "stale": "bool",
                "source": "string",
            },
            ("pool",),
        ),
        Channel(
            "chain",
            "chain.events",
            "'<chain>|<address>'",
            {
                "chain": "string",
                "block_number": "int",
                "tx_hash": "string",
                "tx_index": "int",
                "log_index": "int",
                "address": "string",
                "protocol": "string",
                "event": "string",
                "removed": "bool",
                "as_of": "time",
            },
            ("chain", "tx_hash", "log_index"),
            is_event_stream=True,
        ),
    )
}


def channel_of_topic(logical_topic: str) -> Channel | None:
    return next((c for c in CHANNELS.values() if c.topic == logical_topic), None)
