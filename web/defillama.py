"""DeFiLlama-compatible response bodies built from the replica's rows: pure shaping functions."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.records import COIN_PATTERN
from web.errors import ApiError

__all__ = [
    "MAX_COINS",
    "DAY_S",
    "ProtocolRows",
    "slugify",
    "protocol_slug",
    "epoch_s",
    "group_protocols",
    "protocols_list",
    "protocol_entry",
    "list_order",
    "find_protocol",
    "history_points",
    "protocol_detail",
    "chains_list",
    "parse_coins",
    "prices_current",
    "pools_list",
]

# DeFiLlama's own limit is in URL length; ours bounds the work and the response of one request.
MAX_COINS = 100
DAY_S = 86_400
_COIN = re.compile(COIN_PATTERN)


@dataclass
class ProtocolRows:
    """A protocol's rows of the tvl channel: its total (chain null) and one row per chain."""

    total: Mapping[str, Any] | None = None
    chains: dict[str, Mapping[str, Any]] = field(default_factory=dict)


def slugify(name: str) -> str:
    """DeFiLlama's ``sluggify``: lowercase, spaces become hyphens, apostrophes are dropped."""
    return name.lower().replace(" ", "-").replace("'", "")


def protocol_slug(name: str, meta: Mapping[str, Any] | None) -> str:
    # Metadata may carry an empty slug (the 2025 exports do): derive it then, as DeFiLlama would.
    slug = (meta or {}).get("slug")
    return str(slug) if slug else slugify(name)


def epoch_s(as_of: str) -> int:
    """Whole epoch seconds of an ``as_of`` (ISO 8601 UTC), as DeFiLlama's ``timestamp``/``date`` fields."""
    return int(datetime.fromisoformat(as_of).timestamp())


def group_protocols(rows: Iterable[Mapping[str, Any]]) -> dict[str, ProtocolRows]:
    grouped: dict[str, ProtocolRows] = {}
    for row in rows:
        name = row.get("protocol")
        if row.get("kind") != "protocol" or not name:
            continue
        entry = grouped.setdefault(name, ProtocolRows())
        chain = row.get("chain")
        if chain:
            entry.chains[chain] = row
        else:
            entry.total = row
    return grouped


def _chains(meta: Mapping[str, Any], chain_tvls: Mapping[str, float]) -> list[str]:
    """Metadata chains and chains with a row; by TVL first (as DeFiLlama orders them), then as listed."""
    listed = [str(c) for c in meta.get("chains") or []]
    ranked = sorted(chain_tvls, key=lambda c: (-chain_tvls[c], c))
    return ranked + [c for c in dict.fromkeys(listed) if c not in chain_tvls]


def _category(meta: Mapping[str, Any], total: Mapping[str, Any] | None) -> str | None:
    value = meta.get("category") or (total or {}).get("category")
    return str(value) if value else None


def _described(
    name: str, meta: Mapping[str, Any], total: Mapping[str, Any] | None, chain_tvls: Mapping[str, float]
) -> dict[str, Any]:
    """The fields ``/protocols`` and ``/protocol/{slug}`` share, first in both."""
    return {
        "name": name,
        "slug": protocol_slug(name, meta),
        "symbol": _text(meta, "symbol"),
        "url": _text(meta, "url"),
        "category": _category(meta, total),
        "chains": _chains(meta, chain_tvls),
    }


def _text(meta: Mapping[str, Any], name: str) -> str | None:
    value = meta.get(name)
    return str(value) if value else None


