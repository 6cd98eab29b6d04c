"""Every evaluator's copy of the rules and of protocol categories: ``alerts.rules`` and ``protocols.meta``
read from the beginning, all partitions, with no consumer group (each worker needs all of them, while the
input partitions are spread over workers). ``ready`` is set once the reader has reached the end offsets it
saw at start, so a restarted worker never evaluates with a partial rule set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import MutableMapping
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from pipeline.alerting.rule_book import RuleBook
from pipeline.settings import Settings
from pipeline.topics import partition_ids, topic_name

__all__ = ["RuleFeed"]

log = logging.getLogger(__name__)

RULES_TOPIC = "alerts.rules"
META_TOPIC = "protocols.meta"


class RuleFeed:
    def __init__(self, settings: Settings, book: RuleBook) -> None:
        self.settings = settings
        self.book = book
        self.categories: dict[str, str | None] = {}  # protocol name -> category
        self.ready = asyncio.Event()
        self.end_offsets: dict[TopicPartition, int] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._rules = topic_name(settings, RULES_TOPIC)
        self._meta = topic_name(settings, META_TOPIC)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=f"{self.settings.app_id}-alert-rules",
            group_id=None,  # every worker reads everything; nothing is committed
            enable_auto_commit=False,
            fetch_max_bytes=16 * 1024 * 1024,
        )
        await consumer.start()
        self._consumer = consumer
        partitions = [
            TopicPartition(t, p) for t in (self._rules, self._meta) for p in await partition_ids(consumer, t)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        self.end_offsets = await consumer.end_offsets(partitions)
        self._check_caught_up()
        self._task = asyncio.create_task(self._read(consumer), name="alert-rule-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, records in batches.items():
                for record in records:
                    self.handle(tp, record)
                    self._positions[tp] = record.offset + 1
                await asyncio.sleep(0)  # a 100k-rule backlog must not starve the worker's other tasks
            if not self.ready.is_set():
                for tp in self.end_offsets:
                    self._positions[tp] = max(self._positions.get(tp, 0), await consumer.position(tp))
                self._check_caught_up()

    def handle(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        if tp.topic == self._rules:
            self.book.apply(record.key, record.value)
            return
        name = record.key.decode("utf-8", "replace") if record.key is not None else ""
        if record.value is None:
            self.categories.pop(name, None)
            return
        try:
            meta = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            log.error("protocols.meta: unreadable value for %r, skipped", name)
            return
        if isinstance(meta, dict):
            category = meta.get("category")
            self.categories[name] = category if isinstance(category, str) else None

    def enrich(self, row: MutableMapping[str, Any]) -> None:
        """The sidecar's join (web/replica.py ``enrich``): a TVL row gets its protocol's category, or null."""
        if "kind" in row and "category" not in row:
            row["category"] = self.categories.get(row.get("protocol") or "")

    def _check_caught_up(self) -> None:
        if not self.ready.is_set() and all(
            self._positions.get(tp, 0) >= end for tp, end in self.end_offsets.items()
        ):
            log.info(
                "alert rules loaded: %d rules, %d protocol categories", len(self.book), len(self.categories)
            )
            self.ready.set()
