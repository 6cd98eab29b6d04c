"""DefiLlamaPoller against a real local HTTP server serving the shared DeFiLlama exports, and real Kafka."""

from __future__ import annotations

import asyncio
import copy
import csv
import json
import math
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from pipeline.connectors.defillama_poller import DefiLlamaPoller, is_chain_key
from pipeline.connectors.sink import KafkaSink
from pipeline.records import CHAIN_PATTERN, RawPrice, RawTvl, RawYield
from pipeline.settings import Settings
from tests.integration.support import read_topic, topic_end_offsets

__all__: list[str] = []

pytestmark = pytest.mark.integration

POLL_TIME = datetime(2025, 12, 19, 12, 0, tzinfo=UTC)
# Buckets as the test reads DeFiLlama's docs, written out here rather than imported from the poller.
BUCKETS = (
    "borrowed",
    "staking",
    "pool2",
    "doublecounted",
    "liquidstaking",
    "dcAndLsOverlap",
    "vesting",
    "offers",
    "treasury",
)
# Real CoinGecko symbols of some stablecoin columns; the CSV itself carries none, the others go without.
SYMBOLS = {
    "tether": "USDT",
    "usd-coin": "USDC",
    "dai": "DAI",
    "terrausd": "UST",
    "frax": "FRAX",
    "binance-usd": "BUSD",
    "true-usd": "TUSD",
}
UNKNOWN_COIN = "coingecko:not-a-real-coin"


# ---------------------------------------------------------------- data in DeFiLlama's response shapes


def _load_protocols(data_dir: Path) -> list[dict[str, Any]]:
    """/protocols entries from the 2025-12-19 export.

    The export has no ``chainTvls``. Where a per-protocol history file of the same name exists, its real
    ``currentChainTvls`` (with DeFiLlama's "-borrowed"/"staking" buckets) is used; otherwise chainTvls is
    SYNTHESIZED by splitting ``tvl`` evenly over ``chains`` (empty when tvl is null).
    """
    real: dict[str, dict[str, float]] = {}
    for path in sorted((data_dir / "defillama" / "protocol_tvl").glob("*.json")):
        history = json.loads(path.read_text())
        real[history["name"]] = history["currentChainTvls"]
    protocols = []
    for entry in json.loads((data_dir / "defillama" / "protocols_2025-12-19.json").read_text()):
        chains = entry.get("chains") or []
        tvl = entry.get("tvl")
        if entry["name"] in real:
            chain_tvls = dict(real[entry["name"]])
        elif isinstance(tvl, int | float) and chains:
            chain_tvls = {chain: tvl / len(chains) for chain in chains}
        else:
            chain_tvls = {}
        protocols.append({**entry, "chains": chains, "chainTvls": chain_tvls, "change_1h": None})
    return protocols


def _load_prices(data_dir: Path) -> dict[str, dict[str, Any]]:
    """/prices/current answers: the last row (2023-07-30) of the daily stablecoin prices."""
    with open(data_dir / "defillama" / "stablecoin_prices_daily_2020-2023.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    ts = datetime.fromisoformat(last.pop("Date")).replace(tzinfo=UTC).timestamp()
    coins = {}
    for column, price in last.items():
        coins[f"coingecko:{column}"] = {"price": float(price), "timestamp": int(ts), "confidence": 0.99}
        if column in SYMBOLS:
            coins[f"coingecko:{column}"]["symbol"] = SYMBOLS[column]
    return coins


def _number(text: str) -> float | None:
    return float(text) if text != "" else None


def _load_pools(data_dir: Path) -> list[dict[str, Any]]:
    """/pools data from the 2025-10-06 DEX pools snapshot, fields renamed to the API's camelCase."""
    with open(data_dir / "yields" / "pools_dex_2025-10-06.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        {
            "chain": row["chain"],
            "project": row["protocol_slug"],
            "symbol": row["symbol"],
            "tvlUsd": float(row["tvl_usd"]),
            "apy": _number(row["apy"]),
            "apyBase": _number(row["apy_base"]),
            "apyReward": _number(row["apy_reward"]),
            "rewardTokens": json.loads(row["reward_tokens"]) if row["reward_tokens"] else None,
            "underlyingTokens": json.loads(row["underlying_tokens"]) if row["underlying_tokens"] else None,
            "pool": row["pool"],
            "poolMeta": None,
            "timestamp": row["timestamp"],
        }
        for row in rows
    ]


