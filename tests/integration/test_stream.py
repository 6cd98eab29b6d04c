"""/v1/stream against real sidecars, Kafka and Redis: snapshots, filters, resume, slow clients, errors."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pipeline.connectors.readers.defillama_tvl import wide_csv_cells
from pipeline.db import make_engine
from pipeline.records import iso
from pipeline.settings import Settings
from pipeline.storage.api_keys import create_key
from tests.integration.conftest import unique_settings
from tests.integration.sidecar import RawClient, connect, publish, running_sidecar, subscribe

pytestmark = pytest.mark.integration


def chain_days(data_dir: Path, first: str, days: int) -> list[list[tuple[str, dict[str, Any]]]]:
    """tvl.updates values of every chain for ``days`` consecutive days of the chain TVL CSV."""
    by_day: dict[float, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    start = time.mktime(time.strptime(first, "%Y-%m-%d")) - time.timezone
    for ts, chain, tvl in wide_csv_cells(data_dir / "defillama" / "chain_tvl_daily_2018-2023.csv"):
        if start <= ts < start + days * 86400:
            value = {
                "kind": "chain", "protocol": None, "chain": chain, "tvl_usd": tvl,
                "change_1h_pct": None, "change_1d_pct": None, "change_7d_pct": None,
                "as_of": iso(ts), "stale": False, "source": "replay:chain_tvl_daily_2018-2023.csv",
            }  # fmt: skip
            by_day[ts].append((f"chain||{chain}", value))
    return [by_day[ts] for ts in sorted(by_day)]


def sidecar_settings(**overrides: Any) -> Settings:
    base = unique_settings()
    return base.model_copy(update={"free_tier_delay_s": 0, "history_writer": False, **overrides})


async def pro_key(settings: Settings) -> str:
    engine = make_engine(settings)
    try:
        _, secret = await create_key(engine, owner=f"trader-{settings.app_id}", tier="pro", label="test")
        return secret
    finally:
        await engine.dispose()


async def test_filtered_subscription_gets_snapshot_then_only_matching_updates_in_order(
    data_dir: Path,
) -> None:
    settings = sidecar_settings()
    day1, day2 = chain_days(data_dir, "2022-05-09", 2)
    await publish(settings, "tvl.updates", day1)
    async with running_sidecar(settings) as sidecar:
        client = await connect(sidecar, await pro_key(settings))
        expression = 'kind == "chain" and tvl_usd > 1e9 and chain != "Ethereum"'
        ack = await subscribe(client, channel="tvl", filter=expression, snapshot=True)
        assert ack["type"] == "subscribed", ack
        snapshot = await client.next("snapshot")
        assert snapshot["last"] is True
        expected_snapshot = {
            k: v["tvl_usd"] for k, v in day1 if v["tvl_usd"] > 1e9 and v["chain"] != "Ethereum"
        }
        assert {item["key"]: item["data"]["tvl_usd"] for item in snapshot["items"]} == expected_snapshot

        await publish(settings, "tvl.updates", day2)
        matching = [(k, v) for k, v in day2 if v["tvl_usd"] > 1e9 and v["chain"] != "Ethereum"]
        updates = await client.updates(len(matching))
        assert {u["key"]: u["data"]["tvl_usd"] for u in updates} == {k: v["tvl_usd"] for k, v in matching}
        assert all(u["data"]["as_of"] == day2[0][1]["as_of"] for u in updates)
        # Nothing else arrives: a ping is answered before any stray update would be.
        await client.send({"op": "ping", "id": "p"})
        assert (await client.next())["type"] == "pong"
        await client.close()


async def test_reconnect_with_position_to_same_or_other_sidecar_gives_exact_sequence(data_dir: Path) -> None:
    settings = sidecar_settings()
    days = chain_days(data_dir, "2022-05-01", 6)
    await publish(settings, "tvl.updates", days[0])
    expression = 'kind == "chain" and tvl_usd > 1e8'

    def matching(day: list[tuple[str, dict[str, Any]]]) -> int:
        return sum(1 for _, v in day if v["tvl_usd"] > 1e8)

    async with running_sidecar(settings) as first, running_sidecar(settings) as second:
        key = await pro_key(settings)
        steady = await connect(first, key)
        await subscribe(steady, channel="tvl", filter=expression, snapshot=False)
        mover = await connect(first, key)
        await subscribe(mover, channel="tvl", filter=expression, snapshot=False)

        await publish(settings, "tvl.updates", days[1])
        before = await mover.updates(matching(days[1]) // 2)
        last_pos = before[-1]["pos"]
        await mover.close()  # disconnected mid-stream: the rest of day 1 and days 2-3 go on without it

        for day in days[2:4]:
            await publish(settings, "tvl.updates", day)
        same = await connect(first, key)
        other = await connect(second, key)
        for client in (same, other):
            ack = await subscribe(client, channel="tvl", filter=expression, resume=last_pos)
            assert ack["type"] == "subscribed", ack
        for day in days[4:]:
            await publish(settings, "tvl.updates", day)

        total = sum(matching(day) for day in days[1:])
        uninterrupted = await steady.updates(total)
        resumed_same = before + await same.updates(total - len(before))
        resumed_other = before + await other.updates(total - len(before))
        for resumed in (resumed_same, resumed_other):
            assert sequence(resumed) == sequence(uninterrupted)
            assert len(resumed) == len({(u["key"], u["data"]["as_of"]) for u in resumed})  # no duplicate
        for client in (steady, same, other):
            await client.close()


def sequence(updates: list[dict[str, Any]]) -> dict[str, list[tuple[str, float]]]:
    """Order is guaranteed per key (per partition); compare each key's sequence of values."""
    per_key: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for update in updates:
        per_key[update["key"]].append((update["data"]["as_of"], update["data"]["tvl_usd"]))
    return dict(per_key)


