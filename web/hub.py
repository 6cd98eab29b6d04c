"""The hub: which subscriptions want which updates, and the fan-out from the replica to connections."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from web.connection import Connection, Subscription
from web.position import encode_position
from web.replica import Replica
from web.state import Update

__all__ = ["Hub", "update_message", "snapshot_messages"]

SNAPSHOT_CHUNK = 500


def update_message(sub: Subscription, key_json: bytes, row_json: bytes, pos: str) -> bytes:
    """The ``update`` message, assembled from parts serialised once per update, not once per client."""
    return b"".join(
        (
            b'{"type":"update","sub":"',
            sub.id.encode(),
            b'","channel":"',
            sub.channel.encode(),
            b'","key":',
            key_json,
            b',"pos":"',
            pos.encode(),
            b'","data":',
            row_json,
            b"}",
        )
    )


def snapshot_messages(sub: Subscription, items: list[tuple[str, dict[str, Any]]], pos: str) -> list[bytes]:
    """The snapshot in chunks (bounded message size); the last chunk says so."""
    chunks = [items[i : i + SNAPSHOT_CHUNK] for i in range(0, len(items), SNAPSHOT_CHUNK)] or [[]]
    return [
        orjson.dumps(
            {
                "type": "snapshot",
                "sub": sub.id,
                "channel": sub.channel,
                "pos": pos,
                "items": [{"key": k, "data": row} for k, row in chunk],
                "last": n == len(chunks) - 1,
            }
        )
        for n, chunk in enumerate(chunks)
    ]


@dataclass(eq=False)
class _FilterGroup:
    """Subscriptions sharing one filter text: the predicate runs once per update for all of them."""

    subs: set[Subscription] = field(default_factory=set)


class Hub:
    """Local connections and their subscriptions, fed synchronously by the replica's listener."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.connections: dict[str, Connection] = {}
        # (channel, delayed) -> filter text -> group
        self._groups: dict[tuple[str, bool], dict[str, _FilterGroup]] = defaultdict(dict)
        self.throttled: set[Subscription] = set()
        replica.listeners.append(self.on_update)

    def add(self, sub: Subscription) -> None:
        groups = self._groups[(sub.channel, sub.delayed)]
        groups.setdefault(sub.filter.text, _FilterGroup()).subs.add(sub)
        if sub.throttle_ms:
            self.throttled.add(sub)

    def remove(self, sub: Subscription) -> None:
        self.throttled.discard(sub)
        groups = self._groups.get((sub.channel, sub.delayed), {})
        group = groups.get(sub.filter.text)
        if group is not None:
            group.subs.discard(sub)
            if not group.subs:
                del groups[sub.filter.text]

    def on_update(self, update: Update, delayed: bool) -> None:
        groups = self._groups.get((update.channel, delayed))
        row = update.row
        if not groups or row is None:
            return
        key_json = row_json = b""
        pos = ""
        for group in groups.values():
            members = group.subs
            if not members:
                continue
            first = next(iter(members))
            if not first.filter(row):
                continue
            if not pos:
                pos = encode_position(self.replica.view(update.channel, delayed).position)
                key_json, row_json = orjson.dumps(update.key), orjson.dumps(row)
            for sub in members:
                deliver(sub, update, key_json, row_json, pos)

    def flush_throttled(self) -> None:
        """Sends what throttled subscriptions conflated since their last flush, when it is due."""
        now = time.monotonic()
        for sub in self.throttled:
            if sub.conflated and now - sub.last_flush >= sub.throttle_ms / 1000:
                sub.last_flush = now
                conflated, sub.conflated = sub.conflated, {}
                for data, pos in conflated.values():
                    sub.conn.offer(sub, pos, data)


def deliver(sub: Subscription, update: Update, key_json: bytes, row_json: bytes, pos: str) -> None:
    """Hands one matching update to a subscription, honouring its mode, dedupe position and throttle."""
    if sub.mode == "suspended":
        return
    if sub.mode == "catching_up":
        if len(sub.pending) >= sub.conn.max_queue:
            sub.conn.fall_behind()
            return
        sub.pending.append((update, pos))
        return
    if update.offset < sub.next.get(update.partition, 0):
        return  # already given during catch-up or by the snapshot
    sub.next[update.partition] = update.offset + 1
    data = update_message(sub, key_json, row_json, pos)
    if sub.throttle_ms:
        sub.conflated.pop(update.key, None)  # re-insert: the flush keeps arrival order
        sub.conflated[update.key] = (data, pos)
        return
    sub.conn.offer(sub, pos, data)
