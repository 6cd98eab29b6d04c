"""Agent: tvl.updates, price.updates, yields.updates -> alert rules evaluated per row -> alerts.triggered."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import faust
import orjson
from faust.types import TP
from mode import Service
from mode.types.signals import BaseSignalT
from prometheus_client import Counter

from pipeline.alerting.engine import Engine, apply_writes
from pipeline.alerting.origin import raw_partition
from pipeline.alerting.publisher import TransitionPublisher
from pipeline.alerting.rule_book import RuleBook
from pipeline.alerting.rule_reader import RuleFeed
from pipeline.alerting.rules import ALERT_CHANNELS
from pipeline.alerting.transition import Position
from pipeline.app import app, settings
from pipeline.channels import CHANNELS
from pipeline.topics import topic_name
from tables.alerts import alert_state

__all__ = ["evaluate_alerts", "RuleFeedService"]

log = logging.getLogger(__name__)

ROWS = Counter(
    "llamastream_alert_evaluator_rows_total",
    "Derived rows read by the alert evaluator, by channel and outcome (evaluated, redelivered, late, ...)",
    ["channel", "outcome"],
)
# (llamastream_alert_transitions_total counts what the notifier reads from alerts.triggered.)
STATE_CHANGES = Counter(
    "llamastream_alert_state_changes_total",
    "Alert instance state changes sent to alerts.triggered",
    ["state"],
)

book = RuleBook()
feed = RuleFeed(settings, book)
engine = Engine(book, partial(raw_partition, partitions=settings.topic_partitions))
publisher = TransitionPublisher(settings)

# The derived topics are co-partitioned and keyed by series, so one agent over all three sees every row
# of a series in order, and the table's changelog partition is the series' partition.
CHANNEL_OF_TOPIC = {topic_name(settings, CHANNELS[c].topic): c for c in ALERT_CHANNELS}
inputs = app.topic(*CHANNEL_OF_TOPIC, key_serializer="raw", value_serializer="raw")


@app.service
class RuleFeedService(Service):
    """Runs the rule feed with the worker (services start after table recovery)."""

    async def on_start(self) -> None:
        await publisher.start()
        await feed.start()

    async def on_stop(self) -> None:
        await feed.stop()
        await publisher.stop()


@app.on_partitions_revoked.connect
def _forget_revoked(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
    # What the evaluator remembers of a partition is rebuilt from the table if the partition comes back.
    revoked: set[TP] = args[0] if args else set()
    engine.forget({tp.partition for tp in revoked if tp.topic in CHANNEL_OF_TOPIC})


# concurrency stays 1: with more, faust can commit offsets past unprocessed records (faust #606).
@app.agent(inputs)
async def evaluate_alerts(stream: faust.StreamT[bytes]) -> None:
    async for event in stream.events():
        # Never evaluate with a partial rule set: wait for the feed to reach the ends it saw at start.
        await feed.ready.wait()
        message = event.message
        channel = CHANNEL_OF_TOPIC[message.topic]
        row = _row(event.value)
        if row is None or event.key is None:
            ROWS.labels(channel, "unreadable").inc()
            continue
        if channel == "tvl":
            feed.enrich(row)
        position = Position(message.topic, message.partition, message.offset)
        outcome = engine.process(alert_state, channel, event.key.decode(), row, position)
        ROWS.labels(channel, outcome.skipped or "evaluated").inc()
        if outcome.transitions:
            # Acknowledged before the state that records them is written: after a crash a transition
            # may repeat, with the same (fingerprint, source), but is never lost.
            await publisher.publish(outcome.transitions)
            for transition in outcome.transitions:
                STATE_CHANGES.labels(transition["state"]).inc()
        apply_writes(alert_state, outcome.writes)


def _row(value: bytes | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        row = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None
