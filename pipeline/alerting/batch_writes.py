"""The state writes of a batch of input rows, held back until the batch's transitions are acknowledged.

The evaluator takes rows a batch at a time (agents/evaluate_alerts.py). Each row is evaluated against the
state table *as the earlier rows of the batch left it*: ``BatchWrites`` is the mapping the engine reads,
the table seen through the writes not yet made. Once every transition of the batch is on
``alerts.triggered``, ``apply`` makes the writes in the order the rows made them, each under its own
row's event, because faust sends a table write to the changelog partition of the event being processed.

The order is the one-row-at-a-time order, so the guarantee is unchanged: the changelog never holds a
state whose transition is not on the topic, and a crash part-way through ``apply`` leaves each series
either at a row it fully recorded (its ``s|`` record is written last) or before it, to be evaluated again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

from pipeline.alerting.engine import apply_writes

__all__ = ["BatchWrites"]

E = TypeVar("E")
_DELETED = object()


class BatchWrites(Generic[E]):
    """``as_current(source)`` makes ``source`` the current event while its writes are made."""

    def __init__(
        self,
        table: MutableMapping[str, Any],
        as_current: Callable[[E], AbstractContextManager[object]],
    ) -> None:
        self.table = table
        self.as_current = as_current
        self._pending: list[tuple[E, Mapping[str, Any]]] = []
        self._latest: dict[str, Any] = {}  # key -> newest pending value, _DELETED for a deletion

    # -- the engine's view: the table as the batch has left it so far

    def get(self, key: str, default: Any = None) -> Any:
        value = self._latest.get(key, self)
        if value is self:
            return self.table.get(key, default)
        return default if value is _DELETED else value

    def items(self) -> Iterator[tuple[str, Any]]:
        for key, value in self.table.items():
            if key not in self._latest:
                yield key, value
        for key, value in self._latest.items():
            if value is not _DELETED:
                yield key, value

    # -- the batch

    def add(self, source: E, writes: Mapping[str, Any]) -> None:
        """One row's writes (in order; None deletes), made by ``apply``."""
        if not writes:
            return
        self._pending.append((source, writes))
        for key, value in writes.items():
            self._latest[key] = _DELETED if value is None else value

    def apply(self) -> None:
        """Make every pending write on the table, row by row in order, and start an empty batch."""
        for source, writes in self._pending:
            with self.as_current(source):
                apply_writes(self.table, writes)
        self._pending.clear()
        self._latest.clear()