# ---------------------------------------------------------------- the server


@dataclass
class Failure:
    """What the server does instead of answering: an HTTP status (maybe with Retry-After) or a hang."""

    status: int = 503
    retry_after: str | None = None
    hang_s: float = 0.0


@dataclass
class FakeLlama:
    protocols: list[dict[str, Any]]
    coins: dict[str, dict[str, Any]]
    pools: list[dict[str, Any]]
    base_url: str = ""
    plan: dict[str, deque[Failure]] = field(default_factory=dict)
    forever: dict[str, Failure] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def fail(self, endpoint: str, *failures: Failure) -> None:
        self.plan.setdefault(endpoint, deque()).extend(failures)

    async def _misbehave(self, endpoint: str) -> web.Response | None:
        self.requests[endpoint] += 1
        queued = self.plan.get(endpoint)
        failure = queued.popleft() if queued else self.forever.get(endpoint)
        if failure is None:
            return None
        if failure.hang_s:
            try:
                await asyncio.wait_for(self.release.wait(), failure.hang_s)
            except TimeoutError:
                pass
            return None
        headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
        return web.Response(status=failure.status, text=f"failing on purpose: {failure}", headers=headers)

    @staticmethod
    def _json(payload: object) -> web.Response:
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    async def protocols_handler(self, request: web.Request) -> web.Response:
        return await self._misbehave("protocols") or self._json(self.protocols)

    async def prices_handler(self, request: web.Request) -> web.Response:
        requested = request.match_info["coins"].split(",")
        answer = {coin: self.coins[coin] for coin in requested if coin in self.coins}
        return await self._misbehave("prices") or self._json({"coins": answer})

    async def pools_handler(self, request: web.Request) -> web.Response:
        return await self._misbehave("pools") or self._json({"status": "success", "data": self.pools})


