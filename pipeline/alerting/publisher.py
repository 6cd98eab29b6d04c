"""Send transitions to ``alerts.triggered`` and wait for the broker's acknowledgement.

The evaluator writes an instance's new state only after its transition is acknowledged, so the state
table never records a change whose transition could still be lost. Its own producer, without the app's
linger, keeps that wait to one broker round trip; idempotence keeps a retried batch from repeating.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.alerting.messages import AlertTransition
from pipeline.settings import Settings
from pipeline.topics import topic_name

__all__ = ["TransitionPublisher"]

log = logging.getLogger(__name__)

MAX_RETRY_DELAY_S = 30.0


class TransitionPublisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = topic_name(settings, "alerts.triggered")
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=f"{self.settings.app_id}-alert-transitions",
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
        )
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, transitions: list[AlertTransition]) -> None:
        """Send every transition (key: the rule id) and return once all are acknowledged.

        A failure (the broker unreachable past the producer's own retries) is retried here, with backoff,
        for as long as it takes: the row is not finished, so the stream waits rather than lose a change.
        Consumers deduplicate a resent transition by (fingerprint, source)."""
        delay = 0.5
        while True:
            try:
                await self._send(transitions)
                return
            except KafkaError as err:
                log.error(
                    "alerts.triggered: %d transitions not acknowledged (%s); retrying in %.1fs",
                    len(transitions),
                    err,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY_S)

    async def _send(self, transitions: list[AlertTransition]) -> None:
        producer = self._producer
        if producer is None:
            raise RuntimeError("the transition publisher is not started")
        pending = [
            await producer.send(self.topic, orjson.dumps(t), key=t["rule_id"].encode()) for t in transitions
        ]
        await asyncio.gather(*pending)
