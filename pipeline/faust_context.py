"""Make an event faust's *current event* for a while, outside the stream's own iteration.

faust decides where a table write goes from the current event: its changelog partition, and with the
RocksDB store the partition's database. An agent that processes a batch (``take_events``) writes after
iteration has moved on, so it names each write's event itself. faust exposes no public setter; this sets
the context variable that faust's own ``Stream`` sets and ``faust.streams.current_event()`` reads (checked
by tests/unit/pipeline/test_batch_writes.py against the installed faust), and restores it afterwards.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from faust import streams
from faust.types import EventT

__all__ = ["as_current_event"]


@contextmanager
def as_current_event(event: EventT[bytes]) -> Iterator[EventT[bytes]]:
    token = streams._current_event.set(weakref.ref(event))
    try:
        yield event
    finally:
        streams._current_event.reset(token)
