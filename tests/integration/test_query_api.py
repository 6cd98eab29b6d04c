"""/v1/query over HTTP on real DeFiLlama rows in the replica, with real Redis (cache) and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import math
import os
import statistics
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pipeline.settings import Settings
from pipeline.storage.history import fold, upsert_rollups
from pipeline.storage.models import Base
from tests.integration.sidecar import authenticated_app, bearer, clear_redis, new_key
from tests.integration.support import free_port
from web import query
from web.keys import REPLICA
from web.query_cache import EpochTracker
from web.replica import Replica
from web.state import Update

pytestmark = pytest.mark.integration

DAY = "2022-05-09"
SOURCE = "replay:chain_tvl_daily_2018-2023.csv"


def chain_rows(data_dir: Path, day: str) -> list[dict[str, Any]]:
    """tvl.updates rows of every chain on one day of the real chain TVL export."""
    with (data_dir / "defillama" / "chain_tvl_daily_2018-2023.csv").open(newline="") as handle:
        record = next(r for r in csv.DictReader(handle) if r["date"].startswith(day))
    return [
        {"kind": "chain", "protocol": None, "chain": chain, "category": None, "tvl_usd": float(value),
         "change_1h_pct": None, "change_1d_pct": None, "change_7d_pct": None, "as_of": f"{day}T00:00:00Z",
         "stale": False, "source": SOURCE}
        for chain, value in record.items() if chain != "date" and value
    ]  # fmt: skip


def protocol_rows(data_dir: Path) -> list[dict[str, Any]]:
    """tvl.updates rows of every protocol's total in DeFiLlama's protocol list (tvl null for some)."""
    listed = json.loads((data_dir / "defillama" / "protocols_2025-12-08.json").read_text())
    return [
        {"kind": "protocol", "protocol": p["name"], "chain": None, "category": p["category"],
         "tvl_usd": p.get("tvl"), "change_1h_pct": None, "change_1d_pct": None, "change_7d_pct": None,
         "as_of": "2025-12-08T00:00:00Z", "stale": False, "source": "defillama"}
        for p in listed
    ]  # fmt: skip


def key_of(row: dict[str, Any]) -> str:
    return f"{row['kind']}|{row['protocol'] or ''}|{row['chain'] or ''}"


class Feed:
    """Applies rows to a replica view the way the replica's read loop does, one offset at a time."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.sent: dict[tuple[str, bool], int] = {}

    def apply(self, channel: str, rows: list[dict[str, Any]], *, delayed: bool = False) -> None:
        view = self.replica.view(channel, delayed)
        for row in rows:
            n = self.sent.get((channel, delayed), 0)
            self.sent[(channel, delayed)] = n + 1
            partition = n % 2
            view.apply(Update(channel, key_of(row), row, partition, view.position.get(partition, 0), 0))


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Served:
    url: str
    app: web.Application
    http: aiohttp.ClientSession
    feed: Feed
    clock: ManualClock
    # The key each caller sends: a real pro key stored in PostgreSQL; "free" is an anonymous caller (no key),
    # whom web.auth serves as the free tier.
    keys: dict[str, str | None]

    async def post(self, body: dict[str, Any], tier: str = "pro") -> tuple[int, dict[str, Any]]:
        headers = bearer(self.keys[tier])
        async with self.http.post(self.url + "/v1/query", json=body, headers=headers) as r:
            return r.status, await r.json()

    async def get(self, params: dict[str, str], tier: str = "pro") -> tuple[int, dict[str, Any]]:
        headers = bearer(self.keys[tier])
        async with self.http.get(self.url + "/v1/query", params=params, headers=headers) as r:
            return r.status, await r.json()


async def serve(settings: Settings, redis: Redis, engine: AsyncEngine) -> AsyncIterator[Served]:
    """/v1/query behind the sidecar's real auth (keys in ``engine``, limits in ``redis``)."""
    app = authenticated_app(settings, redis=redis, engine=engine)
    keys = {"pro": await new_key(settings, "pro", engine=engine), "free": None}
    replica = app[REPLICA] = Replica(settings)
    query.setup(app)
    clock = ManualClock()
    # A clock the test moves, so the cache epoch advances exactly when the test says (no sleeping).
    app[query.QUERY].epochs = EpochTracker(clock=clock)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Served(f"http://127.0.0.1:{port}", app, http, Feed(replica), clock, keys)
    finally:
        await runner.cleanup()
        with contextlib.suppress(RedisError, OSError):  # the test of Redis being down has none to clean
            await clear_redis(settings, redis)
        await redis.aclose()


