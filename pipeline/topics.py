"""Every Kafka topic of the project, declared once: name, key, partitions, retention, compaction.

The specs are plain data so that the worker, the replay tool, the sidecar and the tests agree on them;
``ensure_topics`` creates whatever is missing before any consumer subscribes (the broker's own
auto-creation is off, so a typo in a topic name fails loudly instead of creating a stray topic).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pipeline.settings import Settings

__all__ = [
    "TopicSpec",
    "topic_specs",
    "topic_name",
    "ensure_topics",
    "delete_topics_containing",
    "partition_ids",
    "RAW_SOURCES",
    "DLQ_SOURCES",
]

log = logging.getLogger(__name__)

HOUR_MS = 3600 * 1000
# The raw sources; each has a DLQ topic named ``dlq.<source>``.
RAW_SOURCES = ("tvl", "prices", "yields", "chain")
# Besides them, ``dlq.alerts`` keeps the alert transitions the notifier could not read or store.
DLQ_SOURCES = (*RAW_SOURCES, "alerts")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    doc: str
    compacted: bool = False
    retention_hours: int | None = None
    configs: dict[str, str] = field(default_factory=dict)

    def kafka_configs(self) -> dict[str, str]:
        configs = dict(self.configs)
        if self.compacted:
            configs["cleanup.policy"] = "compact"
            # Keep the latest value per key readable soon after it is superseded.
            configs.setdefault("min.cleanable.dirty.ratio", "0.1")
            configs.setdefault("segment.ms", str(HOUR_MS))
        if self.retention_hours is not None:
            configs["retention.ms"] = str(self.retention_hours * HOUR_MS)
        return configs


def topic_specs(settings: Settings) -> dict[str, TopicSpec]:
    """The project's topics by logical name (the Kafka name is ``topic_name(settings, logical)``)."""
    raw = settings.raw_retention_hours
    specs = [
        TopicSpec(
            "raw.tvl",
            "protocol name, or 'chain|<chain>' for chain-level rows",
            "TVL observations",
            retention_hours=raw,
        ),
        TopicSpec("raw.prices", "coin id", "price observations", retention_hours=raw),
        TopicSpec("raw.yields", "pool id", "yield pool observations", retention_hours=raw),
        TopicSpec("raw.chain", "'<chain>|<address>'", "EVM logs", retention_hours=raw),
        TopicSpec(
            "tvl.updates", "'<kind>|<protocol>|<chain>'", "latest TVL with 1h/1d/7d changes", compacted=True
        ),
        TopicSpec("price.updates", "coin id", "latest price, 5m/1h/24h changes, 1m candle", compacted=True),
        TopicSpec("yields.updates", "pool id", "latest APY/TVL per pool with 1d/7d changes", compacted=True),
        TopicSpec(
            "protocols.meta", "protocol name", "slug, category and chains of each protocol", compacted=True
        ),
        TopicSpec(
            "chain.events",
            "'<chain>|<address>'",
            "decoded Swap/Mint/Burn/Collect/Transfer events",
            retention_hours=raw,
        ),
    ]
    specs += [
        TopicSpec(
            "alerts.rules",
            "rule id",
            "alert rules as the API stores them; a deleted rule is a tombstone",
            compacted=True,
        ),
        TopicSpec(
            "alerts.triggered",
            "rule id",
            "state transitions of alert instances (pipeline/alerting/messages.py AlertTransition)",
            retention_hours=settings.alerts_retention_hours,
        ),
        TopicSpec(
            "alerts.notifications",
            "owner",
            "grouped notifications for the owner's WebSocket connections (AlertNotice)",
            retention_hours=settings.alerts_retention_hours,
        ),
    ]
    specs += [
        TopicSpec(
            f"dlq.{source}",
            "the rejected record's key",
            "rejected records: original bytes, reason and source offset in headers",
            retention_hours=settings.dlq_retention_hours,
        )
        for source in DLQ_SOURCES
    ]
    return {spec.name: spec for spec in specs}


def topic_name(settings: Settings, logical: str) -> str:
    return f"{settings.topic_prefix}{logical}"


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the project's topics that do not exist yet; returns the names it created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, client_id=f"{settings.app_id}-admin"
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                topic_name(settings, spec.name),
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication,
                topic_configs=spec.kafka_configs(),
            )
            for spec in topic_specs(settings).values()
            if topic_name(settings, spec.name) not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                # Another worker or sidecar created them between our listing and our request.
                pass
            log.info("created topics %s", [t.name for t in missing])
        return [t.name for t in missing]
    finally:
        await admin.close()


MIN_MARKER = 6


async def delete_topics_containing(bootstrap: str, markers: Iterable[str]) -> list[str]:
    """Delete every topic whose name contains one of ``markers`` (a run's tag: its prefixed topics and the
    app's own changelog and repartition topics); returns the names. For benchmarks and tests, whose
    topics would otherwise pile up on the broker until it runs out of file descriptors.

    A marker is a whole tag: a lone string is one marker, not its characters, and a marker shorter than
    ``MIN_MARKER`` is refused (``"b"`` would take most of the broker with it). Kafka's internal topics
    (``__consumer_offsets``) are never deleted."""
    wanted = [markers] if isinstance(markers, str) else [marker for marker in markers if marker]
    if any(len(marker) < MIN_MARKER for marker in wanted):
        raise ValueError(f"topic markers must be at least {MIN_MARKER} characters: {wanted!r}")
    if not wanted:
        return []
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="llamastream-cleanup")
    await admin.start()
    try:
        names = sorted(
            n
            for n in await admin.list_topics()
            if not n.startswith("__") and any(marker in n for marker in wanted)
        )
        for start in range(0, len(names), 50):
            await admin.delete_topics(names[start : start + 50])
        return names
    finally:
        await admin.close()


async def partition_ids(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partition ids of a topic, for a consumer that assigns partitions itself (no group). Waits up to
    ~10 s for metadata: the worker or a replay may be creating the topic right now."""
    for _ in range(100):
        ids = consumer.partitions_for_topic(topic)
        if ids:
            return set(ids)
        consumer._client.add_topic(topic)  # noqa: SLF001  (aiokafka has no public "fetch metadata of")
        await consumer._client.force_metadata_update()  # noqa: SLF001
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic!r} does not exist; start the worker (it creates the topics) first")
