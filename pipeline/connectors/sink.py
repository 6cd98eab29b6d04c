"""The thin interface connectors write through: a Kafka producer addressed by logical topic name."""

from __future__ import annotations

from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaProducer

from pipeline.settings import Settings
from pipeline.topics import topic_name

__all__ = ["RecordSink", "KafkaSink"]


class RecordSink(Protocol):
    async def send(self, topic: str, key: str, value: dict[str, Any] | bytes) -> None: ...

    async def flush(self) -> None: ...


class KafkaSink:
    """Batches records into Kafka; ``send`` returns once the record is buffered, ``flush`` once acked."""

    def __init__(self, settings: Settings, *, linger_ms: int = 5) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            linger_ms=linger_ms,
            max_batch_size=256 * 1024,
            acks="all",
            enable_idempotence=True,
        )
        self.sent = 0

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.flush()
        await self._producer.stop()

    async def __aenter__(self) -> KafkaSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def send(self, topic: str, key: str, value: dict[str, Any] | bytes) -> None:
        payload = value if isinstance(value, bytes) else orjson.dumps(value)
        await self._producer.send(topic_name(self._settings, topic), payload, key=key.encode())
        self.sent += 1

    async def flush(self) -> None:
        await self._producer.flush()
