"""DeFiLlama-compatible REST over HTTP: real aiohttp server and client, PostgreSQL history, real data."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import hypothesis
import jsonschema
import pytest
import pytest_asyncio
import schemathesis
from aiohttp import web
from redis.asyncio import Redis
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from sqlalchemy.engine import make_url

from pipeline.db import make_engine
from pipeline.records import iso
from pipeline.settings import Settings
from pipeline.storage.api_keys import key_id_of, revoke_key
from pipeline.storage.history import record_updates
from pipeline.storage.migrate import upgrade
from pipeline.tiers import TIERS
from tests.integration.sidecar import authenticated_app, bearer, clear_redis, new_key
from tests.integration.support import free_port
from web import rest
from web.keys import ENGINE, REPLICA, SETTINGS
from web.ratelimit import is_exempt
from web.replica import Replica
from web.state import Update

# One server and one database for the module: the tests only read what the fixture filled in.
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

BUCKETS = ("borrowed", "staking", "pool2", "vesting", "doublecounted", "liquidstaking")
USDC = "coingecko:usd-coin"


@dataclass
class Server:
    url: str
    app: web.Application
    http: aiohttp.ClientSession
    # A real API key per tier, stored in the module's database: web.auth gives the caller its tier.
    keys: dict[str, str]

    async def get(self, path: str, tier: str = "pro") -> tuple[int, Any]:
        async with self.http.get(self.url + path, headers=bearer(self.keys[tier])) as response:
            assert response.content_type == "application/json", await response.text()
            if not is_exempt(path):  # the API description is public: no key looked up, no limit
                # The key's tier was applied (not the anonymous default): the limit is the tier's.
                limit = str(TIERS[tier].requests_per_minute)
                assert response.headers.get("RateLimit-Limit") == limit, (path, response.headers)
            return response.status, await response.json()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def database_url() -> AsyncIterator[str]:
    """A PostgreSQL database of its own, migrated, dropped afterwards: no other test's history leaks in."""
    base = os.environ.get("LLAMA_DATABASE_URL", "")
    assert base.startswith("postgresql"), "make test points LLAMA_DATABASE_URL at the PostgreSQL it starts"
    url = make_url(base)
    name = f"llamastream_rest_{uuid.uuid4().hex[:10]}"
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        own = url.set(database=name).render_as_string(hide_password=False)
        await upgrade(Settings(database_url=own))
        yield own
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def tvl_row(protocol: str | None, chain: str | None, tvl: float, ts: float) -> dict[str, Any]:
    return {
        "kind": "chain" if protocol is None else "protocol", "protocol": protocol, "chain": chain,
        "tvl_usd": tvl, "change_1h_pct": None, "change_1d_pct": None, "change_7d_pct": None,
        "as_of": iso(ts), "stale": False, "source": "test",
    }  # fmt: skip


def tvl_key(row: dict[str, Any]) -> str:
    return f"{row['kind']}|{row['protocol'] or ''}|{row['chain'] or ''}"


