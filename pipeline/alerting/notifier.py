"""The notifier's runtime in a worker: the SQL engine, the loops that flush due groups and deliver due
notifications, and the events that wake them the moment work arrives (polling is only the fallback, for
work another worker wrote)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from prometheus_client import Counter
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.alerting.attempt import Sender
from pipeline.alerting.delivery import BATCH, Deliverer, Publish, WebSocketSender
from pipeline.alerting.due_notifications import release_held
from pipeline.alerting.email_sender import EmailSender
from pipeline.alerting.flush_groups import GROUPS_PER_FLUSH, flush_due_groups
from pipeline.alerting.messages import AlertTransition
from pipeline.alerting.record_transitions import BatchRecorded, record_transitions
from pipeline.alerting.webhook_sender import WebhookSender
from pipeline.db import make_engine
from pipeline.settings import Settings
from pipeline.storage.migrate import upgrade
from pipeline.topics import topic_name

__all__ = ["Notifier", "TRANSITIONS"]

log = logging.getLogger(__name__)

TRANSITIONS = Counter(
    "llamastream_alert_transitions_total", "alerts.triggered records by outcome", ["outcome"]
)
POLL_S = 0.5  # longest sleep of either loop: how soon work written by another worker is seen
RELEASE_EVERY_S = 5.0  # how often held notifications of re-enabled endpoints are looked for
RETRY_DEADLOCK = 3  # tries of a batch whose transaction fails for a reason other than connectivity
# The database is unreachable or restarting: wait and try again, never drop the work.
TRANSIENT = (OperationalError, InterfaceError, OSError, TimeoutError)


def _now() -> datetime:
    return datetime.now(UTC)


class Notifier:
    def __init__(self, settings: Settings, publish: Publish) -> None:
        self.settings = settings
        self.publish = publish
        self.groups_due = asyncio.Event()
        self.deliveries_due = asyncio.Event()
        self._engine: AsyncEngine | None = None
        self._deliverer: Deliverer | None = None
        self._starting = asyncio.Lock()

    async def ready(self) -> AsyncEngine:
        """The engine, once migrations ran (the agent may see a transition before the loops start)."""
        async with self._starting:
            if self._engine is None:
                await upgrade(self.settings)
                engine = make_engine(self.settings)
                senders: dict[str, Sender] = {
                    "webhook": WebhookSender(self.settings),
                    "email": EmailSender(self.settings),
                    "websocket": WebSocketSender(
                        self.publish, topic_name(self.settings, "alerts.notifications")
                    ),
                }
                self._deliverer = Deliverer(self.settings, engine, senders)
                self._engine = engine
            return self._engine

    async def close(self) -> None:
        if self._deliverer is not None:
            await self._deliverer.close()
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = self._deliverer = None

    async def record(self, transitions: Sequence[AlertTransition]) -> list[AlertTransition]:
        """Fold a batch of transitions into the outbox in one transaction; waits out database outages (the
        batch stays unacked meanwhile). A batch that keeps failing for another reason is retried one
        transition at a time, so that one bad transition fails alone rather than with its batch. Returns
        the transitions that could not be stored (the caller dead-letters them)."""
        if not transitions:
            return []
        recorded = await self._record(transitions)
        if recorded is None and len(transitions) > 1:
            log.warning("a batch of %d alert transitions failed; storing them one by one", len(transitions))
            failed: list[AlertTransition] = []
            for transition in transitions:
                failed += await self.record([transition])
            return failed
        if recorded is None:
            log.error("alert transition %s could not be stored", transitions[0]["source"])
            TRANSITIONS.labels("failed").inc()
            return list(transitions)
        if recorded.duplicates:
            log.info("%d alert transitions were stored before (redelivered); skipped", recorded.duplicates)
        counts = {"duplicate": recorded.duplicates, "scheduled": recorded.scheduled}
        for outcome, count in (counts | {"recorded": recorded.recorded}).items():
            if count:
                TRANSITIONS.labels(outcome).inc(count)
        if recorded.notifications:
            self.deliveries_due.set()  # flushed at once (group_wait 0): straight to delivery
        due = recorded.next_flush_at
        if due is not None and (due - _now()).total_seconds() < POLL_S:
            self.groups_due.set()  # later ones: the dispatcher's next poll sees them in time
        return []

    async def _record(self, transitions: Sequence[AlertTransition]) -> BatchRecorded | None:
        """The batch's outcome, or None when it failed RETRY_DEADLOCK times for a reason other than
        connectivity (its transaction rolled back each time)."""
        failures = 0
        while True:
            try:
                engine = await self.ready()
                return await record_transitions(engine, self.settings.app_id, transitions, _now())
            except TRANSIENT as err:
                log.warning("%d alert transitions wait for the database: %s", len(transitions), err)
                await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))
                failures += 1
            except (DBAPIError, SQLAlchemyError):
                failures += 1
                if failures >= RETRY_DEADLOCK:
                    log.exception("storing %d alert transitions failed", len(transitions))
                    return None
                await asyncio.sleep(0.2)

    async def run_dispatcher(self) -> None:
        """Flush due groups into the outbox, forever."""
        last_release = 0.0
        while True:
            self.groups_due.clear()
            wait = POLL_S
            try:
                engine = await self.ready()
                result = await flush_due_groups(engine, self.settings.app_id, _now())
                if result.notifications:
                    self.deliveries_due.set()
                if result.groups >= GROUPS_PER_FLUSH:
                    continue
                if time.monotonic() - last_release >= RELEASE_EVERY_S:
                    last_release = time.monotonic()
                    if await release_held(engine, self.settings.app_id, _now()):
                        self.deliveries_due.set()
                if result.next_flush_at is not None:
                    wait = min(POLL_S, max(0.0, (result.next_flush_at - _now()).total_seconds()))
            except Exception:  # the database went away, or a bug: either way the loop must go on
                log.exception("flushing alert groups failed; retrying")
                wait = 2.0
            await _wait(self.groups_due, wait)

    async def run_delivery(self) -> None:
        """Send due notifications, forever."""
        while True:
            self.deliveries_due.clear()
            wait = POLL_S
            try:
                await self.ready()
                assert self._deliverer is not None
                if await self._deliverer.run_once() >= BATCH:
                    continue
                attempt_at = self._deliverer.next_attempt_at
                if attempt_at is not None:
                    wait = min(POLL_S, max(0.0, (attempt_at - _now()).total_seconds()))
            except Exception:  # the database went away, or a bug: either way the loop must go on
                log.exception("delivering notifications failed; retrying")
                wait = 2.0
            await _wait(self.deliveries_due, wait)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    if seconds <= 0 or event.is_set():
        await asyncio.sleep(0)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