async def test_slow_client_gets_resync_while_fast_client_gets_everything(data_dir: Path) -> None:
    settings = sidecar_settings(ws_queue_max=500)
    days = chain_days(data_dir, "2022-01-01", 365)  # ~43,000 updates: far more than socket buffers hold
    async with running_sidecar(settings) as sidecar:
        key = await pro_key(settings)
        fast = await connect(sidecar, key)
        await subscribe(fast, channel="tvl", snapshot=False)
        slow = await RawClient.connect(sidecar, key)
        slow.send({"op": "subscribe", "id": "slow", "channel": "tvl", "snapshot": False})
        await asyncio.sleep(0.5)  # the subscription is registered before the burst
        items = [item for day in days for item in day]

        stream_over = asyncio.Event()

        async def read_slowly() -> list[dict[str, Any]]:
            received: list[dict[str, Any]] = []
            while not received or received[-1]["type"] != "resync_required":
                received.append(await asyncio.wait_for(slow.next(), 60))
                if not stream_over.is_set():
                    await asyncio.sleep(0.01)  # far slower than the stream while it flows
            return received

        slow_reading = asyncio.create_task(read_slowly())
        started = time.monotonic()
        # A steady stream (2,000 updates/s), far faster than the slow client reads.
        publishing = asyncio.create_task(publish(settings, "tvl.updates", items, per_s=2000))
        # The fast client reads everything as it comes, without a resync.
        updates = await fast.updates(len(items))
        sent = await publishing
        stream_over.set()
        fast_s = time.monotonic() - started
        assert len(updates) == sent
        # The slow one is told to resync, with the position to resume from.
        received = await slow_reading
        print(f"fast client: {sent} updates in {fast_s:.1f}s; slow client resynced after {len(received)}")
        resync = received[-1]
        assert resync["reason"] == "slow_consumer" and resync["resume"], resync
        delivered = [m for m in received if m["type"] == "update"]
        assert delivered[-1]["pos"] == resync["resume"]
        # Resuming from that position delivers exactly the rest: nothing lost, nothing repeated.
        resumed = await connect(sidecar, key)
        await subscribe(resumed, channel="tvl", resume=resync["resume"])
        rest = await resumed.updates(sent - len(delivered))
        assert sequence(delivered + rest) == sequence(updates)
        slow.close()
        for client in (fast, resumed):
            await client.close()


async def test_bad_requests_get_documented_errors_and_other_streams_go_on(data_dir: Path) -> None:
    settings = sidecar_settings(ws_max_message_bytes=1024)
    day1, day2 = chain_days(data_dir, "2022-05-09", 2)
    async with running_sidecar(settings) as sidecar:
        key = await pro_key(settings)
        bystander = await connect(sidecar, key)
        await subscribe(bystander, channel="tvl", snapshot=False)
        bad = await connect(sidecar, key)

        error = await subscribe(bad, channel="tvl", filter='chian == "Terra"')
        assert (error["code"], error["position"]) == ("invalid_filter", 0)
        assert "chain" in error["message"]
        error = await subscribe(bad, channel="nfts")
        assert error["code"] == "unknown_channel"
        error = await subscribe(bad, channel="tvl", resume="yesterday")
        assert error["code"] == "invalid_resume"
        await bad.send({"op": "dance"})
        assert (await bad.next("error"))["code"] == "unknown_op"
        await bad.ws.send_str("{not json")
        assert (await bad.next("error"))["code"] == "invalid_message"
        await bad.ws.send_str('{"op": "ping", "pad": "' + "x" * 2000 + '"}')
        closing = await bad.ws.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert bad.ws.close_code == 1009

        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": "Bearer lls_000000000000_not-a-real-key"}
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(sidecar.ws_url, headers=headers)
            assert refused.value.status == 401

        await publish(settings, "tvl.updates", day2)
        assert len(await bystander.updates(len(day2))) == len(day2)
        await bystander.close()
        await bad.session.close()


async def test_free_tier_sees_updates_late_and_pro_at_once(data_dir: Path) -> None:
    delay = 4.0
    settings = sidecar_settings(free_tier_delay_s=delay)
    (day,) = chain_days(data_dir, "2022-05-12", 1)
    async with running_sidecar(settings) as sidecar:
        pro = await connect(sidecar, await pro_key(settings))
        free = await connect(sidecar)  # no key: the free tier
        assert free.received[0]["delay_s"] == delay
        for client in (pro, free):
            await subscribe(client, channel="tvl", filter='chain == "Terra"', snapshot=False)
        published = time.time()
        await publish(settings, "tvl.updates", [item for item in day if item[1]["chain"] == "Terra"])
        (pro_update,) = await pro.updates(1)
        pro_at = pro.arrival[-1]
        (free_update,) = await free.updates(1, timeout=60)
        free_at = free.arrival[-1]
        assert pro_update["data"] == free_update["data"]
        assert free_at - published >= delay
        assert free_at - pro_at >= delay - 1.0
        for client in (pro, free):
            await client.close()
    await asyncio.sleep(0)