class Views:
    """Fills a replica's live and delayed views directly, as its Kafka reader would."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.offset = 0

    def put(
        self, channel: str, key: str, row: dict[str, Any], *, live: bool = True, delayed: bool = True
    ) -> None:
        self.offset += 1
        update = Update(channel, key, row, 0, self.offset, 0)
        for wanted, view in ((live, False), (delayed, True)):
            if wanted:
                self.replica.view(channel, view).apply(update)


@pytest.fixture(scope="module")
def data(data_dir: Path) -> dict[str, Any]:
    defillama = data_dir / "defillama"
    with (defillama / "chain_tvl_daily_2018-2023.csv").open(newline="") as handle:
        days = {
            r["date"][:10]: r
            for r in csv.DictReader(handle)
            if r["date"][:10] in ("2022-05-08", "2022-05-09")
        }
    with (data_dir / "yields" / "pools_full_fields_2025-10.csv").open(newline="") as handle:
        pools = list(csv.DictReader(handle))[:50]
    return {
        "chains": {
            day: {c: float(v) for c, v in row.items() if c != "date" and v} for day, row in days.items()
        },
        "meta": {p["name"]: p for p in read_json(defillama / "protocols_2025-12-08.json")},
        "protocols": {p.stem: read_json(p) for p in sorted((defillama / "protocol_tvl").glob("*.json"))},
        "usdc": read_json(data_dir / "prices" / "usdc_15m_depeg_2023-03.json")["data"],
        "pools": pools,
    }


def number(cell: str) -> float | None:
    return float(cell) if cell else None


def day_ts(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


async def fill(replica: Replica, engine: Any, data: dict[str, Any]) -> None:
    views = Views(replica)
    replica.protocols = data["meta"]
    # Chains: the live view is at the Terra collapse (2022-05-09), the delayed one a day behind.
    for day, live in (("2022-05-08", False), ("2022-05-09", True)):
        for chain, tvl in data["chains"][day].items():
            row = tvl_row(None, chain, tvl, day_ts(day))
            views.put("tvl", tvl_key(row), row, live=live, delayed=not live)
    history = []
    for stem, document in data["protocols"].items():
        points = sorted(document["tvl"], key=lambda p: p["date"])
        last = points[-1]
        total = tvl_row(document["name"], None, float(last["totalLiquidityUSD"]), last["date"])
        views.put("tvl", tvl_key(total), total, delayed=stem != "drift")
        for chain, value in document["currentChainTvls"].items():
            if chain.lower() not in BUCKETS and chain.rsplit("-", 1)[-1].lower() not in BUCKETS:
                row = tvl_row(document["name"], chain, float(value), last["date"])
                views.put("tvl", tvl_key(row), row)
        if stem == "drift":
            # The free tier is 30 days behind on Drift: its history must stop there too.
            old = points[-31]
            row = tvl_row("Drift", None, float(old["totalLiquidityUSD"]), old["date"])
            views.put("tvl", tvl_key(row), row, live=False)
            history += [
                ("tvl", tvl_key(total), tvl_row("Drift", None, p["totalLiquidityUSD"], p["date"]))
                for p in points
            ]
    await record_updates(engine, history)
    bars = {b["dt"]: b for b in data["usdc"]}
    for dt, live in (("2023-03-11T08:15:00.000Z", False), ("2023-03-11T08:30:00.000Z", True)):
        ts = datetime.fromisoformat(dt).timestamp()
        row = {
            "coin": USDC,
            "symbol": "USDC",
            "price": bars[dt]["c"],
            "change_5m_pct": None,
            "change_1h_pct": None,
            "change_24h_pct": None,
            "confidence": 0.99,
            "as_of": iso(ts + 900 - 0.001),
            "stale": False,
        }
        views.put("prices", USDC, row, live=live, delayed=not live)
    for r in data["pools"]:
        row = {
            "pool": r["pool"], "chain": r["chain"], "project": r["protocol_slug"], "symbol": r["symbol"],
            "tvl_usd": float(r["tvl_usd"]), "apy": number(r["apy"]), "apy_base": number(r["apy_base"]),
            "apy_reward": number(r["apy_reward"]), "apy_change_1d": number(r["apy_pct_1d"]),
            "apy_change_7d": number(r["apy_pct_7d"]), "tvl_change_1d_pct": None,
            "as_of": r["timestamp"].replace(".000Z", "Z"), "stale": False,
        }  # fmt: skip
        views.put("yields", r["pool"], row)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(database_url: str, data: dict[str, Any]) -> AsyncIterator[Server]:
    app_id = f"llamastream-rest-{uuid.uuid4().hex[:10]}"  # its own rate limits and usage in Redis
    settings = Settings(app_id=app_id, database_url=database_url, free_tier_delay_s=300)
    redis, engine = Redis.from_url(settings.redis_url), make_engine(settings)
    app = authenticated_app(settings, redis=redis, engine=engine)
    app[REPLICA] = Replica(settings)
    rest.setup(app)
    await fill(app[REPLICA], engine, data)
    keys = {tier: await new_key(settings, tier, engine=engine) for tier in ("pro", "free")}
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Server(f"http://127.0.0.1:{port}", app, http, keys)
    finally:
        await runner.cleanup()
        await clear_redis(settings, redis)
        await redis.aclose()
        await engine.dispose()


def daily(points: list[dict[str, Any]], current: dict[str, Any]) -> list[dict[str, Any]]:
    """What /protocol/{slug} should return for a view whose current point is ``current``."""
    today = current["date"] - current["date"] % 86400
    kept = [
        {"date": p["date"], "totalLiquidityUSD": float(p["totalLiquidityUSD"])}
        for p in points
        if p["date"] < today
    ]
    return [*kept, {"date": today, "totalLiquidityUSD": float(current["totalLiquidityUSD"])}]


def conforms(document: dict[str, Any], path: str, body: Any, status: str = "200") -> None:
    """The body validates against the schema the served OpenAPI document gives for the response."""
    content = document["paths"][path]["get"]["responses"][status]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**content, "components": document["components"]}).validate(body)


async def test_protocols(server: Server, data: dict[str, Any]) -> None:
    status, body = await server.get("/protocols")
    assert status == 200
    _, document = await server.get("/openapi.json")
    conforms(document, "/protocols", body)
    documents = data["protocols"].values()
    expected = sorted((-float(d["tvl"][-1]["totalLiquidityUSD"]), d["name"]) for d in documents)
    assert [(-p["tvl"], p["name"]) for p in body] == expected
    kamino = body[0]
    assert kamino["name"] == "Kamino Lend" and kamino["slug"] == "kamino-lend"
    assert kamino["category"] == data["meta"]["Kamino Lend"]["category"]
    assert kamino["url"] == data["meta"]["Kamino Lend"]["url"]
    assert kamino["chainTvls"] == {"Solana": 2246279745.26495}
    assert kamino["as_of"] == iso(data["protocols"]["kamino-lend"]["tvl"][-1]["date"])


@pytest.mark.parametrize("path", ["/protocols", "/v2/chains", "/pools"])
async def test_full_lists_are_sent_gzipped_and_revalidated(server: Server, path: str) -> None:
    headers = bearer(server.keys["pro"])
    url = server.url + path
    async with server.http.get(url, headers=headers | {"Accept-Encoding": "identity"}) as plain:
        assert plain.status == 200 and "Content-Encoding" not in plain.headers
        assert plain.headers["Vary"] == "Accept-Encoding"
        raw, etag = await plain.read(), plain.headers["ETag"]
    async with server.http.get(
        url, headers=headers | {"Accept-Encoding": "gzip, deflate"}, auto_decompress=False
    ) as packed:
        assert packed.status == 200 and packed.headers["Content-Encoding"] == "gzip"
        assert packed.headers["ETag"] != etag and packed.headers["Vary"] == "Accept-Encoding"
        body = await packed.read()
        assert gzip.decompress(body) == raw and len(body) < len(raw)
    for encoding, tag in (("identity", etag), ("gzip", packed.headers["ETag"]), ("identity", f"W/{etag}")):
        async with server.http.get(
            url, headers=headers | {"Accept-Encoding": encoding, "If-None-Match": tag}
        ) as again:
            assert again.status == 304 and await again.read() == b""
    # Another view (the free tier's) has a body of its own.
    async with server.http.get(
        url, headers=bearer(server.keys["free"]) | {"If-None-Match": etag, "Accept-Encoding": "identity"}
    ) as free:
        assert free.status == (304 if path == "/pools" else 200)  # the test's pools are the same in both


async def test_protocol_history_live_and_delayed(server: Server, data: dict[str, Any]) -> None:
    points = sorted(data["protocols"]["drift"]["tvl"], key=lambda p: p["date"])
    status, body = await server.get("/protocol/drift")
    assert status == 200
    _, document = await server.get("/openapi.json")
    conforms(document, "/protocol/{slug}", body)
    assert (body["name"], body["slug"], body["currentChainTvls"]) == ("Drift", "drift", {"Solana": 855210230})
    assert body["tvl"] == daily(points, points[-1])
    # The 2022-05-12 collapse (-64%) is in the stored daily history.
    by_day = {p["date"]: p["totalLiquidityUSD"] for p in body["tvl"]}
    may11, may12 = (int(day_ts(d)) for d in ("2022-05-11", "2022-05-12"))
    assert by_day[may12] / by_day[may11] == pytest.approx(0.36, abs=0.01)
    # The free tier is a month behind on Drift: its history ends where its view does.
    status, free = await server.get("/protocol/drift", tier="free")
    assert status == 200 and free["tvl"] == daily(points, points[-31])
    assert free["as_of"] == iso(points[-31]["date"])


async def test_unknown_protocol_is_a_404_naming_it(server: Server) -> None:
    status, body = await server.get("/protocol/no-such-protocol")
    assert status == 404
    assert body["error"]["code"] == "unknown_protocol" and "'no-such-protocol'" in body["error"]["message"]


async def test_protocol_known_from_metadata_only(server: Server, data: dict[str, Any]) -> None:
    status, body = await server.get("/protocol/aave-v3")
    assert status == 200
    assert body["chains"] == data["meta"]["Aave V3"]["chains"]
    assert (body["tvl"], body["currentChainTvls"], body["as_of"]) == ([], {}, None)


async def test_chains_live_and_delayed(server: Server, data: dict[str, Any]) -> None:
    for tier, day in (("pro", "2022-05-09"), ("free", "2022-05-08")):
        status, body = await server.get("/v2/chains", tier=tier)
        assert status == 200
        assert {c["name"]: c["tvl"] for c in body} == data["chains"][day]
        assert {c["as_of"] for c in body} == {f"{day}T00:00:00Z"}
    _, document = await server.get("/openapi.json")
    conforms(document, "/v2/chains", body)
    terra = {day: data["chains"][day]["Terra"] for day in data["chains"]}
    assert terra["2022-05-09"] < terra["2022-05-08"] * 0.6


async def test_prices(server: Server, data: dict[str, Any]) -> None:
    bars = {b["dt"]: b["c"] for b in data["usdc"]}
    path = f"/prices/current/{USDC},coingecko:dai"
    status, body = await server.get(path)
    assert status == 200
    _, document = await server.get("/openapi.json")
    conforms(document, "/prices/current/{coins}", body)
    usdc = body["coins"][USDC]
    assert usdc["price"] == bars["2023-03-11T08:30:00.000Z"] and usdc["symbol"] == "USDC"
    assert usdc["timestamp"] == int(datetime(2023, 3, 11, 8, 44, 59, tzinfo=UTC).timestamp())
    assert body["unknown"] == ["coingecko:dai"]
    _, free = await server.get(path, tier="free")
    assert free["coins"][USDC]["price"] == bars["2023-03-11T08:15:00.000Z"]


async def test_callers_without_a_valid_key(server: Server, data: dict[str, Any]) -> None:
    # No key: served, as the free tier (limited per address, the delayed view).
    async with server.http.get(server.url + "/v2/chains") as response:
        assert response.status == 200 and response.headers["RateLimit-Limit"] == "60"
        assert {c["name"]: c["tvl"] for c in await response.json()} == data["chains"]["2022-05-08"]
    # A revoked key: refused, not downgraded to anonymous.
    key = await new_key(server.app[SETTINGS], "pro", engine=server.app[ENGINE])
    key_id = key_id_of(key)
    assert key_id is not None and await revoke_key(server.app[ENGINE], key_id) is not None
    async with server.http.get(server.url + "/v2/chains", headers=bearer(key)) as response:
        body = await response.json()
        assert response.status == 401 and body["error"]["code"] == "invalid_key", body
        assert body["error"]["reason"] == "unknown_or_revoked" and key_id in body["error"]["message"]


@pytest.mark.parametrize(
    ("coins", "code", "named"),
    [
        ("coingecko:usd-coin,usdc", "invalid_coin", "'usdc'"),
        (",".join(f"a:{i}" for i in range(101)), "too_many_coins", "101"),
    ],
)
async def test_bad_coins_are_400s(server: Server, coins: str, code: str, named: str) -> None:
    status, body = await server.get(f"/prices/current/{coins}")
    assert status == 400
    assert body["error"]["code"] == code and named in body["error"]["message"]


async def test_pools(server: Server, data: dict[str, Any]) -> None:
    status, body = await server.get("/pools")
    assert status == 200 and body["status"] == "success"
    _, document = await server.get("/openapi.json")
    conforms(document, "/pools", body)
    assert [p["pool"] for p in body["data"]] == [
        r["pool"] for r in sorted(data["pools"], key=lambda r: (-float(r["tvl_usd"]), r["pool"]))
    ]
    first = {p["pool"]: p for p in body["data"]}["bc33d1ea-f566-40eb-b0a8-8d8dcf425f18"]
    assert (first["tvlUsd"], first["apy"], first["apyPct1D"], first["apyPct7D"]) == (
        815672271,
        0.07324,
        0.00124,
        None,
    )


async def test_docs_page_lists_every_documented_route(server: Server) -> None:
    _, document = await server.get("/openapi.json")
    async with server.http.get(server.url + "/docs") as response:
        assert response.status == 200 and response.content_type == "text/html"
        page = await response.text()
    for path in document["paths"]:
        assert f"<td>{path}</td>" in page


def fuzz(document: dict[str, Any], base_url: str, paths: set[str], key: str) -> list[int]:
    """Schemathesis cases of each operation on ``paths``, sent with ``key``: bounded, derandomized, no 5xx
    allowed; the statuses answered."""
    schema = schemathesis.openapi.from_dict(document)
    statuses: list[int] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operation = result.ok()
        if operation.path not in paths:
            continue

        @hypothesis.settings(
            max_examples=25, derandomize=True, database=None, deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )  # fmt: skip
        @hypothesis.given(case=operation.as_strategy())
        def run(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=base_url, headers=bearer(key))
            case.validate_response(response, checks=[not_a_server_error])
            statuses.append(response.status_code)

        run()
    return statuses


async def test_generated_requests_never_get_a_server_error(server: Server) -> None:
    _, document = await server.get("/openapi.json")
    paths = {op.path for op in rest.ROUTES} | {"/openapi.json", "/docs"}
    # The client is synchronous: it runs in a thread while this loop serves its requests.
    # A free key of its own: its 60 requests a minute cover the cases, so every one reaches a handler.
    key = await new_key(server.app[SETTINGS], "free", engine=server.app[ENGINE])
    statuses = await asyncio.to_thread(fuzz, document, server.url, paths, key)
    assert len(statuses) >= len(paths)
    assert 429 not in statuses, "rate limited: the cases no longer fit in the free tier's minute"
