"""The delivery loop: claim a batch of due notifications, send each through its channel (concurrently),
then log the attempts and mark each delivered, retried with exponential backoff and full jitter, or given
up, in one transaction. All of it is in SQL, so retries survive restarts, and the webhook-id is the
notification id on every attempt."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta

import orjson
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.alerting.attempt import EXCERPT_CHARS, AttemptResult, Outgoing, Sender
from pipeline.alerting.delivery_log import Attempted, record_results
from pipeline.alerting.due_notifications import claim_due
from pipeline.settings import Settings

__all__ = ["Publish", "retry_delay", "WebSocketSender", "Deliverer", "DELIVERIES"]

log = logging.getLogger(__name__)

# (key, value) -> published and acknowledged by the broker
Publish = Callable[[bytes, bytes], Awaitable[None]]

DELIVERIES = Counter(
    "llamastream_alert_deliveries_total",
    "notification delivery attempts by channel and outcome",
    ["channel", "outcome"],
)
# Notifications claimed, sent concurrently and recorded together (the webhook client's pool is 100 wide).
BATCH = 100
# Past the send's own deadline, so a live sender always finishes before its lease runs out.
LEASE_MARGIN_S = 10.0


def retry_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds before the attempt after ``attempt`` (1-based): "full jitter", uniform over
    [0, min(max, base * 2^(attempt-1))], so receivers coming back are not hit by every sender at once."""
    ceiling = min(max_s, base_s * 2 ** min(attempt - 1, 62))
    return rng.uniform(0, ceiling)


class WebSocketSender:
    """Publishes the notice on ``alerts.notifications`` (key: owner); every sidecar forwards it to the
    owner's open connections as an ``alert`` message. Delivered means acknowledged by the broker."""

    def __init__(self, publish: Publish, topic: str) -> None:
        self.publish = publish
        self.topic = topic

    async def send(self, outgoing: Outgoing) -> AttemptResult:
        started = time.perf_counter()
        target = f"kafka://{self.topic} key {outgoing.owner}"
        try:
            await self.publish(outgoing.owner.encode(), orjson.dumps(outgoing.payload))
        except Exception as err:  # the producer's errors vary by client; all mean "not published"
            latency = (time.perf_counter() - started) * 1000
            error = f"{type(err).__name__}: {err}"[:EXCERPT_CHARS]
            return AttemptResult(ok=False, target=target, latency_ms=latency, error=error)
        return AttemptResult(ok=True, target=target, latency_ms=(time.perf_counter() - started) * 1000)

    async def close(self) -> None:
        return None


class Deliverer:
    """Sends what is due, a batch at a time, each notification concurrently with the others; two
    transactions per batch (the claim, the results), whatever its size."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        senders: Mapping[str, Sender],
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.senders = senders
        self.rng = rng or random.SystemRandom()
        self.lease = timedelta(seconds=settings.webhook_timeout_s + LEASE_MARGIN_S)
        # The earliest pending attempt after the last claim: the loop sleeps until then at most.
        self.next_attempt_at: datetime | None = None

    async def run_once(self) -> int:
        """Claim a batch, send it concurrently, then record every outcome in one transaction; how many were
        claimed (a full batch means more may be due)."""
        now = datetime.now(UTC)
        claim = await claim_due(self.engine, self.settings.app_id, now, self.lease, BATCH)
        claimed = claim.outgoing
        self.next_attempt_at = claim.next_attempt_at
        if not claimed:
            return 0
        attempted = await asyncio.gather(*(self.attempt(outgoing) for outgoing in claimed))
        try:
            outcomes = await record_results(self.engine, self.settings, attempted)
        except Exception:  # the database went away: the leases run out and all is sent again, same ids
            log.exception("recording %d delivery attempts failed", len(attempted))
            return len(claimed)
        for item, outcome in zip(attempted, outcomes, strict=True):
            outgoing, result = item.outgoing, item.result
            if outcome == "retry":
                retry_at = datetime.now(UTC) + timedelta(seconds=item.retry_in)
                if self.next_attempt_at is None or retry_at < self.next_attempt_at:
                    self.next_attempt_at = retry_at
            DELIVERIES.labels(outgoing.target_type, outcome).inc()
            if outcome != "delivered":
                log.info("notification %s to %s: %s (%s)", outgoing.id, result.target, outcome, result.error)
        return len(claimed)

    async def attempt(self, outgoing: Outgoing) -> Attempted:
        """Send one notification through its channel; every failure is a result, never a raise."""
        started_at = datetime.now(UTC)
        sender = self.senders.get(outgoing.target_type)
        if sender is None:
            result = AttemptResult(
                ok=False,
                target=outgoing.target,
                error=f"no sender for channel {outgoing.target_type!r}",
                permanent=True,
            )
        else:
            try:
                result = await sender.send(outgoing)
            except Exception as err:  # a bug in a sender must not stop the loop; the attempt is logged
                log.exception("sending %s failed unexpectedly", outgoing.id)
                result = AttemptResult(
                    ok=False, target=outgoing.target, error=f"internal error: {err}"[:1000]
                )
        delay = retry_delay(
            outgoing.attempt,
            self.settings.webhook_backoff_base_s,
            self.settings.webhook_backoff_max_s,
            self.rng,
        )
        return Attempted(outgoing, result, started_at, delay)

    async def close(self) -> None:
        for sender in self.senders.values():
            await sender.close()
