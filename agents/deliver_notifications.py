"""Agent: alerts.triggered -> alert history and groups in SQL -> notifications (webhook, email, WebSocket).

The agent folds transitions into the outbox a batch at a time (one SQL transaction per batch); a service
beside it flushes due groups and delivers due notifications (pipeline/alerting/notifier.py). Every worker
runs both loops; SQL row locks with SKIP LOCKED share the work between workers without sending anything
twice."""

from __future__ import annotations

import logging
from typing import cast

import faust
from faust.streams import Stream
from faust.types import EventT
from mode import Service
from sqlalchemy.exc import SQLAlchemyError

from pipeline.alerting.messages import AlertTransition
from pipeline.alerting.notifier import TRANSITIONS, Notifier
from pipeline.alerting.transitions import TransitionError, parse_transition
from pipeline.app import app, settings, topic
from pipeline.dlq import reject
from pipeline.topics import topic_name

__all__ = ["deliver_notifications", "NotificationLoops", "notifier", "BATCH_MAX", "BATCH_WITHIN_S"]

log = logging.getLogger(__name__)

# A batch is what arrived within BATCH_WITHIN_S, at most BATCH_MAX: at a trickle a transition waits at most
# BATCH_WITHIN_S for company; under load batches fill up and a transaction's fixed cost is shared.
BATCH_MAX = 500
BATCH_WITHIN_S = 0.02


async def _publish(key: bytes, value: bytes) -> None:
    """Sends to alerts.notifications and waits for the broker's acknowledgement."""
    await app.producer.send_and_wait(
        topic_name(settings, "alerts.notifications"), key, value, partition=None, timestamp=None, headers=None
    )


notifier = Notifier(settings, _publish)


# concurrency stays 1: with more, faust can commit offsets past unprocessed records (faust #606).
@app.agent(topic("alerts.triggered"))
async def deliver_notifications(stream: faust.StreamT[bytes]) -> None:
    # take_events acks a batch's events only when the loop asks for the next batch, that is after
    # notifier.record committed this one: a worker killed mid-batch gets the whole batch again, and the
    # history's unique (fingerprint, source) makes the part already stored a no-op. notifier.record never
    # raises (it waits out outages), because a generator closed by an exception would ack the batch.
    batches = cast(Stream[bytes], stream).take_events(BATCH_MAX, within=BATCH_WITHIN_S)
    async for events in batches:
        read: list[tuple[EventT[bytes], AlertTransition]] = []
        for event in events:
            try:
                read.append((event, parse_transition(event.message.value)))
            except TransitionError as err:
                message = event.message
                log.error(
                    "alerts.triggered %s:%s is not a transition: %s", message.partition, message.offset, err
                )
                TRANSITIONS.labels("invalid").inc()
                await reject(event, "alerts", f"not a transition: {err}")
        failed = await notifier.record([transition for _, transition in read])
        # Kept, not lost: what could not be stored goes to dlq.alerts with the reason, to be replayed.
        for event, transition in read:
            if any(transition is bad for bad in failed):
                await reject(event, "alerts", "could not be stored in the alert history (see the worker log)")


@app.service
class NotificationLoops(Service):
    """Flushes due alert groups into the outbox and delivers due notifications."""

    async def on_start(self) -> None:
        try:
            await notifier.ready()  # migrations, before the loops poll
        except (SQLAlchemyError, OSError) as err:
            # The loops and the agent keep trying; a worker must not die because PostgreSQL is restarting.
            log.warning("the SQL store is not reachable yet: %s", err)

    async def on_stop(self) -> None:
        await notifier.close()

    @Service.task
    async def _dispatch(self) -> None:
        await notifier.run_dispatcher()

    @Service.task
    async def _deliver(self) -> None:
        await notifier.run_delivery()
