"""Agent: alerts.triggered -> alert history and groups in SQL -> notifications (webhook, email, WebSocket).

The agent folds each transition into the outbox; a service beside it flushes due groups and delivers
due notifications (pipeline/alerting/notifier.py). Every worker runs both loops; SQL row locks with
SKIP LOCKED share the work between workers without sending anything twice."""

from __future__ import annotations

import logging

import faust
from mode import Service
from sqlalchemy.exc import SQLAlchemyError

from pipeline.alerting.notifier import TRANSITIONS, Notifier
from pipeline.alerting.transitions import TransitionError, parse_transition
from pipeline.app import app, settings, topic
from pipeline.topics import topic_name

__all__ = ["deliver_notifications", "NotificationLoops", "notifier"]

log = logging.getLogger(__name__)


async def _publish(key: bytes, value: bytes) -> None:
    """Sends to alerts.notifications and waits for the broker's acknowledgement."""
    await app.producer.send_and_wait(
        topic_name(settings, "alerts.notifications"), key, value, partition=None, timestamp=None, headers=None
    )


notifier = Notifier(settings, _publish)


# concurrency stays 1: with more, faust can commit offsets past unprocessed records (faust #606).
@app.agent(topic("alerts.triggered"))
async def deliver_notifications(stream: faust.StreamT[bytes]) -> None:
    async for event in stream.events():
        try:
            transition = parse_transition(event.message.value)
        except TransitionError as err:
            message = event.message
            log.error(
                "alerts.triggered %s:%s is not a transition: %s", message.partition, message.offset, err
            )
            TRANSITIONS.labels("invalid").inc()
            continue
        await notifier.record(transition)


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
