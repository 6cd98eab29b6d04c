"""Entries (alert rules, WebSocket filter groups) indexed by the identity fields their filter pins, so a row
only meets the entries that can match it.

A rule whose scope requires ``field == value`` or ``field in (...)`` on identity fields (protocol, chain,
kind, category; coin, symbol; pool, project, chain) is filed under the combination of all of them: a rule
on ``kind == "chain" and chain == "Ethereum"`` under (chain, kind) = ("Ethereum", "chain"), so the
protocol rows of Ethereum never meet it. A rule pinning none goes to the channel's scan list. A row then
costs one dictionary lookup per combination of fields in use (a handful), plus the rules found and the
scan list: rules about other protocols, chains or coins do not enter. Candidates still run their full
compiled scope.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pipeline.filters import equality_terms

__all__ = ["INDEXED_FIELDS", "ScopeIndex", "MAX_KEYS_PER_RULE"]

# Per channel, most selective first: when the combinations of a rule's values are too many, the least
# selective fields are dropped from its key.
INDEXED_FIELDS: dict[str, tuple[str, ...]] = {
    "tvl": ("protocol", "chain", "category", "kind"),
    "prices": ("coin", "symbol"),
    "yields": ("pool", "project", "chain"),
}
MAX_KEYS_PER_RULE = 256

T = TypeVar("T")
Shape = tuple[str, ...]


@dataclass
class ScopeIndex(Generic[T]):
    """Entries (any value, typically a compiled rule) of one channel by id."""

    fields: tuple[str, ...]
    # shape (the fields a key is made of) -> key (their values) -> id -> entry
    shapes: dict[Shape, dict[tuple[Hashable, ...], dict[str, T]]] = field(default_factory=dict)
    scan: dict[str, T] = field(default_factory=dict)
    _placed: dict[str, tuple[Shape, list[tuple[Hashable, ...]]] | None] = field(default_factory=dict)
    _entries: dict[str, T] = field(default_factory=dict)

    def get(self, entry_id: str) -> T | None:
        return self._entries.get(entry_id)

    def add(self, entry_id: str, scope: str | None, entry: T) -> None:
        self.remove(entry_id)
        self._entries[entry_id] = entry
        terms = equality_terms(scope)
        shape = tuple(name for name in self.fields if name in terms)
        while len(shape) > 1 and _combinations(terms, shape) > MAX_KEYS_PER_RULE:
            shape = shape[:-1]
        if not shape or _combinations(terms, shape) > MAX_KEYS_PER_RULE:
            self.scan[entry_id] = entry
            self._placed[entry_id] = None
            return
        keys = list(itertools.product(*(sorted(terms[name], key=repr) for name in shape)))
        by_key = self.shapes.setdefault(shape, {})
        for key in keys:
            by_key.setdefault(key, {})[entry_id] = entry
        self._placed[entry_id] = (shape, keys)

    def remove(self, entry_id: str) -> None:
        if entry_id not in self._placed:
            return
        placed = self._placed.pop(entry_id)
        del self._entries[entry_id]
        if placed is None:
            self.scan.pop(entry_id, None)
            return
        shape, keys = placed
        by_key = self.shapes[shape]
        for key in keys:
            bucket = by_key.get(key)
            if bucket is not None:
                bucket.pop(entry_id, None)
                if not bucket:
                    del by_key[key]
        if not by_key:
            del self.shapes[shape]

    def candidates(self, row: Mapping[str, Any]) -> list[T]:
        """Every entry whose scope may match ``row``; each at most once (it is filed under one shape)."""
        found: list[T] = []
        for shape, by_key in self.shapes.items():
            key = tuple(row.get(name) for name in shape)
            try:
                bucket = by_key.get(key)
            except TypeError:  # an unhashable value (a list where a string belongs) matches no literal
                continue
            if bucket:
                found.extend(bucket.values())
        if self.scan:
            found.extend(self.scan.values())
        return found

    def __len__(self) -> int:
        return len(self._placed)


def _combinations(terms: Mapping[str, frozenset[Any]], shape: Shape) -> int:
    count = 1
    for name in shape:
        count *= len(terms[name])
    return count
