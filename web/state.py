"""The sidecar's in-memory read replica of one channel: latest row per key and its Kafka position."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.channels import Channel

__all__ = ["Update", "ChannelState", "Position"]

# Next offset to read per partition: the instance-independent place a client resumes from.
Position = dict[int, int]


@dataclass(frozen=True, slots=True)
class Update:
    """One message of a derived topic as the sidecar saw it."""

    channel: str
    key: str
    row: dict[str, Any] | None  # None: a tombstone (the key was deleted)
    partition: int
    offset: int
    timestamp_ms: int  # Kafka message timestamp (when the worker published it)


@dataclass
class ChannelState:
    """Latest row per key (or, for event streams, the most recent rows) and the position reached."""

    channel: Channel
    events_kept: int = 2000
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[int, deque[Update]] = field(default_factory=dict)
    position: Position = field(default_factory=dict)
    # Bumped on every applied update: caches of aggregations over this channel key on it.
    version: int = 0

    def apply(self, update: Update) -> None:
        self.position[update.partition] = update.offset + 1
        self.version += 1
        if self.channel.is_event_stream:
            kept = self.events.setdefault(update.partition, deque(maxlen=self.events_kept))
            kept.append(update)
        elif update.row is None:
            self.rows.pop(update.key, None)
        else:
            self.rows[update.key] = update.row

    def current(self) -> Iterator[dict[str, Any]]:
        """Every current row (latest per key; recent events for event streams)."""
        if self.channel.is_event_stream:
            for kept in self.events.values():
                for update in kept:
                    if update.row is not None:
                        yield update.row
        else:
            yield from self.rows.values()

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(key, row) of every current row, as ``current`` orders them."""
        if self.channel.is_event_stream:
            for kept in self.events.values():
                for update in kept:
                    if update.row is not None:
                        yield update.key, update.row
        else:
            yield from self.rows.items()

    def get(self, key: str) -> dict[str, Any] | None:
        return self.rows.get(key)

    def __len__(self) -> int:
        if self.channel.is_event_stream:
            return sum(len(kept) for kept in self.events.values())
        return len(self.rows)
