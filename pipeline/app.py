"""The faust App: ``faust -A pipeline.app worker`` runs every agent found in ``agents/`` and ``tables/``."""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.transport.producer import ProducerBuffer
from faust.types import TableT
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.settings import Settings, get_settings
from pipeline.topics import ensure_topics, topic_name, topic_specs

__all__ = ["app", "settings", "topic", "table"]


# faust queues table changelog writes in a buffer of 100 messages; past that, every stream waits while
# the buffer drains one message per asyncio.wait_for, which capped a worker at ~1,500 events/s
# (bench/README.md). A deeper buffer keeps the flow; commits still flush it before offsets move.
ProducerBuffer.max_messages = 20_000


class LlamaApp(faust.App):
    async def on_first_start(self) -> None:
        await super().on_first_start()
        _quiet_root_logger()
        # Before any consumer subscribes: faust only declares its own internal topics, and a topic
        # the broker auto-creates later gets the wrong partition count and no compaction.
        await ensure_topics(settings)


def _quiet_root_logger() -> None:
    """mode leaves the root logger at DEBUG and filters in its handlers, so every library debug call
    still builds a LogRecord (a tenth of a worker's CPU in profiles); raise it to the handlers' level."""
    root = logging.getLogger()
    levels = [handler.level for handler in root.handlers if handler.level]
    root.setLevel(min(levels) if levels else logging.INFO)


settings: Settings = get_settings()

app = LlamaApp(
    settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
    store=settings.table_store,
    autodiscover=["agents", "tables"],
    origin="pipeline",
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.topic_replication,
    topic_allow_declare=True,
    # One group leader topic per app is enough; we have no leader-only timers yet.
    topic_disable_leader=True,
    broker_commit_interval=settings.commit_interval_s,
    broker_session_timeout=settings.session_timeout_s,
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    # Batch what agents and table changelogs send: without linger each record became its own request.
    producer_linger=0.005,
    producer_max_batch_size=256 * 1024,
    web_enabled=settings.worker_web_enabled,
    web_port=settings.worker_web_port,
    web_bind=settings.worker_web_host,
    table_standby_replicas=0 if settings.topic_partitions == 1 else 1,
)

_topics: dict[str, faust.TopicT] = {}


def topic(logical: str) -> faust.TopicT:
    """The faust topic for a logical name in pipeline.topics (values are raw bytes: we validate them)."""
    if logical not in _topics:
        assert logical in topic_specs(settings), f"undeclared topic {logical!r}: add it to pipeline/topics.py"
        _topics[logical] = app.topic(
            topic_name(settings, logical), key_serializer="raw", value_serializer="raw"
        )
    return _topics[logical]


def table(name: str, **options: Any) -> TableT[str, Any]:
    """A changelog-backed table co-partitioned with the raw topics (its name is its changelog topic)."""
    return app.Table(name, key_type=str, partitions=settings.topic_partitions, **options)


@app.page("/metrics")
class Metrics(View):
    async def get(self, request: Request) -> Response:
        # aiohttp refuses a charset inside content_type; the exposition format is UTF-8 anyway.
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split("; charset")[0])
