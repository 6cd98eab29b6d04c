"""The history writer on the real broker and PostgreSQL: Terra's TVL and LUNA's price become rollups."""

from __future__ import annotations

import asyncio
import csv
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.db import make_engine
from pipeline.records import iso
from pipeline.settings import Settings
from pipeline.storage.history import Rollup, Update, fold, read_history, record_updates, upsert_rollups
from pipeline.storage.migrate import upgrade
from pipeline.storage.models import HistoryPoint
from pipeline.topics import topic_name
from web.history_writer import HISTORY_WRITER, HistoryWriter, history_writer_ctx
from web.keys import ENGINE, SETTINGS

pytestmark = pytest.mark.integration

MAY = datetime(2022, 5, 1, tzinfo=UTC)
JUNE = datetime(2022, 6, 1, tzinfo=UTC)
LUNA_DAY = datetime(2022, 5, 9, tzinfo=UTC)
TOPIC_OF = {"tvl": "tvl.updates", "prices": "price.updates", "yields": "yields.updates"}
Ends = dict[tuple[str, int], int]  # (topic, partition) -> end offset


def terra_may_2022(data_dir: Path) -> list[tuple[datetime, float]]:
    """(day, Terra's TVL) of May 2022, read straight from the wide CSV (dates carry a 20:00 artefact)."""
    with (data_dir / "defillama" / "chain_tvl_daily_2018-2023.csv").open(newline="") as handle:
        rows = csv.DictReader(handle)
        days = [(datetime.fromisoformat(r["date"][:10]).replace(tzinfo=UTC), r["Terra"]) for r in rows]
    return [(day, float(value)) for day, value in days if MAY <= day < JUNE and value]


def luna_closes(data_dir: Path, start: datetime, end: datetime) -> list[tuple[float, float]]:
    """(end of the minute bar, close) of LUNA's one-minute bars in [start, end)."""
    with (data_dir / "prices" / "binance_LUNAUSDT_1m_2022-05.csv").open(newline="") as handle:
        bars = [(int(r[0]) / 1000, float(r[4])) for r in csv.reader(handle)]
    # The replay puts a bar's close 1 ms before its end, so it falls in the bar's hour.
    return [(ts + 59.999, close) for ts, close in bars if start.timestamp() <= ts < end.timestamp()]


def tvl_update(key: str, day: datetime, tvl: float) -> Update:
    row = {
        "kind": "chain", "protocol": None, "chain": "Terra", "tvl_usd": tvl, "change_1h_pct": None,
        "change_1d_pct": None, "change_7d_pct": None, "as_of": iso(day.timestamp()), "stale": False,
        "source": "replay:chain_tvl_daily_2018-2023.csv",
    }  # fmt: skip
    return ("tvl", key, row)


def price_update(key: str, ts: float, price: float) -> Update:
    row = {"coin": key, "symbol": "LUNA", "price": price, "as_of": iso(ts), "stale": False, "source": "t"}
    return ("prices", key, row | {"candle_1m": {"open": price, "high": price, "low": price, "close": price}})


def yield_update(key: str, ts: float, apy: float | None) -> Update:
    return ("yields", key, {"pool": key, "chain": "Terra", "tvl_usd": 1e6, "apy": apy, "as_of": iso(ts)})


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:10]


async def migrated(url: str, tag: str) -> AsyncIterator[AsyncEngine]:
    """The SQL store migrated to head; on the shared PostgreSQL, this test's series are removed after it."""
    settings = Settings(database_url=url)
    await upgrade(settings)
    engine = make_engine(settings)
    yield engine
    async with engine.begin() as connection:
        await connection.execute(delete(HistoryPoint).where(HistoryPoint.series_key.endswith(f"#{tag}")))
    await engine.dispose()


def postgresql_url() -> str:
    url = os.environ.get("LLAMA_DATABASE_URL", "")
    assert url.startswith("postgresql"), "make test points LLAMA_DATABASE_URL at the PostgreSQL it starts"
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path, tag: str) -> AsyncIterator[AsyncEngine]:
    url = postgresql_url() if request.param == "postgresql" else f"sqlite+aiosqlite:///{tmp_path}/history.db"
    async for engine in migrated(url, tag):
        yield engine


@pytest.fixture
async def pg_engine(tag: str) -> AsyncIterator[AsyncEngine]:
    async for engine in migrated(postgresql_url(), tag):
        yield engine


async def produce(settings: Settings, messages: Iterable[tuple[str, bytes, bytes]]) -> Ends:
    """Send (logical topic, key, value) in order; returns the end offset reached per (topic, partition)."""
    ends: Ends = {}
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for logical, key, value in messages:
            sent = await producer.send_and_wait(topic_name(settings, logical), value, key=key)
            ends[(sent.topic, sent.partition)] = sent.offset + 1
    finally:
        await producer.stop()
    return ends


