"""Resuming a subscription: read the topic from the client's position up to the live stream, then join it."""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.channels import CHANNELS
from web import metrics
from web.connection import Subscription
from web.hub import deliver, update_message
from web.position import encode_position
from web.replica import Replica, decode_update
from web.state import Position

__all__ = ["catch_up"]

log = logging.getLogger(__name__)


async def catch_up(replica: Replica, sub: Subscription, start: Position, slots: asyncio.Semaphore) -> None:
    """Delivers every matching update after ``start`` that the feed has already passed, then goes live.

    The hub holds the subscription in ``catching_up`` mode from the moment it was registered, buffering
    live updates; they are delivered after the read-back, minus any offset already given. So the
    client sees each update once, in partition order, with no gap between history and live.
    """
    state = replica.view(sub.channel, sub.delayed)
    until = dict(state.position)
    partitions = sorted(set(until) | set(start))
    sub.next = {p: start.get(p, 0) for p in partitions}
    behind = {p for p in partitions if sub.next[p] < until.get(p, 0)}
    if behind:
        metrics.CATCH_UPS.inc()
        async with slots:
            expired = await _read_back(replica, sub, behind, until)
        if expired:
            _expired(sub, expired)
            return
    if sub.mode == "suspended":
        return
    sub.mode = "live"
    pending, sub.pending = sub.pending, []
    for update, pos in pending:
        if update.row is not None:
            deliver(sub, update, orjson.dumps(update.key), orjson.dumps(update.row), pos)


async def _read_back(replica: Replica, sub: Subscription, behind: set[int], until: Position) -> list[int]:
    """Reads partitions ``behind`` up to ``until``; returns the partitions whose start has expired."""
    channel = CHANNELS[sub.channel]
    topic = replica.topic_of(sub.channel)
    settings = replica.settings
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.app_id}-sidecar-resume",
        group_id=None,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        tps = {p: TopicPartition(topic, p) for p in behind}
        consumer.assign(list(tps.values()))
        firsts = await consumer.beginning_offsets(list(tps.values()))
        # A compacted topic keeps the latest value of every key, so reading from its start loses nothing
        # a client needs; an event stream that has deleted the position has a real gap.
        expired = [p for p in behind if sub.next[p] < firsts[tps[p]] and channel.is_event_stream]
        if expired:
            return expired
        for p, tp in tps.items():
            consumer.seek(tp, max(sub.next[p], firsts[tp]))
        vector = dict(sub.next)
        remaining = set(behind)
        while remaining and sub.mode != "suspended":
            await sub.conn.wait_writable()
            batches = await consumer.getmany(timeout_ms=500, max_records=sub.conn.max_queue // 4 or 1)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= until[tp.partition]:
                        break
                    vector[tp.partition] = sub.next[tp.partition] = record.offset + 1
                    update = decode_update(channel, record)
                    if update is None or update.row is None:
                        continue
                    replica.enrich(update.row)
                    if sub.filter(update.row):
                        pos = encode_position(vector)
                        data = update_message(sub, orjson.dumps(update.key), orjson.dumps(update.row), pos)
                        sub.conn.offer(sub, pos, data)
            for p in list(remaining):
                if await consumer.position(tps[p]) >= until[p]:
                    vector[p] = sub.next[p] = max(sub.next[p], until[p])
                    remaining.discard(p)
        return []
    finally:
        await consumer.stop()


def _expired(sub: Subscription, partitions: list[int]) -> None:
    sub.mode = "suspended"
    sub.pending.clear()
    metrics.RESYNCS.inc()
    sub.conn.send(
        {
            "type": "resync_required",
            "sub": sub.id,
            "channel": sub.channel,
            "reason": "position_expired",
            "resume": None,
            "message": f"partitions {partitions} no longer hold your position (past the topic's retention);"
            " subscribe again with a snapshot",
        }
    )