@pytest.fixture
def settings() -> Settings:
    return Settings(app_id=f"llamastream-qtest-{uuid.uuid4().hex[:10]}", query_max_rows=5000)


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    """The models' tables (API keys, history) in a schema of this test's own on the real PostgreSQL."""
    url = os.environ.get("LLAMA_DATABASE_URL", "postgresql+asyncpg://llama:llama@127.0.0.1:5432/llamastream")
    assert url.startswith("postgresql"), f"these tests need PostgreSQL, LLAMA_DATABASE_URL is {url!r}"
    schema = f"qtest_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(url)
    async with admin.begin() as connection:
        await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_async_engine(url, connect_args={"server_settings": {"search_path": schema}})
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        yield engine
    finally:
        await engine.dispose()
        async with admin.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


@pytest.fixture
async def served(settings: Settings, engine: AsyncEngine) -> AsyncIterator[Served]:
    async for served in serve(settings, Redis.from_url(settings.redis_url), engine):
        yield served


def by_tvl_desc(row: dict[str, Any]) -> tuple[Any, ...]:
    # -tvl_usd with nulls last, then the identity (kind, protocol, chain) ascending, nulls last.
    tvl = row["tvl_usd"]
    return (tvl is None, -(tvl or 0.0), row["kind"], row["protocol"] is None, row["protocol"] or "")


def p(values: list[float], q: int) -> float:
    """Percentile q (1..99) by the inclusive (linear interpolation) definition the API documents."""
    return values[0] if len(values) == 1 else statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# --- rows ----------------------------------------------------------------------------------------------


async def test_rows_are_filtered_sorted_projected_and_paged(served: Served, data_dir: Path) -> None:
    protocols = protocol_rows(data_dir)
    served.feed.apply("tvl", protocols + chain_rows(data_dir, DAY))
    body: dict[str, Any] = {
        "channel": "tvl", "filter": 'kind == "protocol" and category in ("Lending", "CDP")',
        "sort": ["-tvl_usd"], "fields": ["protocol", "category", "tvl_usd"], "limit": 100,
    }  # fmt: skip
    expected = sorted((r for r in protocols if r["category"] in ("Lending", "CDP")), key=by_tvl_desc)
    assert any(r["tvl_usd"] is None for r in expected)  # the real list has protocols without TVL
    listed: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        status, page = await served.post(body | ({"cursor": cursor} if cursor else {}))
        assert status == 200, page
        assert page["count"] == len(expected) and page["cached"] is False
        assert page["as_of"] == "2025-12-08T00:00:00Z"
        assert sum(page["position"].values()) == len(protocols) + len(chain_rows(data_dir, DAY))
        listed += page["rows"]
        pages += 1
        if (cursor := page["next_cursor"]) is None:
            break
    assert pages == math.ceil(len(expected) / 100)
    assert listed == [{"protocol": r["protocol"], "category": r["category"], "tvl_usd": r["tvl_usd"]}
                      for r in expected]  # fmt: skip

    # GET takes the simple cases, with comma lists; its cursor is the POST one.
    status, got = await served.get({
        "channel": "tvl", "filter": body["filter"], "sort": "-tvl_usd",
        "fields": "protocol, category,tvl_usd", "limit": "100",
    })  # fmt: skip
    assert status == 200, got
    assert got["rows"] == listed[:100]
    status, second = await served.post(body | {"cursor": got["next_cursor"]})
    assert second["rows"] == listed[100:200]


async def test_pages_skip_or_repeat_only_rows_that_moved(served: Served, data_dir: Path) -> None:
    dexes = [r for r in protocol_rows(data_dir) if r["category"] == "Dexs" and r["tvl_usd"] is not None]
    served.feed.apply("tvl", dexes)
    body = {"channel": "tvl", "sort": ["-tvl_usd"], "fields": ["protocol", "tvl_usd"], "limit": 200}
    status, first = await served.post(body)
    assert status == 200, first
    listed = [r["protocol"] for r in first["rows"]]
    ranked = [r["protocol"] for r in sorted(dexes, key=by_tvl_desc)]
    assert listed == ranked[:200]
    by_name = {r["protocol"]: r for r in dexes}
    # Between pages: a listed row falls behind the cursor, an unlisted one jumps ahead of it, one is new.
    fell, jumped = ranked[0], ranked[500]
    new = {**by_name[ranked[700]], "protocol": "qtest new dex", "tvl_usd": by_name[ranked[700]]["tvl_usd"]}
    served.feed.apply("tvl", [by_name[fell] | {"tvl_usd": 0.0}, by_name[jumped] | {"tvl_usd": 1e15}, new])
    cursor = first["next_cursor"]
    while cursor is not None:
        status, page = await served.post(body | {"cursor": cursor})
        assert status == 200, page
        tvls = [r["tvl_usd"] for r in page["rows"]]
        assert tvls == sorted(tvls, reverse=True)
        listed += [r["protocol"] for r in page["rows"]]
        cursor = page["next_cursor"]
    unchanged = set(ranked) - {fell, jumped}
    assert all(listed.count(name) == 1 for name in unchanged)
    assert listed.count("qtest new dex") == 1
    assert listed.count(fell) == 2 and listed[-1] == fell  # seen before it fell, and again at the end
    assert jumped not in listed  # it moved ahead of the cursor: the next walk lists it first