def protocols_list(
    rows: Iterable[Mapping[str, Any]], metadata: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """``GET /protocols``: every protocol with a total row, largest TVL first."""
    out = [
        protocol_entry(name, group, metadata.get(name))
        for name, group in group_protocols(rows).items()
        # A protocol's TVL is the source's own total, never a sum of its chains (see docs/topics.md).
        if group.total is not None
    ]
    out.sort(key=list_order)
    return out


def protocol_entry(name: str, group: ProtocolRows, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """One protocol of ``/protocols`` (``group.total`` must be set)."""
    total = group.total
    assert total is not None
    meta = meta or {}
    chain_tvls = {chain: float(row["tvl_usd"]) for chain, row in group.chains.items()}
    return {
        **_described(name, meta, total, chain_tvls),
        "tvl": float(total["tvl_usd"]),
        "chainTvls": chain_tvls,
        "change_1h": total.get("change_1h_pct"),
        "change_1d": total.get("change_1d_pct"),
        "change_7d": total.get("change_7d_pct"),
        "as_of": total["as_of"],
        "stale": bool(total.get("stale", False)),
    }


def list_order(entry: Mapping[str, Any]) -> tuple[float, str]:
    """``/protocols``' order: largest TVL first, then by name."""
    return (-entry["tvl"], entry["name"])


def find_protocol(
    slug: str, grouped: Mapping[str, ProtocolRows], metadata: Mapping[str, Mapping[str, Any]]
) -> str | None:
    """The name of the protocol a slug names, among those with rows or metadata; None if none does."""
    wanted = slug.lower()
    for name in (*grouped, *metadata):
        if protocol_slug(name, metadata.get(name)).lower() == wanted:
            return name
    return None


def history_points(
    buckets: Sequence[tuple[datetime, float | None]], current: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """Daily points ``{date, totalLiquidityUSD}`` of one series, consistent with the view's current row.

    History in SQL is written from the live stream; a delayed (free tier) view must not see a value newer
    than its own, so buckets after the current row's day are dropped and that day's value is the current
    row's. With no current row in the view, the view knows nothing of the series: no points.
    """
    if current is None:
        return []
    as_of = epoch_s(current["as_of"])
    today = as_of - as_of % DAY_S
    points = [
        {"date": int(start.timestamp()), "totalLiquidityUSD": float(close)}
        for start, close in buckets
        if close is not None and int(start.timestamp()) < today
    ]
    points.append({"date": today, "totalLiquidityUSD": float(current["tvl_usd"])})
    return points


def protocol_detail(
    name: str,
    group: ProtocolRows,
    meta: Mapping[str, Any] | None,
    history: Mapping[str | None, Sequence[tuple[datetime, float | None]]],
) -> dict[str, Any]:
    """``GET /protocol/{slug}``; ``history`` holds daily (bucket start, close) per chain (None: the total)."""
    meta = meta or {}
    current = {chain: float(row["tvl_usd"]) for chain, row in group.chains.items()}
    total = group.total
    return {
        **_described(name, meta, total, current),
        "currentChainTvls": current,
        "tvl": history_points(history.get(None, ()), total),
        "chainTvls": {
            chain: {"tvl": history_points(history.get(chain, ()), row)} for chain, row in group.chains.items()
        },
        "as_of": total["as_of"] if total else None,
        "stale": bool(total.get("stale", False)) if total else None,
    }


def chains_list(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``GET /v2/chains`` from the chain rows; the token and id fields we do not know are null."""
    out = [
        {
            "name": row["chain"],
            "tvl": float(row["tvl_usd"]),
            "tokenSymbol": None,
            "gecko_id": None,
            "cmcId": None,
            "chainId": None,
            "as_of": row["as_of"],
            "stale": bool(row.get("stale", False)),
        }
        for row in rows
        if row.get("kind") == "chain" and row.get("chain")
    ]
    out.sort(key=lambda c: (-c["tvl"], c["name"]))
    return out


def parse_coins(text: str) -> list[str]:
    """Comma-separated DeFiLlama coin ids, deduplicated in order; a malformed or excess id is a 400."""
    ids = list(dict.fromkeys(part.strip() for part in text.split(",")))
    if len(ids) > MAX_COINS:
        raise ApiError(
            400, "too_many_coins", f"{len(ids)} coins requested; ask for at most {MAX_COINS} at once"
        )
    for coin in ids:
        if not _COIN.fullmatch(coin):
            raise ApiError(
                400,
                "invalid_coin",
                f"{coin!r} is not a DeFiLlama coin id ('<chain>:<address>' or 'coingecko:<id>')",
                coin=coin,
            )
    return ids


def prices_current(ids: Sequence[str], rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``GET /prices/current/{coins}``: known coins under ``coins``, the others listed in ``unknown``."""
    coins: dict[str, Any] = {}
    unknown: list[str] = []
    for coin in ids:
        row = rows.get(coin)
        if row is None:
            unknown.append(coin)
            continue
        coins[coin] = {
            "price": float(row["price"]),
            "symbol": row.get("symbol"),
            "timestamp": epoch_s(row["as_of"]),
            "confidence": row.get("confidence"),
            "as_of": row["as_of"],
            "stale": bool(row.get("stale", False)),
        }
    return {"coins": coins, "unknown": unknown}


def pools_list(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``GET /pools`` (DeFiLlama's yields API), largest TVL first."""
    data = [
        {
            "pool": row["pool"],
            "chain": row.get("chain"),
            "project": row.get("project"),
            "symbol": row.get("symbol"),
            "tvlUsd": float(row["tvl_usd"]),
            "apy": row.get("apy"),
            "apyBase": row.get("apy_base"),
            "apyReward": row.get("apy_reward"),
            "apyPct1D": row.get("apy_change_1d"),
            "apyPct7D": row.get("apy_change_7d"),
            "as_of": row["as_of"],
            "stale": bool(row.get("stale", False)),
        }
        for row in rows
    ]
    data.sort(key=lambda p: (-p["tvlUsd"], p["pool"]))
    return {"status": "success", "data": data}
