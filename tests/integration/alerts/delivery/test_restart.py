"""A worker SIGKILLed between trigger and delivery: after a restart every notification arrives, none twice
by webhook-id, and the redelivered transitions are stored once."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings
from pipeline.storage.models import AlertEvent, AlertGroup
from tests.integration.alerting import (
    WebhookReceiver,
    attempts_of,
    delivery_settings,
    eventually,
    insert_rule,
    new_secret,
    notifications_of,
    produce_transitions,
    rows,
    transition,
    webhook_owner,
)
from tests.integration.support import WorkerProcess, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def settings() -> Settings:
    # Offsets committed rarely: the kill surely comes before the commit, so the restarted worker is given
    # the transitions again and has to recognise them.
    return delivery_settings(commit_interval_s=60.0)


async def _events(engine: AsyncEngine, owner: str, count: int) -> list[Any] | None:
    found = await rows(engine, select(AlertEvent).where(AlertEvent.owner == owner))
    return found if len(found) >= count else None


async def test_sigkill_between_trigger_and_delivery_loses_and_doubles_nothing(
    engine: AsyncEngine, settings: Settings, worker: WorkerProcess
) -> None:
    port = free_port()  # the receiver is down until after the restart: connections are refused
    secret = new_secret()
    owner, _, channels = await webhook_owner(engine, f"http://127.0.0.1:{port}/hooks/alerts", [secret])
    flushed_rule = await insert_rule(
        engine, owner, app_id=settings.app_id, channels=channels, group_wait="0s"
    )
    waiting_rule = await insert_rule(
        engine, owner, app_id=settings.app_id, channels=channels, group_wait="4s"
    )
    worker.start()
    await worker.wait_ready()

    # 1. A notification built and tried (refused), still undelivered.
    await produce_transitions(settings, [transition(flushed_rule, owner, "chain||Terra", "firing")])
    await eventually(lambda: _tried(engine, owner), what="a failed attempt in the delivery log")
    # 2. Transitions consumed into their group, not yet flushed (group_wait): killed right then.
    await produce_transitions(
        settings, [transition(waiting_rule, owner, f"chain||{c}", "firing") for c in ("Ethereum", "Solana")]
    )
    await eventually(lambda: _events(engine, owner, 3), what="the second rule's transitions consumed")
    worker.kill()
    [waiting] = await rows(engine, select(AlertGroup).where(AlertGroup.rule_id == waiting_rule))
    assert waiting["seq"] == 0 and len(waiting["alerts"]) == 2  # the kill came before its flush

    receiver = await WebhookReceiver(port).start()
    try:
        worker.start()
        await worker.wait_ready()
        found = await eventually(lambda: _delivered(engine, owner, 2), timeout=120, what="both delivered")
        ids = sorted(n["id"] for n in found)
        # Exactly once by webhook-id: each notification arrived once, and nothing else arrived.
        assert sorted(r.id for r in receiver.received) == ids
        assert all(r.status == 200 for r in receiver.received)
        by_rule = {r.json()["data"]["rule_id"]: r.json()["data"] for r in receiver.received}
        assert {a["labels"]["chain"] for a in by_rule[flushed_rule]["alerts"]} == {"Terra"}
        assert {a["labels"]["chain"] for a in by_rule[waiting_rule]["alerts"]} == {"Ethereum", "Solana"}
        # The restarted worker was given the transitions again (their offsets were not committed): each is
        # one history row, and the worker counted them as duplicates.
        assert len(await rows(engine, select(AlertEvent).where(AlertEvent.owner == owner))) == 3
        assert await eventually(lambda: _duplicates_seen(settings, 3), what="3 duplicates counted") == 3
        # The first notification's log: refused attempts before the kill, then the delivery, same id.
        first = next(n for n in found if n["rule_id"] == flushed_rule)
        log = [a for a in await attempts_of(engine, owner) if a["notification_id"] == first["id"]]
        assert len(log) >= 2 and log[-1]["status_code"] == 200
        assert all(a["status_code"] is None and a["error"] for a in log[:-1])
        # Numbered in order (an attempt cut short by the kill, if any, has a number and no row).
        numbers = [a["attempt"] for a in log]
        assert numbers == sorted(set(numbers)) and numbers[0] == 1
    finally:
        await receiver.stop()


async def _duplicates_seen(settings: Settings, at_least: int) -> float | None:
    """The worker's count of redelivered transitions it skipped (its /metrics), once it is ``at_least``."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{settings.worker_web_port}/metrics") as response,
    ):
        text = await response.text()
    for line in text.splitlines():
        if line.startswith('llamastream_alert_transitions_total{outcome="duplicate"}'):
            count = float(line.split()[-1])
            return count if count >= at_least else None
    return None


async def _tried(engine: AsyncEngine, owner: str) -> list[Any] | None:
    return await attempts_of(engine, owner) or None


async def _delivered(engine: AsyncEngine, owner: str, count: int) -> list[Any] | None:
    found = await notifications_of(engine, owner)
    return found if len(found) == count and all(n["status"] == "delivered" for n in found) else None