# --- aggregations and the cache ------------------------------------------------------------------------

AGGREGATIONS = {
    "n": "count()", "with_tvl": "count(tvl_usd)", "total": "sum(tvl_usd)", "mean": "avg(tvl_usd)",
    "low": "min(tvl_usd)", "high": "max(tvl_usd)", "median": "p50(tvl_usd)", "p90": "p90(tvl_usd)",
    "p99": "percentile(tvl_usd, 0.99)",
}  # fmt: skip


def expected_by_category(protocols: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    tvls: dict[str, list[float]] = {}
    rows: dict[str, int] = {}
    for r in protocols:
        rows[r["category"]] = rows.get(r["category"], 0) + 1
        tvls.setdefault(r["category"], [])
        if r["tvl_usd"] is not None:
            tvls[r["category"]].append(float(r["tvl_usd"]))
    expected = {}
    for category, values in tvls.items():
        values.sort()
        expected[category] = {"n": rows[category], "with_tvl": len(values)} | (
            {"total": math.fsum(values), "mean": statistics.fmean(values), "low": values[0],
             "high": values[-1], "median": p(values, 50), "p90": p(values, 90), "p99": p(values, 99)}
            if values else dict.fromkeys(("total", "mean", "low", "high", "median", "p90", "p99"))
        )  # fmt: skip
    return expected


def assert_groups(groups: list[dict[str, Any]], expected: dict[str, dict[str, Any]]) -> None:
    for group in groups:
        want = expected[group["key"]["category"]]
        assert group["rows"] == want["n"]
        for name, value in want.items():
            assert group["values"][name] == (value if value is None else pytest.approx(value, rel=1e-9)), name


async def test_group_by_aggregations_are_cached_per_epoch(served: Served, data_dir: Path) -> None:
    protocols = protocol_rows(data_dir)
    served.feed.apply("tvl", protocols + chain_rows(data_dir, DAY))
    body = {"channel": "tvl", "filter": 'kind == "protocol"', "group_by": ["category"],
            "aggregations": AGGREGATIONS, "sort": ["-total"], "limit": 10}  # fmt: skip
    expected = expected_by_category(protocols)
    status, first = await served.post(body)
    assert status == 200, first
    assert first["cached"] is False
    assert first["count"] == len(protocols) and first["group_count"] == len(expected)
    top = sorted(expected, key=lambda c: (expected[c]["total"] is None, -(expected[c]["total"] or 0)))[:10]
    assert [g["key"]["category"] for g in first["groups"]] == top
    assert_groups(first["groups"], expected)

    status, second = await served.post(body)
    assert second["cached"] is True and second["groups"] == first["groups"]

    aave = next(r for r in protocols if r["protocol"] == "Aave V3")
    served.feed.apply("tvl", [aave | {"tvl_usd": aave["tvl_usd"] + 1e9}])
    # Within one epoch (CACHE_EPOCH_S) the update is not seen yet: the cache answers.
    status, third = await served.post(body)
    assert third["cached"] is True and third["groups"] == first["groups"]

    served.clock.now += 1.0
    status, fourth = await served.post(body)
    assert fourth["cached"] is False
    lending = {g["key"]["category"]: g["values"]["total"] for g in fourth["groups"]}["Lending"]
    assert lending == pytest.approx(expected["Lending"]["total"] + 1e9, rel=1e-12)
    status, fifth = await served.post(body)
    assert fifth["cached"] is True and fifth["groups"] == fourth["groups"]
    # Time alone does not end an epoch: with no update the cached result stays the current one.
    served.clock.now += 60.0
    status, sixth = await served.post(body)
    assert sixth["cached"] is True and sixth["groups"] == fourth["groups"]


async def test_concurrent_identical_aggregations_are_computed_once(served: Served, data_dir: Path) -> None:
    served.feed.apply("tvl", protocol_rows(data_dir))
    body = {"channel": "tvl", "group_by": ["category"], "aggregations": AGGREGATIONS, "limit": 5}
    answers = await asyncio.gather(*(served.post(body) for _ in range(30)))
    assert all(status == 200 for status, _ in answers)
    assert [result["cached"] for _, result in answers].count(False) == 1
    assert all(result["groups"] == answers[0][1]["groups"] for _, result in answers)
    assert served.app[query.QUERY].cache.computed == 1


async def test_free_tier_reads_the_delayed_view(served: Served, data_dir: Path) -> None:
    earlier, later = chain_rows(data_dir, DAY), chain_rows(data_dir, "2022-05-16")
    served.feed.apply("tvl", earlier, delayed=True)
    served.feed.apply("tvl", later)
    body = {"channel": "tvl", "filter": 'kind == "chain"',
            "aggregations": {"total": "sum(tvl_usd)", "median": "p50(tvl_usd)", "p95": "p95(tvl_usd)",
                             "chains": "count()"}}  # fmt: skip
    for tier, rows in (("free", earlier), ("pro", later), ("free", earlier)):
        status, result = await served.post(body, tier=tier)
        assert status == 200, result
        values = sorted(r["tvl_usd"] for r in rows)
        (group,) = result["groups"]
        assert group["key"] == {}
        assert group["values"] == {
            "total": pytest.approx(math.fsum(values), rel=1e-12), "median": pytest.approx(p(values, 50)),
            "p95": pytest.approx(p(values, 95)), "chains": len(values),
        }  # fmt: skip
    # Rows too: Terra on the free tier is the delayed (earlier) value.
    terra = {"channel": "tvl", "filter": 'chain == "Terra"', "fields": ["tvl_usd"]}
    for tier, rows in (("free", earlier), ("pro", later)):
        status, page = await served.post(terra, tier=tier)
        assert page["rows"] == [{"tvl_usd": next(r["tvl_usd"] for r in rows if r["chain"] == "Terra")}]


async def test_redis_down_means_computing_without_the_shared_cache(
    settings: Settings, engine: AsyncEngine, data_dir: Path
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async for served in serve(settings, Redis.from_url(closed), engine):
        served.feed.apply("tvl", chain_rows(data_dir, DAY))
        for n in range(2):
            body = {"channel": "tvl", "aggregations": {"n": "count()"}, "limit": 10 + n}  # two queries
            status, result = await served.post(body)
            assert status == 200, result
            assert result["cached"] is False
            assert result["groups"][0]["values"]["n"] == len(chain_rows(data_dir, DAY))
            # The process keeps its own results for a few seconds, Redis or not.
            status, again = await served.post(body)
            assert again["cached"] is True and again["groups"] == result["groups"]
        assert served.app[query.QUERY].cache.computed == 2


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "text"),
    [
        ({"channel": "tvl", "filter": "tvl_usd >"}, "invalid_filter", "position"),
        ({"channel": "tvl", "filter": "price > 1"}, "invalid_filter", "price"),
        ({"channel": "tvl", "sort": ["-price"]}, "invalid_request", "sort: unknown sort field 'price'"),
        ({"channel": "tvl", "colour": "red"}, "invalid_request", "colour: unknown field 'colour'"),
        (
            {"channel": "chain", "history": {"resolution": "1d", "from": "2022-05-01"}},
            "invalid_request",
            "channel chain keeps no history",
        ),
        ({"channel": "tvl", "cursor": "bm90IG1pbmU"}, "invalid_cursor", "not a cursor this API issued"),
        ({"channel": "tvl", "limit": 5001}, "invalid_request", "limit 5001 is more than the 5000 rows"),
    ],
)
async def test_errors(served: Served, body: dict[str, Any], code: str, text: str) -> None:
    status, error = await served.post(body)
    assert status == 400
    assert error["error"]["code"] == code
    assert text in json.dumps(error), error


