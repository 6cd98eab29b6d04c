"""Agent: tvl.updates, price.updates, yields.updates -> alert rules evaluated per row -> alerts.triggered."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, cast

import faust
import orjson
from faust.streams import Stream
from faust.types import TP, EventT
from mode import Service
from mode.types.signals import BaseSignalT
from prometheus_client import Counter

from pipeline.alerting.batch_writes import BatchWrites
from pipeline.alerting.engine import Engine
from pipeline.alerting.messages import AlertTransition
from pipeline.alerting.origin import raw_partition
from pipeline.alerting.publisher import TransitionPublisher
from pipeline.alerting.rule_book import RuleBook
from pipeline.alerting.rule_reader import RuleFeed
from pipeline.alerting.rules import ALERT_CHANNELS
from pipeline.alerting.transition import Position
from pipeline.app import app, settings
from pipeline.channels import CHANNELS
from pipeline.dlq import reject
from pipeline.faust_context import as_current_event
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


# A batch is what arrived within alert_batch_within_s (5 ms), at most alert_batch_max (200) rows. At a
# trickle a row waits at most that long for company; under load the batch's fixed costs (one acknowledged
# send of its transitions, one wake-up of this coroutine instead of one per row) are shared. The alerts
# bench compares batches of 1 and of 200 side by side (bench/README.md, "The evaluator in batches").


# concurrency stays 1: with more, faust can commit offsets past unprocessed records (faust #606).
@app.agent(inputs)
async def evaluate_alerts(stream: faust.StreamT[bytes]) -> None:
    # take_events acks a batch's events only when the loop asks for the next batch, that is after the
    # batch's transitions are acknowledged and its state written. publish waits out broker outages, and a
    # row the engine fails on is dead-lettered rather than left to end the loop: a generator closed by an
    # exception would ack the whole batch.
    batches = cast(Stream[bytes], stream).take_events(
        settings.alert_batch_max, within=settings.alert_batch_within_s
    )
    async for events in batches:
        # Never evaluate with a partial rule set: wait for the feed to reach the ends it saw at start.
        await feed.ready.wait()
        batch = BatchWrites[EventT[bytes]](alert_state, as_current_event)
        transitions: list[AlertTransition] = []
        failed: list[tuple[EventT[bytes], str]] = []
        for event in events:
            try:
                transitions += _evaluate(event, batch)
            except Exception as err:  # a bug, not bad input: keep the row, with the reason, and go on
                log.exception("alert evaluation failed on %s", _where(event))
                failed.append((event, f"evaluation failed: {err!r}"))
        if transitions:
            # Acknowledged before the state that records them is written: after a crash a transition
            # may repeat, with the same (fingerprint, source), but is never lost.
            await publisher.publish(transitions)
            for transition in transitions:
                STATE_CHANGES.labels(transition["state"]).inc()
        batch.apply()
        for event, reason in failed:
            await reject(event, "alerts", reason)


def _evaluate(event: EventT[bytes], batch: BatchWrites[EventT[bytes]]) -> list[AlertTransition]:
    """Evaluate one row against the state as the batch left it; its writes join the batch."""
    message = event.message
    channel = CHANNEL_OF_TOPIC[message.topic]
    row = _row(event.value)
    if row is None or event.key is None:
        ROWS.labels(channel, "unreadable").inc()
        return []
    if channel == "tvl":
        feed.enrich(row)
    position = Position(message.topic, message.partition, message.offset)
    outcome = engine.process(batch, channel, event.key.decode(), row, position)
    ROWS.labels(channel, outcome.skipped or "evaluated").inc()
    batch.add(event, outcome.writes)
    return outcome.transitions


def _where(event: EventT[bytes]) -> str:
    message = event.message
    return f"{message.topic}:{message.partition}@{message.offset}"


def _row(value: bytes | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        row = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None
