"""The sidecar's history sink: derived topics to hourly and daily rollups in SQL, in a consumer group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.channels import CHANNELS
from pipeline.settings import Settings
from pipeline.storage.history import METRIC, Update, as_of_of, record_updates
from pipeline.topics import ensure_topics, topic_name
from web.keys import ENGINE, SETTINGS

__all__ = ["HistoryWriter", "HISTORY_WRITER", "history_writer_ctx", "decode"]

log = logging.getLogger(__name__)

ROWS = Counter("llamastream_history_rows_total", "Rollup rows upserted into the SQL store")
BATCHES = Counter(
    "llamastream_history_batches_total", "Batches of derived-topic records written and committed"
)
RECORDS = Counter(
    "llamastream_history_records_total", "Derived-topic records read by the history writer, by outcome",
    ["outcome"],
)  # fmt: skip
ERRORS = Counter(
    "llamastream_history_errors_total", "Failed attempts, by stage (kafka, database, commit)", ["stage"]
)

MAX_RECORDS = 5000
POLL_MS = 500
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
# How long stop() lets the current batch finish before cancelling it (the upsert is idempotent anyway).
STOP_GRACE_S = 10.0
MAX_KEY_BYTES = 300  # history_points.series_key is String(300)

Batch = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]


def decode(channel: str, key: bytes | None, value: bytes | None) -> Update:
    """One message as an update; ValueError when it is not a keyed JSON object with a valid ``as_of``."""
    if not key or len(key) > MAX_KEY_BYTES:
        raise ValueError(f"key missing or longer than {MAX_KEY_BYTES} bytes")
    if value is None:
        raise ValueError("tombstone")
    # PostgreSQL text and JSONB refuse NUL: such a record would fail its batch forever, so skip it here.
    if b"\x00" in key or b"\\u0000" in value:
        raise ValueError("NUL character")
    row = orjson.loads(value)
    if not isinstance(row, dict):
        raise ValueError(f"not a JSON object: {type(row).__name__}")
    as_of_of(row)
    return channel, key.decode(), row


class HistoryWriter:
    """Reads tvl/price/yields updates in group ``<app id>-history`` and folds each batch into SQL.

    Offsets are committed only after the batch's upsert succeeded, so a crash re-reads at most one batch,
    and ``record_updates`` skips what the store already holds. The counters are for the ops module.
    """

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.channels = {topic_name(settings, CHANNELS[name].topic): name for name in METRIC}
        self.group_id = f"{settings.app_id}-history"
        self.rows_written = 0
        self.batches = 0
        self.records = 0
        self.skipped = 0
        self.errors = 0
        self.last_error: str | None = None
        # Next offset to read, as this writer last committed it: (topic, partition) -> offset.
        self.committed: dict[tuple[str, int], int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await ensure_topics(self.settings)
        consumer = AIOKafkaConsumer(
            *self.channels,
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.group_id,
            client_id=f"{self.settings.app_id}-history",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Rollups need no low latency: large fetches, so a busy stream costs few fetch round trips.
            fetch_min_bytes=1024 * 1024,
            fetch_max_wait_ms=500,
        )
        await consumer.start()
        self._consumer = consumer
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(consumer), name="history-writer")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            _, pending = await asyncio.wait({self._task}, timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def _failed(self, stage: str, error: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{stage}: {type(error).__name__}: {error}"
        ERRORS.labels(stage).inc()

    async def _pause(self, delay: float) -> None:
        # Sleep, but wake at once when stop() is called.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        backoff = BACKOFF_FIRST_S
        while not self._stopping.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS)
            except Exception as error:  # the loop must outlive any broker trouble
                log.warning("history: reading failed, retrying in %.1fs: %s", backoff, error)
                self._failed("kafka", error)
                await self._pause(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = BACKOFF_FIRST_S
            if batch and await self._write(self._updates(batch)):
                await self._commit(consumer, batch)

    def _updates(self, batch: Batch) -> list[Update]:
        updates: list[Update] = []
        for tp, messages in batch.items():
            channel = self.channels[tp.topic]
            for message in messages:
                try:
                    updates.append(decode(channel, message.key, message.value))
                except ValueError as error:  # orjson.JSONDecodeError is a ValueError too
                    self.skipped += 1
                    RECORDS.labels("skipped").inc()
                    log.warning(
                        "history: skipped %s[%d]@%d: %s", tp.topic, tp.partition, message.offset, error
                    )
        self.records += len(updates)
        RECORDS.labels("accepted").inc(len(updates))
        return updates

    async def _write(self, updates: list[Update]) -> bool:
        """Upsert until it succeeds (True), or until stop() is called (False: nothing is committed)."""
        backoff = BACKOFF_FIRST_S
        while True:
            try:
                rows = await record_updates(self.engine, updates) if updates else 0
            except Exception as error:  # database down, deadlock, ...: retry the batch
                log.warning("history: writing failed, retrying in %.1fs: %s", backoff, error)
                self._failed("database", error)
                if self._stopping.is_set():
                    return False
                await self._pause(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            self.rows_written += rows
            ROWS.inc(rows)
            return True

    async def _commit(self, consumer: AIOKafkaConsumer, batch: Batch) -> None:
        offsets = {tp: messages[-1].offset + 1 for tp, messages in batch.items() if messages}
        try:
            await consumer.commit(offsets)
        except Exception as error:  # a rebalance took the partitions: the new owner re-reads
            log.warning("history: commit failed, the batch will be read again: %s", error)
            self._failed("commit", error)
            return
        self.committed.update({(tp.topic, tp.partition): offset for tp, offset in offsets.items()})
        self.batches += 1
        BATCHES.inc()


HISTORY_WRITER = web.AppKey("history_writer", HistoryWriter)


async def history_writer_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup_ctx: run one writer when ``history_writer`` is set (after the ENGINE context)."""
    settings = app[SETTINGS]
    if not settings.history_writer:
        yield
        return
    writer = HistoryWriter(settings, app[ENGINE])
    await writer.start()
    app[HISTORY_WRITER] = writer
    try:
        yield
    finally:
        await writer.stop()
