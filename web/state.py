"""The sidecar's in-memory read replica of one channel: latest row per key and its Kafka position."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pipeline.channels import Channel
from pipeline.filters import Filter, equality_only, equality_terms
from pipeline.scope_index import INDEXED_FIELDS

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
    # Identity field -> value -> keys of the rows holding it (protocol, chain, ...: web.hub's fields), so
    # a snapshot for ``protocol == "Aave V3"`` reads that protocol's rows, not all of them.
    by_field: dict[str, dict[Hashable, set[str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.channel.is_event_stream:
            self.by_field = {name: {} for name in INDEXED_FIELDS.get(self.channel.name, ())}

    def apply(self, update: Update) -> None:
        self.position[update.partition] = update.offset + 1
        self.version += 1
        if self.channel.is_event_stream:
            kept = self.events.setdefault(update.partition, deque(maxlen=self.events_kept))
            kept.append(update)
            return
        before = self.rows.pop(update.key, None) if update.row is None else self.rows.get(update.key)
        if update.row is not None:
            self.rows[update.key] = update.row
        if self.by_field:
            self._reindex(update.key, before, update.row)

    def set_field(self, key: str, name: str, value: Any) -> None:
        """Changes one field of a held row in place (a protocol recategorised), keeping the index true."""
        row = self.rows.get(key)
        if row is None:
            return
        before = dict(row)
        row[name] = value
        if self.by_field:
            self._reindex(key, before, row)

    def _reindex(self, key: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        for name, by_value in self.by_field.items():
            old, new = _indexable(before, name), _indexable(after, name)
            if old == new:
                continue  # the usual case: a row's identity does not change
            if old is not None and (keys := by_value.get(old)) is not None:
                keys.discard(key)
                if not keys:
                    del by_value[old]
            if new is not None:
                by_value.setdefault(new, set()).add(key)

    def candidate_keys(self, predicate: Filter) -> tuple[list[str], bool] | None:
        """Keys of the rows the filter can match, read from the index, and whether all of them match (the
        filter is nothing but its one indexed term); None when a scan is cheaper: the filter pins no
        indexed string field, or the values it pins hold half the rows or more."""
        if not self.by_field:
            return None
        terms = _terms(predicate.text)
        best: tuple[int, frozenset[Any], dict[Hashable, set[str]]] | None = None
        for name, values in terms.items():
            by_value = self.by_field.get(name)
            if by_value is not None and self.channel.fields.get(name) == "string":
                size = sum(len(by_value.get(value, ())) for value in values)
                if best is None or size < best[0]:
                    best = (size, values, by_value)
        if best is None or best[0] * 2 > len(self.rows):
            return None
        _, values, by_value = best
        # A row holds one value per field, so the values' key sets are disjoint: no key comes twice.
        keys = [key for value in values for key in by_value.get(value, ())]
        return keys, len(terms) == 1 and _only_terms(predicate.text)

    def matching(self, predicate: Filter) -> list[tuple[str, dict[str, Any]]]:
        """(key, row) of every current row the filter matches."""
        test, found = predicate.predicate, self.candidate_keys(predicate)
        if found is None:
            return [(key, row) for key, row in self.items() if test(row)]
        keys, all_match = found
        rows = self.rows
        if all_match:
            return [(key, rows[key]) for key in keys]
        return [(key, row) for key in keys if test(row := rows[key])]

    def matching_rows(self, predicate: Filter) -> list[dict[str, Any]]:
        """``matching`` without the keys (queries need only rows, and this runs on every request)."""
        test, found = predicate.predicate, self.candidate_keys(predicate)
        if found is None:
            return [row for row in self.current() if test(row)]
        keys, all_match = found
        rows = self.rows
        if all_match:
            return [rows[key] for key in keys]
        return [row for key in keys if test(row := rows[key])]

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


def _indexable(row: dict[str, Any] | None, name: str) -> Hashable | None:
    value = row.get(name) if row is not None else None
    return value if isinstance(value, (str, int, float, bool)) else None


# Parsed once per distinct filter text: clients and dashboards repeat a few filters many times.
@lru_cache(maxsize=4096)
def _terms(text: str) -> dict[str, frozenset[Any]]:
    return equality_terms(text)


@lru_cache(maxsize=4096)
def _only_terms(text: str) -> bool:
    return equality_only(text)
