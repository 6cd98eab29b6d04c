"""What the notifier cannot read is kept in dlq.alerts with the reason, and the stream goes on."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings
from pipeline.topics import topic_name
from tests.integration.alerting import (
    WebhookReceiver,
    eventually,
    insert_rule,
    notifications_of,
    produce_transitions,
    transition,
    webhook_owner,
)
from tests.integration.support import WorkerProcess, free_port, read_topic

pytestmark = pytest.mark.integration

UNREADABLE = [b"{not json", b'{"rule_id": "rule_x", "state": "firing"}']


async def test_unreadable_transitions_go_to_the_dlq_and_valid_ones_are_delivered(
    engine: AsyncEngine, settings: Settings, ready_worker: WorkerProcess
) -> None:
    receiver = await WebhookReceiver(free_port()).start()
    try:
        owner, _, channels = await webhook_owner(engine, receiver.url)
        rule = await insert_rule(engine, owner, app_id=settings.app_id, channels=channels, group_wait="0s")
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for value in UNREADABLE:
                await producer.send_and_wait(topic_name(settings, "alerts.triggered"), value, key=b"rule_x")
        finally:
            await producer.stop()
        await produce_transitions(settings, [transition(rule, owner, "chain||Terra", "firing")])

        # The valid transition behind the bad ones is delivered as usual.
        await eventually(lambda: _delivered(engine, owner), what="the valid transition delivered")
        assert len(receiver.accepted()) == 1

        # The bad ones are kept, byte for byte, with what was wrong and where they came from.
        dead = await read_topic(settings, "dlq.alerts", until=lambda found: len(found) >= len(UNREADABLE))
        assert sorted(m.value for m in dead) == sorted(UNREADABLE)
        for message in dead:
            assert message.headers["dlq.reason"].startswith(b"not a transition: "), message.headers
            assert message.headers["dlq.source.topic"] == topic_name(settings, "alerts.triggered").encode()
    finally:
        await receiver.stop()


async def _delivered(engine: AsyncEngine, owner: str) -> bool:
    return [n["status"] for n in await notifications_of(engine, owner)] == ["delivered"]
