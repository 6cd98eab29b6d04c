"""Accept a raw record or send it, untouched, to ``dlq.<source>`` with the reason and where it came from."""

from __future__ import annotations

import logging
from typing import TypeVar

from faust.types import EventT
from pydantic import BaseModel

from pipeline.app import settings, topic
from pipeline.metrics import RECORDS
from pipeline.validation import Rejected, parse_record

__all__ = ["accept", "reject"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


async def reject(event: EventT[bytes], source: str, reason: str) -> None:
    """Dead-letter the record: the value stays the original bytes; the context travels in headers
    (the Kafka Connect convention), so a fixed record can be replayed to the raw topic as it is."""
    message = event.message
    headers = {
        "dlq.reason": reason.encode(),
        "dlq.source.topic": message.topic.encode(),
        "dlq.source.partition": str(message.partition).encode(),
        "dlq.source.offset": str(message.offset).encode(),
    }
    await topic(f"dlq.{source}").send(key=message.key, value=message.value, headers=headers)
    RECORDS.labels(source, "rejected").inc()
    log.debug("rejected %s@%s:%s: %s", message.topic, message.partition, message.offset, reason)


async def accept(event: EventT[bytes], model: type[M], source: str, *, count: bool = True) -> M | None:
    """The validated record, or None once it has been dead-lettered.

    ``count=False`` leaves counting it accepted to the caller, for agents that may still reject it.
    """
    record = parse_record(event.message.value, model, settings.max_record_bytes)
    if isinstance(record, Rejected):
        await reject(event, source, record.reason)
        return None
    if count:
        RECORDS.labels(source, "accepted").inc()
    return record
