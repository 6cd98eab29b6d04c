"""Publishes alert rules to the compacted ``alerts.rules`` topic, and keeps the topic equal to PostgreSQL
(the source of truth): a full reconciliation at startup, and a repair of every rule whose publish failed.

A change is published inside its database transaction with the row locked (pipeline/storage/alert_rules.py),
so one rule's values reach the topic in commit order and a failed publish rolls the change back. A publish
that timed out may still land later; the repair that follows it goes through the same producer, after it,
and writes what PostgreSQL holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings
from pipeline.storage.alert_rules import live_rule_ids, rule_of, with_locked_rules
from pipeline.storage.models import AlertRule
from pipeline.topics import ensure_topics, partition_ids, topic_name
from web.keys import ENGINE, SETTINGS

__all__ = [
    "RULES_TOPIC",
    "PublishFailed",
    "RulePublisher",
    "RULE_PUBLISHER",
    "rule_value",
    "rule_publisher_ctx",
]

RULES_TOPIC = "alerts.rules"
PUBLISH_TIMEOUT_S = 10.0
RECONCILE_BATCH = 500
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
log = logging.getLogger(__name__)

PUBLISHED = Counter(
    "llamastream_alert_rules_published_total",
    "alerts.rules messages sent by the sidecar, by cause (change, reconcile, repair) and outcome",
    ["cause", "outcome"],
)


class PublishFailed(Exception):
    """Kafka did not acknowledge the rule in time; the change is rolled back and the rule repaired."""


def rule_value(row: AlertRule) -> bytes | None:
    """The message value of a rule row: its Rule JSON, or None (a tombstone) once deleted."""
    if row.deleted_at is not None:
        return None
    return orjson.dumps(rule_of(row).model_dump(mode="json", by_alias=True))


def _describe(exc: BaseException) -> str:
    """``Type: message`` (aiokafka's errors already start with their type), at most 500 characters."""
    name, text = type(exc).__name__, str(exc)
    return (text if text.startswith(name) else f"{name}: {text}")[:500]


def _digest(value: bytes | None) -> bytes | None:
    return None if value is None else hashlib.blake2b(value, digest_size=16).digest()


class RulePublisher:
    def __init__(
        self, settings: Settings, engine: AsyncEngine, *, timeout_s: float = PUBLISH_TIMEOUT_S
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.topic = topic_name(settings, RULES_TOPIC)
        self.timeout_s = timeout_s
        # Set once the startup reconciliation finished; tests and readiness (/readyz) wait on it.
        self.reconciled = asyncio.Event()
        # Why the last reconciliation attempt failed (None: none failed yet, or it finished), for /readyz.
        self.reconcile_error: str | None = None
        self._producer: AIOKafkaProducer | None = None
        self._dirty: set[str] = set()
        self._repairing: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await ensure_topics(self.settings)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=f"{self.settings.app_id}-rules",
            acks="all",
            # No duplicates or reordering from the producer's own retries.
            enable_idempotence=True,
            request_timeout_ms=int(self.timeout_s * 1000),
        )
        await producer.start()
        self._producer = producer
        self._task = asyncio.create_task(self._maintain(), name="rule-publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, row: AlertRule) -> None:
        """Send a changed row (inside its transaction) and wait for acks=all; PublishFailed otherwise."""
        try:
            await self._send(row.id, rule_value(row), "change")
        except PublishFailed:
            self.repair(row.id)
            raise

    def repair(self, rule_id: str) -> None:
        """Make the topic hold what PostgreSQL holds for ``rule_id`` (soon, retried until it succeeds)."""
        self._dirty.add(rule_id)
        self._wake.set()

    async def _send(self, rule_id: str, value: bytes | None, cause: str) -> None:
        producer = self._producer
        if producer is None:
            raise PublishFailed("the rule publisher is not running")
        try:
            async with asyncio.timeout(self.timeout_s):
                await producer.send_and_wait(self.topic, value, key=rule_id.encode())
        except (KafkaError, TimeoutError) as exc:
            PUBLISHED.labels(cause, "failed").inc()
            raise PublishFailed(f"{type(exc).__name__}: {exc}") from exc
        PUBLISHED.labels(cause, "ok").inc()

    async def _send_all(self, sends: list[Coroutine[Any, Any, None]]) -> None:
        results = await asyncio.gather(*sends, return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed

    async def reconcile_ids(self, rule_ids: Sequence[str], cause: str = "repair") -> None:
        """Publish PostgreSQL's state of these rules (a tombstone when deleted or absent), rows locked."""

        async def use(rows: dict[str, AlertRule | None]) -> None:
            sends = []
            for rule_id, row in rows.items():
                # Another deployment's rule has no business on this topic: it is as good as absent.
                ours = row is not None and row.app_id == self.settings.app_id
                usable, value = self._checked_value(row) if row is not None and ours else (True, None)
                if usable:
                    sends.append(self._send(rule_id, value, cause))
            await self._send_all(sends)

        await with_locked_rules(self.engine, rule_ids, use)

    def _checked_value(self, row: AlertRule) -> tuple[bool, bytes | None]:
        """(True, the row's value), or (False, None) when its stored spec no longer validates: such a rule
        is logged and left as the topic has it rather than deleted behind its owner's back."""
        try:
            return True, rule_value(row)
        except ValidationError as exc:
            log.error("rule %s of %s no longer validates, not published: %s", row.id, row.owner, exc)
            return False, None

    async def reconcile_all(self) -> tuple[int, int]:
        """Compare the topic with PostgreSQL and publish the differences: live rules whose latest value
        differs, and tombstones for rules the topic holds that are deleted or unknown.
        Returns (rules published, tombstones published)."""
        on_topic = await self._read_topic()
        live: set[str] = set()
        published = 0
        after: str | None = None
        app_id = self.settings.app_id
        while ids := await live_rule_ids(self.engine, app_id=app_id, after=after, limit=RECONCILE_BATCH):
            after = ids[-1]

            async def use(rows: dict[str, AlertRule | None]) -> None:
                nonlocal published
                sends = []
                for rule_id, row in rows.items():
                    if row is None or row.deleted_at is not None or row.app_id != app_id:
                        continue  # deleted meanwhile: its tombstone is checked below
                    live.add(rule_id)
                    usable, value = self._checked_value(row)
                    if usable and on_topic.get(rule_id) != _digest(value):
                        sends.append(self._send(rule_id, value, "reconcile"))
                published += len(sends)
                await self._send_all(sends)

            await with_locked_rules(self.engine, ids, use)
        gone = sorted(key for key, digest in on_topic.items() if digest is not None and key not in live)
        for start in range(0, len(gone), RECONCILE_BATCH):
            await self.reconcile_ids(gone[start : start + RECONCILE_BATCH], "reconcile")
        return published, len(gone)

    async def _read_topic(self) -> dict[str, bytes | None]:
        """Latest value digest per key of the whole topic (None: tombstone)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=f"{self.settings.app_id}-rules-reconcile",
            group_id=None,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(self.topic, p) for p in await partition_ids(consumer, self.topic)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            latest: dict[str, bytes | None] = {}
            while await self._behind(consumer, ends):
                for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                    for record in records:
                        if record.key is not None:
                            latest[record.key.decode(errors="replace")] = _digest(record.value)
            return latest
        finally:
            await consumer.stop()

    @staticmethod
    async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await consumer.position(tp) < end:
                return True
        return False

    async def _maintain(self) -> None:
        """The startup reconciliation (retried until it succeeds), then repairs as they are asked for."""
        backoff = BACKOFF_FIRST_S
        while not self.reconciled.is_set():
            try:
                published, tombstoned = await self.reconcile_all()
                log.info(
                    "alerts.rules reconciled: %d rules republished, %d tombstones", published, tombstoned
                )
                self.reconcile_error = None
                self.reconciled.set()
            except Exception as exc:  # noqa: BLE001  (whatever failed, retry: the loop must not die)
                log.warning("alerts.rules reconciliation failed, retrying in %.0f s: %r", backoff, exc)
                self.reconcile_error = _describe(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        backoff = BACKOFF_FIRST_S
        while True:
            await self._wake.wait()
            self._wake.clear()
            ids, self._dirty = sorted(self._dirty), set()
            self._repairing = set(ids)
            try:
                await self.reconcile_ids(ids)
                self._repairing = set()
                backoff = BACKOFF_FIRST_S
            except Exception as exc:  # noqa: BLE001
                log.warning("repairing alerts.rules for %s failed, retrying in %.0f s: %r", ids, backoff, exc)
                self._dirty.update(ids)
                self._repairing = set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                self._wake.set()

    @property
    def pending_repairs(self) -> frozenset[str]:
        """Rules whose topic value is not known to match PostgreSQL yet (queued or being repaired)."""
        return frozenset(self._dirty | self._repairing)


RULE_PUBLISHER = web.AppKey("rule_publisher", RulePublisher)


async def rule_publisher_ctx(app: web.Application) -> AsyncIterator[None]:
    publisher = RulePublisher(app[SETTINGS], app[ENGINE])
    app[RULE_PUBLISHER] = publisher
    await publisher.start()
    yield
    await publisher.stop()
