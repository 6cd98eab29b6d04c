"""Schemas of the raw records (validated with pydantic) and of the derived values the agents publish."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal, TypedDict

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ProtocolMeta",
    "RawTvl",
    "RawPrice",
    "RawYield",
    "RawLog",
    "Candle",
    "TvlUpdate",
    "PriceUpdate",
    "YieldUpdate",
    "ChainEvent",
    "iso",
]

# Chain names as DeFiLlama spells them ("Ethereum", "Arbitrum Nova", "Boba_Bnb", "Plume (Deprecated)").
CHAIN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._()\-]{0,63}$"
# DeFiLlama coin ids: "coingecko:ethereum", "ethereum:0xa0b8...", "solana:EPjF...".
COIN_PATTERN = r"^[a-z0-9_-]{1,32}:[A-Za-z0-9._\-]{1,128}$"
HEX_PATTERN = r"^0x[0-9a-fA-F]*$"


def _as_utc(value: datetime) -> datetime:
    """Naive timestamps in the sources are UTC; keep every datetime aware."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


EventTime = Annotated[datetime, AfterValidator(_as_utc)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Chain = Annotated[str, Field(pattern=CHAIN_PATTERN)]


class _Raw(BaseModel):
    # Unknown fields are an error: a producer that drifts from the contract is told at once.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    ts: EventTime
    source: Annotated[str, Field(min_length=1, max_length=128)] = "unknown"


class RawTvl(_Raw):
    """``raw.tvl``: TVL of a chain (protocol null), of a protocol (chain null) or of a protocol on a chain."""

    protocol: Name | None = None
    chain: Chain | None = None
    tvl_usd: Annotated[float, Field(ge=0)]

    @model_validator(mode="after")
    def _names_something(self) -> RawTvl:
        if self.protocol is None and self.chain is None:
            raise ValueError("protocol and chain are both null: one of them names what this TVL is of")
        return self


class RawPrice(_Raw):
    """``raw.prices``: one observed price of a coin."""

    coin: Annotated[str, Field(pattern=COIN_PATTERN)]
    price: Annotated[float, Field(gt=0)]
    confidence: Annotated[float, Field(ge=0, le=1)] = 0.99
    symbol: Annotated[str, Field(max_length=32)] | None = None


class RawYield(_Raw):
    """``raw.yields``: one observation of a yield pool."""

    pool: Annotated[str, Field(min_length=1, max_length=128)]
    chain: Chain
    project: Name
    symbol: Annotated[str, Field(max_length=200)] = ""
    tvl_usd: Annotated[float, Field(ge=0)]
    apy: float | None = None
    apy_base: float | None = None
    apy_reward: float | None = None


class RawLog(_Raw):
    """``raw.chain``: one EVM log as a node returns it (``ts`` is the block timestamp)."""

    chain: Chain
    block_number: Annotated[int, Field(ge=0)]
    block_hash: Annotated[str, Field(pattern=HEX_PATTERN)] | None = None
    tx_hash: Annotated[str, Field(pattern=HEX_PATTERN, min_length=66, max_length=66)]
    tx_index: Annotated[int, Field(ge=0)]
    log_index: Annotated[int, Field(ge=0)]
    address: Annotated[str, Field(pattern=HEX_PATTERN, min_length=42, max_length=42)]
    topics: Annotated[list[Annotated[str, Field(pattern=HEX_PATTERN, max_length=66)]], Field(max_length=4)]
    data: Annotated[str, Field(pattern=HEX_PATTERN)]
    removed: bool = False


# ---- derived values (plain dicts serialised with orjson; these types document their shape) ----


class ProtocolMeta(BaseModel):
    """``protocols.meta``: what a protocol is (slug, category, chains); joined to TVL by the sidecar."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    slug: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    category: Annotated[str, Field(max_length=100)] | None = None
    chains: Annotated[list[Chain], Field(max_length=500)] = []
    symbol: Annotated[str, Field(max_length=32)] | None = None
    url: Annotated[str, Field(max_length=500)] | None = None


class Candle(TypedDict):
    open: float
    high: float
    low: float
    close: float
    start: str


class TvlUpdate(TypedDict):
    kind: Literal["protocol", "chain"]
    protocol: str | None
    chain: str | None
    tvl_usd: float
    change_1h_pct: float | None
    change_1d_pct: float | None
    change_7d_pct: float | None
    as_of: str
    stale: bool
    source: str


class PriceUpdate(TypedDict):
    coin: str
    symbol: str | None
    price: float
    change_5m_pct: float | None
    change_1h_pct: float | None
    change_24h_pct: float | None
    candle_1m: Candle
    as_of: str
    confidence: float
    stale: bool
    source: str


class YieldUpdate(TypedDict):
    pool: str
    chain: str
    project: str
    symbol: str
    tvl_usd: float
    apy: float | None
    apy_base: float | None
    apy_reward: float | None
    apy_change_1d: float | None
    apy_change_7d: float | None
    tvl_change_1d_pct: float | None
    as_of: str
    stale: bool
    source: str


class ChainEvent(TypedDict):
    chain: str
    block_number: int
    block_hash: str | None
    tx_hash: str
    tx_index: int
    log_index: int
    address: str
    protocol: str
    event: str
    args: dict[str, int | str]
    removed: bool
    as_of: str


def iso(epoch_s: float) -> str:
    """Event time as ISO 8601 UTC with a ``Z``, the form every derived value carries in ``as_of``."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")
