"""Forwards ``alerts.notifications`` to the owner's open WebSocket connections as ``alert`` messages.

Each sidecar reads every partition with no consumer group, from the end at start: a notice is for the
connections open when it is published (the outbox, the delivery log and webhooks are the durable record)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from pipeline.settings import Settings
from pipeline.topics import partition_ids, topic_name
from web.hub import Hub
from web.keys import SETTINGS
from web.stream import HUB

__all__ = ["setup", "AlertNotices", "alert_message"]

log = logging.getLogger(__name__)

TOPIC = "alerts.notifications"


def alert_message(notice: dict[str, Any]) -> dict[str, Any]:
    """The WebSocket message for one notice (docs/websocket.md)."""
    return {"type": "alert", **{k: v for k, v in notice.items() if k != "owner"}}


class AlertNotices:
    def __init__(self, settings: Settings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        self.forwarded = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        topic = topic_name(self.settings, TOPIC)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=f"{self.settings.app_id}-sidecar-alerts",
            group_id=None,
            enable_auto_commit=False,
        )
        await consumer.start()
        self._consumer = consumer
        partitions = [TopicPartition(topic, p) for p in sorted(await partition_ids(consumer, topic))]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)  # resolve "the end" now, not at the first fetch
        self._task = asyncio.create_task(self._read(consumer), name="alert-notices")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for records in batches.values():
                for record in records:
                    self.forward(record)

    def forward(self, record: ConsumerRecord[bytes, bytes]) -> None:
        owner = record.key.decode("utf-8", "replace") if record.key is not None else ""
        try:
            notice = orjson.loads(record.value) if record.value is not None else None
        except orjson.JSONDecodeError:
            notice = None
        if not isinstance(notice, dict) or notice.get("owner") != owner:
            log.warning("alerts.notifications %s:%s skipped: not a notice", record.partition, record.offset)
            return
        message = alert_message(notice)
        for conn in list(self.hub.connections.values()):
            # Anonymous clients share the owner name "anonymous"; they never own rules, nor get alerts.
            if conn.principal.key_id is not None and conn.principal.owner == owner:
                conn.send(message)
                self.forwarded += 1


async def _alert_notices(app: web.Application) -> AsyncIterator[None]:
    notices = AlertNotices(app[SETTINGS], app[HUB])
    await notices.start()
    yield
    await notices.stop()


def setup(app: web.Application) -> None:
    # After web.stream's setup: the hub exists by the time this context starts.
    app.cleanup_ctx.append(_alert_notices)
