"""The sidecar's read replica: every partition of the derived topics, no consumer group, in memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from pipeline.channels import CHANNELS, Channel
from pipeline.settings import Settings
from pipeline.topics import ensure_topics, partition_ids, topic_name
from web.delay_line import DelayLine
from web.state import ChannelState, Update

__all__ = ["Replica", "Listener", "decode_update"]

log = logging.getLogger(__name__)

# Called for every update applied to a view: (update, delayed view?). Must not block: it runs in the
# replica's read loop, so a listener that awaited would hold back every client.
Listener = Callable[[Update, bool], None]

META_TOPIC = "protocols.meta"
YIELD_EVERY = 50
# Batching of the replica's fetches: at most this much latency is added (a fifth of the 100 ms budget).
FETCH_MAX_WAIT_MS = 5
FETCH_MIN_BYTES = 256 * 1024


# A record as the delay line holds it: (channel, key, value, partition, offset, timestamp ms).
RawRecord = tuple[str, bytes | None, bytes | None, int, int, int]


def decode_update(channel: Channel, record: ConsumerRecord[bytes, bytes]) -> Update | None:
    """The update a derived-topic record carries, or None for a tombstone or an unreadable value."""
    return _decode(channel.name, record.key, record.value, record.partition, record.offset, record.timestamp)


def _decode(
    channel: str, key: bytes | None, value: bytes | None, partition: int, offset: int, timestamp_ms: int
) -> Update:
    try:
        row = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        row = None
    if row is not None and not isinstance(row, dict):
        row = None
    text_key = key.decode("utf-8", "replace") if key is not None else ""
    return Update(channel, text_key, row, partition, offset, timestamp_ms)


class Replica:
    """Live and delayed (free tier) views of every channel, plus protocol metadata.

    - ``view(channel, delayed)``: rows of a channel, live or as the free tier sees them;
    - ``protocols``: protocol name -> {"name", "slug", "category", "chains", "symbol", "url"};
    - ``caught_up``: True once the replica has read up to the end offsets it saw at start.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        kept = settings.chain_events_kept
        self.live = {name: ChannelState(c, kept) for name, c in CHANNELS.items()}
        self.delayed = {name: ChannelState(c, kept) for name, c in CHANNELS.items()}
        self.protocols: dict[str, dict[str, Any]] = {}
        self.caught_up = False
        self.listeners: list[Listener] = []
        self.delay_line: DelayLine[RawRecord] = DelayLine(settings.free_tier_delay_s, self._apply_delayed)
        self.end_offsets: dict[TopicPartition, int] = {}
        self.skipped = 0
        self._meta_positions: dict[int, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._channels_by_topic = {topic_name(settings, c.topic): c for c in CHANNELS.values()}
        self._meta_topic = topic_name(settings, META_TOPIC)

    def view(self, channel: str, delayed: bool) -> ChannelState:
        return (self.delayed if delayed else self.live)[channel]

    def partitions(self, channel: str) -> int:
        """How many partitions the channel's topic has (resume tokens name at most these)."""
        if self._consumer is None:
            return self.settings.topic_partitions
        topic = self.topic_of(channel)
        return len(self._consumer.partitions_for_topic(topic) or ()) or self.settings.topic_partitions

    def topic_of(self, channel: str) -> str:
        return topic_name(self.settings, CHANNELS[channel].topic)

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=f"{self.settings.app_id}-sidecar",
            group_id=None,  # every sidecar reads every partition; nothing is committed
            enable_auto_commit=False,
            key_deserializer=None,
            value_deserializer=None,
            fetch_max_bytes=16 * 1024 * 1024,
            # The broker answers a fetch once it holds this much or after this wait. With the defaults
            # (1 byte) a busy stream came back a message or two per fetch, and encoding and decoding
            # fetches over every partition took most of the sidecar's CPU (py-spy, 1,000 updates/s).
            fetch_min_bytes=FETCH_MIN_BYTES,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )
        await ensure_topics(self.settings)
        await consumer.start()
        self._consumer = consumer
        await self._load_meta(consumer)
        partitions = await self._assign(consumer)
        self.end_offsets = await consumer.end_offsets(partitions)
        self.caught_up = self._reached_end()
        self.delay_line.start()
        self._task = asyncio.create_task(self._read(consumer), name="replica-read")

    async def _load_meta(self, consumer: AIOKafkaConsumer) -> None:
        """Reads protocol metadata to its end first, so TVL rows are joined with it as they arrive."""
        ids = await partition_ids(consumer, self._meta_topic)
        partitions = [TopicPartition(self._meta_topic, p) for p in ids]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while any(self._meta_positions.get(tp.partition, 0) < end for tp, end in ends.items()):
            for tp, records in (await consumer.getmany(timeout_ms=200, max_records=5000)).items():
                for record in records:
                    self._handle(tp, record)

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        partitions: list[TopicPartition] = []
        for topic in self._channels_by_topic:
            ids = await partition_ids(consumer, topic)
            partitions += [TopicPartition(topic, p) for p in ids]
        meta = [TopicPartition(self._meta_topic, p) for p in await partition_ids(consumer, self._meta_topic)]
        consumer.assign(partitions + meta)
        await consumer.seek_to_beginning(*partitions)
        for tp in meta:
            consumer.seek(tp, self._meta_positions.get(tp.partition, 0))
        partitions += meta
        # Every partition has a position from the start, so resume tokens always name them all.
        for tp in partitions:
            channel = self._channels_by_topic.get(tp.topic)
            if channel is not None:
                start = await consumer.position(tp)
                for states in (self.live, self.delayed):
                    states[channel.name].position.setdefault(tp.partition, start)
        kept = self.settings.chain_events_kept
        events_topic = self.topic_of("chain")
        event_partitions = [tp for tp in partitions if tp.topic == events_topic]
        # chain.events is a stream, not state: only its most recent events are worth holding.
        if event_partitions:
            ends = await consumer.end_offsets(event_partitions)
            starts = await consumer.beginning_offsets(event_partitions)
            for tp in event_partitions:
                consumer.seek(tp, max(starts[tp], ends[tp] - kept))
        return partitions

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.delay_line.stop()
        if self._consumer is not None:
            await self._consumer.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def lag(self) -> int:
        """Messages between what this replica has read and the partitions' ends (as last fetched)."""
        consumer = self._consumer
        if consumer is None:
            return 0
        total = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            position = self._position_of(tp)
            total += max(0, high - position)
        return total

    def _position_of(self, tp: TopicPartition) -> int:
        if tp.topic == self._meta_topic:
            return self._meta_positions.get(tp.partition, 0)
        channel = self._channels_by_topic[tp.topic]
        return self.live[channel.name].position.get(tp.partition, 0)

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            # Two turns of the loop let aiokafka's fetcher send the next fetch (it builds the request on
            # one turn, its send task writes it on the next) before this batch is fanned out, so the
            # broker's wait (FETCH_MAX_WAIT_MS) runs alongside the fan-out instead of after it.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            for tp, records in batches.items():
                for n, record in enumerate(records, 1):
                    self._handle(tp, record)
                    if n % YIELD_EVERY == 0:
                        # Let the writers drain between slices, so a burst is not queued whole.
                        await asyncio.sleep(0)
            if not self.caught_up and self._reached_end():
                self.caught_up = True
                log.info("replica caught up: %d rows", sum(len(s) for s in self.live.values()))
            # Yield even on a full batch so clients' writers and the web server get the loop.
            await asyncio.sleep(0)

    def _handle(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        if tp.topic == self._meta_topic:
            self._meta_positions[tp.partition] = record.offset + 1
            self._apply_meta(record)
            return
        channel = self._channels_by_topic[tp.topic]
        update = decode_update(channel, record)
        if update is None:
            self.skipped += 1
            return
        if update.row is not None:
            self.enrich(update.row)
        self.live[channel.name].apply(update)
        for listener in self.listeners:
            listener(update, False)
        raw = (channel.name, record.key, record.value, record.partition, record.offset, record.timestamp)
        self.delay_line.push(record.timestamp, raw)

    def _apply_delayed(self, raw: RawRecord) -> None:
        # Decoded (and joined with the protocol's category) again, when due: see web/delay_line.py.
        update = _decode(*raw)
        if update.row is not None:
            self.enrich(update.row)
        self.delayed[update.channel].apply(update)
        for listener in self.listeners:
            listener(update, True)

    def _apply_meta(self, record: ConsumerRecord[bytes, bytes]) -> None:
        name = record.key.decode() if record.key is not None else ""
        if record.value is None:
            self.protocols.pop(name, None)
            return
        try:
            meta = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            self.skipped += 1
            return
        if not isinstance(meta, dict):
            return
        previous = self.protocols.get(name)
        self.protocols[name] = meta
        if self.caught_up and (previous or {}).get("category") != meta.get("category"):
            # Rare (a protocol recategorised): patch the rows already joined with the old category.
            for states in (self.live, self.delayed):
                tvl = states["tvl"]
                for key in [k for k, row in tvl.rows.items() if row.get("protocol") == name]:
                    tvl.set_field(key, "category", meta.get("category"))

    def enrich(self, row: dict[str, Any]) -> None:
        """Joins what the sidecar knows about a TVL row's protocol (its category) into the row."""
        if "kind" in row and "category" not in row:
            meta = self.protocols.get(row.get("protocol") or "")
            row["category"] = meta.get("category") if meta else None

    def _reached_end(self) -> bool:
        return all(self._position_of(tp) >= end for tp, end in self.end_offsets.items())
