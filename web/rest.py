"""DeFiLlama-compatible REST endpoints (/protocols, /protocol/{slug}, /v2/chains, /prices, /pools)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, RootModel

from pipeline.storage.history import read_history
from web import defillama, openapi
from web.errors import ApiError
from web.keys import ENGINE, PRINCIPAL, REPLICA, SETTINGS
from web.list_bodies import LIST_REUSE_S, ListBody, send_list
from web.openapi import Operation, Param
from web.principal import Principal
from web.protocols_body import ProtocolsBody
from web.state import ChannelState

__all__ = [
    "ProtocolSummary",
    "ProtocolList",
    "TvlPoint",
    "ChainHistory",
    "ProtocolDetail",
    "ChainSummary",
    "ChainList",
    "CoinPrice",
    "PricesResponse",
    "Pool",
    "PoolsResponse",
    "ROUTES",
    "setup",
]

AsOf = Annotated[
    str, Field(json_schema_extra={"format": "date-time"}, description="event time, ISO 8601 UTC")
]
Stale = Annotated[bool, Field(description="the value is older than its source's staleness threshold")]
Pct = Annotated[float | None, Field(description="percent change; null when the comparison point is unknown")]


class _Shape(BaseModel):
    # Forbidding extras makes the unit tests fail when a shaping function and its model drift apart.
    model_config = ConfigDict(extra="forbid")


class _ProtocolIdentity(_Shape):
    """Who the protocol is: the fields /protocols entries and /protocol/{slug} share."""

    name: str
    slug: str
    symbol: str | None
    url: str | None
    category: str | None
    chains: list[str]


class ProtocolSummary(_ProtocolIdentity):
    tvl: float
    chainTvls: dict[str, float]
    change_1h: Pct
    change_1d: Pct
    change_7d: Pct
    as_of: AsOf
    stale: Stale


class ProtocolList(RootModel[list[ProtocolSummary]]):
    pass


class TvlPoint(_Shape):
    date: int = Field(description="UTC day start, epoch seconds")
    totalLiquidityUSD: float


class ChainHistory(_Shape):
    tvl: list[TvlPoint]


class ProtocolDetail(_ProtocolIdentity):
    currentChainTvls: dict[str, float]
    tvl: list[TvlPoint]
    chainTvls: dict[str, ChainHistory]
    as_of: AsOf | None
    stale: Stale | None


class ChainSummary(_Shape):
    name: str
    tvl: float
    tokenSymbol: str | None
    gecko_id: str | None
    cmcId: str | None
    chainId: int | None
    as_of: AsOf
    stale: Stale


class ChainList(RootModel[list[ChainSummary]]):
    pass


class CoinPrice(_Shape):
    price: float
    symbol: str | None
    timestamp: int = Field(description="event time of the price, epoch seconds")
    confidence: float | None
    as_of: AsOf
    stale: Stale


class PricesResponse(_Shape):
    coins: dict[str, CoinPrice]
    unknown: list[str] = Field(description="requested coins this service has no price for")


class Pool(_Shape):
    pool: str
    chain: str | None
    project: str | None
    symbol: str | None
    tvlUsd: float
    apy: float | None
    apyBase: float | None
    apyReward: float | None
    apyPct1D: float | None = Field(description="APY change over 1 day, percentage points")
    apyPct7D: float | None = Field(description="APY change over 7 days, percentage points")
    as_of: AsOf
    stale: Stale


class PoolsResponse(_Shape):
    status: Literal["success"]
    data: list[Pool]


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


_LISTS = web.AppKey("defillama_lists", dict[tuple[str, int], ListBody])
# /protocols' fragments, per view (live, delayed): see web/protocols_body.py.
_PROTOCOL_BODIES = web.AppKey("protocol_bodies", dict[int, ProtocolsBody])


async def _list(
    request: web.Request, name: str, channel: str, serialise: Callable[[ChannelState], bytes]
) -> web.Response:
    state = _view(request, channel)
    meta = request.app[REPLICA].protocols
    # Metadata is part of /protocols' body: a new or replaced metadata dict also makes the body stale.
    version = (state.version, id(meta), len(meta))
    key = (name, id(state))
    cached, now = request.app[_LISTS].get(key), time.monotonic()
    if cached is None or (cached.version != version and now - cached.built_at >= LIST_REUSE_S):
        cached = request.app[_LISTS][key] = ListBody(version, now, serialise(state))
    return await send_list(request, cached)


def _view(request: web.Request, channel: str) -> ChannelState:
    principal: Principal = request[PRINCIPAL]
    # The free tier reads the delayed view: the same rows, LLAMA_FREE_TIER_DELAY_S late.
    return request.app[REPLICA].view(channel, delayed=principal.delayed)


async def protocols(request: web.Request) -> web.Response:
    meta = request.app[REPLICA].protocols
    bodies = request.app[_PROTOCOL_BODIES]

    def serialise(state: ChannelState) -> bytes:
        return bodies.setdefault(id(state), ProtocolsBody()).build(state.current(), meta)

    return await _list(request, "protocols", "tvl", serialise)


async def protocol(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    metadata = request.app[REPLICA].protocols
    grouped = defillama.group_protocols(_view(request, "tvl").current())
    name = defillama.find_protocol(slug, grouped, metadata)
    if name is None:
        raise ApiError(
            404, "unknown_protocol", f"no protocol has the slug {slug!r}; GET /protocols lists them"
        )
    group = grouped.get(name, defillama.ProtocolRows())
    history = await _daily_history(request, name, group)
    return _json(defillama.protocol_detail(name, group, metadata.get(name), history))


async def _daily_history(
    request: web.Request, name: str, group: defillama.ProtocolRows
) -> dict[str | None, list[tuple[datetime, float | None]]]:
    """Daily closes per series the view has a row of (None: the total), read in one query."""
    series: dict[str, str | None] = {f"protocol|{name}|{chain}": chain for chain in group.chains}
    if group.total is not None:
        series[f"protocol|{name}|"] = None
    if not series:
        return {}
    rows = [r for r in (group.total, *group.chains.values()) if r is not None]
    newest = max(datetime.fromisoformat(r["as_of"]).astimezone(UTC) for r in rows)
    days = request.app[SETTINGS].query_max_rows
    end = newest + timedelta(days=1)
    # Each series has at most `days` buckets in [end - days, end): the limit can never cut one short.
    rollups = await read_history(
        request.app[ENGINE], "tvl", "1d", end - timedelta(days=days), end,
        limit=days * len(series), series_keys=list(series),
    )  # fmt: skip
    history: dict[str | None, list[tuple[datetime, float | None]]] = {}
    for rollup in rollups:
        history.setdefault(series[rollup.series_key], []).append((rollup.bucket_start, rollup.close))
    return history


async def chains(request: web.Request) -> web.Response:
    return await _list(
        request, "chains", "tvl", lambda state: orjson.dumps(defillama.chains_list(state.current()))
    )


async def prices_current(request: web.Request) -> web.Response:
    ids = defillama.parse_coins(request.match_info["coins"])
    return _json(defillama.prices_current(ids, _view(request, "prices").rows))


async def pools(request: web.Request) -> web.Response:
    return await _list(
        request, "pools", "yields", lambda state: orjson.dumps(defillama.pools_list(state.current()))
    )


_TAG = "DeFiLlama-compatible"
ROUTES: tuple[Operation, ...] = (
    Operation(
        "GET", "/protocols", "Every protocol with its current TVL, per chain, and changes", _TAG,
        response=ProtocolList, handler=protocols,
    ),
    Operation(
        "GET", "/protocol/{slug}", "A protocol's current TVL per chain and its daily TVL history", _TAG,
        response=ProtocolDetail, handler=protocol,
        params=(Param("slug", "path", "DeFiLlama slug, e.g. aave-v3", {"type": "string", "minLength": 1}),),
        errors={404: "No protocol has this slug (code unknown_protocol)."},
    ),
    Operation(
        "GET", "/v2/chains", "Every chain with its current TVL", _TAG, response=ChainList, handler=chains
    ),
    Operation(
        "GET", "/prices/current/{coins}", "Current prices of up to 100 coins", _TAG,
        response=PricesResponse, handler=prices_current,
        params=(Param(
            "coins", "path", "comma-separated DeFiLlama coin ids, e.g. coingecko:ethereum,ethereum:0xa0b8...",
            {"type": "string", "minLength": 1},
        ),),
        errors={400: "A coin id is malformed (invalid_coin) or more than 100 are asked (too_many_coins)."},
    ),
    Operation(
        "GET", "/pools", "Every yield pool with its APY and TVL", _TAG, response=PoolsResponse, handler=pools
    ),
)  # fmt: skip


def setup(app: web.Application) -> None:
    app[_LISTS] = {}
    app[_PROTOCOL_BODIES] = {}
    for op in ROUTES:
        assert op.handler is not None
        app.router.add_route(op.method, op.path, op.handler)
    openapi.setup(app, ROUTES)
