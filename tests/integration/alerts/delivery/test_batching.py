"""The delivery path in batches: a batch of transitions of many rules and groups writes exactly the
notifications one transaction per transition would, and a worker SIGKILLed while batches are being stored
loses nothing and doubles nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.alerting.messages import AlertTransition
from pipeline.alerting.record_transitions import record_transitions
from pipeline.settings import Settings
from pipeline.storage.models import AlertEvent, AlertRule, Notification, Silence
from pipeline.topics import topic_name
from tests.integration.alerting import (
    WebhookReceiver,
    delivery_settings,
    eventually,
    insert_endpoint,
    insert_rule,
    new_owner,
    notifications_of,
    rows,
    transition,
    webhook_owner,
)
from tests.integration.support import WorkerProcess, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def settings() -> Settings:
    # Offsets committed rarely: a kill surely comes before the commit, so every transition is redelivered.
    return delivery_settings(commit_interval_s=60.0)


def _variety(rules: dict[str, str], owner: str, run: str) -> list[AlertTransition]:
    """Transitions exercising every path: group_wait 0 and 30s, group_by, firing then resolved in one
    batch, a redelivered duplicate, a silenced chain, a deleted rule and a rule without channels."""
    out: list[dict[str, Any]] = []
    for name, rule in rules.items():
        for chain in ("Terra", "Ethereum", "Solana", "Muted"):
            out.append(transition(rule, owner, f"chain||{chain}", "firing", source=f"{run}:{name}:{chain}:1"))
        out.append(
            transition(rule, owner, "chain||Terra", "resolved", previous="firing", source=f"{run}:{name}:r")
        )
        out.append(transition(rule, owner, "chain||Solana", "no_data", source=f"{run}:{name}:nd"))
        out.append(transition(rule, owner, "chain||Ethereum", "pending", source=f"{run}:{name}:p"))
    out.insert(3, dict(out[1]))  # delivered twice within the batch
    for item in out:
        item["labels"]["team"] = "risk"
    return cast(list[AlertTransition], out)


def _comparable(notifications: list[Any]) -> list[tuple[Any, ...]]:
    """What a notification says, without what depends on the deployment (ids, group keys)."""
    return sorted(
        (
            n["rule_id"],
            orjson.dumps(n["payload"]["group_labels"], option=orjson.OPT_SORT_KEYS),
            n["payload"]["seq"],
            n["target_type"],
            n["status"],
            n["payload"]["status"],
            # Sorted: the order within a notice follows the stored group's key order (JSONB's, not arrival).
            tuple(sorted((a["fingerprint"], a["state"]) for a in n["payload"]["alerts"])),
        )
        for n in notifications
    )


async def test_a_batch_writes_what_one_transaction_per_transition_writes(
    engine: AsyncEngine, settings: Settings
) -> None:
    owner = new_owner()
    endpoint = await insert_endpoint(engine, owner, "http://127.0.0.1:9/hooks")
    channels = [{"type": "webhook", "endpoint": endpoint}, {"type": "websocket"}]
    common: dict[str, Any] = {"app_id": settings.app_id, "channels": channels, "group_interval": "0s"}
    rules = {
        "at_once": await insert_rule(engine, owner, group_wait="0s", **common),
        "by_chain": await insert_rule(engine, owner, group_wait="0s", group_by=["chain"], **common),
        "waiting": await insert_rule(engine, owner, group_wait="30s", **common),
        "deleted": await insert_rule(engine, owner, group_wait="0s", **common),
        "silent": await insert_rule(engine, owner, app_id=settings.app_id, channels=[]),
    }
    now = datetime.now(UTC)
    async with engine.begin() as connection:
        await connection.execute(
            update(AlertRule).where(AlertRule.id == rules["deleted"]).values(deleted_at=now)
        )
        await connection.execute(
            insert(Silence).values(
                id=f"sil_{uuid.uuid4().hex[:12]}",
                owner=owner,
                matchers=[{"name": "chain", "op": "=", "value": "Muted"}],
                starts_at=now - timedelta(minutes=1),
                ends_at=now + timedelta(hours=1),
                comment="",
                created_at=now,
            )
        )
    # The same transitions (sources kept apart), stored by two deployments: one batch, and one by one.
    batched, single = f"{settings.app_id}-batch", f"{settings.app_id}-single"
    batch = await record_transitions(engine, batched, _variety(rules, owner, "b"), now)
    outcomes = [await record_transitions(engine, single, [t], now) for t in _variety(rules, owner, "s")]

    assert batch.duplicates == 1 == sum(o.duplicates for o in outcomes)
    assert batch.notifications == sum(o.notifications for o in outcomes) > 0
    assert batch.scheduled == sum(o.scheduled for o in outcomes)
    found = await rows(engine, select(Notification).where(Notification.owner == owner))
    by_app = {app: [n for n in found if n["app_id"] == app] for app in (batched, single)}
    assert _comparable(by_app[batched]) == _comparable(by_app[single])
    statuses = {n["status"] for n in by_app[batched]}
    assert statuses == {"pending", "muted"}  # muted: the silenced chain of the group_by rule
    assert not any(n["rule_id"] in (rules["deleted"], rules["silent"]) for n in found)
    # Every transition is history once per deployment, the duplicate included once.
    history = await rows(engine, select(AlertEvent).where(AlertEvent.owner == owner))
    assert len(history) == 2 * (len(_variety(rules, owner, "x")) - 1)


async def _produce_fast(settings: Settings, values: list[dict[str, Any]]) -> None:
    """Everything at once (acks awaited at the end), so the worker consumes in full batches."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        name = topic_name(settings, "alerts.triggered")
        for value in values:
            await producer.send(name, orjson.dumps(value), key=value["rule_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def test_sigkill_while_batches_are_stored_loses_and_doubles_nothing(
    engine: AsyncEngine, settings: Settings, worker: WorkerProcess
) -> None:
    receiver = await WebhookReceiver(free_port()).start()
    try:
        owner, _, channels = await webhook_owner(engine, receiver.url)
        rules = [
            await insert_rule(
                engine, owner, app_id=settings.app_id, channels=channels, group_wait="0s", group_by=["chain"]
            )
            for _ in range(20)
        ]
        # One group per transition (rule x chain): each notifies once, as sequence number 0.
        sent = [transition(rule, owner, f"chain||C{n}", "firing") for rule in rules for n in range(100)]
        worker.start()
        await worker.wait_ready()
        await _produce_fast(settings, sent)
        stored = await eventually(lambda: _history(engine, owner, 1), what="the first batches stored")
        worker.kill()
        at_kill = len(await rows(engine, select(AlertEvent.id).where(AlertEvent.owner == owner)))
        assert len(stored) <= at_kill < len(sent), "the kill came after every batch was stored"

        worker.start()
        await worker.wait_ready()
        found = await eventually(
            lambda: _delivered(engine, owner, len(sent)), timeout=180, what="every notification delivered"
        )
        history = await rows(engine, select(AlertEvent).where(AlertEvent.owner == owner))
        assert sorted(h["source"] for h in history) == sorted(t["source"] for t in sent)
        assert {n["payload"]["seq"] for n in found} == {0}
        told = sorted(n["payload"]["alerts"][0]["source"] for n in found)
        assert told == sorted(t["source"] for t in sent)  # one notification per transition, none twice
        # At least once by webhook-id: every notification arrived, and nothing else did.
        assert {r.id for r in receiver.accepted()} == {n["id"] for n in found}
    finally:
        await receiver.stop()


async def _history(engine: AsyncEngine, owner: str, count: int) -> list[Any] | None:
    found = await rows(engine, select(AlertEvent.id).where(AlertEvent.owner == owner))
    return found if len(found) >= count else None


async def _delivered(engine: AsyncEngine, owner: str, count: int) -> list[Any] | None:
    found = await notifications_of(engine, owner)
    return found if len(found) == count and all(n["status"] == "delivered" for n in found) else None