Payloads = tuple[list[dict[str, Any]], dict[str, dict[str, Any]], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def shared_payloads(data_dir: Path) -> Payloads:
    return _load_protocols(data_dir), _load_prices(data_dir), _load_pools(data_dir)


@pytest.fixture
async def llama(shared_payloads: Payloads) -> AsyncIterator[FakeLlama]:
    protocols, coins, pools = copy.deepcopy(shared_payloads)
    server = FakeLlama(protocols, coins, pools)
    app = web.Application()
    app.router.add_get("/protocols", server.protocols_handler)
    app.router.add_get("/prices/current/{coins}", server.prices_handler)
    app.router.add_get("/pools", server.pools_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.base_url = f"http://{host}:{port}"
    yield server
    server.release.set()
    await runner.cleanup()


class ListSink:
    """Collects what would go to Kafka; stands in for it in the HTTP-behaviour tests only."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []
        self.flushes = 0

    async def send(self, topic: str, key: str, value: dict[str, Any] | bytes) -> None:
        assert isinstance(value, dict), f"expected a dict value, got {type(value).__name__}"
        # What goes on the wire is JSON; round-trip so a non-serialisable value fails here.
        self.records.append((topic, key, orjson.loads(orjson.dumps(value))))

    async def flush(self) -> None:
        self.flushes += 1


class RecordingSleep:
    """Really sleeps, and remembers how long it was asked to."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(seconds)


PollerFactory = Callable[..., DefiLlamaPoller]


@pytest.fixture
async def make_poller(llama: FakeLlama) -> AsyncIterator[PollerFactory]:
    made: list[DefiLlamaPoller] = []

    def make(sink: Any, **overrides: Any) -> DefiLlamaPoller:
        options: dict[str, Any] = {
            "tvl_url": llama.base_url,
            "coins_url": llama.base_url,
            "yields_url": llama.base_url,
            "coins": sorted(llama.coins),
            "request_timeout_s": 10.0,
            "max_retries": 3,
            "backoff_base_s": 0.01,
            "backoff_cap_s": 0.05,
            "clock": lambda: POLL_TIME,
        }
        options.update(overrides)
        poller = DefiLlamaPoller(sink, **options)
        made.append(poller)
        return poller

    yield make
    for poller in made:
        await poller.close()


# ---------------------------------------------------------------- expectations computed from the data


def _valid_amount(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value >= 0


def _is_bucket(key: str) -> bool:
    return key in BUCKETS or any(key.endswith(f"-{bucket}") for bucket in BUCKETS)


def _expected_tvl(protocols: list[dict[str, Any]]) -> tuple[dict[tuple[str, str | None], float], int]:
    """(protocol, chain) -> tvl the poller must emit, first entry winning; and how many it must skip."""
    expected: dict[tuple[str, str | None], float] = {}
    seen: set[tuple[str, str | None]] = set()
    skipped = 0
    for entry in protocols:
        chain_rows = [(k, v) for k, v in entry["chainTvls"].items() if not _is_bucket(k)]
        rows: list[tuple[str | None, Any]] = [(None, entry.get("tvl")), *chain_rows]
        for chain, value in rows:
            key = (entry["name"], chain)
            if not _valid_amount(value) or key in seen:
                skipped += 1
                continue
            seen.add(key)
            if chain is not None and not re.fullmatch(CHAIN_PATTERN, chain):
                skipped += 1
                continue
            expected[key] = float(value)
    return expected, skipped


def _tvl_by_key(sink: ListSink) -> dict[tuple[str, str | None], float]:
    out: dict[tuple[str, str | None], float] = {}
    for topic, key, value in sink.records:
        assert topic == "raw.tvl"
        record = RawTvl.model_validate(value)
        assert key == record.protocol, f"raw.tvl key {key!r} is not the protocol name {record.protocol!r}"
        assert (record.protocol, record.chain) not in out, f"emitted twice: {(record.protocol, record.chain)}"
        out[(record.protocol, record.chain)] = record.tvl_usd  # type: ignore[index]
    return out


# ---------------------------------------------------------------- tests


def test_real_chain_tvl_keys_are_told_from_buckets(data_dir: Path) -> None:
    keys = Counter[str]()
    for path in (data_dir / "defillama" / "protocol_tvl").glob("*.json"):
        keys.update(json.loads(path.read_text())["currentChainTvls"])
    chains = {k for k in keys if is_chain_key(k)}
    assert chains == {k for k in keys if not _is_bucket(k)}
    assert {"Solana", "Aptos", "Echelon Chain", "CORE", "RENEC"} <= chains
    assert not chains & {"borrowed", "staking", "Solana-borrowed", "Echelon Chain-borrowed", "Aptos-staking"}
    # A bucket DeFiLlama may add later is still told apart when its prefix is one of the protocol's chains.
    assert not is_chain_key("Ethereum-newbucket", ["Ethereum"])
    assert is_chain_key("Ethereum-newbucket", ["Solana"])


async def test_protocols_poll_emits_exactly_the_expected_records(
    llama: FakeLlama, make_poller: PollerFactory
) -> None:
    expected, expected_skipped = _expected_tvl(llama.protocols)
    sink = ListSink()
    poller = make_poller(sink)

    emitted = await poller.poll_protocols()

    got = _tvl_by_key(sink)
    assert emitted == len(got) == len(expected) == poller.emitted
    assert got == expected
    assert poller.skipped == expected_skipped
    assert all(RawTvl.model_validate(v).ts == POLL_TIME for _, _, v in sink.records)
    assert all(v["source"] == "defillama" for _, _, v in sink.records)
    # Spot checks against the files themselves.
    assert got[("Aave V3", None)] == 32882398176.94727
    assert got[("Kamino Lend", "Solana")] == 2246279745.26495
    assert not {c for (p, c) in got if p == "Kamino Lend"} & {"Solana-borrowed", "borrowed"}
    assert ("Market", None) not in got and ("Market", "Fantom") not in got  # negative TVL in the export
    assert sink.flushes == 1 and poller.http_errors == 0 and poller.retries == 0


async def test_unchanged_data_is_not_reemitted_and_changes_are(
    llama: FakeLlama, make_poller: PollerFactory
) -> None:
    sink = ListSink()
    poller = make_poller(sink)
    first = await poller.poll_protocols()
    assert first > 5000

    sink.records.clear()
    assert await poller.poll_protocols() == 0
    assert sink.records == [] and poller.unchanged == first

    by_name = {p["name"]: p for p in reversed(llama.protocols)}  # reversed: the first of a duplicate wins
    by_name["Aave V3"]["tvl"] *= 1.01
    by_name["Lido"]["tvl"] -= 1_000_000
    by_name["Kamino Lend"]["chainTvls"]["Solana"] += 5.0
    by_name["Kamino Lend"]["chainTvls"]["Solana-borrowed"] += 7.0  # a bucket: changes nothing downstream

    assert await poller.poll_protocols() == 3
    got = _tvl_by_key(sink)
    assert got == {
        ("Aave V3", None): by_name["Aave V3"]["tvl"],
        ("Lido", None): by_name["Lido"]["tvl"],
        ("Kamino Lend", "Solana"): by_name["Kamino Lend"]["chainTvls"]["Solana"],
    }


async def test_429_with_retry_after_waits_and_then_succeeds(
    llama: FakeLlama, make_poller: PollerFactory
) -> None:
    llama.fail("prices", Failure(429, retry_after="1"), Failure(429, retry_after="1"))
    sleep = RecordingSleep()
    sink = ListSink()
    poller = make_poller(sink, sleep=sleep)

    started = time.monotonic()
    emitted = await poller.poll_prices()
    elapsed = time.monotonic() - started

    assert emitted == len(llama.coins) == len(sink.records)
    assert sleep.delays == [1.0, 1.0]
    assert elapsed >= 2.0
    assert poller.retries == 2 and poller.http_errors == 2 and poller.failed_polls == 0
    assert llama.requests["prices"] == 3


async def test_503_beyond_max_retries_gives_up_for_the_cycle(
    llama: FakeLlama, make_poller: PollerFactory
) -> None:
    llama.fail("pools", *[Failure(503)] * 10)
    sleep = RecordingSleep()
    sink = ListSink()
    poller = make_poller(sink, max_retries=2, sleep=sleep)

    assert await poller.poll_pools() == 0

    assert sink.records == []
    assert llama.requests["pools"] == 3
    assert poller.http_errors == 3 and poller.retries == 2 and poller.failed_polls == 1
    # Full jitter: each wait is within [0, base * 2**attempt].
    assert len(sleep.delays) == 2 and all(0 <= d <= 0.01 * 2**i for i, d in enumerate(sleep.delays))


async def test_run_survives_failing_cycles_and_recovers(llama: FakeLlama, make_poller: PollerFactory) -> None:
    for endpoint in ("protocols", "prices", "pools"):
        llama.forever[endpoint] = Failure(503)
    sink = ListSink()
    intervals = {"tvl_interval_s": 0.05, "prices_interval_s": 0.05, "pools_interval_s": 0.05}
    poller = make_poller(sink, max_retries=1, **intervals)
    task = asyncio.create_task(poller.run())
    try:
        async with asyncio.timeout(20):
            while poller.failed_polls < 6:
                await asyncio.sleep(0.02)
        assert not task.done(), "run() ended while the API was failing"
        assert sink.records == [] and poller.http_errors >= 12

        llama.forever.clear()
        async with asyncio.timeout(30):
            while not {t for t, _, _ in sink.records} >= {"raw.tvl", "raw.prices", "raw.yields"}:
                await asyncio.sleep(0.05)
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_client_error_is_not_retried(llama: FakeLlama, make_poller: PollerFactory) -> None:
    llama.fail("protocols", Failure(404))
    sink = ListSink()
    poller = make_poller(sink)

    assert await poller.poll_protocols() == 0
    assert llama.requests["protocols"] == 1
    assert poller.http_errors == 1 and poller.retries == 0 and poller.failed_polls == 1 and sink.records == []


async def test_hanging_endpoint_times_out_and_is_retried(
    llama: FakeLlama, make_poller: PollerFactory
) -> None:
    llama.fail("prices", Failure(hang_s=30.0))
    sink = ListSink()
    poller = make_poller(sink, request_timeout_s=0.5)

    started = time.monotonic()
    emitted = await poller.poll_prices()

    assert time.monotonic() - started < 10
    assert emitted == len(llama.coins)
    assert poller.http_errors == 1 and poller.retries == 1 and poller.failed_polls == 0
    assert llama.requests["prices"] == 2


async def test_unknown_coin_is_reported_and_no_zero_price_is_emitted(
    llama: FakeLlama, make_poller: PollerFactory
) -> None:
    llama.coins["coingecko:null-price-coin"] = {"price": None, "symbol": "NULL", "timestamp": 1690675200}
    known = sorted(c for c in llama.coins if c != "coingecko:null-price-coin")
    sink = ListSink()
    poller = make_poller(sink, coins=[*known, UNKNOWN_COIN, "coingecko:null-price-coin"])

    emitted = await poller.poll_prices()

    prices = {key: RawPrice.model_validate(value) for _, key, value in sink.records}
    assert emitted == len(known) == len(prices)
    assert set(prices) == set(known)
    assert poller.missing == [UNKNOWN_COIN] and poller.missing_coins == 1
    assert poller.skipped == 1  # the null price
    assert all(p.price > 0 for p in prices.values())
    for coin, record in prices.items():
        assert record.coin == coin and record.price == llama.coins[coin]["price"]
        assert record.ts == datetime(2023, 7, 30, tzinfo=UTC)
    assert prices["coingecko:tether"].symbol == "USDT" and prices["coingecko:terrausd"].price == 0.0152641

    # Same prices at the same timestamp are not observations worth repeating.
    sink.records.clear()
    assert await poller.poll_prices() == 0 and sink.records == []


async def test_pools_end_to_end_through_real_kafka(
    llama: FakeLlama, make_poller: PollerFactory, topics: Settings
) -> None:
    expected = {p["pool"]: p for p in llama.pools}
    assert len(expected) == len(llama.pools) > 5000

    async with KafkaSink(topics) as sink:
        poller = make_poller(sink)
        emitted = await poller.poll_pools()
    assert emitted == len(expected)

    messages = await read_topic(topics, "raw.yields", until=lambda m: len(m) >= len(expected), timeout=60)
    assert len(messages) == len(expected) == await topic_end_offsets(topics, "raw.yields")
    for message in messages:
        record = RawYield.model_validate(message.json())
        source = expected[message.key]
        assert record.pool == message.key
        assert (record.chain, record.project) == (source["chain"], source["project"])
        assert record.symbol == source["symbol"]
        assert (record.tvl_usd, record.apy, record.apy_base, record.apy_reward) == (
            source["tvlUsd"],
            source["apy"],
            source["apyBase"],
            source["apyReward"],
        )
        assert record.ts == datetime.fromisoformat(source["timestamp"])
    assert {m.key for m in messages} == set(expected)
