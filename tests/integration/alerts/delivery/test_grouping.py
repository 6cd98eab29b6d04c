"""Alertmanager behaviour through a real worker: grouping within group_wait, repeat_interval, resolved
notices, transitions that do not notify, redelivered transitions, and silences."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings
from pipeline.storage.models import AlertEvent, AlertGroup, Silence
from tests.integration.alerting import (
    Received,
    WebhookReceiver,
    eventually,
    insert_endpoint,
    insert_rule,
    new_owner,
    notifications_of,
    produce_transitions,
    rows,
    transition,
    webhook_owner,
)
from tests.integration.support import WorkerProcess, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    receiver = await WebhookReceiver(free_port()).start()
    yield receiver
    await receiver.stop()


def _alerts(request: Received) -> dict[str, str]:
    """chain -> state of the alerts a notification carries."""
    return {a["labels"]["chain"]: a["state"] for a in request.json()["data"]["alerts"]}


async def _received(receiver: WebhookReceiver, count: int) -> list[Received] | None:
    return receiver.accepted() if len(receiver.accepted()) >= count else None


async def test_group_wait_batches_instances_then_repeat_and_resolved_notices(
    engine: AsyncEngine, settings: Settings, receiver: WebhookReceiver, ready_worker: WorkerProcess
) -> None:
    owner = new_owner()
    endpoint = await insert_endpoint(engine, owner, receiver.url)
    rule = await insert_rule(
        engine,
        owner,
        app_id=settings.app_id,
        channels=[{"type": "webhook", "endpoint": endpoint}],
        group_wait="2s",
        group_interval="1s",
        repeat_interval="4s",
        send_resolved=True,
    )
    chains = ["Terra", "Ethereum", "Solana"]
    await produce_transitions(settings, [transition(rule, owner, f"chain||{c}", "firing") for c in chains])

    # Three instances firing within group_wait: one notification listing all three.
    [first] = await eventually(lambda: _received(receiver, 1), what="the first notification")
    assert _alerts(first) == dict.fromkeys(chains, "firing")
    assert first.json()["data"]["status"] == "firing" and first.json()["data"]["seq"] == 0

    # Unchanged and still firing: sent again after repeat_interval, as a new message (a new webhook-id).
    first_two = await eventually(lambda: _received(receiver, 2), what="the repeat")
    repeat = first_two[1]
    assert repeat.id != first.id
    assert _alerts(repeat) == dict.fromkeys(chains, "firing") and repeat.json()["data"]["seq"] == 1
    sent = {n["id"]: n["created_at"] for n in await notifications_of(engine, owner)}
    assert sent[repeat.id] - sent[first.id] >= timedelta(seconds=4)

    # One instance resolves: the next notification still fires (two alerts do) and carries the resolved one.
    await produce_transitions(
        settings, [transition(rule, owner, "chain||Terra", "resolved", previous="firing")]
    )
    third = (await eventually(lambda: _received(receiver, 3), what="the notice of Terra resolved"))[2]
    assert _alerts(third) == {"Terra": "resolved", "Ethereum": "firing", "Solana": "firing"}
    assert third.json()["data"]["status"] == "firing"

    # The last two resolve together: a resolved notice, then nothing more is scheduled for the group.
    await produce_transitions(
        settings,
        [
            transition(rule, owner, f"chain||{c}", "resolved", previous="firing")
            for c in ("Ethereum", "Solana")
        ],
    )
    fourth = (await eventually(lambda: _received(receiver, 4), what="the resolved notice"))[3]
    assert _alerts(fourth) == {"Ethereum": "resolved", "Solana": "resolved"}
    assert fourth.json()["data"]["status"] == "resolved" and fourth.json()["type"] == "alert.resolved"
    [group] = await rows(engine, select(AlertGroup).where(AlertGroup.owner == owner))
    assert group["alerts"] == {} and group["notified"] == {} and group["next_flush_at"] is None
    assert len({r.id for r in receiver.accepted()}) == len(receiver.accepted()) == 4


async def test_states_that_do_not_notify_redeliveries_and_no_resolved_notice(
    engine: AsyncEngine, settings: Settings, receiver: WebhookReceiver, ready_worker: WorkerProcess
) -> None:
    owner = new_owner()
    endpoint = await insert_endpoint(engine, owner, receiver.url)
    rule = await insert_rule(
        engine,
        owner,
        app_id=settings.app_id,
        channels=[{"type": "webhook", "endpoint": endpoint}],
        group_wait="0s",
        send_resolved=False,
    )
    series = "chain||Terra"
    pending = transition(rule, owner, series, "pending", previous="normal")
    firing = transition(rule, owner, series, "firing")
    no_data = transition(rule, owner, series, "no_data", previous="firing")
    # The same firing transition delivered twice (a worker crash before its offset commit) is one event.
    await produce_transitions(settings, [pending, firing, firing, no_data])
    events = await eventually(
        lambda: _events(engine, owner, 3), what="pending, firing and no_data in the history"
    )
    assert [e["state"] for e in events] == ["pending", "firing", "no_data"]
    [notice] = await eventually(lambda: _received(receiver, 1), what="the firing notification")
    assert _alerts(notice) == {"Terra": "firing"}

    # Back to firing after no_data is not news; resolving sends nothing when send_resolved is off.
    back = transition(rule, owner, series, "firing", previous="no_data")
    resolved = transition(rule, owner, series, "resolved", previous="firing")
    await produce_transitions(settings, [back, resolved])
    await eventually(lambda: _events(engine, owner, 5), what="all five transitions in the history")
    [group] = await eventually(lambda: _idle_group(engine, owner), what="the group emptied")
    assert group["alerts"] == {}
    assert [n["status"] for n in await notifications_of(engine, owner)] == ["delivered"]
    assert len(receiver.received) == 1


async def _events(engine: AsyncEngine, owner: str, count: int) -> list[Any] | None:
    found = await rows(engine, select(AlertEvent).where(AlertEvent.owner == owner).order_by(AlertEvent.id))
    return found if len(found) >= count else None


async def _idle_group(engine: AsyncEngine, owner: str) -> list[Any] | None:
    found = await rows(engine, select(AlertGroup).where(AlertGroup.owner == owner))
    return found if found and all(g["next_flush_at"] is None for g in found) else None


async def _silence(engine: AsyncEngine, owner: str, matchers: list[dict[str, str]], seconds: float) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as connection:
        await connection.execute(
            insert(Silence).values(
                id=f"sil_{uuid.uuid4().hex[:10]}",
                owner=owner,
                matchers=matchers,
                starts_at=now - timedelta(seconds=1),
                ends_at=now + timedelta(seconds=seconds),
                comment="maintenance",
                created_at=now,
            )
        )


async def test_silences_mute_matching_alerts_until_they_end(
    engine: AsyncEngine, settings: Settings, receiver: WebhookReceiver, ready_worker: WorkerProcess
) -> None:
    owner, _, channels = await webhook_owner(engine, receiver.url)
    # One group per chain, and one group holding both chains.
    by_chain = await insert_rule(
        engine, owner, app_id=settings.app_id, channels=channels, group_wait="0s", group_by=["chain"]
    )
    together = await insert_rule(engine, owner, app_id=settings.app_id, channels=channels, group_wait="1s")
    await _silence(engine, owner, [{"name": "chain", "op": "=~", "value": "Ter.*"}], seconds=6)
    # Another owner's silence never mutes this owner's alerts.
    await _silence(engine, new_owner(), [{"name": "chain", "op": "=", "value": "Ethereum"}], seconds=60)
    await produce_transitions(
        settings,
        [
            transition(rule, owner, f"chain||{c}", "firing")
            for rule in (by_chain, together)
            for c in ("Terra", "Ethereum")
        ],
    )
    sent = await eventually(lambda: _received(receiver, 2), what="the unmuted notifications")
    assert sorted((r.json()["data"]["rule_id"], tuple(_alerts(r))) for r in sent) == sorted(
        [(by_chain, ("Ethereum",)), (together, ("Ethereum",))]
    )
    muted = [n for n in await notifications_of(engine, owner) if n["status"] == "muted"]
    # by_chain's Terra group had nothing unmuted: recorded as muted, never sent.
    assert len(muted) == 1 and muted[0]["rule_id"] == by_chain
    assert [a["labels"]["chain"] for a in muted[0]["payload"]["alerts"]] == ["Terra"]
    assert muted[0]["id"] not in {r.id for r in receiver.received}

    # When the silence ends, what it held back goes out.
    after = await eventually(lambda: _received(receiver, 4), timeout=30, what="Terra after the silence")
    late = {r.json()["data"]["rule_id"]: _alerts(r) for r in after[2:]}
    assert late[by_chain] == {"Terra": "firing"}
    assert late[together] == {"Terra": "firing", "Ethereum": "firing"}
