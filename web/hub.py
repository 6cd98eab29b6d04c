"""The hub: which subscriptions want which updates, and the fan-out from the replica to connections."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.filters import Filter
from pipeline.scope_index import INDEXED_FIELDS, ScopeIndex
from web.connection import Connection, Subscription
from web.position import encode_position
from web.replica import Replica
from web.state import Update

__all__ = ["Hub", "update_message", "snapshot_messages"]

SNAPSHOT_CHUNK = 500


def update_message(sub: Subscription, key_json: bytes, row_json: bytes, pos: str) -> bytes:
    """The ``update`` message, assembled from parts serialised once per update, not once per client."""
    return b"".join((sub.update_prefix, key_json, b',"pos":"', pos.encode(), b'","data":', row_json, b"}"))


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

    filter: Filter
    subs: set[Subscription] = field(default_factory=set)


class Hub:
    """Local connections and their subscriptions, fed synchronously by the replica's listener.

    Filter groups are indexed by the identity fields their filter pins (``protocol == "Aave V3"``), as
    alert rules are: an update runs the predicates of the groups that can match it, not of every group.
    """

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.connections: dict[str, Connection] = {}
        # (channel, delayed) -> filter groups by filter text, indexed
        self._groups: dict[tuple[str, bool], ScopeIndex[_FilterGroup]] = {}
        self.throttled: set[Subscription] = set()
        replica.listeners.append(self.on_update)

    def add(self, sub: Subscription) -> None:
        index = self._groups.get((sub.channel, sub.delayed))
        if index is None:
            index = self._groups[(sub.channel, sub.delayed)] = ScopeIndex(INDEXED_FIELDS.get(sub.channel, ()))
        group = index.get(sub.filter.text)
        if group is None:
            group = _FilterGroup(sub.filter)
            index.add(sub.filter.text, sub.filter.text or None, group)
        group.subs.add(sub)
        if sub.throttle_ms:
            self.throttled.add(sub)

    def remove(self, sub: Subscription) -> None:
        self.throttled.discard(sub)
        index = self._groups.get((sub.channel, sub.delayed))
        group = index.get(sub.filter.text) if index is not None else None
        if index is not None and group is not None:
            group.subs.discard(sub)
            if not group.subs:
                index.remove(sub.filter.text)

    def on_update(self, update: Update, delayed: bool) -> None:
        index = self._groups.get((update.channel, delayed))
        row = update.row
        if index is None or row is None:
            return
        key_json = row_json = b""
        pos = ""
        for group in index.candidates(row):
            if not group.filter(row):
                continue
            if not pos:
                pos = encode_position(self.replica.view(update.channel, delayed).position)
                key_json, row_json = orjson.dumps(update.key), orjson.dumps(row)
            for sub in group.subs:
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