async def test_malformed_requests(served: Served) -> None:
    async with served.http.post(served.url + "/v1/query", data=b"{not json") as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_json"
    status, error = await served.get({"channel": "tvl", "group_by": "chain"})
    assert status == 400 and "unknown query parameter 'group_by'" in error["error"]["message"]
    status, error = await served.post({"channel": "tvl", "filter": "tvl_usd >"})
    assert error["error"]["position"] == 9 and error["error"]["expected"]


# --- history -------------------------------------------------------------------------------------------

MAY, JUNE = datetime(2022, 5, 1, tzinfo=UTC), datetime(2022, 6, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HISTORY_CHAINS = ("Terra", "Ethereum", "Binance")


def daily_tvl_may_2022(data_dir: Path) -> dict[str, list[tuple[datetime, float]]]:
    """(day, TVL) per chain in May 2022, straight from the wide CSV (dates carry a 20:00 artefact)."""
    series: dict[str, list[tuple[datetime, float]]] = {c: [] for c in HISTORY_CHAINS}
    with (data_dir / "defillama" / "chain_tvl_daily_2018-2023.csv").open(newline="") as handle:
        for record in csv.DictReader(handle):
            day = datetime.fromisoformat(record["date"][:10]).replace(tzinfo=UTC)
            for chain in HISTORY_CHAINS:
                if MAY <= day < JUNE and record[chain]:
                    series[chain].append((day, float(record[chain])))
    return series


async def test_history_rows_time_buckets_cache_and_bounds(engine: AsyncEngine, data_dir: Path) -> None:
    series = daily_tvl_may_2022(data_dir)
    updates = [
        ("tvl", f"chain||{chain}", {**chain_rows(data_dir, DAY)[0], "chain": chain, "tvl_usd": tvl,
                                    "as_of": day.strftime("%Y-%m-%dT%H:%M:%SZ")})
        for chain, days in series.items() for day, tvl in days
    ]  # fmt: skip
    # The store's own fold and upsert, as the history writer uses them.
    await upsert_rollups(engine, fold(updates))
    settings = Settings(app_id=f"llamastream-qtest-{uuid.uuid4().hex[:10]}", query_max_rows=80)
    async for served in serve(settings, Redis.from_url(settings.redis_url), engine):
        month = {"resolution": "1d", "from": MAY.isoformat(), "to": JUNE.isoformat()}
        # 3 chains x 31 days of daily rollups is more than the 80 rollups a query may scan.
        status, error = await served.post({"channel": "tvl", "history": month})
        assert status == 400 and error["error"]["code"] == "query_too_large", error
        assert "narrow 'from'/'to'" in error["error"]["message"]

        first_half = {"resolution": "1d", "from": "2022-05-01", "to": "2022-05-16"}
        status, terra = await served.post({
            "channel": "tvl", "history": first_half, "filter": 'chain == "Terra"', "sort": ["bucket_start"],
            "fields": ["bucket_start", "chain", "open", "close", "samples"],
        })  # fmt: skip
        assert status == 200, terra
        want = [(d, v) for d, v in series["Terra"] if d < datetime(2022, 5, 16, tzinfo=UTC)]
        assert terra["rows"] == [
            {"bucket_start": d.strftime("%Y-%m-%dT%H:%M:%SZ"), "chain": "Terra", "open": v, "close": v,
             "samples": 1}
            for d, v in want
        ]  # fmt: skip
        assert terra["count"] == 15 and terra["position"] is None and terra["as_of"] == "2022-05-15T00:00:00Z"

        weekly = {
            "channel": "tvl", "history": first_half | {"bucket": "7d"}, "filter": 'chain != "Binance"',
            "group_by": ["time", "chain"], "aggregations": {"mean": "avg(close)", "peak": "max(high)",
                                                            "days": "count()"},
        }  # fmt: skip
        status, result = await served.post(weekly)
        assert status == 200, result
        assert result["cached"] is False
        expected: dict[tuple[str, str], list[float]] = {}
        for chain in ("Terra", "Ethereum"):
            for day, tvl in series[chain]:
                if day < datetime(2022, 5, 16, tzinfo=UTC):
                    # Epoch-aligned weeks: 1970-01-01 was a Thursday.
                    week = EPOCH + timedelta(days=(day - EPOCH).days // 7 * 7)
                    expected.setdefault((week.strftime("%Y-%m-%dT%H:%M:%SZ"), chain), []).append(tvl)
        got = {(g["key"]["time"], g["key"]["chain"]): g["values"] for g in result["groups"]}
        assert set(got) == set(expected)
        for key, values in expected.items():
            assert got[key] == {"mean": pytest.approx(statistics.fmean(values)), "peak": max(values),
                                "days": len(values)}  # fmt: skip
        # Groups come in key order when no sort is given: time, then chain.
        assert list(got) == sorted(expected)

        status, again = await served.post(weekly)
        assert again["cached"] is True and again["groups"] == result["groups"]