def encoded(updates: Iterable[Update]) -> list[tuple[str, bytes, bytes]]:
    return [(TOPIC_OF[channel], key.encode(), orjson.dumps(row)) for channel, key, row in updates]


async def wait_committed(writer: HistoryWriter, ends: Ends) -> None:
    deadline = time.monotonic() + 120
    while any(writer.committed.get(tp, 0) < end for tp, end in ends.items()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"committed {writer.committed}, ends {ends}, last error {writer.last_error}")
        await asyncio.sleep(0.1)


async def snapshot(engine: AsyncEngine, keys: dict[str, str]) -> dict[tuple[str, str], list[Rollup]]:
    return {
        (channel, resolution): await read_history(
            engine, channel, resolution, MAY, JUNE, limit=10_000, series_keys=[key]
        )
        for channel, key in keys.items()
        for resolution in ("1h", "1d")
    }


def expected_ohlc(closes: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    values = [price for _, price in closes]
    return (values[0], max(values), min(values), values[-1])


async def test_terra_and_luna_rollups_survive_redelivery(
    topics: Settings, pg_engine: AsyncEngine, data_dir: Path, tag: str
) -> None:
    keys = {"tvl": f"chain||Terra#{tag}", "prices": f"coingecko:terra-luna#{tag}", "yields": f"pool#{tag}"}
    terra = terra_may_2022(data_dir)
    assert len(terra) == 31 and terra[8][0] == LUNA_DAY
    luna = luna_closes(data_dir, LUNA_DAY, LUNA_DAY + timedelta(hours=6))
    assert len(luna) == 360
    yields = [
        yield_update(keys["yields"], LUNA_DAY.timestamp() + i * 600, None if i % 2 else i / 10)
        for i in range(9)
    ]
    updates = [tvl_update(keys["tvl"], day, tvl) for day, tvl in terra]
    updates += [price_update(keys["prices"], ts, close) for ts, close in luna] + yields
    # Not updates: logged, skipped and committed with the rest.
    junk = [("price.updates", keys["prices"].encode(), b"[1]"), ("tvl.updates", keys["tvl"].encode(), b"{}")]
    ends = await produce(topics, encoded(updates) + junk)

    writer = HistoryWriter(topics, pg_engine)
    await writer.start()
    try:
        await wait_committed(writer, ends)
    finally:
        await writer.stop()
    assert writer.skipped == 2 and writer.records == len(updates) and writer.last_error is None

    first = await snapshot(pg_engine, keys)
    daily = first[("tvl", "1d")]
    assert [(r.bucket_start, r.close) for r in daily] == terra
    assert all(r.samples == 1 and r.open == r.close and r.fields["chain"] == "Terra" for r in daily)
    hours = first[("prices", "1h")]
    assert [r.bucket_start for r in hours] == [LUNA_DAY + timedelta(hours=h) for h in range(6)]
    for hour, rollup in enumerate(hours):
        assert (rollup.open, rollup.high, rollup.low, rollup.close) == expected_ohlc(
            luna[hour * 60 : hour * 60 + 60]
        )
        assert rollup.samples == 60 and "candle_1m" not in rollup.fields
    (luna_day,) = first[("prices", "1d")]
    assert (luna_day.open, luna_day.high, luna_day.low, luna_day.close) == expected_ohlc(luna)
    (pool_day,) = first[("yields", "1d")]
    assert (pool_day.open, pool_day.close, pool_day.samples, pool_day.fields["apy"]) == (0.0, 0.8, 9, 0.8)
    assert len(first[("tvl", "1h")]) == 31

    # A restart on the same group while the topics carry everything again (a worker's redelivery),
    # followed by LUNA's seventh hour: only the new hour counts, in its own bucket and in the day's.
    seventh = luna_closes(data_dir, LUNA_DAY + timedelta(hours=6), LUNA_DAY + timedelta(hours=7))
    more = [price_update(keys["prices"], ts, close) for ts, close in seventh]
    ends = await produce(topics, encoded(updates + more))
    again = HistoryWriter(topics, pg_engine)
    await again.start()
    try:
        await wait_committed(again, ends)
    finally:
        await again.stop()
    second = await snapshot(pg_engine, keys)
    assert {k: v for k, v in second.items() if k[0] != "prices"} == {
        k: v for k, v in first.items() if k[0] != "prices"
    }
    assert second[("prices", "1h")] == first[("prices", "1h")] + [
        r for r in fold(more) if r.resolution == "1h"
    ]
    (luna_day,) = second[("prices", "1d")]
    assert luna_day.samples == 420
    assert (luna_day.open, luna_day.high, luna_day.low, luna_day.close) == expected_ohlc(luna + seventh)


async def test_upsert_is_idempotent_and_merges_batches(engine: AsyncEngine, tag: str) -> None:
    t0 = LUNA_DAY.timestamp()
    stream = [yield_update(f"pool-a#{tag}", t0 + i * 500, None if i % 4 else 3.0 + i % 5) for i in range(40)]
    stream += [price_update(f"coin#{tag}", t0 + i * 900, 80.0 - i) for i in range(30)]
    keys = [f"pool-a#{tag}", f"coin#{tag}"]
    stream.sort(key=lambda u: u[2]["as_of"])
    # Batches as a crashed worker and a crashed writer would deliver them: tails again, then new updates.
    for batch in (stream[:20], stream[10:45], stream[:45], stream[30:], stream):
        await record_updates(engine, batch)
    expected = sorted(fold(stream), key=lambda r: (r.bucket_start, r.series_key))
    for channel, resolution in (("yields", "1h"), ("yields", "1d"), ("prices", "1h"), ("prices", "1d")):
        stored = await read_history(engine, channel, resolution, MAY, JUNE, limit=1000, series_keys=keys)
        assert stored == [r for r in expected if (r.channel, r.resolution) == (channel, resolution)]
    # A rollup that is not newer than the stored one (a redelivered batch) changes nothing.
    await upsert_rollups(engine, fold(stream[:45]))
    daily = await read_history(engine, "prices", "1d", MAY, JUNE, limit=10, series_keys=keys)
    assert daily == [r for r in expected if r.resolution == "1d" and r.channel == "prices"]


async def test_read_history_filters_by_range_and_keys(engine: AsyncEngine, tag: str) -> None:
    t0 = LUNA_DAY.timestamp()
    updates = [
        price_update(f"{coin}#{tag}", t0 + h * 3600, float(h)) for h in range(5) for coin in ("b", "a")
    ]
    await record_updates(engine, updates)
    keys = [f"a#{tag}", f"b#{tag}"]
    start = LUNA_DAY + timedelta(hours=1)
    rows = await read_history(
        engine, "prices", "1h", start, start + timedelta(hours=3), limit=100, series_keys=keys
    )
    assert [(r.bucket_start.hour, r.series_key[0]) for r in rows] == [(h, c) for h in (1, 2, 3) for c in "ab"]
    assert all(r.bucket_start.tzinfo is not None and r.last_as_of.tzinfo is not None for r in rows)
    limited = await read_history(engine, "prices", "1h", MAY, JUNE, limit=3, series_keys=keys[:1])
    assert [(r.bucket_start.hour, r.series_key[0]) for r in limited] == [(0, "a"), (1, "a"), (2, "a")]
    assert await read_history(engine, "prices", "1h", MAY, JUNE, limit=3, series_keys=[]) == []
    with pytest.raises(ValueError):
        await read_history(engine, "chain", "1h", MAY, JUNE, limit=3)


async def test_sidecar_runs_the_writer_only_when_asked(
    topics: Settings, pg_engine: AsyncEngine, tag: str
) -> None:
    for enabled in (False, True):
        app = web.Application()
        app[SETTINGS] = topics.model_copy(update={"history_writer": enabled})
        app[ENGINE] = pg_engine
        app.cleanup_ctx.append(history_writer_ctx)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            assert (HISTORY_WRITER in app) is enabled
            if enabled:
                update = price_update(f"coin#{tag}", LUNA_DAY.timestamp(), 1.0)
                await wait_committed(app[HISTORY_WRITER], await produce(topics, encoded([update])))
                rows = await read_history(
                    pg_engine, "prices", "1d", MAY, JUNE, limit=1, series_keys=[f"coin#{tag}"]
                )
                assert [r.close for r in rows] == [1.0]
        finally:
            await runner.cleanup()


async def test_database_errors_are_retried_without_committing(
    topics: Settings, tmp_path: Path, tag: str
) -> None:
    # A store that is not migrated yet: every upsert fails until the table exists.
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/late.db")
    store = make_engine(settings)
    writer = HistoryWriter(topics, store)
    ends = await produce(topics, encoded([price_update(f"coin#{tag}", LUNA_DAY.timestamp(), 2.0)]))
    await writer.start()
    try:
        deadline = time.monotonic() + 60
        while writer.errors < 2:
            assert time.monotonic() < deadline, "the writer never tried to write"
            await asyncio.sleep(0.1)
        assert writer.committed == {} and writer.last_error is not None and "database" in writer.last_error
        await upgrade(settings)
        await wait_committed(writer, ends)
        rows = await read_history(store, "prices", "1h", MAY, JUNE, limit=5)
        assert [(r.series_key, r.close, r.samples) for r in rows] == [(f"coin#{tag}", 2.0, 1)]
    finally:
        await writer.stop()
        await store.dispose()
